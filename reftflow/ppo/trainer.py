"""The ReFT PPO rollout/update loop, under `accelerate` (one process, or several with DDP/gloo).

Per step (Luong et al., 2024, §3.2; the numbered phases follow TRL's PPO loop):
  1. take this step's questions (seeded from (seed, step)); each process samples its share, K each
  2. score the decoded answers with the grader
  3. the sampler's log-probs and values are the old policy's; one no-grad reference forward
  4. per-token KL penalty to the frozen reference, score at the last token, GAE, whitened advantages
  5. `ppo_epochs` epochs of minibatch updates: clipped surrogate + vf_coef * clipped value loss
     - ent_coef * entropy; gradients all-reduced by DDP, clipped, AdamW
  6. metrics averaged over processes; checkpoint every `checkpoint_every` steps

Randomness is reseeded every step from (seed, step, rank), so a resumed run replays exactly what
an uninterrupted one would have done. Only the main process writes files and yields metrics.

Run with several processes: `ppo.num_processes: 2` in params.yaml (the stage relaunches itself under
torchrun), or `accelerate launch --multi_gpu --num_processes 2 -m tasks.ppo` (on a CPU-only machine
with CUDA_VISIBLE_DEVICES= this is DDP over gloo; accelerate 1.15's `--cpu` launcher starts one
process unless mpirun is set up).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from reftflow.config import PPOConfig
from reftflow.data.records import Record
from reftflow.modeling import load_model, set_threads
from reftflow.ppo import rollout
from reftflow.ppo.core import (
    compute_gae,
    group_advantages,
    kl_penalty,
    masked_mean,
    masked_whiten,
    policy_loss,
    shape_rewards,
    value_loss,
)
from reftflow.ppo.value_head import PolicyWithValue, response_logprobs
from reftflow.prompting import item_dict, prompt_text

log = logging.getLogger(__name__)

GradeFn = Callable[[list[str], list[dict]], list[float]]
CHECKPOINT_PREFIX = "step-"
STATE_FILE = "trainer_state.pt"
META_FILE = "meta.json"


class TrainingDiverged(ValueError):
    """A NaN/inf reward, loss or gradient: the run stops before anything reaches out_dir."""


def _mix(*parts) -> int:
    """A 63-bit seed from any parts, stable across processes and Python runs."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _atomic_replace_dir(tmp: Path, dest: Path) -> None:
    """Move a fully written `tmp` dir to `dest`, replacing any previous one."""
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


