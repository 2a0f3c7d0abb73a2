"""GRPO through TRL's GRPOTrainer, on the same data, grader and PPO config section.

The alternative RL algorithm (`ppo.algorithm: grpo`): no value head; advantages are each sample's
reward relative to the other samples of its question (Shao et al., 2024, DeepSeekMath §4.1).
Sizes map from `PPOConfig` so a comparison with our PPO uses the same model, K and batch:
one generation batch = `questions_per_step` × K completions, reused for `ppo_epochs` passes
(TRL's `num_iterations`) in minibatches of `minibatch_size`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

from reftflow.config import PPOConfig
from reftflow.data.records import Record
from reftflow.prompting import item_dict, prompt_text


def grpo_sizes(cfg: PPOConfig) -> dict[str, int]:
    rollouts = cfg.questions_per_step * cfg.samples_per_question
    minibatch = min(cfg.minibatch_size, rollouts)
    # TRL needs the per-device batch to hold whole groups of K completions
    minibatch = max(cfg.samples_per_question, minibatch - minibatch % cfg.samples_per_question)
    steps_per_generation = max(1, rollouts // minibatch)
    return {
        "per_device_train_batch_size": minibatch,
        "steps_per_generation": steps_per_generation,
        "num_iterations": cfg.ppo_epochs,
        "max_steps": cfg.steps * steps_per_generation * cfg.ppo_epochs,
        "optimizer_steps_per_rl_step": steps_per_generation * cfg.ppo_epochs,
    }


def train_grpo(policy_path: str | Path, records: list[Record], cfg: PPOConfig, grader, out_dir: str | Path,
               seed: int, work_dir: str | Path | None = None, time_limit_s: float | None = None,
               torch_threads: int = 0) -> Iterator[dict[str, float]]:
    """Train with GRPOTrainer, save a HF model dir to `out_dir`, then yield one metrics dict per RL step
    (TRL logs per optimizer step; those are grouped back into RL steps of one generation batch).

    `time_limit_s` stops training at the first RL-step boundary after that many seconds of training
    (a wall-time-matched comparison with PPO); the model trained so far is saved as usual. Each RL
    step's metrics carry `time/step_s` and `grpo/episodes_per_s` (an episode = one sampled, graded
    and trained-on completion), measured from the trainer's step boundaries.
    """
    import tempfile
    import time

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from reftflow.graders import as_reward_function
    from reftflow.modeling import load_model, save_trained, set_threads

    set_threads(torch_threads)
    model, tok = load_model(policy_path)
    sizes = grpo_sizes(cfg)
    per_rl_step = sizes["optimizer_steps_per_rl_step"]
    rows = [{"prompt": prompt_text(r.question), **{k: v if v is not None else "" for k, v in item_dict(r).items()}}
            for r in records]
    collected: list[tuple[int, dict[str, float]]] = []
    step_ends: dict[int, float] = {}
    """optimizer step -> wall time at its end (0: when training began)."""

    class _Collect(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            step_ends[0] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = step_ends[state.global_step] = time.perf_counter()
            if (time_limit_s is not None and state.global_step % per_rl_step == 0
                    and now - step_ends[0] >= time_limit_s):
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:  # per-optimizer-step logs, not the final summary
                collected.append((state.global_step, {k: float(v) for k, v in logs.items()
                                                      if isinstance(v, (int, float))}))

    work = Path(work_dir or tempfile.mkdtemp(prefix="reftflow-grpo-"))
    args = GRPOConfig(
        output_dir=str(work),
        per_device_train_batch_size=sizes["per_device_train_batch_size"],
        steps_per_generation=sizes["steps_per_generation"],
        num_iterations=sizes["num_iterations"],
        max_steps=sizes["max_steps"],
        num_generations=cfg.samples_per_question,
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=0,
        top_p=1.0,
        beta=cfg.kl_coef,
        epsilon=cfg.clip_range,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=as_reward_function(grader), args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[_Collect()])
    trainer.train()
    save_trained(trainer, tok, out_dir)
    if work_dir is None:
        shutil.rmtree(work, ignore_errors=True)

    episodes = cfg.questions_per_step * cfg.samples_per_question
    for rl_step in range(cfg.steps):
        first, last = rl_step * per_rl_step, (rl_step + 1) * per_rl_step
        chunk = [m for s, m in collected if first < s <= last]
        if not chunk:
            continue
        keys = {k for m in chunk for k in m}
        mean = {k: sum(m[k] for m in chunk if k in m) / sum(1 for m in chunk if k in m) for k in keys}
        timing = {}
        if first in step_ends and last in step_ends:
            step_s = step_ends[last] - step_ends[first]
            timing = {"time/step_s": step_s, "grpo/episodes_per_s": episodes / step_s if step_s > 0 else float("nan")}
        yield {"step": rl_step + 1, **timing, "ppo/reward_mean": mean.get("reward", float("nan")),
               "ppo/kl": mean.get("kl", 0.0), "ppo/entropy": mean.get("entropy", float("nan")),
               "ppo/policy_loss": mean.get("loss", float("nan")), "ppo/lr": mean.get("learning_rate", cfg.lr),
               **{f"grpo/{k.replace('/', '_')}": v for k, v in mean.items()}}
