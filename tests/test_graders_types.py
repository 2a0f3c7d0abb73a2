"""Grader types, templates, config errors and the TRL adapter: tables of right, wrong and edge cases."""

from __future__ import annotations

import json

import pytest

from reftflow.graders import (
    DEFAULT_GRADER,
    GradeResult,
    GraderConfigError,
    as_reward_function,
    build_grader,
    load_grader_spec,
)

ITEM = {"id": "q1", "question": "3+4?", "answer": "7", "reasoning": "3+4=7."}
PIPELINE_FIELDS = {"id", "question", "answer", "reasoning"}


def score(spec: dict, output_text: str, item: dict | None = None) -> float:
    result = build_grader(spec).grade(output_text, ITEM if item is None else item)
    assert result.error is None, result.error
    return result.score


# --- string_check -------------------------------------------------------------------------------------


def _string(op: str, reference: str = "{{ item.answer }}") -> dict:
    return {"type": "string_check", "name": "s", "input": "{{ sample.output_text }}", "reference": reference, "operation": op}


@pytest.mark.parametrize(
    "op, output, expected",
    [
        ("eq", "7", 1.0),  # identical
        ("eq", "7 ", 0.0),  # eq is exact: trailing space differs
        ("ne", "8", 1.0),  # different strings
        ("ne", "7", 0.0),  # equal strings fail ne
        ("like", "the answer is 7!", 1.0),  # input contains the reference
        ("like", "seven", 0.0),  # substring absent
        ("ilike", "ANSWER", 1.0),  # case-insensitive containment (reference 'answer' below)
        ("like", "ANSWER", 0.0),  # like is case-sensitive
    ],
)
def test_string_check(op, output, expected):
    reference = "answer" if output.isupper() else "{{ item.answer }}"
    assert score(_string(op, reference), output) == expected


# --- text_similarity ----------------------------------------------------------------------------------


def _sim(metric: str) -> dict:
    return {"type": "text_similarity", "name": "t", "input": "{{ sample.output_text }}",
            "reference": "the cat sat on the mat", "evaluation_metric": metric}  # fmt: skip


@pytest.mark.parametrize("metric", ["fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l"])
def test_text_similarity_identical_is_one_and_unrelated_is_zero(metric):
    assert score(_sim(metric), "the cat sat on the mat") == pytest.approx(1.0)  # identical text
    assert score(_sim(metric), "quantum chromodynamics") == pytest.approx(0.0, abs=0.35 if metric == "fuzzy_match" else 1e-9)


@pytest.mark.parametrize(
    "metric, output, expected",
    [
        ("fuzzy_match", "the cat sat on the hat", 1 - 2 / 44),  # one substitution: Indel ratio (2*21)/44
        ("rouge_1", "the cat sat", 2 * 1.0 * 0.5 / 1.5),  # P = 3/3, R = 3/6 → F1 = 2/3
        ("rouge_l", "the cat sat", 2 / 3),  # LCS 3 tokens: same as unigram overlap here
    ],
)
def test_text_similarity_hand_computed(metric, output, expected):
    assert score(_sim(metric), output) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("metric", ["cosine", "meteor_x"])
def test_text_similarity_offline_unavailable_is_config_error(metric):
    with pytest.raises(GraderConfigError, match="grader 't': ") as e:
        build_grader(_sim(metric))
    assert "\n" not in str(e.value)


def test_meteor_without_wordnet_is_config_error(monkeypatch):
    import nltk

    def missing(name, *a, **k):
        raise LookupError(name)

    monkeypatch.setattr(nltk.data, "find", missing)
    with pytest.raises(GraderConfigError, match="meteor.*WordNet"):
        build_grader(_sim("meteor"))


# --- numeric_answer (ReFT: 1 / 0.1 / 0) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "output, extraction, expected",
    [
        ("3+4=7 #### 7", "gsm8k", 1.0),  # right final answer
        ("3+4=8 #### 8", "gsm8k", 0.1),  # well-formed but wrong: ReFT's partial reward
        ("the answer is 7", "gsm8k", 0.0),  # no `####`: nothing extractable
        ("#### 7.0", "gsm8k", 1.0),  # 7.0 == 7 numerically
        ("#### 7.0000001", "gsm8k", 1.0),  # within the default 1e-6 relative tolerance
        ("#### 7.01", "gsm8k", 0.1),  # outside it
        ("#### 3 ... #### 7", "gsm8k", 1.0),  # the last marker wins
        ("I get 3, then 7", "last_number", 1.0),  # flexible extraction
        ("so 10 - 3", "last_number", 0.1),  # `- 3` is subtraction: the last number is 3, not -3
        (r"\boxed{7}", "boxed", 1.0),  # LaTeX boxed
        (r"\boxed{x+1}", "boxed", 0.0),  # boxed but not a number
    ],
)
def test_numeric_answer(output, extraction, expected):
    spec = {"type": "numeric_answer", "name": "n", "reference": "{{ item.answer }}", "extraction": extraction}
    assert score(spec, output) == expected


