"""The ReFT PPO rollout/update loop, under `accelerate` (one process, or several with DDP/gloo).

Per step (Luong et al., 2024, §3.2; the phases follow TRL's PPO loop):
  1. rollout: this step's questions (`QuestionSchedule`); each process samples its share, K each,
     keeping the sampler's log-probs and values (the old policy's), and grades the answers
  2. reference: one no-grad forward of the frozen reference for its log-probs
  3. advantages: per-token KL penalty to the reference, the score at the last token, then
     `core.compute_advantages` (GAE on the critic, or a group baseline)
  4. update: `rl.ppo.epochs` epochs of minibatch updates: clipped surrogate + vf_coef * clipped value
     loss - ent_coef * entropy; gradients all-reduced by DDP, clipped, AdamW
  5. metrics, averaged over processes; a checkpoint every `checkpoint_every` steps

Randomness is reseeded every step from (seed, step, rank), so a resumed run replays exactly what
an uninterrupted one would have done. Only the main process yields metrics and writes files.

Run with several processes: `rl.num_processes: 2` in params.yaml (the stage relaunches itself under
torchrun), or `accelerate launch --multi_gpu --num_processes 2 -m tasks.rl` (on a CPU-only machine
with CUDA_VISIBLE_DEVICES= this is DDP over gloo; accelerate 1.15's `--cpu` launcher starts one
process unless mpirun is set up). Over several machines: README, "Training on several nodes".
`model.fsdp` shards the policy, the reference and the optimizer state instead (FSDP2 through accelerate,
reftflow/fsdp.py); sampling, saving and checkpoints gather the whole policy on every process.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from reftflow import fsdp
from reftflow.forward import response_logprobs
from reftflow.graders.base import FULL_MARKS
from reftflow.lora import adapters_disabled
from reftflow.modeling import load_model
from reftflow.rl import RLRun, TrainingDiverged
from reftflow.rl.online import OnlineTrainer
from reftflow.rl.ppo.core import compute_advantages, kl_penalty, policy_loss, shape_rewards, value_loss
from reftflow.rl.ppo.value_head import PolicyWithValue
from reftflow.rl.rewards import Graded, reward_metrics
from reftflow.tensors import masked_mean



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


class PPOTrainer(OnlineTrainer):
    """ReFT-style PPO from an SFT model against a grader (the `ppo` entry of `reftflow.rl.ALGORITHMS`).
    The SFT model is both the starting policy and the frozen reference; `save()` writes the policy with
    its value head (`value_head.safetensors`) beside it."""

    label = "PPO"

    def __init__(self, run: RLRun):
        super().__init__(run)
        policy, section = self._policy, run.cfg.ppo
        if section.value_lr is None:  # one group: the policy and its value head (LoRA: the adapters)
            self._optimizer(policy.parameters(), section)
        else:
            self._optimizer(policy.policy.parameters(), section,
                            [{"params": list(policy.value_head.parameters()), "lr": section.value_lr}])
        # the scheduler is stepped once per PPO step, not wrapped by accelerate (which would step it per process)
        self.model, self.optimizer = self.accelerator.prepare(policy, self.optimizer)
        del self._policy
        if self.sharded:
            if self.ref is not None:  # sharded like the policy (accelerate shards what it prepares; no optimizer)
                self.ref = self.accelerator.prepare(self.ref)
            if self._resumed_optimizer is not None:  # a shard per process, known only once the model is sharded
                fsdp.load_optimizer_state(self.model, self.optimizer.optimizer, self._resumed_optimizer)
                self._resumed_optimizer = None

    def _start_processes(self) -> tuple[int, int]:
        # precision is applied by `self.autocast()` (reftflow/precision.py), not accelerate's mixed_precision:
        # accelerate's state is a process-wide singleton that an earlier Trainer may have set differently
        self.accelerator = fsdp.accelerator(cpu=self.device.type == "cpu", fsdp=self.run.model.fsdp)
        self.sharded = fsdp.is_sharded(self.accelerator)
        self._full: tuple[dict, dict | None] | None = None
        """the whole model's (and optimizer's) state while a save is under way under FSDP (`_gathered`)."""
        self._resumed_optimizer: dict | None = None
        self.device = self.accelerator.device
        world_size = self.accelerator.num_processes
        if self.cfg.questions_per_step % world_size:
            raise ValueError(f"rl.questions_per_step={self.cfg.questions_per_step} must be a multiple of the "
                             f"number of processes ({world_size}) so every process does the same updates")
        return self.accelerator.process_index, world_size

    def _load(self):
        run, section = self.run, self.run.cfg.ppo
        policy, self.peft, tokenizer = PolicyWithValue.for_training(
            run.policy_path, value_init_std=section.value_init_std, lora=run.model.lora, resume_from=self.resume_from,
            seed=self.seed)
        policy.eval()  # no dropout: old, new and reference log-probs must come from the same function
        if self.peft is None:
            self.ref, _ = load_model(run.policy_path)
            self.ref.eval().requires_grad_(False)
            self.ref.to(self.device)
        else:  # LoRA: the reference is the policy with its adapters disabled, not a second copy (reftflow/lora.py)
            self.ref = None
        self._policy = policy
        return tokenizer

    @property
    def policy(self) -> PolicyWithValue:
        """The policy + value head, unwrapped from DDP."""
        return self.accelerator.unwrap_model(self.model)

    @property
    def lm(self):
        return self.policy.policy

    @property
    def _sampler_model(self):
        return self.policy  # its value head gives the old values as the sampler decodes

    def _barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    # -- under FSDP (`model.fsdp`): what needs the whole model, on every process ------------------------
    def _whole_policy(self):
        return fsdp.full_parameters(self.model) if self.sharded else super()._whole_policy()

    @contextlib.contextmanager
    def _gathered(self, optimizer: bool = False):
        """Under FSDP, the whole state for the main process to save while the block runs (a collective)."""
        if self.sharded:
            self._full = fsdp.full_state(self.model, self.optimizer.optimizer if optimizer else None)
        try:
            yield
        finally:
            self._full = None

    def save(self) -> None:
        with self._gathered():
            super().save()

    def save_checkpoint(self) -> Path:
        with self._gathered(optimizer=True):
            return super().save_checkpoint()

    def _optimizer_state(self) -> dict:
        return self._full[1] if self._full is not None else super()._optimizer_state()

    def _load_optimizer_state(self, state: dict) -> None:
        if self.sharded:  # loaded into the shards once `prepare` has made them (see __init__)
            self._resumed_optimizer = state
        else:
            super()._load_optimizer_state(state)

    def _save_policy(self, path: Path, final: bool) -> None:
        self.policy.save(path, self.tokenizer, self.peft, final=final,
                         state_dict=self._full[0] if self._full is not None else None)

    # -- one step ---------------------------------------------------------------------------------
    def _train_step(self) -> dict[str, float]:
        cfg = self.cfg
        step = self.step + 1
        t_step = time.perf_counter()
        batch, t_generate = self._rollout(step)
        if step == 1 and self.resume_from is None and cfg.ppo.value_init == "mean_reward":
            self._value_from_mean_reward(batch)
        t0 = time.perf_counter()
        # no KL penalty: no reference forward (the KL is then reported against the sampler itself, 0)
        ref_logp = self._reference_logprobs(batch) if cfg.ppo.kl_coef > 0 else batch.old_logp
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
        episodes = cfg.questions_per_step * cfg.samples_per_question
        metrics.update({
            "step": step, "rl/lr": lr, "rl/episodes": episodes, "rl/episodes_per_s": episodes / t_total,
            "time/generate_s": t_generate, "time/forward_s": t_forward, "time/update_s": t_update,
            "time/other_s": t_total - t_generate - t_forward - t_update, "time/step_s": t_total,
        })
        if cfg.ppo.max_kl > 0 and metrics["rl/kl"] > cfg.ppo.max_kl:
            self.stop_reason = (
                f"kl_bound: mean KL to the reference {metrics['rl/kl']:.4g} nats/sequence exceeded "
                f"rl.ppo.max_kl={cfg.ppo.max_kl:g} at step {step}; stopped early and kept this policy"
            )
        return metrics

    def _rollout(self, step: int) -> tuple[Batch, float]:
        """Sample K answers to each of this process's questions and grade them; (batch, sampling seconds)."""
        device = self.device
        ro, graded, t_generate = self._sample(step, self.questions(step))
        scores = graded.scores
        self._guard(torch.isfinite(scores).all(), step, "reward", f"grader returned {scores.tolist()[:8]}...")
        batch = Batch(ro.input_ids().to(device), ro.attention_mask().to(device), ro.response_ids.to(device),
                      ro.response_mask.to(device), ro.logprobs.to(device), ro.values.to(device), scores.to(device),
                      graded)
        return batch, t_generate

    @torch.no_grad()
    def _value_from_mean_reward(self, batch: Batch) -> None:
        """`rl.ppo.value_init: mean_reward`: the value head's bias becomes the first step's mean reward (over
        every process), and the batch's old values, which the sampler read with the old bias, move with it
        (V = w.h + b is linear in b)."""
        mean = batch.scores.float().mean().reshape(1)
        if self.world_size > 1:
            mean = self.accelerator.reduce(mean, reduction="mean")
        self.policy.value_head.bias.add_(float(mean))  # a number: under FSDP the bias is a shard (a DTensor)
        batch.old_values.add_(mean * batch.mask)

    def _minibatch_questions(self) -> int:
        """Questions per minibatch: minibatches hold whole questions (K samples each), so every forward
        shares prompts K-fold (`forward.response_hidden`); minibatch_size rounds down to a multiple of K."""
        return max(1, self.cfg.ppo.minibatch_size // self.world_size // self.cfg.samples_per_question)

    @torch.no_grad()
    def _reference_logprobs(self, batch: Batch) -> torch.Tensor:
        K, R, B = self.cfg.samples_per_question, batch.response_length, batch.input_ids.shape[0]
        mb = self._minibatch_questions() * K
        ref = self.ref if self.ref is not None else self.lm
        whole = fsdp.full_parameters(ref) if self.sharded else contextlib.nullcontext()
        with whole, adapters_disabled(self.peft), self.autocast():
            return torch.cat([
                response_logprobs(ref, batch.input_ids[s : s + mb], batch.attention_mask[s : s + mb], R,
                                  self.cfg.temperature, group_size=K).float()
                for s in range(0, B, mb)
            ])

    @torch.no_grad()
    def _advantages(self, batch: Batch, ref_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-token KL, advantages, returns): KL penalty per token + score at the last token."""
        cfg = self.cfg.ppo
        kl = kl_penalty(batch.old_logp, ref_logp, cfg.kl_estimator) * batch.mask
        rewards = shape_rewards(batch.scores, kl, batch.mask, cfg.kl_coef)
        advantages, returns = compute_advantages(
            rewards, batch.old_values, batch.mask, cfg.advantage_estimator, self.cfg.samples_per_question, cfg.gamma,
            cfg.lam, cfg.whiten_advantages, cfg.negative_advantage_scale)
        return kl, advantages, returns

    def _update(self, step: int, batch: Batch, advantages: torch.Tensor, returns: torch.Tensor
                ) -> dict[str, list[torch.Tensor]]:
        """`rl.ppo.epochs` passes of minibatch updates over the batch; per-minibatch stats."""
        cfg, acc, K = self.cfg.ppo, self.accelerator, self.cfg.samples_per_question
        use_critic = cfg.advantage_estimator == "gae"
        policy_on = step > cfg.critic_warmup_steps  # the critic's warm-up steps train the value head alone
        mbq, R = self._minibatch_questions(), batch.response_length
        stats: dict[str, list[torch.Tensor]] = {}
        gen = torch.Generator().manual_seed(self._rng(step, "minibatch"))
        kept = self._informative_questions(batch, advantages)
        stats["ppo/questions_updated"] = [torch.tensor(float(len(kept)))]
        for _ in range(cfg.epochs):
            groups = kept[torch.randperm(len(kept), generator=gen)]
            for s in range(0, len(groups), mbq):
                idx = (groups[s : s + mbq, None] * K + torch.arange(K)).flatten().to(acc.device)
                with self.autocast():
                    logp, values, entropy = self.model(
                        batch.input_ids[idx], batch.attention_mask[idx], R, self.cfg.temperature, with_entropy=True,
                        entropy_grad=cfg.ent_coef > 0, group_size=K, detach_value=cfg.value_detach or not policy_on)
                m = batch.mask[idx]
                pg_loss, pg_stats = policy_loss(logp, batch.old_logp[idx], advantages[idx], m, cfg.clip_range)
                if use_critic:
                    v_loss, v_stats = value_loss(values, batch.old_values[idx], returns[idx], m, cfg.value_clip_range)
                else:
                    # 0 * values keeps the value head in the graph (DDP expects every parameter to get a grad)
                    v_loss, v_stats = 0.0 * values.sum(), {}
                ent = masked_mean(entropy, m)
                sft = self._own_answers_nll(logp, m, batch.scores[idx]) if cfg.sft_coef else torch.zeros(())
                # off during the critic's warm-up: 0 * keeps the terms in the graph for DDP
                policy_terms = pg_loss + cfg.sft_coef * sft - cfg.ent_coef * ent
                loss = (policy_terms if policy_on else 0.0 * policy_terms) + cfg.vf_coef * v_loss
                # backward before any check: every process must join the gradient all-reduce
                acc.backward(loss)
                grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                if hasattr(grad_norm, "full_tensor"):  # under FSDP, a DTensor
                    grad_norm = grad_norm.full_tensor()
                self._guard(torch.isfinite(loss), step, "loss", f"policy {pg_loss.item():.4g}, value {v_loss.item():.4g}",
                            reduce=False)
                self._guard(torch.isfinite(grad_norm), step, "gradient norm", f"{float(grad_norm):.4g}", reduce=False)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                for k, v in {**pg_stats, **v_stats, "ppo/policy_loss": pg_loss.detach(), "ppo/value_loss": v_loss.detach(),
                             "rl/entropy": ent.detach(), "ppo/loss": loss.detach(), "ppo/grad_norm": grad_norm,
                             "ppo/sft_nll": sft.detach()}.items():
                    stats.setdefault(k, []).append(torch.as_tensor(v, dtype=torch.float32).detach().cpu())
        return stats

    def _informative_questions(self, batch: Batch, advantages: torch.Tensor) -> torch.Tensor:
        """The indices of the questions the update runs on: all of them, or with `rl.ppo.filter_groups` (one
        process) those with a nonzero advantage or, when `sft_coef` > 0, a full-marks answer."""
        K, cfg = self.cfg.samples_per_question, self.cfg.ppo
        questions = torch.arange(batch.input_ids.shape[0] // K)
        if not cfg.filter_groups or self.world_size > 1:
            return questions
        signal = (advantages != 0).any(1).reshape(-1, K).any(1).cpu()
        if cfg.sft_coef:
            signal |= (batch.scores >= FULL_MARKS).reshape(-1, K).any(1).cpu()
        return questions[signal]

    @staticmethod
    def _own_answers_nll(logp: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The mean negative log-likelihood of the minibatch's full-marks answers (0 when it has none):
        `rl.ppo.sft_coef`'s term, RAFT's signal inside PPO's update."""
        full = scores >= FULL_MARKS
        if not bool(full.any()):
            return 0.0 * logp.sum()
        return -masked_mean(logp[full], mask[full])

    @torch.no_grad()
    def _metrics(self, batch: Batch, kl: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor,
                 stats: dict[str, list[torch.Tensor]]) -> dict[str, float]:
        """This step's metrics, averaged over processes."""
        seq_kl, mask = kl.sum(1), batch.mask
        local = {k: torch.stack(v).mean() for k, v in stats.items()}
        local.update(reward_metrics(batch.graded, self.cfg.samples_per_question))
        local.update({
            "rl/kl": seq_kl.mean(),
            "ppo/kl_coef_x_kl": self.cfg.ppo.kl_coef * seq_kl.mean(),
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


__all__ = ["PPOTrainer", "TrainingDiverged"]