class PPOTrainer:
    """ReFT-style PPO from an SFT model against a grader.

    Args:
        policy_path: the SFT model dir; it is both the starting policy and the frozen reference.
        train_records: the questions (and reference answers the grader sees through `item_dict`).
        cfg: the `ppo` section of params.yaml.
        grade_fn: `(output_texts, items) -> scores in [0, 1]`.
        out_dir: where the final policy (HF dir + tokenizer + value_head.safetensors) goes.
        checkpoint_dir: resumable checkpoints; an existing one of the same run is resumed.
        seed: the run seed.
        torch_threads: >0 sets torch's thread count (per process).
    """

    def __init__(
        self,
        policy_path: str | Path,
        train_records: list[Record],
        cfg: PPOConfig,
        grade_fn: GradeFn,
        out_dir: str | Path,
        checkpoint_dir: str | Path,
        seed: int,
        torch_threads: int = 0,
    ):
        from accelerate import Accelerator
        from transformers import get_scheduler

        set_threads(torch_threads)
        if not train_records:
            raise ValueError("PPO needs at least one training question")
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.world_size = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.is_main_process = self.accelerator.is_main_process
        if cfg.questions_per_step % self.world_size:
            raise ValueError(
                f"ppo.questions_per_step={cfg.questions_per_step} must be a multiple of the "
                f"number of processes ({self.world_size}) so every process does the same updates"
            )
        self.cfg, self.grade_fn, self.seed = cfg, grade_fn, seed
        self.policy_path, self.out_dir, self.checkpoint_dir = Path(policy_path), Path(out_dir), Path(checkpoint_dir)
        self.records = list(train_records)
        self.stop_reason: str | None = None
        self.step = 0
        self.rollouts_done = 0
        """rollouts sampled by this process (the multi-process test checks each took part)."""
        self._perms: dict[int, list[int]] = {}
        self._fingerprint = self._make_fingerprint()

        resume_from = self._find_checkpoint()
        start = resume_from or self.policy_path
        policy, self.tokenizer = PolicyWithValue.from_pretrained(start, value_init_std=cfg.value_init_std)
        self.tokenizer.padding_side = "left"
        policy.eval()  # no dropout: old, new and reference log-probs must come from the same function
        self.ref, _ = load_model(self.policy_path)
        self.ref.eval().requires_grad_(False)
        self.ref.to(self.accelerator.device)

        # prompts are tokenised once; the loop only pads ids
        self._prompt_tokens = self.tokenizer([prompt_text(r.question) for r in self.records])["input_ids"]
        self._items = [item_dict(r) for r in self.records]

        optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        # stepped once per PPO step (not wrapped by accelerate, which would step it once per process)
        self.scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=0, num_training_steps=cfg.steps)
        if resume_from is not None:
            self._load_state(resume_from, optimizer)
        self.model, self.optimizer = self.accelerator.prepare(policy, optimizer)

    # -- public loop ---------------------------------------------------------------------------
    def train(self) -> Iterator[dict[str, float]]:
        """Run the remaining steps; yield each step's metrics (main process only), then save."""
        cfg = self.cfg
        while self.step < cfg.steps and self.stop_reason is None:
            metrics = self._train_step()
            if cfg.max_kl > 0 and metrics["ppo/kl"] > cfg.max_kl:
                self.stop_reason = (
                    f"kl_bound: mean KL to the reference {metrics['ppo/kl']:.4g} nats/sequence exceeded "
                    f"ppo.max_kl={cfg.max_kl:g} at step {self.step}; stopped early and kept this policy"
                )
            if self.is_main_process:
                yield metrics
            if self.stop_reason:
                if self.is_main_process:
                    log.warning(self.stop_reason)
                break
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self.save_checkpoint()
        self._save_final()

    # -- one step --------------------------------------------------------------------------------
    def _step_questions(self, step: int) -> list[int]:
        """This process's question indices for `step`: a seeded pass over the data, epoch by epoch."""
        n, q = len(self.records), self.cfg.questions_per_step
        picked = []
        for pos in range((step - 1) * q, step * q):
            epoch = pos // n
            if epoch not in self._perms:
                perm = list(range(n))
                random.Random(_mix(self.seed, "epoch", epoch)).shuffle(perm)
                self._perms = {**{e: p for e, p in self._perms.items() if e >= epoch - 1}, epoch: perm}
            picked.append(self._perms[epoch][pos % n])
        return picked[self.rank :: self.world_size]

    def _train_step(self) -> dict[str, float]:
        cfg, acc = self.cfg, self.accelerator
        device = acc.device
        step = self.step + 1
        t_step = time.perf_counter()
        torch.manual_seed(_mix(self.seed, step, self.rank, "sample"))

        # 1. sample K answers for each of this process's questions
        questions = self._step_questions(step)
        K = cfg.samples_per_question
        prompts = [self._prompt_tokens[i] for i in questions for _ in range(K)]
        items = [self._items[i] for i in questions for _ in range(K)]
        t0 = time.perf_counter()
        ro = rollout.sample(self.model, self.tokenizer, prompts, cfg.max_new_tokens, cfg.temperature, group_size=K)
        t_generate = time.perf_counter() - t0
        self.rollouts_done += len(prompts)

        # 2. grade
        t0 = time.perf_counter()
        scores_list = self.grade_fn(ro.texts, items)
        if len(scores_list) != len(ro.texts):
            raise ValueError(f"grade_fn returned {len(scores_list)} scores for {len(ro.texts)} outputs")
        scores = torch.tensor([float(s) for s in scores_list], dtype=torch.float32)
        self._guard(torch.isfinite(scores).all(), step, "reward", f"grader returned {scores.tolist()[:8]}...")
        t_score = time.perf_counter() - t0

        # 3. old log-probs and values came with the samples (rollout.sample); one no-grad forward of
        #    the frozen reference remains, on shapes rounded to a multiple of 8 (few distinct shapes)
        ro = ro.trimmed(8)
        input_ids, attn = ro.input_ids().to(device), ro.attention_mask().to(device)
        mask, scores = ro.response_mask.to(device), scores.to(device)
        old_logp, old_values = ro.logprobs.to(device), ro.values.to(device)
        R, B = ro.response_ids.shape[1], input_ids.shape[0]
        # minibatches hold whole questions (K samples each), so every forward shares prompts K-fold
        # (value_head.response_hidden): minibatch_size rounds down to a multiple of K
        mbq = max(1, cfg.minibatch_size // self.world_size // K)
        mb = mbq * K
        t0 = time.perf_counter()
        with torch.no_grad():
            ref_logp = torch.cat([
                response_logprobs(self.ref, input_ids[s : s + mb], attn[s : s + mb], R, cfg.temperature, group_size=K)
                for s in range(0, B, mb)
            ])
        t_forward = time.perf_counter() - t0

        # 4. rewards: KL penalty per token + score at the last token; GAE; whitening
        with torch.no_grad():
            kl = kl_penalty(old_logp, ref_logp, cfg.kl_estimator) * mask
            rewards = shape_rewards(scores, kl, mask, cfg.kl_coef)
            use_critic = cfg.advantage_estimator == "gae"
            if use_critic:
                advantages, returns = compute_gae(rewards, old_values * mask, mask, cfg.gamma, cfg.lam)
            else:
                advantages = group_advantages(rewards.sum(1), mask, K, cfg.advantage_estimator)
                returns = rewards.flip(1).cumsum(1).flip(1) * mask  # reward-to-go (gamma 1): a metric only
            if cfg.whiten_advantages:
                advantages = masked_whiten(advantages, mask)
            if cfg.negative_advantage_scale != 1.0:
                advantages = torch.where(advantages < 0, advantages * cfg.negative_advantage_scale, advantages)

        # 5. PPO epochs of minibatch updates
        t0 = time.perf_counter()
        lr = self.scheduler.get_last_lr()[0]
        stats: dict[str, list[torch.Tensor]] = {}
        gen = torch.Generator().manual_seed(_mix(self.seed, step, self.rank, "minibatch"))
        for _ in range(cfg.ppo_epochs):
            groups = torch.randperm(B // K, generator=gen)
            for s in range(0, B // K, mbq):
                idx = (groups[s : s + mbq, None] * K + torch.arange(K)).flatten().to(device)
                logp, values, entropy = self.model(
                    input_ids[idx], attn[idx], R, cfg.temperature, with_entropy=True, entropy_grad=cfg.ent_coef > 0,
                    group_size=K,
                )
                m = mask[idx]
                pg_loss, pg_stats = policy_loss(logp, old_logp[idx], advantages[idx], m, cfg.clip_range)
                if use_critic:
                    v_loss, v_stats = value_loss(values, old_values[idx], returns[idx], m, cfg.value_clip_range)
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
                             "ppo/entropy": ent.detach(), "ppo/loss": loss.detach(), "ppo/grad_norm": grad_norm}.items():
                    stats.setdefault(k, []).append(torch.as_tensor(v, dtype=torch.float32).detach().cpu())
        self.scheduler.step()
        t_update = time.perf_counter() - t0

        # 6. metrics, averaged over processes
        with torch.no_grad():
            seq_kl = kl.sum(1)
            local = {k: torch.stack(v).mean() for k, v in stats.items()}
            local.update({
                "ppo/reward_mean": scores.mean(),
                "ppo/reward_std": scores.std() if B > 1 else torch.zeros(()),
                "ppo/accuracy": (scores >= 1.0).float().mean(),
                "ppo/kl": seq_kl.mean(),
                "ppo/kl_coef_x_kl": cfg.kl_coef * seq_kl.mean(),
                "ppo/response_length": mask.sum(1).mean(),
                "ppo/eos_fraction": (ro.response_ids == self.tokenizer.eos_token_id).any(1).float().mean(),
                "ppo/advantage_mean": masked_mean(advantages, mask),
                "ppo/return_mean": masked_mean(returns, mask),
                "value/old_mean": masked_mean(old_values, mask),
            })
        keys = sorted(local)
        vec = torch.stack([local[k].float().cpu() for k in keys])
        if self.world_size > 1:
            vec = acc.reduce(vec.to(device), reduction="mean").cpu()
        metrics: dict[str, float] = {k: float(x) for k, x in zip(keys, vec.tolist())}
        self.step = step
        t_total = time.perf_counter() - t_step
        episodes = cfg.questions_per_step * cfg.samples_per_question
        metrics.update({
            "step": step,
            "ppo/lr": lr,
            "ppo/episodes": episodes,
            "ppo/episodes_per_s": episodes / t_total,
            "time/generate_s": t_generate,
            "time/score_s": t_score,
            "time/forward_s": t_forward,
            "time/update_s": t_update,
            "time/other_s": t_total - t_generate - t_forward - t_update,
            "time/step_s": t_total,
        })
        return metrics

    def _guard(self, ok: torch.Tensor, step: int, what: str, detail: str, reduce: bool = True) -> None:
        """Raise TrainingDiverged when `ok` is false (on any process, when `reduce`)."""
        bad = (~ok.bool()).float().reshape(1).to(self.accelerator.device)
        if reduce and self.world_size > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item() > 0:
            raise TrainingDiverged(f"PPO diverged at step {step}: non-finite {what} ({detail}); nothing was saved to {self.out_dir}")

    # -- checkpoints -----------------------------------------------------------------------------
    def _make_fingerprint(self) -> str:
        """Identifies the run a checkpoint belongs to: a changed config or data starts afresh."""
        data = hashlib.sha256("\n".join(f"{r.id}\t{r.question}\t{r.answer}" for r in self.records).encode()).hexdigest()
        blob = json.dumps({"cfg": self.cfg.model_dump(), "seed": self.seed, "policy": str(self.policy_path.resolve()),
                           "data": data}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _find_checkpoint(self) -> Path | None:
        """The newest complete checkpoint of this run in checkpoint_dir, if any."""
        if not self.checkpoint_dir.is_dir():
            return None
        found = sorted(p for p in self.checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir())
        for path in reversed(found):
            try:
                meta = json.loads((path / META_FILE).read_text())
            except (OSError, ValueError):
                continue
            if meta.get("fingerprint") == self._fingerprint:
                return path
            if self.is_main_process:
                log.warning("ignoring checkpoint %s: it belongs to a different config, seed or data set", path)
        return None

    def _load_state(self, path: Path, optimizer: torch.optim.Optimizer) -> None:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        rng_file = path / f"rng_state_{self.rank}.pt"
        if rng_file.exists():
            rng = torch.load(rng_file, map_location="cpu", weights_only=False)
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
            if rng.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        if self.is_main_process:
            log.info("resumed PPO from %s (step %d of %d)", path, self.step, self.cfg.steps)

    def save_checkpoint(self) -> Path:
        """Policy, value head, optimizer, scheduler, RNG states and step, written atomically."""
        acc = self.accelerator
        final = self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{self.step:06d}"
        tmp = self.checkpoint_dir / f".tmp-{CHECKPOINT_PREFIX}{self.step:06d}"
        if self.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        torch.save(rng, tmp / f"rng_state_{self.rank}.pt")
        if self.is_main_process:
            acc.unwrap_model(self.model).save(tmp, self.tokenizer)
            torch.save({"step": self.step, "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(), "world_size": self.world_size}, tmp / STATE_FILE)
        acc.wait_for_everyone()
        if self.is_main_process:
            # meta.json last: a checkpoint counts only once it is complete and renamed
            (tmp / META_FILE).write_text(json.dumps({"fingerprint": self._fingerprint, "step": self.step}))
            _atomic_replace_dir(tmp, final)
            for old in self.checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*"):
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def _save_final(self) -> None:
        """The final policy to out_dir (temp dir + rename); this run's checkpoints are then removed."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if self.is_main_process:
            self.out_dir.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.out_dir.with_name(f".{self.out_dir.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            acc.unwrap_model(self.model).save(tmp, self.tokenizer)
            _atomic_replace_dir(tmp, self.out_dir)
            for old in self.checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*"):
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()


def numeric_reward(output_texts: list[str], items: list[dict]) -> list[float]:
    """The ReFT reward (§3.2): 1 for the right final answer, 0.1 for a wrong but extractable one, else 0.

    A stand-in with the grader contract for tests and benchmarks; the pipeline uses reftflow.graders.
    """
    from reftflow.answers import extract_answer, numbers_match, parse_number

    out = []
    for text, item in zip(output_texts, items):
        got = extract_answer(text, "gsm8k")
        if got is None:
            out.append(0.0)
        else:
            out.append(1.0 if numbers_match(parse_number(got), parse_number(str(item["answer"]))) else 0.1)
    return out


__all__ = ["PPOTrainer", "TrainingDiverged", "numeric_reward"]
