"""The RL stage's loop around any algorithm of the protocol: the run's checkpoint identity, the
validation curve, the progress bar, and every step logged (and replayed after a resume). `tasks/rl.py`
wires it to the stage's files and its MLflow run (and relaunches under torchrun: reftflow/distributed.py).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from reftflow import paths
from reftflow.config import Params, RLConfig

CURVE_KEYS = ["train_reward_mean", "valid_reward_mean", "accuracy", "kl", "ppo_value_loss", "entropy", "ppo_clipfrac",
              "raft_kept"]
"""the panels of plots/rl_curves.png (an algorithm that does not report one skips it)."""

CURVE_LOG = "metrics.jsonl"
"""every step's metrics, beside the checkpoints: a resumed run's record and curve start at step 1."""


def checkpoint_dir(params: Params) -> Path:
    """The run's identity, computed once: checkpoints under it are resumed only by a run with the same
    RL config (the shared keys and the chosen algorithm's), seed, grader, model training keys, training
    data and SFT model (each SFT file's name, size and mtime: a re-trained model rewrites them; no need
    to hash GBs)."""
    from reftflow.io import file_md5

    cfg = params.rl
    sft = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in paths.SFT_MODEL.iterdir() if f.is_file())
    shared = cfg.model_dump(exclude={"ppo", "raft", "grpo"})
    key = json.dumps({"rl": shared, cfg.algorithm: cfg.algo.model_dump(),
                      "lora": params.model.lora and params.model.lora.model_dump(), "bf16": params.model.bf16,
                      **({"fsdp": True} if params.model.fsdp else {}),  # its optimizer state is saved otherwise
                      "seed": params.seed, "grader": params.grader, "sft": sft, "train": file_md5(paths.TRAIN)},
                     sort_keys=True)
    return paths.CHECKPOINTS / "rl" / hashlib.md5(key.encode()).hexdigest()[:12]


def curve_row(metrics: dict[str, float]) -> dict[str, float]:
    """A metrics dict as a CSV row: `rl/kl` → `kl`, `ppo/clipfrac` → `ppo_clipfrac`."""
    return {"step": int(metrics["step"]), **{k.removeprefix("rl/").replace("/", "_"): v
                                             for k, v in metrics.items() if k != "step"}}


def validate(algo, val, grader, cfg: RLConfig, bf16: bool) -> dict[str, float]:
    """Greedy answers of the policy being trained to the first `eval_samples` held-out items, graded."""
    from reftflow.generation import generate_greedy
    from reftflow.graders.base import FULL_MARKS
    from reftflow.prompting import render_prompt

    items = val[: cfg.eval_samples]
    outputs = generate_greedy(algo.lm, algo.tokenizer, [render_prompt(r, algo.tokenizer) for r in items],
                              cfg.max_new_tokens, bf16=bf16)
    scores = [res.score for res in grader.grade_many(outputs, [r.item for r in items])]
    return {"valid_reward_mean": sum(scores) / len(scores),
            "valid_pass_rate": sum(s >= FULL_MARKS for s in scores) / len(scores)}


def report_too_long(algo, records, cfg: RLConfig, run_log) -> None:
    """Prompts that leave no room for `max_new_tokens` in the model's context: counted and said, not cut."""
    from reftflow.prompting import count_too_long, render_prompt

    context = getattr(algo.lm.config, "max_position_embeddings", None)
    if not context:
        return
    n = count_too_long(algo.tokenizer, [render_prompt(r, algo.tokenizer) for r in records], context - cfg.max_new_tokens)
    run_log.log_metrics({"rl/prompts_too_long": n})
    if n:
        print(f"rl: warning: {n} of {len(records)} prompts leave fewer than rl.max_new_tokens={cfg.max_new_tokens} "
              f"tokens of the model's {context}-token context", file=sys.stderr)


def replay_curve(ckpt: Path, resumed_step: int, run_log) -> list[dict[str, float]]:
    """The steps a killed run already did (up to the checkpoint it resumes from), logged again to this
    run and returned as curve rows; the log keeps only those (later lines are about to be redone)."""
    log = ckpt / CURVE_LOG
    if not resumed_step or not log.exists():
        log.unlink(missing_ok=True)
        return []
    logged = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    logged = [m for m in logged if int(m["step"]) <= resumed_step]
    log.write_text("".join(json.dumps(m) + "\n" for m in logged))
    for m in logged:
        run_log.log_metrics(m, step=int(m["step"]))
    return [curve_row(m) for m in logged]


def train(algo, cfg: RLConfig, val, grader, run_log, metrics_log: Path | None = None,
          bf16: bool = False) -> list[dict[str, float]]:
    """The stage's loop: log every step's metrics (and the validation ones every `eval_interval`
    steps), show a progress bar, return the curve of the steps it ran. `metrics_log`: where each step's
    metrics are also appended (see `replay_curve`); `bf16`: the validation's precision."""
    from tqdm import tqdm

    from reftflow.distributed import is_main_process

    curve = []
    with tqdm(total=cfg.steps, initial=algo.step, desc="rl", unit="step", disable=not is_main_process(),
              file=sys.stderr) as bar:
        for metrics in algo.train():
            step = int(metrics["step"])
            if cfg.eval_interval and val and (step % cfg.eval_interval == 0 or step == cfg.steps):
                metrics = {**metrics, **validate(algo, val, grader, cfg, bf16)}
            run_log.log_metrics(metrics, step=step)
            if metrics_log is not None:
                metrics_log.parent.mkdir(parents=True, exist_ok=True)
                with metrics_log.open("a") as f:
                    f.write(json.dumps({k: float(v) for k, v in metrics.items()}) + "\n")
            curve.append(curve_row(metrics))
            bar.set_postfix({k: f"{metrics[key]:.3f}" for k, key in (("reward", "train_reward_mean"), ("kl", "rl/kl"))
                             if key in metrics})
            bar.update(1)
    return curve
