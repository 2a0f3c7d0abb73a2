"""Stage `ppo`: ReFT-style PPO (ours) or GRPO (TRL) from models/sft against the grader → models/ppo/."""

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


def checkpoint_dir(params: Params) -> Path:
    """Checkpoints are only resumed by a run with the same inputs. The trainer fingerprints its config,
    seed and data; this key adds what it cannot see: the grader and which SFT model it started from
    (each file's name, size and mtime: a re-trained SFT model rewrites them; no need to hash GBs)."""
    from reftflow.tracking import file_md5

    sft = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in paths.SFT_MODEL.iterdir() if f.is_file())
    key = json.dumps({"ppo": params.ppo.model_dump(), "seed": params.seed, "grader": params.grader,
                      "sft": sft, "train": file_md5(paths.TRAIN)}, sort_keys=True)
    return paths.CHECKPOINTS / "ppo" / hashlib.md5(key.encode()).hexdigest()[:12]


def relaunch(n: int, params_file: str) -> int:
    """Run this stage under torchrun with n processes (what `accelerate launch --multi_gpu` also does)."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "tasks.ppo", "--params", params_file]
    return subprocess.run(cmd).returncode


def run(params: Params, args) -> None:
    if params.ppo.num_processes > 1 and "RANK" not in os.environ:
        raise SystemExit(relaunch(params.ppo.num_processes, args.params))
    from reftflow.data.records import read_records
    from reftflow.graders import build_grader
    from reftflow.io import write_csv, write_json
    from reftflow.modeling import set_threads
    from reftflow.prompting import item_dict
    from reftflow.ppo.trainer import TrainingDiverged
    from reftflow.tracking import is_main_process, stage_run

    cfg = params.ppo
    set_threads(params.model.torch_threads)
    records = read_records(paths.TRAIN)
    grader = build_grader(params.grader, item_fields=set(item_dict(records[0])))
    ckpt = checkpoint_dir(params)
    curve: list[dict[str, float]] = []
    with grader, stage_run("ppo", {"seed": params.seed, "ppo": cfg.model_dump(), "grader": params.grader}) as run_log:
        run_log.log_dataset(paths.TRAIN, "train", context="training")
        if cfg.algorithm == "grpo":
            from reftflow.grpo import train_grpo

            steps = train_grpo(paths.SFT_MODEL, records, cfg, grader, paths.PPO_MODEL, params.seed)
            stop_reason = None
        else:
            from reftflow.ppo.trainer import PPOTrainer

            def grade_fn(texts: list[str], items: list[dict]) -> list[float]:
                return [r.score for r in grader.grade_many(texts, items)]

            trainer = PPOTrainer(paths.SFT_MODEL, records, cfg, grade_fn, paths.PPO_MODEL, ckpt, params.seed,
                                 params.model.torch_threads)
            steps = trainer.train()
        try:
            for metrics in steps:
                step = int(metrics["step"])
                run_log.log_metrics(metrics, step=step)
                curve.append({"step": step, **{k.removeprefix("ppo/").replace("/", "_"): v
                                               for k, v in metrics.items() if k != "step"}})
        except TrainingDiverged as e:
            # nothing reaches models/ppo, the stage fails, the flow stops before gate: nothing is promoted
            run_log.set_tags({"reftflow.ppo.stop_reason": f"diverged: {e}"})
            print(f"reftflow ppo: error: {e}", file=sys.stderr)
            raise SystemExit(3) from None
        if cfg.algorithm == "ppo":
            stop_reason = trainer.stop_reason
        summary = {k: v for k, v in curve[-1].items()} if curve else {}
        summary["stopped_early"] = stop_reason or ""
        if not is_main_process():  # under accelerate/torchrun only rank 0 writes (the trainer saves the model)
            return
        write_csv(paths.PPO_CURVE, curve)
        write_json(paths.PPO_METRICS, summary)
        run_log.set_tags({"reftflow.ppo.stop_reason": stop_reason or "completed"})
        run_log.log_artifact(paths.PPO_CURVE, "plots")
        if curve:
            from reftflow.plots import curves_figure

            keys = ["reward_mean", "accuracy", "kl", "value_loss", "entropy", "clipfrac"]
            run_log.log_figure(curves_figure(curve, keys, f"RL ({cfg.algorithm})"), "plots/rl_curves.png")
        run_log.log_artifact(paths.PPO_MODEL, "model")
    shutil.rmtree(ckpt, ignore_errors=True)  # finished: a rerun with the same inputs is DVC-cached anyway
    if stop_reason:
        print(f"ppo: stopped early: {stop_reason}")
    last = curve[-1] if curve else {}
    print(f"ppo: {len(curve)} steps, last reward {last.get('reward_mean', float('nan')):.3f}, "
          f"sample accuracy {last.get('accuracy', float('nan')):.3f}")


if __name__ == "__main__":
    main("ppo", __doc__, run)
