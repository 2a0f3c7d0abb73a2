"""The grader contract: a `Grader` maps (output text, item) to a `GradeResult` with a score in [0, 1].

Failure isolation: a grader that raises, times out or returns a non-number or a value outside
[0, 1] gives that sample 0 with the error recorded; the batch goes on. Only config errors raise.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterable

from reftflow.errors import InputError


FULL_MARKS = 1.0 - 1e-9
"""A score at or above this is full marks: the grader fully accepts the answer (the pass rate counts
these; RAFT keeps only these). Below 1.0 by float noise only, as `checked_score` rounds."""


class GraderConfigError(InputError):
    """A wrong grader object: the message is one line saying what and where."""


class SampleError(Exception):
    """A per-sample failure (bad template field, unparseable reference, sandbox refusal...)."""


@dataclass(frozen=True)
class GradeResult:
    score: float
    sub_scores: dict[str, float] = field(default_factory=dict)
    """score of each named (sub-)grader; a leaf grader reports its own name."""
    error: str | None = None
    """one line saying why the sample scored 0 because the grader failed; None when it ran."""
    parse_error: bool = False
    """the answer did not have the required `response_format`: it scored 0 before any grader saw it."""


def checked_score(value: Any) -> float:
    """A grader's raw return value as a float in [0, 1], or SampleError saying why not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SampleError(f"returned {type(value).__name__}, not a number")
    value = float(value)
    if math.isnan(value):
        raise SampleError("returned NaN")
    # float noise from formulas such as (a + b) / 2 must not turn 1.0000000000000002 into an error
    if -1e-9 <= value < 0.0:
        return 0.0
    if 1.0 < value <= 1.0 + 1e-9:
        return 1.0
    if not 0.0 <= value <= 1.0:
        raise SampleError(f"returned {value!r}, outside [0, 1]")
    return value


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Grader(ABC):
    """Base class. Subclasses implement `_grade_batch`, which must not raise for per-sample failures."""

    type: str = ""

    def __init__(self, name: str, label: str | None = None) -> None:
        self.name = name
        self.label = label or repr(name)
        """how errors name this grader: `'acc' → 'fmt'` inside a multi grader."""

    def grade(self, output_text: str, item: dict) -> GradeResult:
        return self.grade_many([output_text], [item])[0]

    def grade_many(self, output_texts: list[str], items: list[dict], progress: bool = False) -> list[GradeResult]:
        if len(output_texts) != len(items):
            raise ValueError(f"grade_many: {len(output_texts)} output texts but {len(items)} items")
        texts = list(output_texts)
        items = list(items)
        if not progress or len(texts) <= 256:
            return self._grade_batch(texts, items)
        from tqdm import tqdm  # lazy: only the CLI's large files show a bar

        results: list[GradeResult] = []
        chunk = 512
        with tqdm(total=len(texts), desc=f"grading ({self.name})", unit="sample", disable=None) as bar:
            for start in range(0, len(texts), chunk):
                results.extend(self._grade_batch(texts[start : start + chunk], items[start : start + chunk]))
                bar.update(min(chunk, len(texts) - start))
        return results

    @abstractmethod
    def _grade_batch(self, output_texts: list[str], items: list[dict]) -> list[GradeResult]: ...

    def answer_key(self, output_text: str, item: dict) -> str | None:
        """What majority voting (maj@k, `reftflow.stats.majority`) compares: answers with the same key are
        the same answer. By default the output with its whitespace normalised; None (no vote) when empty.
        A grader that extracts an answer votes on that instead (numeric_answer: the number)."""
        return " ".join(output_text.split()) or None

    def children(self) -> Iterable[Grader]:
        return ()

    def close(self) -> None:
        for child in self.children():
            child.close()

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class PureGrader(Grader):
    """A grader computed in-process: one tight loop, each sample in its own try."""

    @abstractmethod
    def score(self, output_text: str, item: dict) -> float:
        """The score in [0, 1]; raise SampleError (or anything) for a per-sample failure."""

    def _grade_batch(self, output_texts: list[str], items: list[dict]) -> list[GradeResult]:
        name, label, score = self.name, self.label, self.score
        out: list[GradeResult] = []
        append = out.append
        for text, item in zip(output_texts, items):
            try:
                value = score(text, item)
            except Exception as e:  # noqa: BLE001 - any failure is this sample's, never the run's
                append(GradeResult(0.0, {name: 0.0}, f"grader {label}: {describe(e)}"))
            else:
                append(GradeResult(value, {name: value}, None))
        return out


def describe(e: BaseException) -> str:
    from reftflow.templates import MissingField

    if isinstance(e, (SampleError, MissingField)):
        return one_line(str(e))
    try:
        msg = str(e)
    except Exception:  # noqa: BLE001 - a user exception whose __str__ raises
        msg = ""
    return one_line(f"{type(e).__name__}: {msg}" if msg else type(e).__name__)
