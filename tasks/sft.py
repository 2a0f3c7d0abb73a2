"""Stage `sft`: warm the model up on reference completions with TRL's SFTTrainer → models/sft/.

With no reference completion at all (answer-only data, the usual case for hosted RFT on an instruct
model) there is nothing to imitate: the base model passes through to models/sft unchanged, the run
records that it did, and RL starts from the base model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from reftflow import paths
from reftflow.config import Params
from reftflow.stage import main

CURVE_FIELDS = ["step", "loss", "learning_rate", "grad_norm", "mean_token_accuracy"]


def run(params: Params, args) -> None:
    from reftflow.data.records import read_records
    from reftflow.distributed import is_main_process, launch
    from reftflow.io import write_csv, write_json
    from reftflow import precision
    from reftflow.modeling import device_and_precision
    from reftflow.sft import train_sft
    from reftflow.tracking import stage_run

    code = launch("sft", params.sft.num_processes, args.params, "sft.num_processes")  # under torchrun?
    if code is not None:
        raise SystemExit(code)
    bf16 = device_and_precision(params.model)[1]
    records = read_records(paths.TRAIN) + (read_records(paths.SFT_DATA) if paths.SFT_DATA.exists() else [])
    curve: list[dict[str, float]] = []
    section = {"seed": params.seed, "model": params.model.model_dump(), "sft": params.sft.model_dump()}
    with stage_run("sft", section) as run_log:
        run_log.log_dataset(paths.TRAIN, "train", context="training")
        log_base_identity(run_log)
        if not any(r.completion for r in records):
            if is_main_process():
                pass_through(params, run_log)
            return

        def on_log(step: int, metrics: dict[str, float]) -> None:
            if "loss" in metrics:  # periodic training logs; the final summary goes below
                row = {"step": step, **{k: v for k, v in metrics.items() if k in CURVE_FIELDS[1:]}}
                curve.append(row)
                run_log.log_metrics({f"sft/{k}": v for k, v in row.items()}, step=step)

        ckpt = checkpoint_dir(params)
        run_log.set_tags({"reftflow.precision": precision.name(bf16)})
        summary = train_sft(records, params.model, params.sft, paths.SFT_MODEL, params.seed, on_log=on_log,
                            base_dir=paths.BASE_MODEL, checkpoint_dir=ckpt)
        if not is_main_process():  # under torchrun only rank 0 writes (its model is every process's)
            return
        run_log.log_metrics({f"sft/{k}": v for k, v in summary.items()})
        write_csv(paths.SFT_LOSS, curve, CURVE_FIELDS)
        write_json(paths.SFT_METRICS, {**summary, "precision": precision.name(bf16)})
        run_log.log_artifact(paths.SFT_LOSS, "plots")
        if curve:
            from reftflow.plots import curves_figure

            run_log.log_figure(curves_figure(curve, ["loss", "mean_token_accuracy", "learning_rate"], "SFT warm-up"),
                               "plots/sft_curves.png")
        run_log.log_artifact(paths.SFT_MODEL, "model")
    shutil.rmtree(ckpt, ignore_errors=True)  # logged: a rerun with the same inputs is DVC-cached anyway
    print(f"sft ({precision.name(bf16)}): {int(summary['train_examples'])} worked examples, "
          f"{int(summary['global_steps'])} steps, "
          f"final loss {curve[-1]['loss'] if curve else float('nan'):.3f}")
    if summary["too_long"]:
        print(f"sft: warning: {int(summary['too_long'])} examples are longer than model.max_length="
              f"{int(summary['max_length'])} tokens and were truncated (raise model.max_length or shorten them)")


def checkpoint_dir(params: Params) -> Path:
    """Where this run's Trainer checkpoints go, keyed by everything that shapes the training: a rerun
    with other inputs never resumes a stranger's checkpoint (how often one is written is not part of it)."""
    from reftflow.io import file_md5

    inputs = [p for p in (paths.TRAIN, paths.SFT_DATA, *sorted(paths.BASE_MODEL.glob("*"))) if p.is_file()]
    key = json.dumps({"seed": params.seed, "model": params.model.model_dump(),
                      "sft": params.sft.model_dump(exclude={"checkpoint_every", "logging_steps"}),
                      "inputs": {str(p): file_md5(p) for p in inputs}}, sort_keys=True)
    return paths.CHECKPOINTS / "sft" / hashlib.md5(key.encode()).hexdigest()[:12]


def log_base_identity(run_log) -> None:
    """What the base model was and where it came from (models/base/source.json, from the base stage)."""
    from reftflow.base_model import SOURCE_FILE, read_source

    info = read_source(paths.BASE_MODEL)
    if info is None:
        return
    run_log.set_tags({f"reftflow.base.{k}": str(v) for k, v in info.items() if v is not None})
    run_log.log_artifact(paths.BASE_MODEL / SOURCE_FILE, "base")


def pass_through(params: Params, run_log) -> None:
    """The base model as models/sft, untrained (no reference completions to imitate)."""
    from reftflow.io import write_csv, write_json
    from reftflow.modeling import count_parameters, save_new_model

    model = save_new_model(paths.SFT_MODEL, params.model, params.seed, base_dir=paths.BASE_MODEL)
    summary = {"train_examples": 0.0, "global_steps": 0.0, "parameters": float(count_parameters(model)), "skipped": 1.0}
    write_json(paths.SFT_METRICS, summary)
    write_csv(paths.SFT_LOSS, [], CURVE_FIELDS)  # dvc.yaml declares the plot: an empty curve
    run_log.set_tags({"reftflow.sft.skipped": "no reference completions: the base model passes through"})
    run_log.log_metrics({f"sft/{k}": v for k, v in summary.items()})
    print("sft: no reference completions in the data: the base model passes through to models/sft (RL starts "
          "from it)")


if __name__ == "__main__":
    main("sft", __doc__, run)
