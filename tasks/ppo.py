"""Stage `ppo`: RL from models/sft against the grader → models/ppo/ (`ppo.algorithm`: ppo, grpo or raft)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from reftflow import paths
from reftflow.config import Params
from reftflow.stage import main

CURVE_KEYS = ["train_reward_mean", "valid_reward_mean", "accuracy", "kl", "ppo_value_loss", "entropy", "ppo_clipfrac",
              "raft_kept"]
"""the panels of plots/rl_curves.png (an algorithm that does not report one skips it)."""


def checkpoint_dir(params: Params) -> Path:
    """The run's identity, computed once: checkpoints under it are resumed only by a run with the same
    RL config, seed, grader, training data and SFT model (each SFT file's name, size and mtime: a
    re-trained model rewrites them; no need to hash GBs)."""
    from reftflow.tracking import file_md5

    sft = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in paths.SFT_MODEL.iterdir() if f.is_file())
    key = json.dumps({"ppo": params.ppo.model_dump(), "lora": params.model.lora and params.model.lora.model_dump(),
                      "seed": params.seed, "grader": params.grader,
                      "sft": sft, "train": file_md5(paths.TRAIN)}, sort_keys=True)
    return paths.CHECKPOINTS / "ppo" / hashlib.md5(key.encode()).hexdigest()[:12]


def relaunch(n: int, params_file: str) -> int:
    """Run this stage under torchrun with n processes (what `accelerate launch --multi_gpu` also does)."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "tasks.ppo", "--params", params_file]
    return subprocess.run(cmd).returncode


def curve_row(metrics: dict[str, float]) -> dict[str, float]:
    """A metrics dict as a CSV row: `rl/kl` → `kl`, `ppo/clipfrac` → `ppo_clipfrac`."""
    return {"step": int(metrics["step"]), **{k.removeprefix("rl/").replace("/", "_"): v
                                             for k, v in metrics.items() if k != "step"}}


def validate(algo, val, grader, cfg) -> dict[str, float]:
    """Greedy answers of the policy being trained to the first `eval_samples` held-out items, graded."""
    from reftflow.generation import generate_greedy
    from reftflow.graders.base import FULL_MARKS
    from reftflow.prompting import render_prompt

    items = val[: cfg.eval_samples]
    outputs = generate_greedy(algo.lm, algo.tokenizer, [render_prompt(r, algo.tokenizer) for r in items],
                              cfg.max_new_tokens)
    scores = [res.score for res in grader.grade_many(outputs, [r.item for r in items])]
    return {"valid_reward_mean": sum(scores) / len(scores),
            "valid_pass_rate": sum(s >= FULL_MARKS for s in scores) / len(scores)}


def report_too_long(algo, records, cfg, run_log) -> None:
    """Prompts that leave no room for `max_new_tokens` in the model's context: counted and said, not cut."""
    from reftflow.prompting import count_too_long, render_prompt

    context = getattr(algo.lm.config, "max_position_embeddings", None)
    if not context:
        return
    n = count_too_long(algo.tokenizer, [render_prompt(r, algo.tokenizer) for r in records], context - cfg.max_new_tokens)
    run_log.log_metrics({"rl/prompts_too_long": n})
    if n:
        print(f"ppo: warning: {n} of {len(records)} prompts leave fewer than ppo.max_new_tokens={cfg.max_new_tokens} "
              f"tokens of the model's {context}-token context", file=sys.stderr)


CURVE_LOG = "metrics.jsonl"
"""every step's metrics, beside the checkpoints: a resumed run's record and curve start at step 1."""


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


