"""Grader objects from JSON/YAML: loading, one-line validation errors, and dispatch by `type`.

Field names follow OpenAI's grader objects where the type exists there (string_check, text_similarity,
python, multi, score_model, label_model); numeric_answer, ranked_list and program_answer are reftflow's own.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, NoReturn

from reftflow.graders.base import Grader, GraderConfigError
from reftflow.templates import Template, TemplateSyntaxError

def _builders() -> dict[str, Callable[[dict, BuildContext], Grader]]:
    # imported here so `import reftflow.graders` stays cheap and free of cycles
    from reftflow.graders import code, model_graders, multi, numeric, ranked, similarity, string_check

    return {
        "string_check": string_check.build,
        "text_similarity": similarity.build,
        "numeric_answer": numeric.build,
        "ranked_list": ranked.build,
        "program_answer": code.build_program_answer,
        "python": code.build_python,
        "multi": multi.build,
        "score_model": model_graders.build_score_model,
        "label_model": model_graders.build_label_model,
    }


def load_grader_spec(spec: dict | str | Path, base_dir: Path | None = None) -> dict:
    """A grader object as a dict: `spec` itself, or the JSON/YAML file it names (relative to base_dir)."""
    if isinstance(spec, dict):
        return spec
    if not isinstance(spec, (str, Path)):
        raise GraderConfigError(f"grader: expected a grader object or a file path, got {type(spec).__name__}")
    path = Path(spec)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    if path.suffix.lower() not in (".json", ".yaml", ".yml"):
        raise GraderConfigError(f"grader file {path}: expected a .json, .yaml or .yml file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise GraderConfigError(f"grader file {path}: cannot read ({e.strerror or e})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GraderConfigError(f"grader file {path}:{e.lineno}: invalid JSON ({e.msg})") from None
    else:
        import yaml

        from reftflow.config import parse_yaml, yaml_error

        try:
            data = parse_yaml(text)
        except yaml.YAMLError as e:
            raise GraderConfigError(f"grader file {path}{yaml_error(e)}") from None
    if not isinstance(data, dict):
        raise GraderConfigError(f"grader file {path}: expected a grader object (a mapping), got {type(data).__name__}")
    return data


def build_grader(spec: dict | str | Path, item_fields: set[str] | None = None, base_dir: Path | None = None,
                 response_format: dict | None = None, model_cfg: Any = None) -> Grader:
    """Validate a grader object fully and build it; GraderConfigError (one line) on any problem.

    item_fields: the field names items have (e.g. {"id", "question", "answer", "reasoning"}); when given, a
    template naming another item field is refused here rather than failing on every sample.
    base_dir: where a relative grader file, or a judge's relative `model` path, is read from (the project).
    response_format: when given, answers must be JSON matching it first (`response_format.py`).
    model_cfg: the stage's `model` section (a `ModelConfig`): a judge model (score_model, label_model) runs on
    its `device` in its `bf16` precision; None: auto and auto. Building loads no judge: the first grade does.
    """
    raw = load_grader_spec(spec, base_dir)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        kind = raw.get("type")
        label = f"grader of type '{kind}'" if isinstance(kind, str) else "grader"
        raise GraderConfigError(f"{label}: missing 'name' (a non-empty string)")
    from reftflow.graders.pool import PoolRegistry

    ctx = BuildContext(name, (), None if item_fields is None else set(item_fields), PoolRegistry(), base_dir, model_cfg)
    if response_format is None:
        return ctx.build(raw)
    from reftflow.graders.response_format import ResponseFormatGrader, parse_response_format

    schema = parse_response_format(response_format)
    return ResponseFormatGrader(ctx.build(raw), schema)


class BuildContext:
    """Where a (sub-)grader sits in the spec, for error messages, plus what all graders share."""

    def __init__(self, top: str, path: tuple[str, ...], item_fields: set[str] | None, pools: Any,
                 base_dir: Path | None = None, model_cfg: Any = None) -> None:
        self.top, self.path, self.item_fields, self.pools = top, path, item_fields, pools
        # what a judge (score_model, label_model) needs: where its relative `model` path is read from,
        # and the `model` section (device, bf16) it runs under
        self.base_dir, self.model_cfg = base_dir, model_cfg

    @property
    def name(self) -> str:
        return self.path[-1] if self.path else self.top

    @property
    def label(self) -> str:
        """`'acc' → 'fmt'`: how runtime errors name this grader."""
        return " → ".join(repr(p) for p in (self.top, *self.path))

    def where(self) -> str:
        inner = "".join(f" → {p!r}" for p in self.path)
        return f"grader {self.top!r}" + (f" (multi{inner})" if self.path else "")

    def fail(self, message: str) -> NoReturn:
        raise GraderConfigError(f"{self.where()}: {message}")

    def child(self, key: str) -> BuildContext:
        return BuildContext(self.top, (*self.path, key), self.item_fields, self.pools, self.base_dir, self.model_cfg)

    def build(self, spec: Any) -> Grader:
        if not isinstance(spec, dict):
            self.fail(f"expected a grader object (a mapping), got {type(spec).__name__}")
        kind = spec.get("type")
        if kind is None:
            self.fail("missing 'type'")
        builders = _builders()
        if kind not in builders:
            self.fail(f"unknown type {kind!r} (expected {', '.join(builders)})")
        name = spec.get("name", self.name)
        if not isinstance(name, str) or not name.strip():
            self.fail("'name' must be a non-empty string")
        return builders[kind](spec, self)

    # --- field helpers: each refuses with one line naming the grader and the field ---

    def check_keys(self, spec: dict, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
        allowed = {"type", "name", *required, *optional}
        for key in spec:
            if key not in allowed:
                self.fail(f"unknown field {key!r} for type '{spec['type']}' (fields: {', '.join(sorted(allowed))})")
        for key in required:
            if key not in spec:
                self.fail(f"missing field {key!r} for type '{spec['type']}'")

    def template(self, spec: dict, key: str, default: str | None = None) -> Template:
        source = spec.get(key, default)
        try:
            template = Template(source)
        except TemplateSyntaxError as e:
            self.fail(f"field {key!r}: {e}")
        if self.item_fields is not None:
            for field in sorted(template.item_fields()):
                if field not in self.item_fields:
                    have = ", ".join(sorted(self.item_fields)) or "none"
                    self.fail(f"field {key!r}: template names item field '{field}', which items lack (they have: {have})")
        return template

    def choice(self, spec: dict, key: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = spec.get(key, default)
        if value not in choices:
            what = {"operation": "operation", "evaluation_metric": "evaluation_metric"}.get(key, key)
            self.fail(f"unknown {what} {value!r} (expected {', '.join(choices)})")
        return value

    def integer(self, spec: dict, key: str, default: int, lo: int, hi: int) -> int:
        value = spec.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"field {key!r} must be a whole number, got {value!r}")
        return int(self.number(spec, key, default, lo, hi))

    def number(self, spec: dict, key: str, default: float, lo: float, hi: float) -> float:
        value = spec.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(f"field {key!r} must be a number, got {value!r}")
        if not lo <= value <= hi:
            self.fail(f"field {key!r} must be between {lo:g} and {hi:g}, got {value!r}")
        return float(value)

    def string(self, spec: dict, key: str, default: str | None = None) -> str:
        value = spec.get(key, default)
        if not isinstance(value, str):
            self.fail(f"field {key!r} must be a string, got {type(value).__name__}")
        return value
