"""The project's default DVC remote: a gate pass pushes every output to it, and `dvc pull` brings a
champion back after its workspace copy and the cache are gone. And `dvc exp run -S ...`, which runs
the stages without the Prefect flow, lands in MLflow as one parent run with its stage children."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reftflow.config import load_params
from reftflow.project import REMOTE_DIR, REMOTE_NAME, SHARED_REMOTE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

DVC = [str(Path(sys.executable).parent / "dvc")]


def _dvc(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*DVC, *args], cwd=project, capture_output=True, text=True, env=env)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _dir_listing(project: Path, dir_md5: str) -> dict[str, str]:
    """relpath → md5 of a directory output, from the `.dir` object DVC keeps under that md5 (the
    object is content-addressed: its own md5 is checked too, so the listing is the one dvc.lock names)."""
    digest = dir_md5.removesuffix(".dir")
    obj = project / ".dvc/cache/files/md5" / digest[:2] / (digest[2:] + ".dir")
    assert _md5(obj) == digest, "the .dir object does not match dvc.lock's md5"
    return {e["relpath"]: e["md5"] for e in json.loads(obj.read_text())}


def test_the_repo_and_every_new_project_have_a_default_remote_ignored_by_git(tmp_path):
    root = Path(__file__).resolve().parents[1]
    assert _dvc(root, "remote", "default").stdout.strip() == REMOTE_NAME
    assert f"/{REMOTE_DIR}/" in (root / ".gitignore").read_text().splitlines()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "init", str(tmp_path / "p")], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    listed = _dvc(tmp_path / "p", "remote", "list").stdout.split()
    # the URL is relative to .dvc/config, so it resolves inside the project wherever it lies
    assert listed[:2] == [REMOTE_NAME, str(tmp_path / "p" / REMOTE_DIR)], listed
    (tmp_path / "p" / REMOTE_DIR).mkdir()
    (tmp_path / "p" / REMOTE_DIR / "x").write_text("pushed data")
    ignored = subprocess.run(["git", "status", "--porcelain"], cwd=tmp_path / "p", capture_output=True, text=True)
    assert ignored.stdout == ""


def test_init_with_a_shared_remote_makes_it_the_default_in_every_clone(tmp_path):
    """`reftflow init --remote`: a remote outside the project (a relative path is made absolute against
    the caller's directory, not the project's), committed in .dvc/config, so a git clone pushes and pulls
    the same one."""
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "init", "p", "--remote", "shared/remote"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    subprocess.run(["git", "clone", "-q", str(tmp_path / "p"), str(tmp_path / "clone")], check=True)
    for project in (tmp_path / "p", tmp_path / "clone"):
        assert _dvc(project, "remote", "default").stdout.strip() == SHARED_REMOTE
        assert _dvc(project, "remote", "list").stdout.split()[:2] == [SHARED_REMOTE, str(tmp_path / "shared/remote")]
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "init", str(tmp_path / "s3"), "--remote",
                           "s3://bucket/reftflow"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert _dvc(tmp_path / "s3", "remote", "list").stdout.split()[:2] == [SHARED_REMOTE, "s3://bucket/reftflow"]


def test_push_reports_a_missing_remote_or_a_failed_push_and_never_raises(tmp_path):
    """After a gate pass the decision and the registry entry stand whatever the push does: the flow
    prints and tags what happened instead (flows/pipeline.py push_outputs)."""
    from flows.pipeline import push_outputs

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    assert _dvc(tmp_path, "init", "-q").returncode == 0
    (tmp_path / "out.txt").write_text("a model")
    assert _dvc(tmp_path, "add", "out.txt").returncode == 0
    assert push_outputs(tmp_path).startswith("not pushed: the project has no default DVC remote")
    (tmp_path / "blocker").write_text("a file where the remote's directory should be")
    assert _dvc(tmp_path, "remote", "add", "-d", "broken", str(tmp_path / "blocker" / "remote")).returncode == 0
    message = push_outputs(tmp_path)
    assert message.startswith("push to 'broken' FAILED (exit 255): ERROR: ") and "Not a directory" in message, message
    assert _dvc(tmp_path, "remote", "modify", "broken", "url", str(tmp_path / "remote")).returncode == 0
    assert push_outputs(tmp_path) == "pushed to 'broken': 1 file pushed"
    assert push_outputs(tmp_path) == "pushed to 'broken': Everything is up to date."


@pytest.mark.slow
def test_a_gate_pass_pushes_and_dvc_pull_restores_the_champion(finished_project):
    run = finished_project
    assert run.returncode == 0, run.tail
    project = run.project
    assert json.loads((project / "metrics/gate.json").read_text())["decision"] == "pass"
    assert f"DVC remote: pushed to '{REMOTE_NAME}'" in run.output, run.tail
    assert any((project / REMOTE_DIR).rglob("*.dir")), "nothing was pushed"

    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    rl_md5 = next(o["md5"] for o in lock["rl"]["outs"] if o["path"] == "models/rl")
    train_md5 = next(o["md5"] for o in lock["prepare"]["outs"] if o["path"].endswith("train.jsonl"))

    # the champion's workspace copy and the whole cache are gone: only the remote holds them now
    for gone in ("models", "data/prepared", ".dvc/cache"):
        shutil.rmtree(project / gone)
    pull = _dvc(project, "pull")
    assert pull.returncode == 0, pull.stdout + pull.stderr

    listing = _dir_listing(project, rl_md5)
    restored = {str(f.relative_to(project / "models/rl")): _md5(f)
                for f in (project / "models/rl").rglob("*") if f.is_file()}
    assert restored == listing and "model.safetensors" in restored
    assert _md5(project / "data/prepared/train.jsonl") == train_md5
    status = _dvc(project, "status")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout


@pytest.mark.slow
def test_dvc_exp_run_lands_in_mlflow_as_a_parent_with_its_stages(finished_project, tmp_path):
    """DVC, not the flow, runs the stages here; they group under one parent run for the experiment."""
    from mlflow.tracking import MlflowClient

    assert finished_project.returncode == 0, finished_project.tail
    # a copy of the finished project with a fresh MLflow store of its own: nothing shared with the other tests
    project = tmp_path / "proj"
    shutil.copytree(finished_project.project, project, symlinks=True,
                    ignore=shutil.ignore_patterns("mlflow.db", "mlruns", "checkpoints", REMOTE_DIR))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "REFTFLOW_PARENT_RUN_ID")}
    # dvc.yaml runs `python -m tasks.<stage>`: this interpreter, and the project's copy of the code
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    env["PYTHONPATH"] = str(project)

    algorithm = load_params(project / "params.yaml").rl.algorithm
    exp = _dvc(project, "exp", "run", "-S", f"rl.{algorithm}.lr=0.00123", "-n", "lr-probe", env=env)
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
    assert "lr-probe" in _dvc(project, "exp", "list", "--name-only", env=env).stdout

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("reftflow.kind") == "pipeline"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    parent = parents[0]
    assert parent.data.tags["reftflow.dvc_exp"] == "lr-probe" and parent.info.status == "FINISHED"
    assert parent.data.params[f"rl.{algorithm}.lr"] == "0.00123"
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    # only what the new lr made stale ran: rl always, evaluate and gate when the weights changed
    assert "rl" in children and set(children) <= {"rl", "evaluate", "gate"}, sorted(children)
    assert len(runs) == 1 + len(children)  # no lone top-level stage runs
    assert children["rl"].data.params[f"rl.{algorithm}.lr"] == "0.00123"
    assert all(c.info.status == "FINISHED" for c in children.values())
