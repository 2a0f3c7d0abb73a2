"""What our own RL algorithms (PPO, RAFT) share: the set-up, the step loop, checkpoints and saving.

Each step samples K answers to this step's questions with our sampler (`reftflow.generation`), grades
them, and updates; the subclass says how (`_train_step`). Written once here: the device, threads and
precision (`model.*`), the processes, the question schedule, the prompts tokenised once, resuming the
newest checkpoint, the optimizer and its schedule, the loop with its periodic checkpoints, and the
atomic save. Randomness is reseeded every step from (seed, step, ...), so a resumed run replays exactly
what an uninterrupted one would have done.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Iterator

import torch

from reftflow import generation, precision
from reftflow.distributed import is_main_process, same_everywhere
from reftflow.modeling import device_and_precision
from reftflow.prompting import render_prompt
from reftflow.rl import RLRun, checkpoint
from reftflow.rl.rewards import Graded, grade
from reftflow.rl.schedule import QuestionSchedule, mix

log = logging.getLogger(__name__)


class OnlineTrainer:
    """The shared half of our RL trainers; a subclass loads its model (`_load`), and implements
    `_train_step` and `_save_policy`."""

    label = "RL"
    """the algorithm's name in messages."""

    def __init__(self, run: RLRun):
        if not run.records:
            raise ValueError(f"{self.label} needs at least one training question")
        self.run, self.cfg, self.seed = run, run.cfg, run.seed
        self.grader, self.out_dir = run.grader, Path(run.out_dir)
        self.checkpoint_dir = Path(run.checkpoint_dir) if run.checkpoint_dir is not None else None
        self.device, self.bf16 = device_and_precision(run.model)
        self.rank, self.world_size = self._start_processes()
        self.step, self.stop_reason = 0, None
        self.questions = QuestionSchedule(len(run.records), run.cfg.questions_per_step, run.seed, self.rank,
                                          self.world_size)
        self.resume_from = checkpoint.latest(self.checkpoint_dir)
        same_everywhere(self.resume_from and self.resume_from.name, f"the {self.label} checkpoint to resume")
        self._items = [r.item for r in run.records]
        self.tokenizer = self._load()
        self.tokenizer.padding_side = "left"
        # prompts are tokenised once; the loop only pads ids
        self._prompt_tokens = self.tokenizer([render_prompt(r, self.tokenizer) for r in run.records])["input_ids"]

    # -- what a subclass provides -------------------------------------------------------------------
    def _start_processes(self) -> tuple[int, int]:
        """(rank, world size): one process unless the subclass runs several."""
        if not is_main_process():
            raise ValueError(f"rl.algorithm {self.cfg.algorithm} runs on one process (set rl.num_processes: 1)")
        return 0, 1

    def _load(self):
        """Load the policy (resumed from `self.resume_from` when set); return its tokenizer."""
        raise NotImplementedError

    def _train_step(self) -> dict[str, float]:
        """One RL step: sets `self.step` to the step done (and `stop_reason` to stop); its metrics."""
        raise NotImplementedError

    def _save_policy(self, path: Path, final: bool) -> None:
        """Write the policy into the directory `path` (a checkpoint unless `final`)."""
        raise NotImplementedError

    @property
    def _sampler_model(self):
        """What `generation.sample` decodes with (a plain causal LM, or one with a value head)."""
        return self.lm

    def _barrier(self) -> None:
        """Wait for every process (one process: nothing to wait for)."""

    def _whole_policy(self):
        """A context in which the sampler can run the policy: nothing to do unless it is sharded."""
        return contextlib.nullcontext()

    def _load_optimizer_state(self, state: dict) -> None:
        """The optimizer's state from a checkpoint (what `_optimizer_state` saved)."""
        self.optimizer.load_state_dict(state)

    def _optimizer_state(self) -> dict:
        """What a checkpoint keeps of the optimizer (called on the main process)."""
        return self.optimizer.state_dict()

    # -- shared pieces --------------------------------------------------------------------------------
    def _rng(self, step: int, purpose: str) -> int:
        """The seed of `purpose` ("sample", "minibatch") at `step` on this process."""
        return mix(self.seed, step, self.rank, purpose)

    def _optimizer(self, parameters, section, more: list[dict] | None = None) -> None:
        """AdamW over the trainable `parameters` at `section.lr` (the algorithm's own config section), plus
        the parameter groups `more` (each with its own lr), with the section's schedule over `rl.steps`,
        stepped once per RL step; resumed from the checkpoint when there is one."""
        from transformers import get_scheduler

        trainable = [p for p in parameters if p.requires_grad]  # LoRA: the adapters (and a value head)
        groups = [{"params": trainable}, *(more or [])]
        self.optimizer = torch.optim.AdamW(groups, lr=section.lr, weight_decay=section.weight_decay)
        self.scheduler = get_scheduler(section.lr_scheduler, self.optimizer, num_warmup_steps=0,
                                       num_training_steps=self.cfg.steps)
        if self.resume_from is not None:
            state = checkpoint.load(self.resume_from, self.rank)
            self._load_optimizer_state(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step = int(state["step"])
            if is_main_process():
                log.info("resumed %s from %s (step %d of %d)", self.label, self.resume_from, self.step, self.cfg.steps)

    def autocast(self):
        """bf16 autocast where `model.bf16` resolves to it (reftflow/precision.py), else nothing."""
        return precision.autocast(self.device, self.bf16)

    def _sample(self, step: int, questions: list[int]) -> tuple[generation.Rollout, Graded, float]:
        """K sampled answers to each of `questions`, graded: (rollout, grades, sampling seconds)."""
        K = self.cfg.samples_per_question
        torch.manual_seed(self._rng(step, "sample"))
        t0 = time.perf_counter()
        with self._whole_policy(), self.autocast():
            ro = generation.sample(self._sampler_model, self.tokenizer,
                                   [self._prompt_tokens[i] for i in questions for _ in range(K)],
                                   self.cfg.max_new_tokens, self.cfg.temperature, group_size=K)
        t_generate = time.perf_counter() - t0
        graded = grade(self.grader, ro.texts, [self._items[i] for i in questions for _ in range(K)])
        # shapes rounded to a multiple of 8: few distinct shapes reach the model
        return ro.trimmed(8), graded, t_generate

    # -- the protocol ---------------------------------------------------------------------------------
    def train(self) -> Iterator[dict[str, float]]:
        """Run the remaining steps; yield each step's metrics (main process only). Call `save()` after."""
        cfg = self.cfg
        while self.step < cfg.steps and self.stop_reason is None:
            metrics = self._train_step()
            if is_main_process():
                yield metrics
            if self.stop_reason:
                if is_main_process():
                    log.warning(self.stop_reason)
                break
            if self.checkpoint_dir and cfg.checkpoint_every and (self.step % cfg.checkpoint_every == 0
                                                                or self.step == cfg.steps):
                self.save_checkpoint()

    def save(self) -> None:
        """The policy to out_dir, atomically, by the main process."""
        from reftflow.io import atomic_dir

        self._barrier()
        if is_main_process():
            with atomic_dir(self.out_dir) as tmp:
                self._save_policy(tmp, final=True)
        self._barrier()

    def save_checkpoint(self) -> Path:
        """Policy, optimizer, scheduler, RNG states and step (`reftflow.rl.checkpoint`)."""
        return checkpoint.save(
            self.checkpoint_dir, self.step, lambda d: self._save_policy(d, final=False),
            lambda: {"optimizer": self._optimizer_state(), "scheduler": self.scheduler.state_dict(),
                     "world_size": self.world_size},
            rank=self.rank, barrier=self._barrier)
