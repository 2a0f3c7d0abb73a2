"""`string_check` (OpenAI grader object): 1.0 when the comparison holds, else 0.0.

eq / ne: exact (in)equality; like: the input contains the reference; ilike: the same, ignoring case.
"""

from __future__ import annotations

from typing import Callable

from reftflow.graders.base import PureGrader
from reftflow.graders.spec import BuildContext
from reftflow.templates import Template

OPERATIONS: dict[str, Callable[[str, str], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "like": lambda a, b: b in a,
    "ilike": lambda a, b: b.casefold() in a.casefold(),
}


class StringCheckGrader(PureGrader):
    type = "string_check"

    def __init__(self, name: str, label: str, input: Template, reference: Template, operation: str) -> None:
        super().__init__(name, label)
        self.input, self.reference, self.operation = input, reference, operation
        self._op = OPERATIONS[operation]

    def score(self, output_text: str, item: dict) -> float:
        a = self.input.render(output_text, item)
        b = self.reference.render(output_text, item)
        return 1.0 if self._op(a, b) else 0.0


def build(spec: dict, ctx: BuildContext) -> StringCheckGrader:
    ctx.check_keys(spec, required=("input", "reference", "operation"), optional=())
    return StringCheckGrader(
        spec.get("name", ctx.name),
        ctx.label,
        ctx.template(spec, "input"),
        ctx.template(spec, "reference"),
        ctx.choice(spec, "operation", tuple(OPERATIONS)),
    )
