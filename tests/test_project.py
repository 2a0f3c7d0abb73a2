"""`reftflow init`: a self-contained project that the installed package runs, not a copy of the repo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY_PARAMS

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "flows.cli"]


def _init(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "init", *args], cwd=tmp_path, capture_output=True, text=True)


def test_the_arithmetic_example_is_the_repos_own_project():
    """One source: the example that init copies is the repo root's params.yaml."""
    assert (ROOT / "reftflow/examples/arithmetic/params.yaml").read_text() == (ROOT / "params.yaml").read_text()


def test_init_makes_a_project_with_no_code_in_it(tmp_path):
    proc = _init(tmp_path, "proj", "--example", "arithmetic")
    assert proc.returncode == 0, proc.stderr
    project = tmp_path / "proj"
    assert f"reftflow run --project-dir {project}" in proc.stdout
    for name in ("params.yaml", "dvc.yaml", ".gitignore", "README.md", ".dvc/config", ".git"):
        assert (project / name).exists(), name
    assert not (project / "reftflow").exists() and not (project / "tasks").exists()
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert stage["cmd"] == f"python -m tasks.{name}"
        assert stage["deps"][0] == f".reftflow/code/{name}.md5" and (project / stage["deps"][0]).exists()
    clean = subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True)
    assert clean.stdout == ""  # everything init wrote is committed


@pytest.mark.parametrize("args, message", [
    (["proj", "--example", "chess"], "--example 'chess': no such example"),  # a typo in the example's name
    (["full"], "not empty"),  # a directory that already holds something
])
def test_init_refuses_with_one_line(tmp_path, args, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    proc = _init(tmp_path, *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_an_initialised_project_runs_end_to_end_and_then_skips_everything(tmp_path):
    assert _init(tmp_path, "proj").returncode == 0
    project = tmp_path / "proj"
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in yaml.safe_load(TINY_PARAMS).items():
        params[section] = {**params[section], **values} if isinstance(values, dict) else values
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PYTHONPATH")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    run = [*CLI, "run", "--project-dir", str(project)]
    first = subprocess.run(run, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "gate PASS" in first.stdout + first.stderr and (project / "mlflow.db").exists()
    assert json.loads((project / "metrics/eval.json").read_text())["rl"]["samples"] == 12
    second = subprocess.run(run, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "stages run: none" in second.stdout + second.stderr


@pytest.mark.parametrize("example", ["arithmetic", "genes", "smollm2", "qwen-gsm8k"])
def test_every_example_parses_and_holds_every_key_dvc_reads(example):
    from reftflow.project import has_key
    from reftflow.config import load_params, read_yaml
    from reftflow.project import STAGES, examples

    assert example in examples()
    path = ROOT / "reftflow/examples" / example / "params.yaml"
    load_params(path)
    raw = read_yaml(path)
    missing = [key for stage in STAGES.values() for key in stage["params"] if not has_key(raw, key)]
    assert not missing, f"{example}: DVC would refuse to run without {missing}"


def test_init_runs_the_examples_setup_script_with_this_interpreter(tmp_path, monkeypatch):
    """The smollm2 example installs its model wheel this way; here a stand-in example records what ran it."""
    from reftflow import project

    example = tmp_path / "examples" / "demo"
    example.mkdir(parents=True)
    (example / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (example / "setup.sh").write_text('echo "$PYTHON" > ran-with.txt\n')
    monkeypatch.setattr(project, "EXAMPLES_DIR", tmp_path / "examples")
    made = project.init(tmp_path / "proj", "demo")
    assert (made / "ran-with.txt").read_text().strip() == sys.executable
    (example / "setup.sh").write_text('echo "no index reachable" >&2; exit 3\n')
    with pytest.raises(project.SetupFailed, match=r"setup.sh failed \(exit 3\): no index reachable; the project is"):
        project.init(tmp_path / "proj2", "demo")
    assert not (project.init(tmp_path / "proj3", "demo", run_setup=False) / "ran-with.txt").exists()
