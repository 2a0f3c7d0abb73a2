"""Stage `evaluate`: greedy held-out pass rate and mean grader score of the SFT model and the RL one
(models/ppo, whichever `ppo.algorithm` trained it; its metrics go under `ppo`, the stage's name)."""

from __future__ import annotations

from reftflow import paths
from reftflow.config import Params
from reftflow.stage import main


def run(params: Params, _args) -> None:
    from reftflow.data.records import common_fields, read_records, write_jsonl
    from reftflow.evaluation import evaluate_model
    from reftflow.graders import build_grader
    from reftflow.io import write_json
    from reftflow.modeling import set_threads
    from reftflow.tracking import stage_run

    cfg = params.evaluate
    set_threads(params.model.torch_threads)
    val = read_records(paths.VAL)
    if cfg.max_samples:
        val = val[: cfg.max_samples]
    grader = build_grader(params.grader, item_fields=common_fields(val), response_format=params.response_format)
    with grader, stage_run("evaluate", {"evaluate": cfg.model_dump(), "grader": params.grader}) as run_log:
        run_log.log_dataset(paths.VAL, "val", context="evaluation")
        results = {label: evaluate_model(path, val, grader, cfg.max_new_tokens, cfg.batch_size, label,
                                         cfg.pass_threshold)
                   for label, path in (("sft", paths.SFT_MODEL), ("ppo", paths.PPO_MODEL))}
        report = {label: res.metrics for label, res in results.items()}
        report["gain"] = {
            "pass_rate": report["ppo"]["pass_rate"] - report["sft"]["pass_rate"],
            "mean_score": report["ppo"]["mean_score"] - report["sft"]["mean_score"],
        }
        write_json(paths.EVAL_METRICS, report)
        write_jsonl(paths.PREDICTIONS, [row for res in results.values() for row in res.rows])
        for label, metrics in report.items():
            run_log.log_metrics({f"{label}/{k}": v for k, v in metrics.items()})
        run_log.log_artifact(paths.EVAL_METRICS, "metrics")
        run_log.log_artifact(paths.PREDICTIONS, "predictions")
        if cfg.num_logged_samples:
            run_log.log_table([row for res in results.values() for row in res.rows[: cfg.num_logged_samples]],
                              "eval/samples.json")
    print(f"evaluate: SFT pass rate {report['sft']['pass_rate']:.3f} (score {report['sft']['mean_score']:.3f}), "
          f"RL pass rate {report['ppo']['pass_rate']:.3f} (score {report['ppo']['mean_score']:.3f})")


if __name__ == "__main__":
    main("evaluate", __doc__, run)
