"""Held-out evaluation: the pass rate at `evaluate.pass_threshold`, the mean score, and rows that hold
the prompt as the model saw it."""

from __future__ import annotations

import pytest

from reftflow.data.synthetic import generate
from reftflow.evaluation import evaluate_model
from tests.helpers import FunctionGrader, make_policy

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
