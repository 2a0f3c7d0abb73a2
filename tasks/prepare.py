"""Stage `prepare`: build data/prepared/{train,val,sft}.jsonl from `data.*` (DVC versions the outputs)."""

from __future__ import annotations

from reftflow import paths
from reftflow.config import Params
from reftflow.data.prepare import build_splits, sft_examples
from reftflow.data.records import write_jsonl
from reftflow.io import atomic_write_text, write_json
from reftflow.stage import main


def run(params: Params, _args) -> None:
    from reftflow.tracking import stage_run

    train, val, report = build_splits(params.data, params.seed)
    extra = sft_examples(params.data)  # read everything before writing anything
    report["sft_file_items"] = len(extra)
    write_jsonl(paths.TRAIN, train)
    write_jsonl(paths.VAL, val)
    if extra:
        write_jsonl(paths.SFT_DATA, extra)
    else:  # one blank line, no record: DVC warns about an empty output file on every command
        atomic_write_text(paths.SFT_DATA, "\n")
    write_json(paths.PREPARE_METRICS, report)
    with stage_run("prepare", {"seed": params.seed, "data": params.data.model_dump()}) as run_log:
        run_log.log_metrics(report)
        run_log.log_dataset(paths.TRAIN, "train", context="training")
        run_log.log_dataset(paths.VAL, "val", context="evaluation")
        run_log.log_artifact(paths.PREPARE_METRICS, "reports")
    print(f"prepare: {report['train_items']} train ({report['train_worked']} worked, "
          f"{report['train_answer_only']} answer-only), {report['val_items']} val"
          + (f", {len(extra)} extra SFT examples" if extra else ""))


if __name__ == "__main__":
    main("prepare", __doc__, run)
