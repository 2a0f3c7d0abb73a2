"""`multi` (OpenAI grader object): named sub-graders combined by `calculate_output`, a safe formula.

`graders` maps a name (the formula's variable) to a grader object. If any sub-grader fails on a sample,
the sample scores 0 with that error (a partial formula would reward a broken grader).
"""

from __future__ import annotations

import math
from typing import Iterable

from reftflow.graders.base import GradeResult, Grader, SampleError, checked_score, describe
from reftflow.graders.formula import Formula, FormulaError
from reftflow.graders.spec import BuildContext


class MultiGrader(Grader):
    type = "multi"

    def __init__(self, name: str, label: str, graders: dict[str, Grader], formula: Formula) -> None:
        super().__init__(name, label)
        self.graders, self.formula = graders, formula

    def children(self) -> Iterable[Grader]:
        return self.graders.values()

    def _grade_batch(self, output_texts: list[str], items: list[dict]) -> list[GradeResult]:
        per_child = {key: g._grade_batch(output_texts, items) for key, g in self.graders.items()}
        out = []
        for i in range(len(output_texts)):
            sub: dict[str, float] = {}
            env: dict[str, float] = {}
            error = None
            for key, results in per_child.items():
                r = results[i]
                env[key] = sub[key] = r.score
                for inner, value in r.sub_scores.items():
                    if inner != key:
                        sub[f"{key}.{inner}"] = value
                if r.error is not None and error is None:
                    error = r.error
            if error is None:
                try:
                    value = checked_score(self.formula(env))
                except (ArithmeticError, ValueError) as e:  # ZeroDivisionError, math domain error, overflow
                    error = f"grader {self.label}: calculate_output {self.formula.source!r}: {describe(e)}"
                except SampleError as e:
                    error = f"grader {self.label}: calculate_output {self.formula.source!r} {e}"
                else:
                    out.append(GradeResult(value, sub, None))
                    continue
            out.append(GradeResult(0.0, sub, error))
        return out


def build(spec: dict, ctx: BuildContext) -> MultiGrader:
    ctx.check_keys(spec, required=("graders", "calculate_output"), optional=())
    subs = spec["graders"]
    if not isinstance(subs, dict) or not subs:
        ctx.fail("field 'graders' must be a non-empty mapping of name → grader object")
    graders: dict[str, Grader] = {}
    for key, sub in subs.items():
        if not isinstance(key, str) or not key.isidentifier():
            ctx.fail(f"sub-grader name {key!r} must be an identifier (letters, digits, _) to appear in the formula")
        graders[key] = ctx.child(key).build(sub)
    source = spec["calculate_output"]
    if isinstance(source, (int, float)) and not isinstance(source, bool) and math.isfinite(source):
        source = str(source)
    try:
        formula = Formula(source, set(graders))
    except FormulaError as e:
        ctx.fail(f"calculate_output: {e}")
    return MultiGrader(spec.get("name", ctx.name), ctx.label, graders, formula)