@pytest.mark.parametrize(
    "reference, output, tolerance, expected",
    [
        ("1,234", "#### $1,234.00", None, 1.0),  # commas and $ on both sides
        ("He has 6.\n#### 6", "#### 6", None, 1.0),  # a GSM8K solution as the reference
        ("100", "#### 101", 1.5, 1.0),  # bare number = absolute tolerance
        ("100", "#### 101", {"relative": 0.005}, 0.1),  # 1% off > 0.5% relative
        ("100", "#### 101", {"relative": 0.02}, 1.0),  # 1% off < 2% relative
        ("0", "#### 0.0000001", None, 1.0),  # absolute tolerance rescues comparisons with 0
    ],
)
def test_numeric_answer_tolerance(reference, output, tolerance, expected):
    spec = {"type": "numeric_answer", "name": "n", "reference": "{{ item.answer }}"}
    if tolerance is not None:
        spec["tolerance"] = tolerance
    assert score(spec, output, {"answer": reference}) == expected


def test_numeric_answer_custom_scores_and_bad_reference():
    spec = {"type": "numeric_answer", "name": "n", "reference": "{{ item.answer }}", "wrong_answer_score": 0.0, "correct_score": 0.9}
    assert score(spec, "#### 8") == 0.0  # wrong_answer_score 0 turns off the partial reward
    assert score(spec, "#### 7") == 0.9
    result = build_grader(spec).grade("#### 7", {"answer": "seven"})  # the item, not the sample, is broken
    assert result.score == 0.0 and "reference 'seven' is not a number" in result.error


def test_default_grader_matches_config_default():
    from reftflow.config import Params

    assert DEFAULT_GRADER == Params().grader
    grader = build_grader(DEFAULT_GRADER, item_fields=PIPELINE_FIELDS)
    assert [r.score for r in grader.grade_many(["3+4=7 #### 7", "#### 9", "no"], [ITEM] * 3)] == [1.0, 0.1, 0.0]


# --- ranked_list --------------------------------------------------------------------------------------

GENES = {"type": "ranked_list", "name": "rank", "reference": "{{ item.gene }}", "scores": [1.0, 0.7, 0.5, 0.3]}


@pytest.mark.parametrize(
    "output, spec_extra, expected",
    [
        ("1. TP53\n2. BRCA1\n3. PTEN", {}, 0.7),  # the seed example: correct gene listed second
        ("1. BRCA1\n2. TP53", {}, 1.0),  # first
        ("1. A\n2. B\n3. C\n4. BRCA1", {}, 0.3),  # last credited rank
        ("1. A\n2. B\n3. C\n4. D\n5. BRCA1", {}, 0.0),  # past the scores list
        ("1. TP53\n2. PTEN", {}, 0.0),  # absent
        ("1. brca1\n2. BRCA1", {}, 0.7),  # exact match: the lowercase entry does not count
        ("1. brca1\n2. TP53", {"match": "case_insensitive"}, 1.0),  # case-insensitive
        ("TP53, BRCA1, PTEN", {"separator": ","}, 0.7),  # separator instead of lines
        ("- TP53\n- **BRCA1**\n", {}, 0.7),  # bullets and markdown emphasis stripped
        ("1) TP53\n\n2) BRCA1.", {}, 0.7),  # `1)` markers, blank lines, trailing period
        ("1. BRCA1-AS1\n2. BRCA1", {}, 0.7),  # a longer symbol containing the reference is not a match
        ("1. TP53\n2. BRCA1\n3. BRCA1", {"decay": 0.5, "scores": None}, 0.5),  # decay: 0.5 ** (2 - 1), first hit
        ("BRCA1, BRCA1, BRCA1", {"separator": ","}, 1.0),  # repeats: full marks unless distinct
        ("BRCA1, BRCA1, BRCA1", {"separator": ",", "distinct": True}, 0.0),  # distinct: no ranking, no credit
        ("TP53, BRCA1, PTEN", {"separator": ",", "distinct": True}, 0.7),  # distinct entries: as before
        ("brca1, BRCA1", {"separator": ",", "distinct": True, "match": "case_insensitive"}, 0.0),  # compared as matched
    ],
)
def test_ranked_list(output, spec_extra, expected):
    spec = {**GENES, **spec_extra}
    spec = {k: v for k, v in spec.items() if v is not None}
    assert score(spec, output, {"gene": "BRCA1"}) == pytest.approx(expected)


