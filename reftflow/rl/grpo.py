"""GRPO through TRL's GRPOTrainer, on the same data and grader as our algorithms (`rl.algorithm: grpo`).

No value head; advantages are each sample's reward relative to the other samples of its question
(Shao et al., 2024, DeepSeekMath §4.1). Sizes map from the `rl` section so a comparison with our PPO
uses the same model, K and batch: one generation batch = `questions_per_step` × K completions,
reused for `rl.grpo.epochs` passes (TRL's `num_iterations`) in minibatches of `rl.grpo.minibatch_size`.

TRL's `train()` runs to the end in one call, so it runs in a worker thread that pauses at every
RL-step boundary until the caller asks for the next step: `train()` is then a real generator like
our PPO's, and a caller that stops iterating stops training at that boundary. Checkpoints are TRL's
own (`checkpoint-N/` every `rl.checkpoint_every` RL steps, in `checkpoint_dir`); a killed run resumes
from the newest complete one (`reftflow.trainer_checkpoints`).
"""

from __future__ import annotations

import json
import queue
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from reftflow.config import RLConfig
from reftflow.graders.reward_fn import ITEM_COLUMN
from reftflow.prompting import render_prompt
from reftflow.rl import RLRun


def grpo_sizes(cfg: RLConfig) -> dict[str, int]:
    section = cfg.grpo
    rollouts = cfg.questions_per_step * cfg.samples_per_question
    minibatch = min(section.minibatch_size, rollouts)
    # TRL needs the per-device batch to hold whole groups of K completions
    minibatch = max(cfg.samples_per_question, minibatch - minibatch % cfg.samples_per_question)
    steps_per_generation = max(1, rollouts // minibatch)
    return {
        "per_device_train_batch_size": minibatch,
        "steps_per_generation": steps_per_generation,
        "num_iterations": section.epochs,
        "max_steps": cfg.steps * steps_per_generation * section.epochs,
        "optimizer_steps_per_rl_step": steps_per_generation * section.epochs,
    }


def rl_step_metrics(chunk: list[dict[str, float]], cfg: RLConfig, grader_name: str, step_s: float | None
                    ) -> dict[str, float]:
    """One RL step's metrics from TRL's logs of its optimizer steps, under the protocol's names
    (`reftflow.graders.as_reward_function` logs `<grader>/accuracy` and `<grader>/error_rate`)."""
    keys = {k for m in chunk for k in m}
    mean = {k: sum(m[k] for m in chunk if k in m) / sum(1 for m in chunk if k in m) for k in keys}
    episodes = cfg.questions_per_step * cfg.samples_per_question
    timing = {} if step_s is None else {"time/step_s": step_s,
                                        "rl/episodes_per_s": episodes / step_s if step_s > 0 else float("nan")}
    return {**timing, "train_reward_mean": mean.get("reward", float("nan")),
            "rl/accuracy": mean.get(f"{grader_name}/accuracy", float("nan")),
            "rl/grader_error_rate": mean.get(f"{grader_name}/error_rate", float("nan")),
            "rl/reward_std": mean.get("reward_std", float("nan")), "rl/kl": mean.get("kl", 0.0),
            "rl/entropy": mean.get("entropy", float("nan")), "rl/lr": mean.get("learning_rate", cfg.grpo.lr),
            "rl/episodes": episodes, **{f"grpo/{k.replace('/', '_')}": v for k, v in mean.items()}}


class GRPOAlgorithm:
    """TRL GRPO behind the `reftflow.rl` protocol."""

    def __init__(self, run: RLRun):
        from datasets import Dataset
        from trl import GRPOTrainer

        from reftflow import trainer_checkpoints
        from reftflow.distributed import same_everywhere
        from reftflow.graders import as_reward_function
        from reftflow.lora import peft_config
        from reftflow.modeling import load_model

        cfg = run.cfg
        self.cfg, self.out_dir, self.stop_reason = cfg, Path(run.out_dir), None
        model, self.tokenizer = load_model(run.policy_path)
        sizes = grpo_sizes(cfg)
        self.per_rl_step = sizes["optimizer_steps_per_rl_step"]
        self._work = None if run.checkpoint_dir else tempfile.TemporaryDirectory(prefix="reftflow-grpo-")
        work = Path(run.checkpoint_dir) if run.checkpoint_dir else Path(self._work.name)
        self.resume_from = trainer_checkpoints.last_complete(work) if run.checkpoint_dir else None
        self.step = trainer_checkpoints.global_step(self.resume_from) // self.per_rl_step if self.resume_from else 0
        # the item travels as one JSON column: a dataset cannot hold items whose fields differ in type
        rows = [{"prompt": render_prompt(r, self.tokenizer), ITEM_COLUMN: json.dumps(r.item)} for r in run.records]
        self._lockstep = _Lockstep(self.per_rl_step, cfg, run.grader.name)
        self.trainer = GRPOTrainer(model=model, reward_funcs=as_reward_function(run.grader),
                                   args=_trl_config(run, sizes, work), train_dataset=Dataset.from_list(rows),
                                   processing_class=self.tokenizer,
                                   callbacks=[self._lockstep.callback(), trainer_checkpoints.mark_complete_callback()],
                                   peft_config=peft_config(run.model.lora) if run.model.lora else None)
        same_everywhere(self.resume_from and self.resume_from.name, "the GRPO checkpoint to resume")

    @property
    def lm(self):
        return self.trainer.model

    def train(self) -> Iterator[dict[str, float]]:
        """TRL's training in a worker thread, one RL step per `next()`."""
        resume = str(self.resume_from) if self.resume_from else None
        worker = threading.Thread(target=self._lockstep.run, args=(lambda: self.trainer.train(resume),), daemon=True)
        worker.start()
        try:
            while (metrics := self._lockstep.next_step()) is not None:
                self.step += 1
                yield {"step": self.step, **metrics}
        finally:
            self._lockstep.stop()
            worker.join()
        self._lockstep.raise_error()

    def save(self) -> None:
        from reftflow.modeling import save_trained

        save_trained(self.trainer, self.tokenizer, self.out_dir)
        if self._work is not None:
            self._work.cleanup()


def _trl_config(run: RLRun, sizes: dict[str, int], work: Path):
    """The `rl` section as TRL's GRPOConfig: sampling as our sampler's (top_k 0, top_p 1), a checkpoint every
    `rl.checkpoint_every` RL steps when the stage keeps them, precision by `model.bf16`."""
    from trl import GRPOConfig

    from reftflow import fsdp
    from reftflow.modeling import device_and_precision

    cfg, section = run.cfg, run.cfg.grpo
    device, bf16 = device_and_precision(run.model)
    checkpoints = run.checkpoint_dir is not None and cfg.checkpoint_every > 0
    return GRPOConfig(
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
        beta=section.beta,
        epsilon=section.epsilon,
        learning_rate=section.lr,
        lr_scheduler_type=section.lr_scheduler,
        weight_decay=section.weight_decay,
        max_grad_norm=section.max_grad_norm,
        logging_steps=1,
        save_strategy="steps" if checkpoints else "no",
        save_steps=cfg.checkpoint_every * sizes["optimizer_steps_per_rl_step"] if checkpoints else 500,
        save_total_limit=2,
        report_to="none",
        seed=run.seed,
        data_seed=run.seed,
        use_cpu=device.type != "cuda",
        bf16=bf16,
        dataloader_num_workers=0,
        **fsdp.trl_args(run.model.fsdp, run.model.gradient_checkpointing),
    )


class _Lockstep:
    """Hands TRL's per-RL-step metrics from the training thread to the caller, one step at a time."""

    _DONE = object()

    def __init__(self, per_rl_step: int, cfg: RLConfig, grader_name: str):
        self.per_rl_step, self.cfg, self.grader_name = per_rl_step, cfg, grader_name
        self._out: queue.Queue = queue.Queue(maxsize=1)
        self._go = threading.Semaphore(0)
        self._stopped = threading.Event()
        self._finished = False
        """the worker's end was received by the caller."""
        self._error: BaseException | None = None

    def run(self, train) -> None:
        try:
            train()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            self._error = e
        finally:
            self._out.put(self._DONE)

    def next_step(self) -> dict[str, float] | None:
        self._go.release()
        item = self._out.get()
        self._finished = item is self._DONE
        return None if self._finished else item

    def stop(self) -> None:
        """Let the worker stop at its next pause and wait for it to finish."""
        self._stopped.set()
        self._go.release()
        while not self._finished:
            self._finished = self._out.get() is self._DONE
            self._go.release()

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def callback(self):
        from transformers import TrainerCallback

        lock = self
        collected: list[dict[str, float]] = []
        step_ends: dict[int, float] = {}

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                step_ends[0] = time.perf_counter()
                lock._go.acquire()  # wait for the first next()

            def on_step_end(self, args, state, control, **kwargs):
                step_ends[state.global_step] = time.perf_counter()

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:  # per-optimizer-step logs, not the final summary
                    collected.append({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})
                if state.global_step % lock.per_rl_step or not collected:
                    return
                first = state.global_step - lock.per_rl_step
                step_s = step_ends[state.global_step] - step_ends[first] if first in step_ends else None
                lock._out.put(rl_step_metrics(collected, lock.cfg, lock.grader_name, step_s))
                collected.clear()
                lock._go.acquire()  # pause until the caller wants the next step
                if lock._stopped.is_set():
                    control.should_training_stop = True

        return _Callback()
