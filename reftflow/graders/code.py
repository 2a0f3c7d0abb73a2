"""Graders that run code in the sandbox pool: `python` (OpenAI grader object) and `program_answer` (ReFT).

python: the user's `source` defines `grade(sample, item) -> float`; sample is {"output_text", "output_json"}
as in OpenAI's python grader. The source is checked here without running it (syntax, a top-level `grade`
taking two arguments) and loaded once per worker.

program_answer: the sample is a program defining `solution()` (ReFT's program-of-thought, Luong et al.,
2024, §4: "the program is executed ... and the result is compared to the ground truth"); its return value is
compared numerically to the reference with numeric_answer's tolerance and scores (1 / 0.1 / 0). A
```python fenced block is taken when the output has one. Only the program goes to the sandbox, never the
reference, so a program cannot learn the answer it is graded against.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from reftflow.answers import parse_number
from reftflow.graders.base import GradeResult, Grader, SampleError, checked_score, describe
from reftflow.graders.numeric import AnswerScores, Tolerance, parse_scores, parse_tolerance, reference_number
from reftflow.graders.pool import SandboxPool
from reftflow.graders.spec import BuildContext
from reftflow.templates import Template

MAX_SOURCE_CHARS = 1_000_000
_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)


def _limits(spec: dict, ctx: BuildContext, default_timeout: float) -> tuple[float, int]:
    timeout = ctx.number(spec, "timeout", default_timeout, 0.01, 600.0)
    memory = ctx.number(spec, "memory_mb", 1024, 64, 1 << 20)
    return timeout, int(memory)


def _output_json(text: str) -> Any:
    if text[:1] not in "{[" and text.lstrip()[:1] not in ("{", "["):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


class PythonGrader(Grader):
    type = "python"

    def __init__(self, name: str, label: str, source: str, timeout: float, pool: SandboxPool) -> None:
        super().__init__(name, label)
        self.source, self.timeout, self.pool = source, timeout, pool
        self._key = label
        pool.register(self._key, "python", source, load_timeout=max(timeout, 10.0))

    def _grade_batch(self, output_texts: list[str], items: list[dict]) -> list[GradeResult]:
        tasks = [{"sample": {"output_text": t, "output_json": _output_json(t)}, "item": it} for t, it in zip(output_texts, items)]
        out = []
        for reply in self.pool.run(self._key, tasks, self.timeout):
            if reply.ok:
                try:
                    value = checked_score(reply.value)
                except SampleError as e:
                    out.append(GradeResult(0.0, {self.name: 0.0}, f"grader {self.label}: grade() {e}"))
                    continue
                out.append(GradeResult(value, {self.name: value}, None))
            else:
                out.append(GradeResult(0.0, {self.name: 0.0}, f"grader {self.label}: {reply.error}"))
        return out

    def close(self) -> None:
        self.pool.close()


def extract_program(text: str) -> str:
    """The last fenced code block, else the whole text, dedented: a completion after `A:` (ReFT's
    P-CoT) starts with a space that Python would read as an indentation error."""
    import textwrap

    blocks = _FENCE.findall(text)
    return textwrap.dedent(blocks[-1] if blocks else text)


def _as_number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        return parse_number(value)
    return None


class ProgramAnswerGrader(Grader):
    type = "program_answer"

    def __init__(
        self, name: str, label: str, input: Template, reference: Template, tolerance: Tolerance,
        scores: AnswerScores, entry_point: str, timeout: float, pool: SandboxPool,
    ) -> None:  # fmt: skip
        super().__init__(name, label)
        self.input, self.reference, self.tolerance, self.scores = input, reference, tolerance, scores
        self.entry_point, self.timeout, self.pool = entry_point, timeout, pool
        self._key = label
        pool.register(self._key, "program", None, entry=entry_point)

    def _grade_batch(self, output_texts: list[str], items: list[dict]) -> list[GradeResult]:
        name, label = self.name, self.label
        out: list[GradeResult | None] = [None] * len(output_texts)
        references: dict[int, float] = {}
        tasks, where = [], []
        for i, (text, item) in enumerate(zip(output_texts, items)):
            try:
                references[i] = reference_number(self.reference.render(text, item))
                program = extract_program(self.input.render(text, item))
            except Exception as e:  # noqa: BLE001
                out[i] = GradeResult(0.0, {name: 0.0}, f"grader {label}: {describe(e)}")
                continue
            tasks.append({"code": program})
            where.append(i)
        for i, reply in zip(where, self.pool.run(self._key, tasks, self.timeout)):
            if not reply.ok:
                out[i] = GradeResult(0.0, {name: 0.0}, f"grader {label}: program failed: {reply.error}")
                continue
            value = self.scores.score(_as_number(reply.value), references[i], self.tolerance)
            out[i] = GradeResult(value, {name: value}, None)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.pool.close()


def _check_source(source: Any, ctx: BuildContext) -> str:
    if not isinstance(source, str) or not source.strip():
        ctx.fail("field 'source' must be Python source defining grade(sample, item)")
    if len(source) > MAX_SOURCE_CHARS:
        ctx.fail(f"field 'source' is longer than {MAX_SOURCE_CHARS} characters")
    try:
        tree = ast.parse(source, "<grader>")
        compile(tree, "<grader>", "exec")  # compiling runs nothing; it catches errors ast.parse lets through
    except SyntaxError as e:
        ctx.fail(f"field 'source': {e.msg} at line {e.lineno}")
    except (ValueError, RecursionError, MemoryError) as e:
        ctx.fail(f"field 'source' cannot be compiled ({describe(e)})")
    grade = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "grade"]
    if not grade:
        ctx.fail("field 'source' defines no top-level function grade(sample, item)")
    fn = grade[-1]
    if isinstance(fn, ast.AsyncFunctionDef):
        ctx.fail("field 'source': grade() must be a plain function, not async")
    positional = len(fn.args.posonlyargs) + len(fn.args.args)
    if positional < 2 and fn.args.vararg is None:
        ctx.fail(f"field 'source': grade() must take two arguments (sample, item), it takes {positional}")
    return source


def build_python(spec: dict, ctx: BuildContext) -> PythonGrader:
    # image_tag is accepted for OpenAI compatibility; the sandbox runs this interpreter
    ctx.check_keys(spec, required=("source",), optional=("image_tag", "timeout", "memory_mb"))
    source = _check_source(spec["source"], ctx)
    timeout, memory = _limits(spec, ctx, 5.0)
    return PythonGrader(spec.get("name", ctx.name), ctx.label, source, timeout, ctx.pools.get(memory))


def build_program_answer(spec: dict, ctx: BuildContext) -> ProgramAnswerGrader:
    ctx.check_keys(
        spec, required=("reference",),
        optional=("input", "tolerance", "correct_score", "wrong_answer_score", "entry_point", "timeout", "memory_mb"),
    )  # fmt: skip
    entry = ctx.string(spec, "entry_point", "solution")
    if not entry.isidentifier():
        ctx.fail(f"field 'entry_point' must be a function name, got {entry!r}")
    timeout, memory = _limits(spec, ctx, 2.0)
    return ProgramAnswerGrader(
        spec.get("name", ctx.name),
        ctx.label,
        ctx.template(spec, "input", "{{ sample.output_text }}"),
        ctx.template(spec, "reference"),
        parse_tolerance(spec, ctx),
        parse_scores(spec, ctx),
        entry,
        timeout,
        ctx.pools.get(memory),
    )
