"""Two at once and resources running out, against a real `mlflow server` on 127.0.0.1:

- two projects run at the same time on one tracking server: both complete, and each one's runs and
  registered versions are its own;
- a second run in a project while one is active is refused with one line; the first is unharmed;
- the disk fills (RLIMIT_FSIZE) while rl saves its model: one line, the previous models intact;
- the tracking server goes down as rl ends (trained, not yet logged): bounded retries, one line,
  the last checkpoint kept; once the server is back the rerun trains nothing and logs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import TINY_PARAMS, flow_command, free_port, make_project, pipeline_env, set_params

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1800)]



class Server:
    """`mlflow server` on 127.0.0.1 with a SQLite store, which can be stopped and started again."""

    def __init__(self, root: Path):
        self.root, self.port, self.proc = root, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"]
        self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return
            except OSError:
                assert self.proc.poll() is None, "mlflow server exited"
                assert time.time() < deadline, "mlflow server did not answer"
                time.sleep(0.5)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # gunicorn/uvicorn workers too
        self.proc.wait()


def _env(root: Path, uri: str) -> dict[str, str]:
    return pipeline_env(root / "prefect-home", uri)


def _project(dest: Path, model_name: str) -> Path:
    project = make_project(dest, TINY_PARAMS)
    set_params(project, gate={"registered_model_name": model_name})
    return project


def _flow(project: Path, env, log: Path) -> subprocess.Popen:
    return subprocess.Popen(flow_command(project), cwd=project, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stage_alive(stage: str, project: Path) -> bool:
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"tasks.{stage}".encode() in (proc / "cmdline").read_bytes() \
                    and Path(os.readlink(proc / "cwd")) == project:
                return True
        except OSError:
            continue
    return False


def _last_line(text: str) -> str:
    return [ln for ln in text.splitlines() if ln.strip()][-1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


@pytest.fixture(scope="module")
def two_projects(server, tmp_path_factory):
    """Projects a and b started together on the server; while a trains, a second run of a is started."""
    root = tmp_path_factory.mktemp("two")
    env = _env(root, server.uri)
    a, b = _project(root / "a", "policy-a"), _project(root / "b", "policy-b")
    runs = {name: _flow(p, env, root / f"{name}.log") for name, p in (("a", a), ("b", b))}
    deadline = time.time() + 600
    while not _stage_alive("sft", a):
        assert runs["a"].poll() is None, (root / "a.log").read_text()[-3000:]
        assert time.time() < deadline
        time.sleep(0.1)
    second = subprocess.run([sys.executable, "-m", "flows.pipeline", "--project-dir", str(a)], cwd=a, env=env,
                            capture_output=True, text=True, timeout=300)
    second_saw_a_alive = _stage_alive("sft", a) or _stage_alive("rl", a)
    codes = {name: proc.wait(timeout=900) for name, proc in runs.items()}
    logs = {name: (root / f"{name}.log").read_text() for name in runs}
    return {"a": a, "b": b, "codes": codes, "logs": logs, "second": second, "second_overlapped": second_saw_a_alive,
            "env": env}


def test_second_run_in_one_project_is_refused_and_the_first_is_unharmed(two_projects):
    second = two_projects["second"]
    assert second.returncode == 75, second.stdout[-2000:] + second.stderr[-2000:]
    assert "Traceback" not in second.stdout + second.stderr
    line = _last_line(second.stderr)
    assert line.startswith("reftflow: error: another reftflow run is active in ") and "pid " in line, line
    assert two_projects["second_overlapped"]  # it really was refused while the first was training
    assert two_projects["codes"]["a"] == 0, two_projects["logs"]["a"][-3000:]
    gate = json.loads((two_projects["a"] / "metrics/gate.json").read_text())
    assert gate["decision"] == "pass"


def test_two_projects_on_one_tracking_server_are_not_mixed_up(two_projects, server):
    from mlflow.tracking import MlflowClient

    assert two_projects["codes"] == {"a": 0, "b": 0}, {k: v[-2000:] for k, v in two_projects["logs"].items()}
    client = MlflowClient(tracking_uri=server.uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    for name in ("a", "b"):
        project = two_projects[name]
        key = f"{socket.gethostname()}:{project.resolve()}"
        parents = client.search_runs(exps, filter_string=f"tags.`reftflow.kind` = 'pipeline' and "
                                                         f"tags.`reftflow.project` = '{key}'")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the refused run logged nothing
        parent = parents[0].info.run_id
        children = client.search_runs(exps, filter_string=f"tags.mlflow.parentRunId = '{parent}'")
        # a stage the flow retried (a store locked for longer than RetryingClient waits, under load) leaves its
        # failed attempt as a child too: one FINISHED child per stage, any other one from an attempt that failed
        finished = sorted(c.info.run_name for c in children if c.info.status == "FINISHED")
        attempts = sorted((c.info.run_name, c.info.status) for c in children)
        assert finished == ["evaluate", "gate", "prepare", "rl", "sft"], attempts
        assert {c.data.tags["reftflow.project"] for c in children} == {key}
        champion = client.get_model_version_by_alias(f"policy-{name}", "champion")
        assert champion.version == "1"  # each model has its own versions: one run each
        owner = client.get_run(champion.run_id)
        assert owner.data.tags["reftflow.project"] == key
        assert owner.data.tags["mlflow.parentRunId"] == parent
        ev = json.loads((project / "metrics/eval.json").read_text())
        assert client.get_run(parent).data.metrics["rl/pass_rate"] == pytest.approx(ev["rl"]["pass_rate"])


def _md5s(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def test_disk_full_while_rl_saves_its_model_keeps_the_previous_models(two_projects, server):
    project = two_projects["b"]
    before = {d: _md5s(project / "models" / d) for d in ("sft", "rl")}
    set_params(project, rl={"steps": 3, "checkpoint_every": 0})  # the only big write is models/rl itself
    limit = (project / "models/sft/model.safetensors").stat().st_size // 2

    def small_files_only():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**two_projects["env"], "PYTHONPATH": str(project)}
    done = subprocess.run([sys.executable, "-m", "tasks.rl"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=600, preexec_fn=small_files_only)
    assert done.returncode == 74, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    line = _last_line(done.stderr)
    assert line.startswith("reftflow rl: error: a write failed on the file size limit or a full disk") \
        and "previous outputs are intact" in line, line
    assert {d: _md5s(project / "models" / d) for d in ("sft", "rl")} == before
    assert not [p for p in (project / "models").iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_tracking_server_down_as_rl_ends_then_the_rerun_logs_without_training(two_projects, server):
    from mlflow.tracking import MlflowClient

    project, env = two_projects["a"], two_projects["env"]
    set_params(project, rl={"steps": 4, "checkpoint_every": 1})
    log = project.parent / "a-down.log"
    proc = _flow(project, env, log)
    deadline = time.time() + 600
    while not list(project.glob("checkpoints/rl/*/step-000004/meta.json")):  # training is over, logging is not
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    server.stop()
    code = proc.wait(timeout=600)
    out = log.read_text()
    assert code == 1, out[-3000:]
    line = _last_line(out)
    assert f"MLflow at {server.uri} failed 4 times" in line and "nothing is lost" in line, line
    assert "(exit 69)" in line  # the stage said it was the tracking server, and the flow passed that on
    kept = list(project.glob("checkpoints/rl/*/step-*/meta.json"))
    assert kept, "the trained steps were lost"

    server.start()
    again = subprocess.run([sys.executable, "-m", "flows.pipeline", "--project-dir", str(project)], cwd=project,
                           env=env, capture_output=True, text=True, timeout=900)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    assert "rl: resuming from step 4 of 4" in out  # nothing trained again: it only logs
    client = MlflowClient(tracking_uri=server.uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    key = f"{socket.gethostname()}:{project.resolve()}"
    rl_runs = client.search_runs(exps, filter_string=f"attributes.run_name = 'rl' and "
                                                      f"tags.`reftflow.project` = '{key}'", order_by=["start_time DESC"])
    history = client.get_metric_history(rl_runs[0].info.run_id, "train_reward_mean")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]  # the resumed run's record is whole
    assert rl_runs[0].info.status == "FINISHED"
