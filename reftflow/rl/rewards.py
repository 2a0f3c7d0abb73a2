"""Grading a step's samples: scores for the update, and the reward metrics every algorithm reports."""

from __future__ import annotations

import torch

from reftflow.graders.base import FULL_MARKS


def grade(grader, texts: list[str], items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (n,), grader-error flags (n,)) of `texts` against their items."""
    results = grader.grade_many(texts, items)
    if len(results) != len(texts):
        raise ValueError(f"the grader returned {len(results)} results for {len(texts)} outputs")
    scores = torch.tensor([float(r.score) for r in results], dtype=torch.float32)
    errors = torch.tensor([r.error is not None for r in results], dtype=torch.float32)
    return scores, errors


def reward_metrics(scores: torch.Tensor, errors: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean and spread of the reward, the share of full marks and the share the grader failed on."""
    return {
        "rl/reward_mean": scores.mean(),
        "rl/reward_std": scores.std() if scores.numel() > 1 else torch.zeros(()),
        "rl/accuracy": (scores >= FULL_MARKS).float().mean(),
        "rl/grader_error_rate": errors.mean(),
    }
