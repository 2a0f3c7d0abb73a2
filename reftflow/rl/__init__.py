"""RL algorithms behind one protocol, picked by name (`rl.algorithm`), as verl picks its advantage
estimator from a registry.

    algo = build_algorithm(RLRun(policy_path, records, cfg, grader, out_dir, seed, model_cfg, checkpoint_dir))
    algo.step                         # steps already done (> 0 after resuming a checkpoint)
    for metrics in algo.train():      # one dict per RL step (main process only)
        log(metrics)
    algo.save()                       # explicit: a caller that stops early still saves what it has
    algo.stop_reason                  # None, or why training stopped before cfg.steps
    algo.lm, algo.tokenizer           # the causal LM being trained, to evaluate between steps

Every algorithm yields `step` and the `COMMON_METRICS` keys each step (`train_reward_mean` is hosted
RFT's name; the rest are `rl/`), plus its own under its prefix (`ppo/`, `grpo/`, `raft/`). A new
algorithm is one module with a class built from an `RLRun`, its own section in `RLConfig`, and one
`ALGORITHMS` entry. The stage's loop around them (validation, curves, checkpoint identity) is
`reftflow.rl.loop`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

from reftflow.config import ModelConfig, RLConfig
from reftflow.data.records import Record

ALGORITHMS: dict[str, str] = {
    "ppo": "reftflow.rl.ppo.trainer:PPOTrainer",  # ours, the ReFT recipe: critic, GAE, KL in the reward
    "grpo": "reftflow.rl.grpo:GRPOAlgorithm",  # TRL's GRPOTrainer on the same grader
    "raft": "reftflow.rl.raft:RAFTTrainer",  # rejection sampling + fine-tuning on the accepted samples
}

COMMON_METRICS = ("train_reward_mean", "rl/accuracy", "rl/grader_error_rate", "rl/lr", "rl/episodes_per_s",
                  "time/step_s")
"""What every algorithm yields each step (with `step`): the curves the stage plots and the
benchmarks compare."""


class TrainingDiverged(ValueError):
    """A NaN/inf reward, loss or gradient: the run stops before anything reaches out_dir."""


@dataclass(frozen=True)
class RLRun:
    """What every algorithm is built from."""

    policy_path: Path
    """the SFT model dir: the starting policy (and PPO's frozen reference)."""
    records: list[Record]
    """the training items: their prompts, and the fields the grader sees as `{{ item.<field> }}`."""
    cfg: RLConfig
    """the `rl` section: the shared keys, and `cfg.<algorithm>` for the algorithm's own."""
    grader: object
    """a `reftflow.graders.Grader` (`grade_many(texts, items)`)."""
    out_dir: Path
    """where `save()` puts the trained policy (a normal HF model dir)."""
    seed: int
    model: ModelConfig = field(default_factory=ModelConfig)
    """the `model` section: device, threads, precision, LoRA, gradient checkpointing."""
    checkpoint_dir: Path | None = None
    """resumable checkpoints; the newest complete one there is resumed, so the caller keys the
    directory by everything that must match (`reftflow.rl.loop.checkpoint_dir`). None: none."""


class RLAlgorithm(Protocol):
    step: int
    """RL steps done so far: 0 for a fresh run, the checkpoint's step for a resumed one."""
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


def build_algorithm(run: RLRun) -> RLAlgorithm:
    """The algorithm `run.cfg.algorithm`, built from `run`."""
    name = run.cfg.algorithm
    if name not in ALGORITHMS:
        raise ValueError(f"unknown RL algorithm {name!r} (expected one of {', '.join(ALGORITHMS)})")
    module, cls = ALGORITHMS[name].split(":")
    return getattr(importlib.import_module(module), cls)(run)
