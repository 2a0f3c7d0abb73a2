"""The ReFT PPO rollout/update loop, under `accelerate` (one process, or several with DDP/gloo).

Per step (Luong et al., 2024, §3.2; the phases follow TRL's PPO loop):
  1. rollout: this step's questions (`QuestionSchedule`); each process samples its share, K each,
     keeping the sampler's log-probs and values (the old policy's), and grades the answers
  2. reference: one no-grad forward of the frozen reference for its log-probs
  3. advantages: per-token KL penalty to the reference, the score at the last token, then
     `core.compute_advantages` (GAE on the critic, or a group baseline)
  4. update: `ppo_epochs` epochs of minibatch updates: clipped surrogate + vf_coef * clipped value
     loss - ent_coef * entropy; gradients all-reduced by DDP, clipped, AdamW
  5. metrics, averaged over processes; a checkpoint every `checkpoint_every` steps

Randomness is reseeded every step from (seed, step, rank), so a resumed run replays exactly what
an uninterrupted one would have done. Only the main process yields metrics and writes files.

Run with several processes: `ppo.num_processes: 2` in params.yaml (the stage relaunches itself under
torchrun), or `accelerate launch --multi_gpu --num_processes 2 -m tasks.ppo` (on a CPU-only machine
with CUDA_VISIBLE_DEVICES= this is DDP over gloo; accelerate 1.15's `--cpu` launcher starts one
process unless mpirun is set up).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from reftflow import generation
from reftflow.config import ModelConfig, PPOConfig
from reftflow.data.records import Record
from reftflow.distributed import is_main_process
from reftflow.forward import response_logprobs
from reftflow.lora import adapters_disabled
from reftflow.modeling import load_model, select_device, set_threads
from reftflow.ppo.core import compute_advantages, kl_penalty, masked_mean, policy_loss, shape_rewards, value_loss
from reftflow.ppo.value_head import PolicyWithValue
from reftflow.prompting import render_prompt
from reftflow.rl import TrainingDiverged, checkpoint
from reftflow.rl.rewards import Graded, grade, reward_metrics
from reftflow.rl.schedule import QuestionSchedule, mix

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """One step's rollouts on this process, on the training device; token tensors are (B, R)."""

    input_ids: torch.Tensor
    """(B, P + R) left-padded prompts followed by the responses."""
    attention_mask: torch.Tensor
    response_ids: torch.Tensor
    mask: torch.Tensor
    """response mask: 1 up to and including EOS."""
    old_logp: torch.Tensor
    old_values: torch.Tensor
    scores: torch.Tensor
    """(B,) grader scores, on the device."""
    graded: Graded
    """the grader's full account of the samples (errors, parse errors, sub-scores), on the CPU."""

    @property
    def response_length(self) -> int:
        return self.response_ids.shape[1]


