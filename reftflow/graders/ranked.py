"""`ranked_list`: partial credit by the rank at which the reference first appears in a ranked answer.

The seed example: a model lists candidate genes for a patient's symptoms; with scores [1.0, 0.7, 0.5, 0.3]
the correct gene listed second earns 0.7. Credit comes from `scores` (rank r earns scores[r-1], 0 past the
end) or from `decay` (rank r earns decay ** (r - 1)); 0 when the reference is absent.

Parsing: with a `separator` the output is split on it; otherwise each non-blank line is an entry. List
markers (`1.`, `2)`, `-`, `*`) and markdown emphasis are stripped; ranks follow the order of entries, not
the printed numbers. With `distinct: true` a list that names an entry twice is no ranking and scores 0:
without it, "A, A, A" earns full marks when A is right, and a policy trained on the reward is free to
pad its list with repeats (RAFT on the genes example did, docs/regime.md).
"""

from __future__ import annotations

import re

from reftflow.graders.base import PureGrader
from reftflow.graders.spec import BuildContext
from reftflow.templates import Template

# `1. X`, `1) X`, `(1) X`, `1.X`, `- X`, `* X`, `• X`, `#1 X`; `1.5 mg` keeps its number
_MARKER = re.compile(r"^\s*(?:\(?\d{1,3}[.):](?:\s+|(?=[^\d\s]))|[-*•]\s+|#\d{1,3}[.):]?\s+)")
_STRIP = " \t\r\n*_`\"'.,;:"


def normalize(entry: str) -> str:
    return _MARKER.sub("", entry, count=1).strip(_STRIP)


def entries(text: str, separator: str | None) -> list[str]:
    pieces = text.split(separator) if separator else text.splitlines()
    out = []
    for piece in pieces:
        entry = normalize(piece)
        if entry:
            out.append(entry)
    return out


class RankedListGrader(PureGrader):
    type = "ranked_list"

    def __init__(
        self, name: str, label: str, input: Template, reference: Template, scores: tuple[float, ...] | None,
        decay: float | None, separator: str | None, case_insensitive: bool, distinct: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(name, label)
        self.input, self.reference, self.scores, self.decay = input, reference, scores, decay
        self.separator, self.case_insensitive, self.distinct = separator, case_insensitive, distinct

    def rank(self, output_text: str, item: dict) -> int | None:
        """1-based rank of the first entry equal to the reference; None when absent (or, with `distinct`,
        when an entry is listed twice)."""
        reference = normalize(self.reference.render(output_text, item))
        listed = entries(self.input.render(output_text, item), self.separator)
        if self.case_insensitive:
            reference = reference.casefold()
            listed = [e.casefold() for e in listed]
        if self.distinct and len(set(listed)) < len(listed):
            return None
        for position, entry in enumerate(listed, start=1):
            if entry == reference:
                return position
        return None

    def score(self, output_text: str, item: dict) -> float:
        rank = self.rank(output_text, item)
        if rank is None:
            return 0.0
        if self.scores is not None:
            return self.scores[rank - 1] if rank <= len(self.scores) else 0.0
        return float(self.decay) ** (rank - 1)


def list_shares(grader: RankedListGrader, outputs: list[str], items: list[dict]) -> dict[str, float]:
    """How a model's ranked answers look, beyond their score: the share that name an entry twice, and the
    share whose reference sits 2nd or 3rd (the partial credit a ranking earns)."""
    twice, runner_up = 0, 0
    for text, item in zip(outputs, items):
        listed = entries(grader.input.render(text, item), grader.separator)
        twice += len(set(listed)) < len(listed)
        runner_up += RankedListGrader.rank(grader, text, item) in (2, 3)
    n = max(len(outputs), 1)
    return {"repeats_an_entry": twice / n, "second_or_third": runner_up / n}


def build(spec: dict, ctx: BuildContext) -> RankedListGrader:
    ctx.check_keys(spec, required=("reference",),
                   optional=("input", "scores", "decay", "separator", "match", "distinct"))
    if ("scores" in spec) == ("decay" in spec):
        ctx.fail("give exactly one of 'scores' (a list such as [1.0, 0.7, 0.5, 0.3]) or 'decay' (e.g. 0.7)")
    scores = None
    decay = None
    if "scores" in spec:
        raw = spec["scores"]
        if not isinstance(raw, list) or not raw:
            ctx.fail("field 'scores' must be a non-empty list of numbers in [0, 1]")
        scores = tuple(ctx.number({"scores": v}, "scores", 0.0, 0.0, 1.0) for v in raw)
    else:
        decay = ctx.number(spec, "decay", 0.5, 0.0, 1.0)
        if decay == 0.0:
            ctx.fail("field 'decay' must be above 0 (use scores: [1.0] to credit only the first entry)")
    separator = spec.get("separator")
    if separator is not None and (not isinstance(separator, str) or not separator):
        ctx.fail("field 'separator' must be a non-empty string such as ',' or '\\n'")
    match = ctx.choice(spec, "match", ("exact", "case_insensitive"), "exact")
    distinct = spec.get("distinct", False)
    if not isinstance(distinct, bool):
        ctx.fail("field 'distinct' must be true or false")
    return RankedListGrader(
        spec.get("name", ctx.name),
        ctx.label,
        ctx.template(spec, "input", "{{ sample.output_text }}"),
        ctx.template(spec, "reference"),
        scores,
        decay,
        separator,
        match == "case_insensitive",
        distinct,
    )
