"""A project made with `reftflow init`, its params.yaml pointed at real files, runs end to end: one
project per input format (small sizes), through the Prefect flow, DVC and MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import SHARED_GSM8K, TINY_PARAMS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def gsm8k(tmp: Path) -> dict:
    if not (SHARED_GSM8K / "train.jsonl").exists():
        pytest.skip("../shared/data/gsm8k not present")
    return {"data": {"source": "file", "path": str(SHARED_GSM8K / "train.jsonl"),
                     "val_path": str(SHARED_GSM8K / "test.jsonl"), "num_train": 24, "num_val": 8}}


def reft(tmp: Path) -> dict:
    items = [{"item_id": f"r{i}", "question": f"What is {i} times 3?", "answer_cot": f"{i}*3={3 * i}.",
              "answer_value": 3 * i} for i in range(2, 40)]
    (tmp / "reft.json").write_text(json.dumps(items))
    return {"data": {"source": "file", "path": str(tmp / "reft.json"), "num_val": 8},
            "grader": {"type": "numeric_answer", "name": "value", "input": "{{ sample.output_text }}",
                       "reference": "{{ item.answer_value }}"}}


def openai(tmp: Path, with_sft: bool) -> dict:
    rows = [{"messages": [{"role": "system", "content": "Answer in one word."},
                          {"role": "user", "content": f"Colour number {i}?"}], "reference_answer": f"c{i % 5}"}
            for i in range(40)]
    (tmp / "rft.jsonl").write_text(jsonl(rows))
    spec = {"data": {"source": "file", "path": str(tmp / "rft.jsonl"), "num_val": 8},
            "grader": {"type": "string_check", "name": "colour", "operation": "eq",
                       "input": "{{ sample.output_text }}", "reference": "{{ item.reference_answer }}"}}
    if with_sft:
        sft = [{"messages": [{"role": "user", "content": f"Colour number {i}?"},
                             {"role": "assistant", "content": f"c{i % 5}"}]} for i in range(100, 116)]
        (tmp / "sft.jsonl").write_text(jsonl(sft))
        spec["data"]["sft_path"] = str(tmp / "sft.jsonl")
    return spec


CASES = {"gsm8k": gsm8k, "reft": reft, "openai": lambda t: openai(t, False), "openai+sft": lambda t: openai(t, True)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_initialised_project_runs_on_each_format(case, tmp_path, monkeypatch, prefect_server):
    from flows.pipeline import pipeline

    proc = subprocess.run([sys.executable, "-m", "flows.cli", "init", str(tmp_path / "proj")], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    project = tmp_path / "proj"
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in {**yaml.safe_load(TINY_PARAMS), **CASES[case](tmp_path)}.items():
        params[section] = {**params[section], **values} if isinstance(params.get(section), dict) and \
            section != "grader" else values
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    summary = pipeline(project_dir=str(project), run_name=case)
    assert summary["ran"] == dict.fromkeys(["prepare", "base", "sft", "rl", "evaluate", "gate"], True)
    assert summary["eval"]["rl"]["samples"] == 8 and summary["gate"]["decision"] in ("pass", "fail")
    report = json.loads((project / "metrics/prepare.json").read_text())
    sft = json.loads((project / "metrics/sft.json").read_text())
    if case == "openai":
        assert report["train_worked"] == 0 and sft.get("skipped") == 1.0  # no completions: base model passes
    else:
        assert sft["global_steps"] > 0
    if case == "openai+sft":
        assert report["sft_file_items"] == 16
    rows = [json.loads(line) for line in (project / "data/predictions/val.jsonl").read_text().splitlines()]
    if case.startswith("openai"):
        assert rows[0]["prompt"].startswith("system: Answer in one word.\nuser: Colour number")
