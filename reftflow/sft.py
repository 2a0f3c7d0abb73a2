"""SFT warm-up with TRL's SFTTrainer: prompt/completion pairs, loss on the completion only.

ReFT (Luong et al., 2024, §3.1) warms the policy up on worked solutions before RL. Answer-only
items have no solution to imitate, so SFT skips them; the RL stage uses every question.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from reftflow.config import ModelConfig, SFTConfig
from reftflow.data.records import Record
from reftflow.prompting import count_too_long, render_prompt


def sft_examples(records: list[Record], tokenizer=None) -> list[dict[str, str]]:
    """TRL's prompt-completion format (prompts rendered as everywhere else); only items with a
    reference completion."""
    return [{"prompt": render_prompt(r, tokenizer), "completion": r.completion} for r in records if r.completion]


def train_sft(records: list[Record], model_cfg: ModelConfig, cfg: SFTConfig, out_dir: str | Path, seed: int,
              on_log: Callable[[int, dict[str, float]], None] | None = None, work_dir: str | Path | None = None,
              init_from: str | Path | None = None, time_limit_s: float | None = None,
              base_dir: str | Path | None = None, checkpoint_dir: str | Path | None = None) -> dict[str, float]:
    """Train, save a normal HF model dir (+ tokenizer) to `out_dir`, return summary metrics.

    `on_log(step, metrics)` receives the trainer's periodic logs (loss, lr, ...): the caller logs them.
    `init_from` continues from a saved model instead of `model_cfg`'s; `time_limit_s` stops training
    after that much wall time (the benchmark's time-matched "SFT continued" arm). `too_long` counts the
    examples longer than `model.max_length` tokens, which TRL truncates. `base_dir` is the `base` stage's
    models/base (see `modeling.init_model`). With `model.lora` set, adapters are trained and merged into
    the saved model. `checkpoint_dir`: Trainer checkpoints every `cfg.checkpoint_every` steps and at the
    end go there, and the newest complete one is resumed (model, optimizer, scheduler, RNG, data
    position), so the caller keys the directory by the run's inputs and removes it once done.
    """
    import shutil
    import tempfile

    from datasets import Dataset
    from trl import SFTTrainer

    from reftflow import trainer_checkpoints
    from reftflow.distributed import same_everywhere
    from reftflow.lora import peft_config, trainable_parameters
    from reftflow.modeling import context_length, count_parameters, init_model, load_model, save_trained

    model, tokenizer = load_model(init_from) if init_from else init_model(model_cfg, seed, base_dir)
    examples = sft_examples(records, tokenizer)
    if not examples:
        raise ValueError("no training item has a reference completion: nothing for SFT to imitate")
    max_length = context_length(model_cfg, model)
    too_long = count_too_long(tokenizer, [e["prompt"] + e["completion"] for e in examples], max_length)
    tokenizer.padding_side = "right"  # training pads on the right; generation switches to left
    hooks = _hooks(on_log, time_limit_s)
    out_dir = Path(out_dir)
    work = Path(checkpoint_dir or work_dir or tempfile.mkdtemp(prefix="reftflow-sft-"))
    resume = trainer_checkpoints.last_complete(work) if checkpoint_dir else None
    args = _trl_config(cfg, model_cfg, work, seed, max_length, checkpoints=checkpoint_dir is not None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                         processing_class=tokenizer,
                         callbacks=[hooks, trainer_checkpoints.mark_complete_callback()],
                         peft_config=peft_config(model_cfg.lora) if model_cfg.lora else None)
    trainable = trainable_parameters(trainer.model)
    same_everywhere(resume and resume.name, "the SFT checkpoint to resume")
    if resume is not None:
        print(f"sft: resuming from {resume} (step {trainer_checkpoints.global_step(resume)})", flush=True)
        if on_log:  # the resumed run's record and curve start at step 1, as an uninterrupted one's do
            for entry in trainer_checkpoints.log_history(resume):
                on_log(int(entry["step"]), entry)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    wall_s = time.perf_counter() - hooks.started
    tokenizer.padding_side = "left"
    save_trained(trainer, tokenizer, out_dir)
    if work_dir is None and checkpoint_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return {"train_loss": float(result.training_loss), "train_examples": float(len(examples)),
            "train_runtime_s": float(result.metrics.get("train_runtime", 0.0)), "wall_s": wall_s,
            "global_steps": float(result.global_step), "parameters": float(count_parameters(model)),
            "trainable_parameters": float(trainable), "too_long": float(too_long), "max_length": float(max_length),
            "resumed_from_step": float(trainer_checkpoints.global_step(resume)) if resume else 0.0}


def _hooks(on_log: Callable[[int, dict[str, float]], None] | None, time_limit_s: float | None):
    """A TrainerCallback that hands the Trainer's logs to `on_log`, stops training after `time_limit_s`
    seconds, and keeps when training began (`.started`)."""
    from transformers import TrainerCallback

    class Hooks(TrainerCallback):
        started = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if time_limit_s is not None and time.perf_counter() - self.started >= time_limit_s:
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if on_log and logs:
                on_log(state.global_step, {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})

    return Hooks()


def _trl_config(cfg: SFTConfig, model_cfg: ModelConfig, work: Path, seed: int, max_length: int,
                checkpoints: bool = False):
    """The `sft` section as TRL's SFTConfig: completion-only loss, no reporting; bf16 autocast and
    gradient checkpointing as `model` says (on a GPU). With `checkpoints`, a full checkpoint every
    `cfg.checkpoint_every` steps and at the end (the Trainer's own end-of-training save); two are kept
    so that a kill while the newest is written leaves the one before."""
    from trl import SFTConfig as TRLSFTConfig

    from reftflow import fsdp
    from reftflow.modeling import device_and_precision

    device, bf16 = device_and_precision(model_cfg)
    return TRLSFTConfig(
        output_dir=str(work),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=per_process_batch(cfg.batch_size, "sft.batch_size"),
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if checkpoints and cfg.checkpoint_every else "no",
        save_steps=cfg.checkpoint_every or 500,
        save_total_limit=2,
        report_to="none",
        seed=seed,
        data_seed=seed,
        max_length=max_length,
        completion_only_loss=True,
        use_cpu=device.type != "cuda",
        bf16=bf16,  # accelerate's autocast, on the CPU too where it is native (reftflow/precision.py)
        dataloader_num_workers=0,
        disable_tqdm=False,
        **fsdp.trl_args(model_cfg.fsdp, model_cfg.gradient_checkpointing),
    )


def per_process_batch(batch_size: int, key: str) -> int:
    """`batch_size` (one optimizer step's examples) split over the processes torchrun started: the same
    training whatever the number of processes (the Trainer's batch is per process)."""
    import os

    from reftflow.errors import InputError

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if batch_size % world:
        raise InputError(f"{key}={batch_size} is not a multiple of the {world} processes: each takes an equal share")
    return batch_size // world