def train(algo, cfg, val, grader, run_log, metrics_log: Path | None = None) -> list[dict[str, float]]:
    """The stage's loop: log every step's metrics (and the validation ones every `eval_interval`
    steps), show a progress bar, return the curve of the steps it ran. `metrics_log`: where each step's
    metrics are also appended (see `replay_curve`)."""
    from tqdm import tqdm

    from reftflow.distributed import is_main_process

    curve = []
    start = getattr(algo, "step", 0)
    with tqdm(total=cfg.steps, initial=start, desc="rl", unit="step", disable=not is_main_process(),
              file=sys.stderr) as bar:
        for metrics in algo.train():
            step = int(metrics["step"])
            if cfg.eval_interval and val and (step % cfg.eval_interval == 0 or step == cfg.steps):
                metrics = {**metrics, **validate(algo, val, grader, cfg)}
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


def run(params: Params, args) -> None:
    if params.ppo.num_processes > 1 and "RANK" not in os.environ:
        raise SystemExit(relaunch(params.ppo.num_processes, args.params))
    from reftflow.data.records import common_fields, read_records
    from reftflow.distributed import is_main_process
    from reftflow.graders import build_grader
    from reftflow.io import write_csv, write_json
    from reftflow.rl import TrainingDiverged, build_algorithm
    from reftflow.tracking import stage_run

    cfg = params.ppo
    records = read_records(paths.TRAIN)
    grader = build_grader(params.grader, item_fields=common_fields(records), response_format=params.response_format)
    ckpt = checkpoint_dir(params)
    with grader, stage_run("ppo", {"seed": params.seed, "ppo": cfg.model_dump(), "grader": params.grader}) as run_log:
        run_log.log_dataset(paths.TRAIN, "train", context="training")
        algo = build_algorithm(cfg.algorithm, paths.SFT_MODEL, records, cfg, grader, paths.PPO_MODEL, params.seed,
                               checkpoint_dir=ckpt, torch_threads=params.model.torch_threads, model_cfg=params.model)
        report_too_long(algo, records, cfg, run_log)
        resumed = getattr(algo, "step", 0)  # >0: the algorithm picked up a checkpoint under ckpt
        if resumed:
            print(f"ppo: resuming from step {resumed} of {cfg.steps} (checkpoint in {ckpt})", flush=True)
        done = replay_curve(ckpt, resumed, run_log)
        try:
            curve = done + train(algo, cfg, read_records(paths.VAL) if cfg.eval_interval else [], grader, run_log,
                                 ckpt / CURVE_LOG)
        except TrainingDiverged as e:
            # nothing reaches models/ppo, the stage fails, the flow stops before gate: nothing is promoted
            run_log.set_tags({"reftflow.ppo.stop_reason": f"diverged: {e}"})
            print(f"reftflow ppo: error: {e}", file=sys.stderr)
            raise SystemExit(3) from None
        algo.save()
        if not is_main_process():  # under accelerate/torchrun only rank 0 writes
            return
        summary = {**(curve[-1] if curve else {}), "stopped_early": algo.stop_reason or ""}
        write_csv(paths.PPO_CURVE, curve)
        write_json(paths.PPO_METRICS, summary)
        run_log.set_tags({"reftflow.ppo.stop_reason": algo.stop_reason or "completed"})
        run_log.log_artifact(paths.PPO_CURVE, "plots")
        if curve:
            from reftflow.plots import curves_figure

            run_log.log_figure(curves_figure(curve, CURVE_KEYS, f"RL ({cfg.algorithm})"), "plots/rl_curves.png")
        run_log.log_artifact(paths.PPO_MODEL, "model")
    shutil.rmtree(ckpt, ignore_errors=True)  # finished: a rerun with the same inputs is DVC-cached anyway
    if algo.stop_reason:
        print(f"ppo: stopped early: {algo.stop_reason}")
    last = curve[-1] if curve else {}
    print(f"ppo ({cfg.algorithm}): {len(curve)} steps, last reward {last.get('train_reward_mean', float('nan')):.3f}, "
          f"sample accuracy {last.get('accuracy', float('nan')):.3f}")


if __name__ == "__main__":
    main("ppo", __doc__, run)
