"""Stage `evaluate`: greedy held-out pass rate and mean grader score of the SFT model and the RL one
(models/rl, whichever `rl.algorithm` trained it; its metrics go under `rl`). Its MLflow run holds every
item's result as a table and a report comparing the two (reftflow/eval_report.py)."""

from __future__ import annotations

from reftflow import paths
from reftflow.config import Params
from reftflow.stage import main


def run(params: Params, _args) -> None:
    from reftflow.data.records import common_fields, read_records, write_jsonl
    from reftflow.eval_report import log_report
    from reftflow.evaluation import Sampling, evaluate_model, gain
    from reftflow.graders import build_grader
    from reftflow.io import write_json
    from reftflow.tracking import stage_run

    from reftflow import precision
    from reftflow.modeling import device_and_precision

    cfg = params.evaluate
    bf16 = device_and_precision(params.model)[1]
    val = read_records(paths.VAL)
    if cfg.max_samples:
        val = val[: cfg.max_samples]
    grader = build_grader(params.grader, item_fields=common_fields(val), response_format=params.response_format,
                          model_cfg=params.model)
    with grader, stage_run("evaluate", {"evaluate": cfg.model_dump(), "grader": params.grader}) as run_log:
        run_log.log_dataset(paths.VAL, "val", context="evaluation")
        run_log.set_tags({"reftflow.precision": precision.name(bf16)})
        sampling = Sampling(cfg.samples_per_item, cfg.temperature, params.seed) if cfg.samples_per_item else None
        results = {label: evaluate_model(path, val, grader, cfg.max_new_tokens, cfg.batch_size, label,
                                         cfg.pass_threshold, params.model, sampling)
                   for label, path in (("sft", paths.SFT_MODEL), ("rl", paths.RL_MODEL))}
        report = {label: res.metrics for label, res in results.items()}
        report["gain"] = gain(results["sft"], results["rl"])
        write_json(paths.EVAL_METRICS, {**report, "precision": precision.name(bf16)})
        write_jsonl(paths.PREDICTIONS, [row for res in results.values() for row in res.rows])
        for label, metrics in report.items():
            run_log.log_metrics({f"{label}/{k}": v for k, v in metrics.items()})
        run_log.log_artifact(paths.EVAL_METRICS, "metrics")
        run_log.log_artifact(paths.PREDICTIONS, "predictions")
        # every item, both models, as a table in the run; and the report images comparing them
        log_report(run_log, results, val, pair=("sft", "rl"), curve=paths.RL_CURVE)
    g = report["gain"]
    print(f"evaluate ({precision.name(bf16)}): SFT pass rate {report['sft']['pass_rate']:.3f} "
          f"(score {report['sft']['mean_score']:.3f}), RL pass rate {report['rl']['pass_rate']:.3f} "
          f"(score {report['rl']['mean_score']:.3f}); gain {g['pass_rate']:+.3f}, 95 % interval "
          f"[{g['pass_rate_low']:+.3f}, {g['pass_rate_high']:+.3f}] on {int(g['items'])} items")


if __name__ == "__main__":
    main("evaluate", __doc__, run)