class PPOTrainer:
    """ReFT-style PPO from an SFT model against a grader (the `ppo` entry of `reftflow.rl.ALGORITHMS`).

    Args:
        policy_path: the SFT model dir; it is both the starting policy and the frozen reference.
        train_records: the items: their prompts, and the fields the grader sees as `{{ item.<field> }}`.
        cfg: the `ppo` section of params.yaml.
        grader: a `reftflow.graders.Grader` (`grade_many(texts, items)`).
        out_dir: where `save()` puts the final policy (HF dir + tokenizer + value_head.safetensors).
        seed: the run seed.
        checkpoint_dir: resumable checkpoints (None: none); the newest complete one there is resumed.
        torch_threads: >0 sets torch's thread count (per process; ignored on a GPU).
        model_cfg: the `model` section: LoRA, the device and bf16 autocast on CUDA (None: full fine-tuning,
            auto device).
    """

    def __init__(self, policy_path: str | Path, train_records: list[Record], cfg: PPOConfig, grader,
                 out_dir: str | Path, seed: int, checkpoint_dir: str | Path | None = None, torch_threads: int = 0,
                 model_cfg: ModelConfig | None = None):
        from accelerate import Accelerator
        from transformers import get_scheduler

        model_cfg = model_cfg or ModelConfig()
        device = select_device(model_cfg.device)
        set_threads(torch_threads, device)
        if not train_records:
            raise ValueError("PPO needs at least one training question")
        # mixed precision only where asked for: accelerate's state is a process-wide singleton that an earlier
        # Trainer (the benchmarks run SFT in-process) may have set, and it refuses a different explicit value
        bf16 = {"mixed_precision": "bf16"} if device.type == "cuda" and model_cfg.bf16 else {}
        self.accelerator = Accelerator(cpu=device.type == "cpu", **bf16)
        self.world_size, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        if cfg.questions_per_step % self.world_size:
            raise ValueError(
                f"ppo.questions_per_step={cfg.questions_per_step} must be a multiple of the "
                f"number of processes ({self.world_size}) so every process does the same updates"
            )
        self.cfg, self.grader, self.seed = cfg, grader, seed
        self.policy_path, self.out_dir = Path(policy_path), Path(out_dir)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.records = list(train_records)
        self.stop_reason: str | None = None
        self.step = 0
        self.questions = QuestionSchedule(len(self.records), cfg.questions_per_step, seed, self.rank, self.world_size)

        resume_from = checkpoint.latest(self.checkpoint_dir)
        policy, self.peft, self.tokenizer = PolicyWithValue.for_training(
            self.policy_path, value_init_std=cfg.value_init_std, lora=model_cfg.lora, resume_from=resume_from, seed=seed)
        self.tokenizer.padding_side = "left"
        policy.eval()  # no dropout: old, new and reference log-probs must come from the same function
        if self.peft is None:
            self.ref, _ = load_model(self.policy_path)
            self.ref.eval().requires_grad_(False)
            self.ref.to(self.accelerator.device)
        else:  # LoRA: the reference is the policy with its adapters disabled, not a second copy (reftflow/lora.py)
            self.ref = None

        # prompts are tokenised once; the loop only pads ids
        self._prompt_tokens = self.tokenizer([render_prompt(r, self.tokenizer) for r in self.records])["input_ids"]
        self._items = [r.item for r in self.records]

        trainable = [p for p in policy.parameters() if p.requires_grad]  # LoRA: the adapters and the value head
        optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        # stepped once per PPO step (not wrapped by accelerate, which would step it once per process)
        self.scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=0, num_training_steps=cfg.steps)
        if resume_from is not None:
            self._load_state(resume_from, optimizer)
        self.model, self.optimizer = self.accelerator.prepare(policy, optimizer)

    @property
    def policy(self) -> PolicyWithValue:
        """The policy + value head, unwrapped from DDP."""
        return self.accelerator.unwrap_model(self.model)

    @property
    def lm(self):
        return self.policy.policy

    # -- the protocol -----------------------------------------------------------------------------
    def train(self) -> Iterator[dict[str, float]]:
        """Run the remaining steps; yield each step's metrics (main process only). Call `save()` after."""
        cfg = self.cfg
        while self.step < cfg.steps and self.stop_reason is None:
            metrics = self._train_step()
            if cfg.max_kl > 0 and metrics["rl/kl"] > cfg.max_kl:
                self.stop_reason = (
                    f"kl_bound: mean KL to the reference {metrics['rl/kl']:.4g} nats/sequence exceeded "
                    f"ppo.max_kl={cfg.max_kl:g} at step {self.step}; stopped early and kept this policy"
                )
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
        """The policy (HF dir + tokenizer + value head) to out_dir, atomically, by the main process."""
        from reftflow.io import atomic_dir

        self.accelerator.wait_for_everyone()
        if is_main_process():
            with atomic_dir(self.out_dir) as tmp:
                self.policy.save(tmp, self.tokenizer, self.peft, final=True)
        self.accelerator.wait_for_everyone()

    # -- one step ---------------------------------------------------------------------------------
    def _train_step(self) -> dict[str, float]:
        step = self.step + 1
        t_step = time.perf_counter()
        torch.manual_seed(mix(self.seed, step, self.rank, "sample"))
        batch, t_generate = self._rollout(step)
        t0 = time.perf_counter()
        ref_logp = self._reference_logprobs(batch)
        t_forward = time.perf_counter() - t0
        kl, advantages, returns = self._advantages(batch, ref_logp)
        t0 = time.perf_counter()
        lr = self.scheduler.get_last_lr()[0]
        stats = self._update(step, batch, advantages, returns)
        self.scheduler.step()
        t_update = time.perf_counter() - t0
        self.step = step
        metrics = self._metrics(batch, kl, advantages, returns, stats)
        t_total = time.perf_counter() - t_step
        episodes = self.cfg.questions_per_step * self.cfg.samples_per_question
        metrics.update({
            "step": step, "rl/lr": lr, "rl/episodes": episodes, "rl/episodes_per_s": episodes / t_total,
            "time/generate_s": t_generate, "time/forward_s": t_forward, "time/update_s": t_update,
            "time/other_s": t_total - t_generate - t_forward - t_update, "time/step_s": t_total,
        })
        return metrics

    def _rollout(self, step: int) -> tuple[Batch, float]:
        """Sample K answers to each of this process's questions and grade them; (batch, sampling seconds)."""
        K, device = self.cfg.samples_per_question, self.accelerator.device
        questions = self.questions(step)
        t0 = time.perf_counter()
        with self.accelerator.autocast():
            ro = generation.sample(self.policy, self.tokenizer,
                                   [self._prompt_tokens[i] for i in questions for _ in range(K)],
                                   self.cfg.max_new_tokens, self.cfg.temperature, group_size=K)
        t_generate = time.perf_counter() - t0
        graded = grade(self.grader, ro.texts, [self._items[i] for i in questions for _ in range(K)])
        scores = graded.scores
        self._guard(torch.isfinite(scores).all(), step, "reward", f"grader returned {scores.tolist()[:8]}...")
        # shapes rounded to a multiple of 8: few distinct shapes reach the model
        ro = ro.trimmed(8)
        batch = Batch(ro.input_ids().to(device), ro.attention_mask().to(device), ro.response_ids.to(device),
                      ro.response_mask.to(device), ro.logprobs.to(device), ro.values.to(device), scores.to(device),
                      graded)
        return batch, t_generate

    def _minibatch_questions(self) -> int:
        """Questions per minibatch: minibatches hold whole questions (K samples each), so every forward
        shares prompts K-fold (`forward.response_hidden`); minibatch_size rounds down to a multiple of K."""
        return max(1, self.cfg.minibatch_size // self.world_size // self.cfg.samples_per_question)

    @torch.no_grad()
    def _reference_logprobs(self, batch: Batch) -> torch.Tensor:
        K, R, B = self.cfg.samples_per_question, batch.response_length, batch.input_ids.shape[0]
        mb = self._minibatch_questions() * K
        ref = self.ref if self.ref is not None else self.lm
        with adapters_disabled(self.peft), self.accelerator.autocast():
            return torch.cat([
                response_logprobs(ref, batch.input_ids[s : s + mb], batch.attention_mask[s : s + mb], R,
                                  self.cfg.temperature, group_size=K).float()
                for s in range(0, B, mb)
            ])

    @torch.no_grad()
    def _advantages(self, batch: Batch, ref_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-token KL, advantages, returns): KL penalty per token + score at the last token."""
        cfg = self.cfg
        kl = kl_penalty(batch.old_logp, ref_logp, cfg.kl_estimator) * batch.mask
        rewards = shape_rewards(batch.scores, kl, batch.mask, cfg.kl_coef)
        advantages, returns = compute_advantages(
            rewards, batch.old_values, batch.mask, cfg.advantage_estimator, cfg.samples_per_question, cfg.gamma,
            cfg.lam, cfg.whiten_advantages, cfg.negative_advantage_scale)
        return kl, advantages, returns

    def _update(self, step: int, batch: Batch, advantages: torch.Tensor, returns: torch.Tensor
                ) -> dict[str, list[torch.Tensor]]:
        """`ppo_epochs` passes of minibatch updates over the batch; per-minibatch stats."""
        cfg, acc, K = self.cfg, self.accelerator, self.cfg.samples_per_question
        use_critic = cfg.advantage_estimator == "gae"
        mbq, R = self._minibatch_questions(), batch.response_length
        stats: dict[str, list[torch.Tensor]] = {}
        gen = torch.Generator().manual_seed(mix(self.seed, step, self.rank, "minibatch"))
        for _ in range(cfg.ppo_epochs):
            groups = torch.randperm(batch.input_ids.shape[0] // K, generator=gen)
            for s in range(0, len(groups), mbq):
                idx = (groups[s : s + mbq, None] * K + torch.arange(K)).flatten().to(acc.device)
                logp, values, entropy = self.model(
                    batch.input_ids[idx], batch.attention_mask[idx], R, cfg.temperature, with_entropy=True,
                    entropy_grad=cfg.ent_coef > 0, group_size=K)
                m = batch.mask[idx]
                pg_loss, pg_stats = policy_loss(logp, batch.old_logp[idx], advantages[idx], m, cfg.clip_range)
                if use_critic:
                    v_loss, v_stats = value_loss(values, batch.old_values[idx], returns[idx], m, cfg.value_clip_range)
                else:
                    # 0 * values keeps the value head in the graph (DDP expects every parameter to get a grad)
                    v_loss, v_stats = 0.0 * values.sum(), {}
                ent = masked_mean(entropy, m)
                loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * ent
                # backward before any check: every process must join the gradient all-reduce
                acc.backward(loss)
                grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self._guard(torch.isfinite(loss), step, "loss", f"policy {pg_loss.item():.4g}, value {v_loss.item():.4g}",
                            reduce=False)
                self._guard(torch.isfinite(grad_norm), step, "gradient norm", f"{float(grad_norm):.4g}", reduce=False)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                for k, v in {**pg_stats, **v_stats, "ppo/policy_loss": pg_loss.detach(), "ppo/value_loss": v_loss.detach(),
                             "rl/entropy": ent.detach(), "ppo/loss": loss.detach(), "ppo/grad_norm": grad_norm}.items():
                    stats.setdefault(k, []).append(torch.as_tensor(v, dtype=torch.float32).detach().cpu())
        return stats

    @torch.no_grad()
    def _metrics(self, batch: Batch, kl: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor,
                 stats: dict[str, list[torch.Tensor]]) -> dict[str, float]:
        """This step's metrics, averaged over processes."""
        seq_kl, mask = kl.sum(1), batch.mask
        local = {k: torch.stack(v).mean() for k, v in stats.items()}
        local.update(reward_metrics(batch.graded))
        local.update({
            "rl/kl": seq_kl.mean(),
            "ppo/kl_coef_x_kl": self.cfg.kl_coef * seq_kl.mean(),
            "rl/response_length": mask.sum(1).mean(),
            "rl/eos_fraction": (batch.response_ids == self.tokenizer.eos_token_id).any(1).float().mean(),
            "ppo/advantage_mean": masked_mean(advantages, mask),
            "ppo/return_mean": masked_mean(returns, mask),
            "value/old_mean": masked_mean(batch.old_values, mask),
        })
        keys = sorted(local)
        vec = torch.stack([local[k].float().cpu() for k in keys])
        if self.world_size > 1:
            vec = self.accelerator.reduce(vec.to(self.accelerator.device), reduction="mean").cpu()
        return {k: float(x) for k, x in zip(keys, vec.tolist())}

    def _guard(self, ok: torch.Tensor, step: int, what: str, detail: str, reduce: bool = True) -> None:
        """Raise TrainingDiverged when `ok` is false (on any process, when `reduce`)."""
        bad = (~ok.bool()).float().reshape(1).to(self.accelerator.device)
        if reduce and self.world_size > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item() > 0:
            raise TrainingDiverged(f"PPO diverged at step {step}: non-finite {what} ({detail}); nothing was saved to {self.out_dir}")

    # -- checkpoints ------------------------------------------------------------------------------
    def _load_state(self, path: Path, optimizer: torch.optim.Optimizer) -> None:
        state = checkpoint.load(path, self.rank)
        optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        if is_main_process():
            log.info("resumed PPO from %s (step %d of %d)", path, self.step, self.cfg.steps)

    def save_checkpoint(self) -> Path:
        """Policy, value head, optimizer, scheduler, RNG states and step (`reftflow.rl.checkpoint`)."""
        return checkpoint.save(
            self.checkpoint_dir, self.step, lambda d: self.policy.save(d, self.tokenizer, self.peft, final=False),
            lambda: {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "world_size": self.world_size},
            rank=self.rank, barrier=self.accelerator.wait_for_everyone)


__all__ = ["PPOTrainer", "TrainingDiverged"]
