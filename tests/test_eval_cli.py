"""`reftflow eval` (reftflow/eval_cli.py): any model on any file with any grader, as the evaluate stage
evaluates, recorded as one MLflow run.

The two tiny models differ on purpose: an untrained tiny model repeats the last character of its prompt
(`Q: ...\\nA:` → `::::::::`), and the same weights with the final norm negated answer something else.
The grader passes an answer holding the item's `mark`: `:` on every other item, so the first model
passes half the items, whatever the second one says.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import make_policy

pytestmark = pytest.mark.timeout(600)
INTERVAL = r"([+-]\d\.\d{3}) \[([+-]\d\.\d{3}), ([+-]\d\.\d{3})\]"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A project (only params.yaml: the evaluation's settings), two model directories, a GSM8K file, a grader."""
    import torch

    from reftflow.data.synthetic import generate
    from reftflow.modeling import load_model

    root = tmp_path_factory.mktemp("eval")
    (root / "proj").mkdir()
    (root / "proj/params.yaml").write_text("evaluate: {max_new_tokens: 8, batch_size: 8}\n"
                                           "model: {torch_threads: 1, bf16: false}\n")
    make_policy(root / "echo", seed=0)
    model, tok = load_model(root / "echo")
    with torch.no_grad():
        model.model.norm.weight.neg_()
    model.save_pretrained(root / "other")
    tok.save_pretrained(root / "other")
    items = [{"question": r.item["question"], "answer": r.item["answer"], "mark": ":" if n % 2 else "#"}
             for n, r in enumerate(generate(8, seed=3))]
    (root / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (root / "grader.json").write_text(json.dumps({"type": "string_check", "name": "has_mark", "operation": "like",
                                                  "input": "{{ sample.output_text }}", "reference": "{{ item.mark }}"}))
    return {name: root / name for name in ("proj", "echo", "other", "items.jsonl", "grader.json")}


def reftflow_eval(capsys, *argv) -> tuple[int, str, str]:
    """`reftflow eval ARGV` in this process (the command line's own entry), with what it printed."""
    from flows.cli import main

    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        code = main(["eval", *map(str, argv)])
    finally:  # mlflow.set_tracking_uri exports the project's store to the environment: not to later tests
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        if before is not None:
            os.environ["MLFLOW_TRACKING_URI"] = before
    out = capsys.readouterr()
    return code, out.out, out.err


def eval_runs(project: Path) -> list:
    from mlflow.tracking import MlflowClient

    if not (project / "mlflow.db").exists():
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("reftflow")
    return client.search_runs([exp.experiment_id], "tags.`reftflow.kind` = 'eval'") if exp else []


def test_a_model_directory_against_another_prints_the_paired_difference_and_logs_one_run(files, capsys):
    from mlflow.tracking import MlflowClient

    from reftflow.io import file_md5

    proj = files["proj"]
    before = len(eval_runs(proj))
    code, out, err = reftflow_eval(capsys, "--model", files["echo"], "--compare", files["other"], "--data",
                                   files["items.jsonl"], "--grader", files["grader.json"], "--project-dir", proj)
    assert code == 0, err
    runs = eval_runs(proj)
    assert len(runs) == before + 1
    run = runs[0]
    m, p = run.data.metrics, run.data.params
    # the direction: --model minus --compare, each figure the difference of the two models' own
    assert m["model/pass_rate"] == 0.5 and m["gain/pass_rate"] == pytest.approx(0.5 - m["compare/pass_rate"])
    assert m["gain/mean_score"] == pytest.approx(m["model/mean_score"] - m["compare/mean_score"])
    assert m["gain/pass_rate_low"] <= m["gain/pass_rate"] <= m["gain/pass_rate_high"] and m["gain/items"] == 8
    # printed: the paired difference with its interval, as the run has it
    line = next(ln for ln in out.splitlines() if ln.startswith("difference"))
    printed = re.findall(INTERVAL, line)
    assert printed == [(f"{m[f'gain/{k}']:+.3f}", f"{m[f'gain/{k}_low']:+.3f}", f"{m[f'gain/{k}_high']:+.3f}")
                       for k in ("pass_rate", "mean_score")], line
    assert "--model - --compare" in line and run.info.run_id in out
    # params: the specs, the file and its md5, the grader
    assert (p["model"], p["compare"], p["model.kind"]) == (str(files["echo"]), str(files["other"]), "directory")
    assert p["data.md5"] == file_md5(files["items.jsonl"]) and p["data.format"] == "gsm8k" and p["data.items"] == "8"
    assert (p["grader.name"], p["grader.type"], p["max_new_tokens"]) == ("has_mark", "string_check", "8")
    # every item of both models in the table, whose scores make the run's figures
    client = MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlflow.db'}")
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "eval/items.json")).read_text())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert [r["model"] for r in rows] == ["model"] * 8 + ["compare"] * 8
    assert all(r["answer"] == "::::::::" and r["passed"] == (r["item.mark"] == ":") for r in rows[:8])
    assert sum(r["score"] for r in rows[:8]) / 8 - sum(r["score"] for r in rows[8:]) / 8 == pytest.approx(
        m["gain/mean_score"])
    assert {f.path for f in client.list_artifacts(run.info.run_id, "report")} == {"report/scores.png",
                                                                                  "report/flips.png"}


