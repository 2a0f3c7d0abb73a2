"""`response_format`: answers must be JSON matching a schema (OpenAI's `json_schema` response format).

An answer that does not parse, or parses but breaks the schema, scores 0 and is counted as a parse
error (`GradeResult.parse_error`), apart from the grader's own failures; the others reach the grader,
which can read the parsed answer as `{{ sample.output_json.<field> }}`. The model is not constrained
while it decodes: RL is what teaches it the format, as the reward for well-formed answers.

    response_format: {type: json_schema, json_schema: {name: diagnosis, schema: {type: object, required: [genes]}}}
    response_format: {type: json_object}      # any JSON object
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from reftflow.graders.base import GradeResult, Grader, GraderConfigError, one_line


def parse_response_format(spec: Any) -> dict[str, Any]:
    """The JSON schema answers must match, from a `response_format` object; GraderConfigError if bad."""
    where = "response_format"
    if not isinstance(spec, dict) or spec.get("type") not in ("json_schema", "json_object"):
        raise GraderConfigError(f"{where}: expected {{type: json_schema, json_schema: {{name, schema}}}} or "
                                f"{{type: json_object}}, got {spec!r}"[:300])
    if spec["type"] == "json_object":
        return {"type": "object"}
    body = spec.get("json_schema")
    if not isinstance(body, dict) or not isinstance(body.get("schema"), dict):
        raise GraderConfigError(f"{where}.json_schema: expected an object with a 'schema' object")
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(body["schema"])
    except SchemaError as e:
        raise GraderConfigError(f"{where}.json_schema.schema: not a valid JSON schema ({one_line(e.message)})") from None
    return body["schema"]


class ResponseFormatGrader(Grader):
    """`inner` on the answers that are JSON matching `schema`; 0 and a parse error on the others."""

    type = "response_format"

    def __init__(self, inner: Grader, schema: dict[str, Any]):
        super().__init__(inner.name, inner.label)
        from jsonschema import Draft202012Validator

        self.inner, self.validator = inner, Draft202012Validator(schema)

    def problem(self, text: str) -> str | None:
        """Why `text` is not an answer of the required format, or None when it is."""
        try:
            value = json.loads(text)
        except ValueError as e:
            return f"the answer is not JSON ({e})"
        error = next(iter(self.validator.iter_errors(value)), None)
        return None if error is None else f"the answer breaks the response format: {error.message}"

    def _grade_batch(self, output_texts: list[str], items: list[dict]) -> list[GradeResult]:
        problems = [self.problem(t) for t in output_texts]
        ok = [i for i, p in enumerate(problems) if p is None]
        graded = iter(self.inner.grade_many([output_texts[i] for i in ok], [items[i] for i in ok]))
        return [next(graded) if p is None else
                GradeResult(0.0, {self.name: 0.0}, one_line(f"response_format: {p}"), parse_error=True)
                for p in problems]

    def children(self) -> Iterable[Grader]:
        return (self.inner,)
