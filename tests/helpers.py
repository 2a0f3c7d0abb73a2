"""What several tests share: a tiny starting policy and graders defined by a Python function."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from reftflow.config import ModelConfig
from reftflow.graders.base import GradeResult, Grader
from reftflow.modeling import save_new_model

TINY = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def make_policy(path: str | Path, seed: int = 0, model_cfg: ModelConfig = TINY) -> Path:
    """A freshly initialised tiny model + char tokenizer as the stand-in "SFT" model."""
    save_new_model(path, model_cfg, seed)
    return Path(path)


class FunctionGrader(Grader):
    """`fn(texts, items) -> scores` as a Grader, unchecked: a test can hand the trainer a NaN."""

    type = "function"

    def __init__(self, fn: Callable[[list[str], list[dict]], list[float]], name: str = "fn"):
        super().__init__(name)
        self.fn = fn

    def _grade_batch(self, output_texts: list[str], items: list[dict]) -> list[GradeResult]:
        return [GradeResult(float(s), {self.name: float(s)}) for s in self.fn(output_texts, items)]


def digit_reward(output_texts: list[str], items: list[dict]) -> list[float]:
    """A dense toy reward (share of digits in the output) so an untrained model gets a signal."""
    return [sum(c.isdigit() for c in t) / max(1, len(t)) for t in output_texts]


DIGITS = FunctionGrader(digit_reward, "digits")