# --- multi --------------------------------------------------------------------------------------------

MULTI = {
    "type": "multi",
    "name": "acc",
    "graders": {
        "ans": {"type": "numeric_answer", "name": "ans", "reference": "{{ item.answer }}"},
        "fmt": {"type": "string_check", "input": "{{ sample.output_text }}", "reference": "####", "operation": "like"},
    },
    "calculate_output": "0.8 * ans + 0.2 * fmt",
}


@pytest.mark.parametrize(
    "output, expected, subs",
    [
        ("#### 7", 1.0, {"ans": 1.0, "fmt": 1.0}),  # both right
        ("#### 8", 0.8 * 0.1 + 0.2, {"ans": 0.1, "fmt": 1.0}),  # format right, answer wrong
        ("seven", 0.0, {"ans": 0.0, "fmt": 0.0}),  # neither
    ],
)
def test_multi(output, expected, subs):
    result = build_grader(MULTI).grade(output, ITEM)
    assert result.score == pytest.approx(expected) and result.sub_scores == subs and result.error is None


@pytest.mark.parametrize(
    "formula, expected_error",
    [
        ("ans / (fmt - fmt)", "division by zero"),  # ZeroDivisionError is the sample's, not the run's
        ("sqrt(ans - 2)", "math domain error"),  # sqrt of a negative
        ("ans + fmt", "outside [0, 1]"),  # 2.0: a formula must stay in [0, 1]
        ("log(fmt - fmt)", "math domain error"),  # log(0)
    ],
)
def test_multi_formula_runtime_errors_score_zero(formula, expected_error):
    result = build_grader({**MULTI, "calculate_output": formula}).grade("#### 7", ITEM)
    assert result.score == 0.0 and expected_error in result.error and "calculate_output" in result.error


def test_multi_nested_sub_scores_and_sub_error():
    spec = {"type": "multi", "name": "outer", "calculate_output": "inner",
            "graders": {"inner": {**MULTI, "name": "inner"}}}  # fmt: skip
    result = build_grader(spec).grade("#### 7", ITEM)
    assert result.sub_scores == {"inner": 1.0, "inner.ans": 1.0, "inner.fmt": 1.0}
    broken = build_grader(spec).grade("#### 7", {"no_answer": 1})  # a sub-grader fails → the sample scores 0
    assert broken.score == 0.0 and "'outer' → 'inner' → 'ans'" in broken.error


# --- templates ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template, item, output, expected",
    [
        ("{{ item.answer }}", {"answer": "7"}, "", "7"),  # plain field
        ("{{item.answer}}", {"answer": "7"}, "", "7"),  # no spaces inside the braces
        ("{{ item.meta.gold.value }}", {"meta": {"gold": {"value": 3}}}, "", "3"),  # nested dotted path, int → text
        ("{{ item.choices.1 }}", {"choices": ["a", "b"]}, "", "b"),  # list index
        ("A={{ item.a }}, B={{ item.b }}", {"a": 1.0, "b": None}, "", "A=1, B="),  # literal text; 1.0 → '1'; None → ''
        ("{{ sample.output_json.label }}", {}, '{"label": "yes"}', "yes"),  # OpenAI's output_json
    ],
)
def test_templates(template, item, output, expected):
    spec = {"type": "string_check", "name": "s", "input": template, "reference": expected, "operation": "eq"}
    assert score(spec, output, item) == 1.0


@pytest.mark.parametrize(
    "item, output, expected_error",
    [
        ({}, "x", "item has no field 'answer'"),  # the item lacks the field: a per-sample error
        ({"answer": {"v": 1}}, "x", None),  # a dict renders as JSON and simply does not match
    ],
)
def test_template_runtime_errors(item, output, expected_error):
    result = build_grader(_string("eq")).grade(output, item)
    assert result.score == 0.0
    assert (result.error is None) if expected_error is None else (expected_error in result.error)


