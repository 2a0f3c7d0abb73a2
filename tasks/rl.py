"""Stage `rl`: RL from models/sft against the grader → models/rl/ (`rl.algorithm`: ppo, grpo or raft)."""

from __future__ import annotations

import shutil
import sys

from reftflow import paths
from reftflow.config import Params
from reftflow.stage import main


def run(params: Params, args) -> None:
    from reftflow import exits, precision
    from reftflow.data.records import common_fields, read_records
    from reftflow.distributed import is_main_process, launch
    from reftflow.graders import build_grader
    from reftflow.io import write_csv, write_json
    from reftflow.modeling import device_and_precision
    from reftflow.rl import RLRun, TrainingDiverged, build_algorithm, loop
    from reftflow.tracking import stage_run

    cfg = params.rl
    code = launch("rl", cfg.num_processes, args.params, "rl.num_processes")  # under torchrun?
    if code is not None:
        raise SystemExit(code)
    records = read_records(paths.TRAIN)
    grader = build_grader(params.grader, item_fields=common_fields(records), response_format=params.response_format,
                          model_cfg=params.model)
    ckpt = loop.checkpoint_dir(params)
    bf16 = device_and_precision(params.model)[1]
    section = {"seed": params.seed, "rl": cfg.model_dump(exclude={a for a in ("ppo", "raft", "grpo") if a != cfg.algorithm}),
               "grader": params.grader}
    with grader, stage_run("rl", section) as run_log:
        run_log.log_dataset(paths.TRAIN, "train", context="training")
        run_log.set_tags({"reftflow.precision": precision.name(bf16), "reftflow.rl.algorithm": cfg.algorithm})
        algo = build_algorithm(RLRun(paths.SFT_MODEL, records, cfg, grader, paths.RL_MODEL, params.seed, params.model,
                                     ckpt))
        loop.report_too_long(algo, records, cfg, run_log)
        if algo.step:  # the algorithm picked up a checkpoint under ckpt
            print(f"rl: resuming from step {algo.step} of {cfg.steps} (checkpoint in {ckpt})", flush=True)
        done = loop.replay_curve(ckpt, algo.step, run_log)
        try:
            curve = done + loop.train(algo, cfg, read_records(paths.VAL) if cfg.eval_interval else [], grader, run_log,
                                      ckpt / loop.CURVE_LOG, bf16)
        except TrainingDiverged as e:
            # nothing reaches models/rl, the stage fails, the flow stops before gate: nothing is promoted
            run_log.set_tags({"reftflow.rl.stop_reason": f"diverged: {e}"})
            print(f"reftflow rl: error: {e}", file=sys.stderr)
            raise SystemExit(exits.DIVERGED) from None
        algo.save()
        if not is_main_process():  # under accelerate/torchrun only rank 0 writes
            return
        summary = {**(curve[-1] if curve else {}), "stopped_early": algo.stop_reason or "",
                   "algorithm": cfg.algorithm, "precision": precision.name(bf16)}
        write_csv(paths.RL_CURVE, curve)
        write_json(paths.RL_METRICS, summary)
        run_log.set_tags({"reftflow.rl.stop_reason": algo.stop_reason or "completed"})
        run_log.log_artifact(paths.RL_CURVE, "plots")
        if curve:
            from reftflow.plots import curves_figure

            run_log.log_figure(curves_figure(curve, loop.CURVE_KEYS, f"RL ({cfg.algorithm})"), "plots/rl_curves.png")
        run_log.log_artifact(paths.RL_MODEL, "model")
    shutil.rmtree(ckpt, ignore_errors=True)  # finished: a rerun with the same inputs is DVC-cached anyway
    if algo.stop_reason:
        print(f"rl: stopped early: {algo.stop_reason}")
    last = curve[-1] if curve else {}
    print(f"rl ({cfg.algorithm}, {precision.name(bf16)}): {len(curve)} steps, last reward "
          f"{last.get('train_reward_mean', float('nan')):.3f}, sample accuracy {last.get('accuracy', float('nan')):.3f}")


if __name__ == "__main__":
    main("rl", __doc__, run)
