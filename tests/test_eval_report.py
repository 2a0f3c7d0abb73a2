"""What an evaluation's MLflow run holds for a person to look at (reftflow/eval_report.py): every item as a
table row with its answer, scores and fields; which items flipped between two models; and, after a
pipeline run, that the evaluate stage's run has the table and the report images."""

from __future__ import annotations

import json

import pytest

from reftflow.data.records import Record
from reftflow.eval_report import ITEMS_TABLE, flips, flips_figure, item_rows, read_curve, score_histograms
from reftflow.evaluation import EvalResult


def _result(label: str, outputs: list[str], scores: list[float], threshold: float = 1.0) -> EvalResult:
    rows = [{"model": label, "id": f"i{n}", "prompt": f"Q: {n}?\nA:", "output": out, "score": s,
             "sub_scores": {"exact": s}, "error": None} for n, (out, s) in enumerate(zip(outputs, scores))]
    return EvalResult({"pass_rate": sum(s >= threshold for s in scores) / len(scores),
                       "mean_score": sum(scores) / len(scores)}, rows, [float(s >= threshold) for s in scores], threshold)


RECORDS = [Record(f"i{n}", {"question": f"{n}?", "answer": str(n), "meta": {"source": "x"}}) for n in range(4)]
SFT = _result("sft", ["0", "9", "2", "9"], [1.0, 0.1, 1.0, 0.1])
RL = _result("rl", ["0", "1", "9", "3"], [1.0, 1.0, 0.1, 1.0])


def test_every_item_of_every_model_is_one_flat_row():
    rows = item_rows({"sft": SFT, "rl": RL}, RECORDS)
    assert len(rows) == 8 and [r["model"] for r in rows] == ["sft"] * 4 + ["rl"] * 4
    first = rows[4]
    # what a person reads first comes first; sub-scores and the item's own fields are columns of their own
    assert list(first)[:5] == ["model", "id", "score", "passed", "answer"]
    assert first == {"model": "rl", "id": "i0", "score": 1.0, "passed": True, "answer": "0", "sub_score.exact": 1.0,
                     "item.question": "0?", "item.answer": "0", "item.meta": {"source": "x"},
                     "prompt": "Q: 0?\nA:", "error": None}


def test_flips_are_the_items_whose_pass_changed_each_way():
    assert flips(SFT, RL) == ([1, 3], [2])
    assert flips(SFT, SFT) == ([], [])


def test_the_figures_draw_on_any_results(tmp_path):
    """Drawn without a display, and saved as MLflow's log_figure saves them; nothing flipped is said."""
    for name, fig in (("scores", score_histograms({"sft": SFT, "rl": RL})), ("flips", flips_figure(SFT, RL, ("sft", "rl"))),
                      ("none", flips_figure(SFT, SFT, ("sft", "sft")))):
        fig.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    text = flips_figure(SFT, SFT, ("a", "b")).texts[0].get_text()
    assert "passed by b only: 0 items" in text and "(none)" in text
    text = flips_figure(SFT, RL, ("sft", "rl")).texts[0].get_text()
    assert "passed by rl only: 2 items" in text and "passed by sft only: 1 item\n" in text


def test_the_rl_curve_csv_reads_back_without_its_empty_cells(tmp_path):
    from reftflow.io import write_csv

    write_csv(tmp_path / "c.csv", [{"step": 1, "train_reward_mean": 0.5}, {"step": 2, "train_reward_mean": 0.6,
                                                                           "valid_reward_mean": 0.4}])
    assert read_curve(tmp_path / "c.csv") == [{"step": 1.0, "train_reward_mean": 0.5},
                                              {"step": 2.0, "train_reward_mean": 0.6, "valid_reward_mean": 0.4}]


@pytest.mark.slow
@pytest.mark.e2e
def test_the_evaluate_stage_logs_every_item_and_the_report(finished_project):
    """After a whole pipeline run: the evaluate run's table has a row per model and val item, and its
    report holds the score histograms, the flipped items and the RL curves."""
    from mlflow.tracking import MlflowClient

    assert finished_project.returncode == 0, finished_project.tail
    project = finished_project.project
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("reftflow").experiment_id],
                             filter_string="tags.`reftflow.stage` = 'evaluate'")[0]
    table = json.loads(open(client.download_artifacts(run.info.run_id, ITEMS_TABLE)).read())
    val = [json.loads(line) for line in (project / "data/prepared/val.jsonl").read_text().splitlines()]
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert [(r["model"], r["id"]) for r in rows] == [(m, v["id"]) for m in ("sft", "rl") for v in val]
    predictions = [json.loads(line) for line in (project / "data/predictions/val.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in rows] == [p["output"] for p in predictions]
    assert all(r["item.answer"] == v["item"]["answer"] for r, v in zip(rows, val + val))
    assert {"sub_score.final_answer", "prompt", "score", "passed"} <= set(table["columns"])
    # the UI shows it as a table because MLflow knows it logged one (the tag its artifact view reads)
    assert {"path": ITEMS_TABLE, "type": "table"} in json.loads(run.data.tags["mlflow.loggedArtifacts"])
    report = {f.path for f in client.list_artifacts(run.info.run_id, "report")}
    assert report == {"report/scores.png", "report/flips.png", "report/rl_curves.png"}