def test_a_gguf_is_converted_once_into_the_cache(files, capsys, monkeypatch, tmp_path):
    from reftflow.modeling import build_char_tokenizer, build_tiny_model
    from tests.test_gguf import CFG, write_llama_gguf

    tok = build_char_tokenizer()
    gguf = write_llama_gguf(build_tiny_model(CFG, tok, seed=0), tok, tmp_path / "tiny.gguf")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    args = ["--model", gguf, "--data", files["items.jsonl"], "--grader", files["grader.json"], "--project-dir",
            files["proj"]]
    first = reftflow_eval(capsys, *args)
    second = reftflow_eval(capsys, *args)
    assert first[0] == second[0] == 0, first[2] + second[2]
    assert "converting" in first[1] and "converting" not in second[1]
    assert len(list((tmp_path / "cache/reftflow/gguf").glob("*/config.json"))) == 1
    table = [ln for ln in first[1].splitlines() if ln.startswith("--model")]
    assert table == [ln for ln in second[1].splitlines() if ln.startswith("--model")] and len(table) == 1


def _bad_grader(tmp: Path) -> Path:
    (tmp / "bad.json").write_text(json.dumps({"type": "nope", "name": "x"}))
    return tmp / "bad.json"


def _field_grader(tmp: Path) -> Path:
    (tmp / "field.json").write_text(json.dumps({"type": "string_check", "name": "x", "operation": "eq",
                                                "input": "{{ sample.output_text }}", "reference": "{{ item.nope }}"}))
    return tmp / "field.json"


@pytest.mark.parametrize("change, expected", [
    ({"--data": lambda f, t: t / "missing.jsonl"}, r"missing\.jsonl: cannot read \(No such file or directory\)"),
    ({"--model": lambda f, t: t / "no-such-dir"}, r"--model '.*no-such-dir': no such directory"),
    ({"--compare": lambda f, t: t}, r"--compare '.*': the directory has no config.json"),
    ({"--grader": lambda f, t: _bad_grader(t)}, r"grader 'x'.*type"),
    ({"--grader": lambda f, t: _field_grader(t)}, r"nope"),
    ({"--grader": lambda f, t: t / "none.json"}, r"grader file .*none.json: cannot read"),
    ({"--max-new-tokens": lambda f, t: 0}, r"--max-new-tokens must be at least 1"),
])
def test_a_bad_input_is_one_line_and_exit_2(files, capsys, tmp_path, change, expected):
    args = {"--model": files["echo"], "--compare": files["other"], "--data": files["items.jsonl"],
            "--grader": files["grader.json"], "--project-dir": files["proj"]}
    args.update({flag: make(files, tmp_path) for flag, make in change.items()})
    before = len(eval_runs(files["proj"]))
    code, out, err = reftflow_eval(capsys, *[x for pair in args.items() for x in pair])
    assert code == 2 and out == "", out
    assert len(err.strip().splitlines()) == 1 and err.startswith("reftflow eval: error: "), err
    assert re.search(expected, err), err
    assert len(eval_runs(files["proj"])) == before  # nothing recorded


@pytest.mark.slow
@pytest.mark.e2e
def test_the_champion_against_models_sft_in_a_project_gives_the_evaluate_stage_s_figures(finished_project, tmp_path):
    """The acceptance command, typed in a project after a pipeline run: the registered champion (models/rl,
    promoted by the gate) against models/sft on the prepared val file reproduces metrics/eval.json exactly:
    the same prompts, decoding, grader and statistics as the evaluate stage."""
    assert finished_project.returncode == 0, finished_project.tail
    project = finished_project.project
    command = [str(Path(sys.executable).parent / "reftflow"), "eval", "--model", "models:/reftflow-policy@champion",
               "--data", "data/prepared/val.jsonl", "--compare", "models/sft"]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")},
           "XDG_CACHE_HOME": str(tmp_path)}  # the project's own store
    proc = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "models:/reftflow-policy@champion (reftflow-policy v1)" in proc.stdout
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("difference"))
    stage = json.loads((project / "metrics/eval.json").read_text())
    g = stage["gain"]
    assert re.findall(INTERVAL, line)[0] == (f"{g['pass_rate']:+.3f}", f"{g['pass_rate_low']:+.3f}",
                                             f"{g['pass_rate_high']:+.3f}"), line
    run = max(eval_runs(project), key=lambda r: r.info.start_time)
    assert run.data.params["model.resolved"] == "reftflow-policy v1" and run.data.params["model.kind"] == "registered"
    for ours, theirs in (("model", "rl"), ("compare", "sft"), ("gain", "gain")):
        assert {k: run.data.metrics[f"{ours}/{k}"] for k in stage[theirs]} == stage[theirs], ours
    # a registered model that is not there: one line
    proc = subprocess.run([*command[:3], "models:/reftflow-policy@nope", *command[4:]], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("reftflow eval: error: --model models:/reftflow-policy@nope: "
                                                           "no such model in sqlite:///"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