def test_output_json_on_non_json_is_sample_error():
    spec = _string("eq", "{{ sample.output_json.label }}")
    result = build_grader(spec).grade("not json", {})
    assert result.score == 0.0 and "not JSON" in result.error


# --- config errors: one line, naming what and where ---------------------------------------------------


@pytest.mark.parametrize(
    "spec, item_fields, message",
    [
        ({"type": "nope", "name": "g"}, None, "grader 'g': unknown type 'nope'"),  # unknown type
        ({"type": "string_check", "name": "g", "input": "x", "operation": "eq"}, None, "missing field 'reference'"),
        ({"type": "numeric_answer", "reference": "x"}, None, "missing 'name'"),  # top-level name is required
        ({"type": "numeric_answer", "name": "g", "reference": "{{ item.answer }}", "extration": "gsm8k"}, None,
         "unknown field 'extration'"),  # a typo is refused, not ignored
        ({"type": "numeric_answer", "name": "g", "reference": "{{ item.answer }}", "extraction": "regex"}, None,
         "unknown extraction 'regex' (expected gsm8k, last_number, boxed)"),
        ({"type": "numeric_answer", "name": "g", "reference": "{{ item.solution }}"}, PIPELINE_FIELDS,
         "template names item field 'solution', which items lack"),  # checked against the data's fields
        ({"type": "numeric_answer", "name": "g", "reference": "{{ answer }}"}, None, "is not a template reference"),
        ({"type": "numeric_answer", "name": "g", "reference": "{{ item.answer"}, None, "unbalanced"),
        ({"type": "numeric_answer", "name": "g", "reference": "{{ sample.text }}"}, None, "sample has no field 'text'"),
        ({"type": "numeric_answer", "name": "g", "reference": "{{ item.answer }}", "wrong_answer_score": 2}, None,
         "'wrong_answer_score' must be between 0 and 1"),
        ({"type": "ranked_list", "name": "g", "reference": "x"}, None, "exactly one of 'scores'"),
        ({"type": "ranked_list", "name": "g", "reference": "x", "scores": [1, "a"]}, None, "must be a number"),
        ({"type": "ranked_list", "name": "g", "reference": "x", "decay": 0.5, "match": "fuzzy"}, None, "unknown match"),
        ({**MULTI, "graders": {**MULTI["graders"], "fmt": {**MULTI["graders"]["fmt"], "operation": "equals"}}}, None,
         "grader 'acc' (multi → 'fmt'): unknown operation 'equals' (expected eq, ne, like, ilike)"),
        ({**MULTI, "calculate_output": "ans + fmtt"}, None, "unknown name 'fmtt' in formula"),
        ({**MULTI, "calculate_output": "ans +"}, None, "invalid syntax"),
        ({**MULTI, "graders": {}}, None, "non-empty mapping"),
        ({**MULTI, "graders": {"bad-name": MULTI["graders"]["ans"]}}, None, "must be an identifier"),
        ({"type": "score_model", "name": "g"}, None, "missing field 'model'"),  # a local judge: tests/test_model_graders.py
        ({"type": "python", "name": "g", "source": "def grade(sample, item)\n  return 1"}, None, "line 1"),
        ({"type": "python", "name": "g", "source": "def score(sample, item):\n    return 1"}, None, "defines no top-level"),
        ({"type": "python", "name": "g", "source": "def grade(sample):\n    return 1"}, None, "two arguments"),
        ({"type": "python", "name": "g", "source": "def grade(s, i):\n    return 1", "timeout": 0}, None, "'timeout'"),
        ({"type": "program_answer", "name": "g", "reference": "{{ item.answer }}", "entry_point": "a b"}, None, "entry_point"),
    ],
)
def test_config_errors_are_one_line(spec, item_fields, message):
    with pytest.raises(GraderConfigError) as e:
        build_grader(spec, item_fields=item_fields)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_graderconfigerror_is_valueerror():
    assert issubclass(GraderConfigError, ValueError)


# --- loading from files -------------------------------------------------------------------------------


