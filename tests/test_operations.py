"""Operations on a finished run: its MLflow record, `reftflow rerun`, `predict`, `mlflow models serve`, `status`.

One tiny pipeline run (in a project with an uncommitted edit and an untracked file, so the record
must carry a diff) is shared by the tests here; the rerun runs the pipeline a second time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY_PARAMS, free_port, make_project

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
EDIT = "\n# an uncommitted edit the record must carry\n"


def _env(uri: str, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PYTHONPATH", "REFTFLOW_PARENT_RUN_ID")}
    return {**env, "MLFLOW_TRACKING_URI": uri, "PREFECT_HOME": str(tmp / "prefect")}


def _cli(*args: str, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, prefect_server):
    """(project, parent run id, tracking uri, tmp) after one tiny pipeline run on a dirty tree."""
    from mlflow.tracking import MlflowClient

    from flows.pipeline import pipeline

    tmp = tmp_path_factory.mktemp("ops")
    project = make_project(tmp / "proj", TINY_PARAMS)
    with open(project / "reftflow" / "gate.py", "a") as f:
        f.write(EDIT)
    (project / "notes.txt").write_text("untracked, and recorded\n")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        summary = pipeline(project_dir=str(project), run_name="original")
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI") if old is None else os.environ.update(MLFLOW_TRACKING_URI=old)
    assert summary["gate"]["decision"] == "pass"
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`reftflow.kind` = 'pipeline'")
    assert len(runs) == 1
    return project, runs[0].info.run_id, uri, tmp


def test_the_parent_run_records_everything_a_rerun_needs(recorded):
    from mlflow.tracking import MlflowClient

    project, run_id, uri, tmp = recorded
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    tags, params = run.data.tags, run.data.params
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head and tags["reftflow.git.dirty"] == "true"
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"] == "flows/pipeline.py"
    assert tags["reftflow.seed"] == "0" and params["seed"] == "0"
    assert tags["reftflow.project_dir"] == str(project) and tags["reftflow.dvc.cache"] == str(project / ".dvc/cache")
    record = {f.path for f in client.list_artifacts(run_id, "record")}
    assert record == {"record/params.yaml", "record/dvc.lock", "record/git.diff", "record/data_md5.json"}
    diff = Path(client.download_artifacts(run_id, "record/git.diff", str(tmp / "dl"))).read_text()
    assert "an uncommitted edit the record must carry" in diff and "notes.txt" in diff
    lock = Path(client.download_artifacts(run_id, "record/dvc.lock", str(tmp / "dl"))).read_text()
    assert lock == (project / "dvc.lock").read_text()  # as the run left it, not as it started
    train_md5 = next(o["md5"] for o in yaml.safe_load(lock)["stages"]["prepare"]["outs"]
                     if o["path"] == "data/prepared/train.jsonl")
    assert tags["reftflow.data.train.md5"] == train_md5
    import torch

    assert params["pkg.torch"] == torch.__version__ and params["pkg.mlflow"] and params["pkg.dvc"]
    assert params["machine.cpu_count"] == str(os.cpu_count()) and params["machine.gpu"]
    assert [i.dataset.digest for i in run.inputs.dataset_inputs] == [train_md5, tags["reftflow.data.val.md5"]]
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    children = client.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    assert children and all(c.data.tags["mlflow.source.git.commit"] == head for c in children)
    assert {c.data.tags["mlflow.source.name"] for c in children} == {f"tasks/{c.info.run_name}.py" for c in children}


def test_an_experiment_made_before_gets_its_kind_too(recorded):
    import mlflow

    from reftflow.tracking import _experiment_id

    _, _, uri, _ = recorded
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        old = mlflow.create_experiment("made-before")
        assert "mlflow.experimentKind" not in mlflow.get_experiment(old).tags
        assert _experiment_id(mlflow, "made-before") == old
        assert mlflow.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    finally:
        mlflow.set_tracking_uri(before)


def test_rerun_rebuilds_the_run_and_reproduces_its_evaluation(recorded):
    project, run_id, uri, tmp = recorded
    dest = tmp / "rerun"
    proc = _cli("rerun", run_id, "--dir", str(dest), "--project-dir", str(project), env=_env(uri, tmp))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "metrics/eval.json is identical to the original run's" in proc.stdout
    # recomputed, not restored (base writes only models/base, which the pull restored: DVC skips it)
    assert "stages run: prepare, sft, rl, evaluate, gate; up to date: base" in proc.stdout + proc.stderr
    # the state it was rebuilt from: the commit, the diff (an edit and an untracked file), params and lock
    assert (dest / "reftflow" / "gate.py").read_text().endswith(EDIT)
    assert (dest / "notes.txt").exists()
    assert (dest / "params.yaml").read_text() == (project / "params.yaml").read_text()
    for rel in ("metrics/eval.json", "data/predictions/val.jsonl", "data/prepared/train.jsonl",
                "models/sft/model.safetensors", "models/rl/model.safetensors"):
        assert (dest / rel).read_bytes() == (project / rel).read_bytes(), rel
    assert not (dest / "mlflow.db").samefile(project.parent / "mlflow.db")


def test_rerun_without_running_restores_the_data_from_the_original_cache(recorded):
    project, run_id, uri, tmp = recorded
    dest = tmp / "rebuilt"
    proc = _cli("rerun", run_id, "--dir", str(dest), "--project-dir", str(project), "--no-run",
                env=_env(uri, tmp), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rel in ("data/prepared/val.jsonl", "models/rl/model.safetensors"):
        assert (dest / rel).read_bytes() == (project / rel).read_bytes(), rel
    assert not (dest / "metrics/eval.json").exists()  # not cached by DVC: the pipeline recomputes it


def test_rerun_refuses_an_unknown_run_in_one_line(recorded):
    project, _, uri, tmp = recorded
    proc = _cli("rerun", "0123abcd", "--dir", str(tmp / "nowhere"), "--project-dir", str(project),
                env=_env(uri, tmp), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"reftflow rerun: error: run '0123abcd': no such MLflow run in {uri}"]


def _first_val_question(project: Path) -> tuple[str, str]:
    """The first held-out question and the RL model's answer to it in the evaluation."""
    item = json.loads((project / "data/prepared/val.jsonl").read_text().splitlines()[0])
    rows = [json.loads(line) for line in (project / "data/predictions/val.jsonl").read_text().splitlines()]
    answer = next(r["output"] for r in rows if r["model"] == "rl" and r["id"] == item["id"])
    return item["item"]["question"], answer.strip()


