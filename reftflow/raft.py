"""RAFT: rejection sampling, then fine-tuning on what the grader fully accepts (`ppo.algorithm: raft`).

Per step: sample K answers to each of this step's questions, keep those with full marks (at most
`ppo.raft.max_per_question` distinct ones per question), and take `ppo_epochs` passes of
minibatch negative log-likelihood on them (Dong et al., 2023, "RAFT: Reward rAnked FineTuning";
Singh et al., 2023, ReST-EM, is the same loop with larger rounds). No critic, no reference model:
the policy only ever moves towards its own accepted answers, so it cannot be pushed down on wrong
ones, the drift that limits PPO on a sharp SFT model.

One process only (the kept samples differ in number between processes, which DDP cannot average).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator

import torch

from reftflow import generation
from reftflow.config import ModelConfig, PPOConfig
from reftflow.data.records import Record
from reftflow.forward import response_logprobs
from reftflow.graders.base import FULL_MARKS
from reftflow.lora import load_for_training, save_weights
from reftflow.modeling import autocast, select_device, set_threads
from reftflow.ppo.core import masked_mean
from reftflow.prompting import render_prompt
from reftflow.rl import TrainingDiverged, checkpoint
from reftflow.rl.rewards import grade, reward_metrics
from reftflow.rl.schedule import QuestionSchedule, mix

log = logging.getLogger(__name__)


def accepted_rows(texts: list[str], scores: torch.Tensor, group_size: int, max_per_question: int) -> list[int]:
    """Indices of the samples to fine-tune on: full marks, distinct within their question (rows come in
    runs of `group_size` per question), at most `max_per_question` of each."""
    keep = []
    for start in range(0, len(texts), group_size):
        seen: set[str] = set()
        for i in range(start, start + group_size):
            if scores[i] >= FULL_MARKS and texts[i] not in seen and len(seen) < max_per_question:
                seen.add(texts[i])
                keep.append(i)
    return keep


class RAFTTrainer:
    """Rejection-sampling fine-tuning behind the `reftflow.rl` protocol (arguments as `PPOTrainer`'s)."""

    def __init__(self, policy_path: str | Path, train_records: list[Record], cfg: PPOConfig, grader,
                 out_dir: str | Path, seed: int, checkpoint_dir: str | Path | None = None, torch_threads: int = 0,
                 model_cfg: ModelConfig | None = None):
        from transformers import get_scheduler

        from reftflow.distributed import is_main_process

        model_cfg = model_cfg or ModelConfig()
        self.device = select_device(model_cfg.device)
        set_threads(torch_threads, self.device)
        if not train_records:
            raise ValueError("RAFT needs at least one training question")
        if not is_main_process():
            raise ValueError("ppo.algorithm raft runs on one process (set ppo.num_processes: 1)")
        self.cfg, self.grader, self.seed, self.out_dir = cfg, grader, seed, Path(out_dir)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.records = list(train_records)
        self.stop_reason: str | None = None
        self.step = 0
        self.questions = QuestionSchedule(len(self.records), cfg.questions_per_step, seed)
        resume_from = checkpoint.latest(self.checkpoint_dir)
        self.model, self.peft, self.tokenizer = load_for_training(policy_path, model_cfg.lora, resume_from, seed)
        self.tokenizer.padding_side = "left"
        self.model.eval()  # no dropout: the samples and their fine-tuning see the same function
        self.model.to(self.device)
        self._autocast = lambda: autocast(self.device, model_cfg.bf16)
        self._prompt_tokens = self.tokenizer([render_prompt(r, self.tokenizer) for r in self.records])["input_ids"]
        self._items = [r.item for r in self.records]
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # LoRA: the adapters only
        self.optimizer = torch.optim.AdamW(trainable, lr=cfg.raft.lr, weight_decay=cfg.weight_decay)
        self.scheduler = get_scheduler(cfg.lr_scheduler, self.optimizer, num_warmup_steps=0,
                                       num_training_steps=cfg.steps)
        if resume_from is not None:
            state = checkpoint.load(resume_from)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step = int(state["step"])
            log.info("resumed RAFT from %s (step %d of %d)", resume_from, self.step, cfg.steps)

    @property
    def lm(self):
        return self.model

    def train(self) -> Iterator[dict[str, float]]:
        cfg = self.cfg
        while self.step < cfg.steps:
            yield self._train_step()
            if self.checkpoint_dir and cfg.checkpoint_every and (self.step % cfg.checkpoint_every == 0
                                                                or self.step == cfg.steps):
                checkpoint.save(self.checkpoint_dir, self.step, lambda d: self._save_policy(d, final=False),
                                lambda: {"optimizer": self.optimizer.state_dict(),
                                         "scheduler": self.scheduler.state_dict()})

    def save(self) -> None:
        from reftflow.io import atomic_dir

        with atomic_dir(self.out_dir) as tmp:
            self._save_policy(tmp, final=True)

    def _save_policy(self, path: Path, final: bool) -> None:
        save_weights(path, self.model, self.peft, self.tokenizer, final)

    def _train_step(self) -> dict[str, float]:
        cfg, K = self.cfg, self.cfg.samples_per_question
        step = self.step + 1
        t_step = time.perf_counter()
        torch.manual_seed(mix(self.seed, step, "sample"))
        questions = self.questions(step)
        with self._autocast():
            ro = generation.sample(self.model, self.tokenizer,
                                   [self._prompt_tokens[i] for i in questions for _ in range(K)],
                                   cfg.max_new_tokens, cfg.temperature, group_size=K).trimmed(8)
        t_generate = time.perf_counter() - t_step
        graded = grade(self.grader, ro.texts, [self._items[i] for i in questions for _ in range(K)])
        keep = accepted_rows(ro.texts, graded.scores, K, cfg.raft.max_per_question)
        lr = self.scheduler.get_last_lr()[0]
        t0 = time.perf_counter()
        losses = self._fine_tune(step, ro, keep)
        self.scheduler.step()
        t_update = time.perf_counter() - t0
        self.step = step
        t_total = time.perf_counter() - t_step
        episodes = len(ro.texts)
        metrics = {k: float(v) for k, v in reward_metrics(graded).items()}
        metrics.update({
            "step": step, "rl/lr": lr, "rl/episodes": episodes, "rl/episodes_per_s": episodes / t_total,
            "rl/response_length": float(ro.response_mask.sum(1).mean()),
            "raft/kept": len(keep), "raft/updates": len(losses),
            "time/generate_s": t_generate, "time/update_s": t_update, "time/step_s": t_total,
        })
        if losses:
            metrics["raft/nll"] = sum(losses) / len(losses)
        return metrics

    def _fine_tune(self, step: int, ro: generation.Rollout, keep: list[int]) -> list[float]:
        """`ppo_epochs` passes of minibatch NLL over the kept samples (their response tokens, EOS included)."""
        if not keep:
            return []
        cfg = self.cfg
        ids, attn = ro.input_ids()[keep].to(self.device), ro.attention_mask()[keep].to(self.device)
        mask, R = ro.response_mask[keep].to(self.device), ro.response_ids.shape[1]
        gen = torch.Generator().manual_seed(mix(self.seed, step, "minibatch"))
        losses = []
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(keep), generator=gen)
            for s in range(0, len(keep), cfg.minibatch_size):
                idx = order[s : s + cfg.minibatch_size].to(self.device)
                with self._autocast():
                    loss = -masked_mean(response_logprobs(self.model, ids[idx], attn[idx], R), mask[idx])
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"RAFT diverged at step {step}: non-finite loss; nothing was saved to "
                                           f"{self.out_dir}")
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
        return losses
