"""Held-out evaluation: the pass rate at `evaluate.pass_threshold`, the mean score, and rows that hold
the prompt as the model saw it."""

from __future__ import annotations

import pytest

from reftflow.data.synthetic import generate
from reftflow.evaluation import evaluate_model
from tests.helpers import TINY, FunctionGrader, make_policy

PARTIAL = FunctionGrader(lambda texts, items: [0.7] * len(texts), "partial")  # a ranked list's 2nd place, say


@pytest.mark.parametrize("threshold, pass_rate", [(1.0, 0.0), (0.7, 1.0), (0.5, 1.0)])
def test_pass_rate_counts_scores_at_the_threshold(tmp_path, threshold, pass_rate):
    policy = make_policy(tmp_path / "m")
    records = generate(3, seed=0)
    result = evaluate_model(policy, records, PARTIAL, max_new_tokens=4, batch_size=2, label="sft",
                            pass_threshold=threshold)
    assert result.metrics["pass_rate"] == pass_rate and result.metrics["mean_score"] == pytest.approx(0.7)
    assert [row["prompt"] for row in result.rows] == [f"Q: {r.item['question']}\nA:" for r in records]
    assert all(row["sub_scores"] == {"partial": 0.7} for row in result.rows)


def test_sampled_evaluation_gives_pass_at_k_and_maj_at_k_with_their_intervals(tmp_path):
    """k sampled answers per item, graded by whether the answer holds the digit 1. pass@k is the share of
    items with any passing sample, maj@k whether the most common answer passes; they are recomputed here
    from the rows' own samples, and the paired gain of a model over itself is exactly zero."""
    from reftflow.evaluation import Sampling, gain
    from reftflow.stats import majority

    has_one = FunctionGrader(lambda texts, items: [float("1" in t) for t in texts], "has_one")
    policy = make_policy(tmp_path / "m")
    records = generate(6, seed=0)
    result = evaluate_model(policy, records, has_one, max_new_tokens=6, batch_size=4, label="rl",
                            model_cfg=TINY, sampling=Sampling(k=3, temperature=1.5, seed=0))
    m = result.metrics
    for name in ("pass_rate", "mean_score", "sampled_pass_rate", "pass_at_3", "maj_at_3"):
        assert m[f"{name}_low"] <= m[name] <= m[f"{name}_high"], name
    rows = result.rows
    assert all(len(r["samples"]) == 3 and len(r["sample_scores"]) == 3 for r in rows)
    assert m["pass_at_3"] == pytest.approx(sum(any(s == 1.0 for s in r["sample_scores"]) for r in rows) / 6)
    assert m["sampled_pass_rate"] == pytest.approx(sum(sum(r["sample_scores"]) / 3 for r in rows) / 6)
    by_vote = [r["sample_scores"][majority([" ".join(t.split()) or None for t in r["samples"]])] for r in rows]
    assert m["maj_at_3"] == pytest.approx(sum(by_vote) / 6)
    assert m["sampled_pass_rate"] <= m["pass_at_3"] and m["maj_at_3"] <= m["pass_at_3"]
    again = evaluate_model(policy, records, has_one, max_new_tokens=6, batch_size=4, label="rl", model_cfg=TINY,
                           sampling=Sampling(k=3, temperature=1.5, seed=0))
    assert [r["samples"] for r in again.rows] == [r["samples"] for r in rows]  # seeded
    same = gain(result, again)
    assert same["pass_rate"] == same["pass_rate_low"] == same["pass_rate_high"] == 0.0 and same["items"] == 6


def test_numeric_answers_vote_on_the_number():
    from reftflow.graders import DEFAULT_GRADER, build_grader

    grader = build_grader(DEFAULT_GRADER)
    item = {"answer": "12"}
    keys = [grader.answer_key(t, item) for t in ("3*4=12 #### 12", "#### 12.0", "#### $12", "no answer")]
    assert keys[0] == keys[1] == keys[2] and keys[3] is None
