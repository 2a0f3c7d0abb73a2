"""Grading a step's samples: scores for the update, and the reward metrics every algorithm reports."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reftflow.graders.base import FULL_MARKS


@dataclass
class Graded:
    """A step's samples as the grader scored them; each tensor is (n,)."""

    scores: torch.Tensor
    errors: torch.Tensor
    """1 where the grader failed (raised, timed out, returned garbage)."""
    parse_errors: torch.Tensor
    """1 where the answer lacked the `response_format`."""
    sub_scores: dict[str, torch.Tensor]
    """each named sub-grader's score (a `multi` grader's parts), when there are several."""


def grade(grader, texts: list[str], items: list[dict]) -> Graded:
    """Grade `texts` against their items."""
    results = grader.grade_many(texts, items)
    if len(results) != len(texts):
        raise ValueError(f"the grader returned {len(results)} results for {len(texts)} outputs")
    names = sorted({k for r in results for k in r.sub_scores})
    subs = {k: torch.tensor([float(r.sub_scores.get(k, 0.0)) for r in results]) for k in names} if len(names) > 1 else {}
    return Graded(torch.tensor([float(r.score) for r in results], dtype=torch.float32),
                  torch.tensor([r.error is not None and not r.parse_error for r in results], dtype=torch.float32),
                  torch.tensor([r.parse_error for r in results], dtype=torch.float32), subs)


def reward_metrics(graded: Graded, group_size: int = 1) -> dict[str, torch.Tensor]:
    """Mean and spread of the reward, the share of full marks, the shares the grader failed on and that
    lacked the response format, each sub-grader's mean, and the share of questions whose `group_size`
    samples disagree (`rl/mixed_questions`: only those carry a contrast to learn from)."""
    scores = graded.scores
    groups = scores.reshape(-1, group_size) if group_size > 1 and scores.numel() % group_size == 0 else None
    mixed = {} if groups is None else {"rl/mixed_questions": (groups.amax(1) > groups.amin(1)).float().mean()}
    return {
        **mixed,
        "train_reward_mean": scores.mean(),
        "rl/reward_std": scores.std() if scores.numel() > 1 else torch.zeros(()),
        "rl/accuracy": (scores >= FULL_MARKS).float().mean(),
        "rl/grader_error_rate": graded.errors.mean(),
        "rl/parse_error_rate": graded.parse_errors.mean(),
        **{f"rl/sub/{name}": v.mean() for name, v in graded.sub_scores.items()},
    }