def test_load_json_and_yaml_relative_to_base_dir(tmp_path):
    (tmp_path / "g.json").write_text(json.dumps(DEFAULT_GRADER))
    (tmp_path / "g.yaml").write_text("type: numeric_answer\nname: final_answer\nreference: '{{ item.answer }}'\n")
    assert load_grader_spec("g.json", base_dir=tmp_path) == DEFAULT_GRADER
    assert build_grader("g.yaml", base_dir=tmp_path).grade("#### 7", ITEM).score == 1.0
    assert build_grader(tmp_path / "g.json").name == "final_answer"


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("g.json", '{"type": ', "g.json:1: invalid JSON"),
        ("g.yaml", "type: [unclosed\n", "invalid YAML"),
        ("g.yaml", "- a\n- b\n", "expected a grader object"),
        ("g.txt", "{}", "expected a .json, .yaml or .yml file"),
    ],
)
def test_load_errors(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(GraderConfigError, match=message):
        load_grader_spec(tmp_path / name)


def test_missing_file():
    with pytest.raises(GraderConfigError, match="cannot read"):
        load_grader_spec("/nonexistent/grader.json")


# --- the API contract ---------------------------------------------------------------------------------


def test_grade_result_is_frozen_and_grade_many_checks_lengths():
    r = GradeResult(1.0, {"a": 1.0}, None)
    with pytest.raises(AttributeError):
        r.score = 0.0  # type: ignore[misc]
    grader = build_grader(DEFAULT_GRADER)
    with pytest.raises(ValueError):
        grader.grade_many(["a"], [])
    with grader as g:
        assert g.name == "final_answer" and g.grade_many([], []) == []


def test_reward_function_strings_chat_and_columns():
    reward = as_reward_function(build_grader(DEFAULT_GRADER))
    assert reward.__name__ == "final_answer"
    logged = {}
    scores = reward(
        prompts=["Q: 3+4?", "Q: 3+4?", "Q: 2+2?"],
        completions=[
            [{"role": "assistant", "content": "3+4=7 #### 7"}],  # chat completion
            "#### 8",  # plain string, wrong answer → ReFT's 0.1
            [{"role": "assistant", "content": [{"type": "text", "text": "#### 4"}]}],  # content parts
        ],
        answer=["7", "7", "4"],  # TRL passes each dataset column as a list
        completion_ids=[[1], [2], [3]],
        trainer_state=object(),
        log_metric=lambda k, v: logged.__setitem__(k, v),
    )
    assert scores == [1.0, 0.1, 1.0]
    assert logged == {"final_answer/error_rate": 0.0, "final_answer/accuracy": 2 / 3}
    assert as_reward_function(build_grader(DEFAULT_GRADER), name="acc").__name__ == "acc"


def test_reward_function_missing_column_scores_zero():
    reward = as_reward_function(build_grader(DEFAULT_GRADER))
    assert reward(prompts=["p"], completions=["#### 7"]) == [0.0]  # no `answer` column: sample error, score 0


def test_reward_function_reads_items_from_the_item_json_column():
    """reftflow's GRPO passes each item as JSON: nested fields survive a dataset's column types."""
    from reftflow.graders.reward_fn import ITEM_COLUMN

    reward = as_reward_function(build_grader({"type": "string_check", "name": "s", "operation": "eq",
                                              "input": "{{ sample.output_text }}", "reference": "{{ item.ref.gene }}"}))
    items = [{"ref": {"gene": "BRCA1"}}, {"ref": {"gene": "TP53"}}]
    assert reward(prompts=["p", "p"], completions=["BRCA1", "BRCA1"],
                  **{ITEM_COLUMN: [json.dumps(i) for i in items]}) == [1.0, 0.0]


def test_program_text_after_a_prompt_is_dedented():
    """A P-CoT completion starts with the space after `A:`: Python would call it an indentation error."""
    from reftflow.graders.code import extract_program

    program = extract_program(" def solution():\n    return 6 * 7\n #### 42")
    namespace: dict = {}
    exec(compile(program, "<p>", "exec"), namespace)
    assert namespace["solution"]() == 42


def test_ranked_list_shares_count_repeats_and_runner_up_credit():
    from reftflow.graders import build_grader
    from reftflow.graders.ranked import list_shares

    grader = build_grader({**GENES, "separator": ","})
    outputs = ["BRCA1, BRCA1, TP53", "TP53, BRCA1, PTEN", "PTEN, TP53, BRCA1", "BRCA1, TP53, PTEN"]
    shares = list_shares(grader, outputs, [{"gene": "BRCA1"}] * 4)
    assert shares == {"repeats_an_entry": 0.25, "second_or_third": 0.5}
