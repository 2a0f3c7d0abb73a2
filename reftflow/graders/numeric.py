"""`numeric_answer`: ReFT's reward on the final numeric answer (Luong et al., 2024, §3.2).

The sample scores `correct_score` (1.0) when its extracted answer equals the reference within the
tolerance, `wrong_answer_score` (0.1, ReFT's partial reward for a well-formed but wrong answer) when an
answer can be extracted but is wrong, and 0 when none can be extracted. Extraction reuses
reftflow.answers: gsm8k (`#### N`), last_number, boxed (`\\boxed{N}`); commas and `$` are handled there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from reftflow.answers import extract_answer, parse_number
from reftflow.graders.base import PureGrader, SampleError
from reftflow.graders.spec import BuildContext
from reftflow.templates import Template

EXTRACTIONS = ("gsm8k", "last_number", "boxed")


@dataclass(frozen=True)
class Tolerance:
    """math.isclose semantics: equal when |a - b| <= max(relative * max(|a|, |b|), absolute)."""

    relative: float = 1e-6
    absolute: float = 1e-6

    def match(self, a: float, b: float) -> bool:
        return math.isclose(a, b, rel_tol=self.relative, abs_tol=self.absolute)


def parse_tolerance(spec: dict, ctx: BuildContext) -> Tolerance:
    raw = spec.get("tolerance")
    if raw is None:
        return Tolerance()
    if isinstance(raw, dict):
        for key in raw:
            if key not in ("relative", "absolute"):
                ctx.fail(f"field 'tolerance': unknown key {key!r} (expected relative, absolute)")
        rel = ctx.number(raw, "relative", 0.0 if "absolute" in raw else 1e-6, 0.0, 1.0)
        abs_ = ctx.number(raw, "absolute", 0.0 if "relative" in raw else 1e-6, 0.0, math.inf)
        return Tolerance(rel, abs_)
    # a bare number is an absolute tolerance, the reading most users expect from `tolerance: 0.01`
    return Tolerance(0.0, ctx.number(spec, "tolerance", 0.0, 0.0, math.inf))


def reference_number(text: str) -> float:
    """The reference as a number: plain (`'1,234'`), or a GSM8K solution ending in `#### N`."""
    value = parse_number(text)
    if value is None:
        found = extract_answer(text, "gsm8k")
        value = parse_number(found) if found is not None else None
    if value is None:
        raise SampleError(f"reference {text[:60]!r} is not a number")
    return value


@dataclass(frozen=True)
class AnswerScores:
    correct: float = 1.0
    wrong: float = 0.1

    def score(self, answer: float | None, reference: float, tolerance: Tolerance) -> float:
        if answer is None:
            return 0.0
        return self.correct if tolerance.match(answer, reference) else self.wrong


def parse_scores(spec: dict, ctx: BuildContext) -> AnswerScores:
    return AnswerScores(
        ctx.number(spec, "correct_score", 1.0, 0.0, 1.0), ctx.number(spec, "wrong_answer_score", 0.1, 0.0, 1.0)
    )


class NumericAnswerGrader(PureGrader):
    type = "numeric_answer"

    def __init__(
        self, name: str, label: str, input: Template, reference: Template, extraction: str,
        tolerance: Tolerance, scores: AnswerScores,
    ) -> None:  # fmt: skip
        super().__init__(name, label)
        self.input, self.reference, self.extraction = input, reference, extraction
        self.tolerance, self.scores = tolerance, scores

    def score(self, output_text: str, item: dict) -> float:
        reference = reference_number(self.reference.render(output_text, item))
        return self.scores.score(self._answer(output_text, item), reference, self.tolerance)

    def _answer(self, output_text: str, item: dict) -> float | None:
        found = extract_answer(self.input.render(output_text, item), self.extraction)
        return parse_number(found) if found is not None else None

    def answer_key(self, output_text: str, item: dict) -> str | None:
        """The extracted number (ReFT votes on the final answers): `12`, `12.0` and `1,2` are one answer."""
        try:
            answer = self._answer(output_text, item)
        except Exception:  # noqa: BLE001 - a sample the grader cannot read does not vote
            return None
        return None if answer is None else repr(float(answer))


def build(spec: dict, ctx: BuildContext) -> NumericAnswerGrader:
    ctx.check_keys(
        spec, required=("reference",),
        optional=("input", "extraction", "tolerance", "correct_score", "wrong_answer_score"),
    )  # fmt: skip
    return NumericAnswerGrader(
        spec.get("name", ctx.name),
        ctx.label,
        ctx.template(spec, "input", "{{ sample.output_text }}"),
        ctx.template(spec, "reference"),
        ctx.choice(spec, "extraction", EXTRACTIONS, "gsm8k"),
        parse_tolerance(spec, ctx),
        parse_scores(spec, ctx),
    )
