"""RL algorithms behind one protocol, picked by name (`ppo.algorithm`), as verl picks its
advantage estimator from a registry.

    algo = build_algorithm("ppo", policy_path, records, cfg, grader, out_dir, seed, checkpoint_dir=ckpt)
    for metrics in algo.train():      # one dict per RL step (main process only)
        log(metrics)
    algo.save()                       # explicit: a caller that stops early still saves what it has
    algo.stop_reason                  # None, or why training stopped before cfg.steps
    algo.lm, algo.tokenizer           # the causal LM being trained, to evaluate between steps

Every algorithm yields `step` and the `COMMON_METRICS` keys each step (`train_reward_mean` is hosted
RFT's name; the rest are `rl/`), plus its own under its prefix (`ppo/`, `grpo/`, `raft/`). A new algorithm is one module with a class taking the arguments of
`build_algorithm`, and one `ALGORITHMS` entry.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Iterator, Protocol

from reftflow.config import ModelConfig, PPOConfig
from reftflow.data.records import Record

ALGORITHMS: dict[str, str] = {
    "ppo": "reftflow.ppo.trainer:PPOTrainer",  # ours, the ReFT recipe: critic, GAE, KL in the reward
    "grpo": "reftflow.grpo:GRPOAlgorithm",  # TRL's GRPOTrainer on the same grader
    "raft": "reftflow.raft:RAFTTrainer",  # rejection sampling + fine-tuning on the accepted samples
}

COMMON_METRICS = ("train_reward_mean", "rl/accuracy", "rl/grader_error_rate", "rl/lr", "rl/episodes_per_s",
                  "time/step_s")
"""What every algorithm yields each step (with `step`): the curves the stage plots and the
benchmarks compare."""


class TrainingDiverged(ValueError):
    """A NaN/inf reward, loss or gradient: the run stops before anything reaches out_dir."""


class RLAlgorithm(Protocol):
    stop_reason: str | None
    tokenizer: object

    @property
    def lm(self):
        """The Hugging Face causal LM being trained (no value head, no DDP wrapper)."""
        ...

    def train(self) -> Iterator[dict[str, float]]:
        """Run the remaining steps (resuming from a checkpoint when there is one); yield each step's
        metrics on the main process."""
        ...

    def save(self) -> None:
        """Write the trained policy to out_dir (a normal HF model dir), atomically."""
        ...


def build_algorithm(name: str, policy_path: str | Path, records: list[Record], cfg: PPOConfig, grader,
                    out_dir: str | Path, seed: int, checkpoint_dir: str | Path | None = None,
                    torch_threads: int = 0, model_cfg: ModelConfig | None = None) -> RLAlgorithm:
    """The algorithm `name` from `policy_path` on `records`, rewarded by `grader`.

    `checkpoint_dir`: where resumable checkpoints go; whatever complete checkpoint is there is
    resumed, so the caller keys the directory by everything that must match (the stage does).
    `model_cfg`: the `model` section (LoRA, device, bf16); None is full fine-tuning on the auto device.
    """
    if name not in ALGORITHMS:
        raise ValueError(f"unknown RL algorithm {name!r} (expected one of {', '.join(ALGORITHMS)})")
    module, cls = ALGORITHMS[name].split(":")
    algorithm = getattr(importlib.import_module(module), cls)
    return algorithm(policy_path, records, cfg, grader, out_dir, seed, checkpoint_dir=checkpoint_dir,
                     torch_threads=torch_threads, model_cfg=model_cfg)