def test_predict_answers_from_the_champion_as_the_evaluation_did(recorded):
    project, _, uri, tmp = recorded
    question, expected = _first_val_question(project)
    proc = _cli("predict", question, "--project-dir", str(project), env=_env(uri, tmp), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == expected
    missing = _cli("predict", question, "--model", "7", "--project-dir", str(project), env=_env(uri, tmp), timeout=300)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert missing.stderr.startswith("reftflow predict: error: models:/reftflow-policy/7: no such model in ")



def test_mlflow_models_serve_answers_an_http_request_for_the_champion(recorded):
    project, _, uri, tmp = recorded
    question, expected = _first_val_question(project)
    port = free_port()
    venv_bin = str(Path(PY).parent)  # as with the venv activated: mlflow execs `uvicorn` from PATH
    env = {**_env(uri, tmp), "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "")])}
    server = subprocess.Popen([str(Path(venv_bin) / "mlflow"), "models", "serve",
                               "-m", "models:/reftflow-policy@champion",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "serve.log", "wb"),
                              start_new_session=True)  # its own group: the workers it starts stop with it
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, (tmp / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping in 240 s"
            time.sleep(1)
        body = json.dumps({"dataframe_records": [{"question": question}]}).encode()
        req = urllib.request.Request(f"{base}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            assert r.status == 200
            answer = json.loads(r.read())
        assert [a.strip() for a in answer["predictions"]] == [expected]
    finally:
        _stop(server)


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (the uvicorn it execs and its workers), SIGKILL after 30 s."""
    for sig, wait in ((15, 30), (9, 10)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_status_shows_what_is_stale_the_last_run_and_the_champion(recorded):
    project, run_id, uri, tmp = recorded
    env = _env(uri, tmp)
    proc = _cli("status", "--project-dir", str(project), env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "stale (DVC): nothing; every stage is up to date" in out
    assert f"last run: {run_id} (pipeline-original), started " in out and "FINISHED; gate PASS" in out
    assert "champion: reftflow-policy v1, registered " in out and f"by pipeline run {run_id}" in out
    assert "rl/pass_rate" in out
    assert "precision: sft " in out and ", rl " in out and "native bf16" in out
    params_text = (project / "params.yaml").read_text()
    try:
        params = yaml.safe_load(params_text)
        params["evaluate"]["batch_size"] = 5
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        out = _cli("status", "--project-dir", str(project), env=env, timeout=300).stdout
        assert "  evaluate: params: evaluate.batch_size\n  and downstream of them: gate\n" in out
    finally:
        (project / "params.yaml").write_text(params_text)


def test_status_outside_a_project_is_one_line(tmp_path):
    proc = _cli("status", "--project-dir", str(tmp_path), env=_env(f"sqlite:///{tmp_path}/x.db", tmp_path), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"reftflow status: error: {tmp_path}: not a reftflow project "
                                                "(no params.yaml and dvc.yaml; pass --project-dir)"]
