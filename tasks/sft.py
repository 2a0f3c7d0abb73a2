"""Stage `sft`: warm the model up on worked solutions with TRL's SFTTrainer → models/sft/."""

from __future__ import annotations

from reftflow import paths
from reftflow.config import Params
from reftflow.stage import main


def run(params: Params, _args) -> None:
    from reftflow.data.records import read_records
    from reftflow.io import write_csv, write_json
    from reftflow.modeling import set_threads
    from reftflow.sft import train_sft
    from reftflow.tracking import stage_run

    set_threads(params.model.torch_threads)
    records = read_records(paths.TRAIN)
    curve: list[dict[str, float]] = []
    section = {"seed": params.seed, "model": params.model.model_dump(), "sft": params.sft.model_dump()}
    with stage_run("sft", section) as run_log:
        run_log.log_dataset(paths.TRAIN, "train", context="training")

        def on_log(step: int, metrics: dict[str, float]) -> None:
            if "loss" in metrics:  # periodic training logs; the final summary goes below
                row = {"step": step, **{k: v for k, v in metrics.items() if k in ("loss", "learning_rate",
                                                                                   "grad_norm", "mean_token_accuracy")}}
                curve.append(row)
                run_log.log_metrics({f"sft/{k}": v for k, v in row.items()}, step=step)

        summary = train_sft(records, params.model, params.sft, paths.SFT_MODEL, params.seed, on_log=on_log)
        run_log.log_metrics({f"sft/{k}": v for k, v in summary.items()})
        write_csv(paths.SFT_LOSS, curve, ["step", "loss", "learning_rate", "grad_norm", "mean_token_accuracy"])
        write_json(paths.SFT_METRICS, summary)
        run_log.log_artifact(paths.SFT_LOSS, "plots")
        if curve:
            from reftflow.plots import curves_figure

            run_log.log_figure(curves_figure(curve, ["loss", "mean_token_accuracy", "learning_rate"], "SFT warm-up"),
                               "plots/sft_curves.png")
        run_log.log_artifact(paths.SFT_MODEL, "model")
    print(f"sft: {int(summary['train_examples'])} worked examples, {int(summary['global_steps'])} steps, "
          f"final loss {curve[-1]['loss'] if curve else float('nan'):.3f}")


if __name__ == "__main__":
    main("sft", __doc__, run)
