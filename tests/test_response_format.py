"""`response_format`: JSON answers matching a schema reach the grader as sample.output_json; the rest
score 0 as parse errors, counted apart from grader errors. Sub-scores of a multi grader reach RL metrics."""

from __future__ import annotations

import pytest

from reftflow.graders import GraderConfigError, build_grader
from reftflow.rl.rewards import grade, reward_metrics

SCHEMA = {"type": "json_schema", "json_schema": {"name": "dx", "schema": {
    "type": "object", "required": ["gene"], "properties": {"gene": {"type": "string"}}}}}
GENE = {"type": "string_check", "name": "gene", "operation": "eq", "input": "{{ sample.output_json.gene }}",
        "reference": "{{ item.gene }}"}


def test_json_answers_are_graded_and_the_rest_are_parse_errors():
    grader = build_grader(GENE, response_format=SCHEMA)
    texts = ['{"gene": "KRT14"}', '{"gene": "ABCA4"}', "KRT14", '{"genes": ["KRT14"]}']
    results = grader.grade_many(texts, [{"gene": "KRT14"}] * 4)
    assert [r.score for r in results] == [1.0, 0.0, 0.0, 0.0]
    assert [r.parse_error for r in results] == [False, False, True, True]
    assert "not JSON" in results[2].error and "'gene' is a required property" in results[3].error
    m = reward_metrics(grade(grader, texts, [{"gene": "KRT14"}] * 4))
    assert m["rl/parse_error_rate"].item() == 0.5 and m["rl/grader_error_rate"].item() == 0.0


def test_json_object_accepts_any_object():
    grader = build_grader(GENE, response_format={"type": "json_object"})
    assert grader.grade('{"gene": "KRT14"}', {"gene": "KRT14"}).score == 1.0
    assert grader.grade("[1]", {"gene": "KRT14"}).parse_error


@pytest.mark.parametrize("spec, message", [
    ({"type": "xml"}, "response_format: expected"),  # not a response format OpenAI defines
    ({"type": "json_schema"}, "json_schema: expected an object with a 'schema'"),  # the schema is missing
    ({"type": "json_schema", "json_schema": {"schema": {"type": "objekt"}}}, "not a valid JSON schema"),  # typo
])
def test_a_bad_response_format_is_one_line(spec, message):
    with pytest.raises(GraderConfigError, match=message) as err:
        build_grader(GENE, response_format=spec)
    assert "\n" not in str(err.value)


def test_a_multi_graders_parts_become_rl_metrics():
    multi = {"type": "multi", "name": "total", "calculate_output": "0.5 * exact + 0.5 * fuzzy", "graders": {
        "exact": {"type": "string_check", "name": "exact", "operation": "eq", "input": "{{ sample.output_text }}",
                  "reference": "{{ item.answer }}"},
        "fuzzy": {"type": "text_similarity", "name": "fuzzy", "input": "{{ sample.output_text }}",
                  "reference": "{{ item.answer }}", "evaluation_metric": "fuzzy_match"}}}
    m = reward_metrics(grade(build_grader(multi), ["abc", "abd"], [{"answer": "abc"}] * 2))
    assert m["rl/sub/exact"].item() == 0.5 and 0.5 < m["rl/sub/fuzzy"].item() < 1.0
