"""RAFT: rejection sampling, then fine-tuning on what the grader fully accepts (`rl.algorithm: raft`).

Per step: sample K answers to each of this step's questions, keep those with full marks (at most
`rl.raft.max_per_question` distinct ones per question), and take `rl.raft.epochs` passes of
minibatch negative log-likelihood on them (Dong et al., 2023, "RAFT: Reward rAnked FineTuning";
Singh et al., 2023, ReST-EM, is the same loop with larger rounds). No critic, no reference model:
the policy only ever moves towards its own accepted answers, so it cannot be pushed down on wrong
ones, the drift that limits PPO on a sharp SFT model.

One process only (the kept samples differ in number between processes, which DDP cannot average).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from reftflow import generation
from reftflow.forward import response_logprobs
from reftflow.graders.base import FULL_MARKS
from reftflow.lora import load_for_training, save_weights
from reftflow.rl import RLRun, TrainingDiverged
from reftflow.rl.online import OnlineTrainer
from reftflow.rl.rewards import reward_metrics
from reftflow.rl.schedule import mix
from reftflow.tensors import masked_mean


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


class RAFTTrainer(OnlineTrainer):
    """Rejection-sampling fine-tuning behind the `reftflow.rl` protocol."""

    label = "RAFT"

    def __init__(self, run: RLRun):
        super().__init__(run)
        self._optimizer(self.model.parameters(), run.cfg.raft)

    def _load(self):
        self.model, self.peft, tokenizer = load_for_training(self.run.policy_path, self.run.model.lora,
                                                             self.resume_from, self.seed)
        self.model.eval()  # no dropout: the samples and their fine-tuning see the same function
        self.model.to(self.device)
        return tokenizer

    @property
    def lm(self):
        return self.model

    def _rng(self, step: int, purpose: str) -> int:
        # one process: its seeds never had a rank in them (a resumed or repeated run draws what it drew)
        return mix(self.seed, step, purpose)

    def _save_policy(self, path: Path, final: bool) -> None:
        save_weights(path, self.model, self.peft, self.tokenizer, final)

    def _train_step(self) -> dict[str, float]:
        cfg, K = self.cfg, self.cfg.samples_per_question
        step = self.step + 1
        t_step = time.perf_counter()
        ro, graded, t_generate = self._sample(step, self.questions(step))
        keep = accepted_rows(ro.texts, graded.scores, K, cfg.raft.max_per_question)
        lr = self.scheduler.get_last_lr()[0]
        t0 = time.perf_counter()
        losses = self._fine_tune(step, ro, keep)
        self.scheduler.step()
        t_update = time.perf_counter() - t0
        self.step = step
        t_total = time.perf_counter() - t_step
        episodes = len(ro.texts)
        metrics = {k: float(v) for k, v in reward_metrics(graded, K).items()}
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
        """`rl.raft.epochs` passes of minibatch NLL over the kept samples (their response tokens, EOS included)."""
        if not keep:
            return []
        section = self.cfg.raft
        ids, attn = ro.input_ids()[keep].to(self.device), ro.attention_mask()[keep].to(self.device)
        mask, R = ro.response_mask[keep].to(self.device), ro.response_ids.shape[1]
        gen = torch.Generator().manual_seed(self._rng(step, "minibatch"))
        losses = []
        for _ in range(section.epochs):
            order = torch.randperm(len(keep), generator=gen)
            for s in range(0, len(keep), section.minibatch_size):
                idx = order[s : s + section.minibatch_size].to(self.device)
                with self.autocast():
                    loss = -masked_mean(response_logprobs(self.model, ids[idx], attn[idx], R), mask[idx])
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"RAFT diverged at step {step}: non-finite loss; nothing was saved to "
                                           f"{self.out_dir}")
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], section.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
        return losses
