"""More than one machine, played on one host with real servers: `reftflow tracking-server` (a real
PostgreSQL 16 from the pgserver wheel, and `mlflow server` on it, proxying artifacts), two projects
run against it at the same time as if on two machines, and a DVC remote outside project A that a git
clone of A ("a third machine", no runs of its own) pulls from.

- Each pipeline run's parent run has its own stage children and never the other project's (tag
  reftflow.project); both models are registered and aliased champion; the rows are in PostgreSQL and
  the weights in the server's artifact store.
- The clone pulls the champion's data and models from the shared remote (md5s as in dvc.lock),
  `reftflow status` there prints what it prints in A (but the project line), and `reftflow predict`
  there answers with the champion, fetched through the server.
- Stopping the server stops PostgreSQL too.

The projects use two registered model names: projects that share a server and a name compete for one
champion (README, "More than one machine").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.helpers import TINY_PARAMS, flow_command, free_port, make_project, pipeline_env, set_params

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]

BIN = Path(sys.executable).parent
QUESTION = "Ann has 3 pens. She gets 2 more. How many pens now?"


def _git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=project, check=True,
                   capture_output=True)


def _cli(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "reftflow"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")  # session, as Prefect's test server: it boots while that one does
def tracking():
    """`reftflow tracking-server` on a free port, as a user starts it (`_ready` waits for it); the last test
    stops it. Its directory is not under pytest's base temp: as root, PostgreSQL runs as another user
    (pgserver's `pgserver`), who must traverse the path, and pytest makes its base temp private again
    whenever a session starts."""
    root = Path(tempfile.mkdtemp(prefix="reftflow-tracking-"))
    log = root / "tracking-server.out"
    cmd = [str(BIN / "reftflow"), "tracking-server", "--dir", str(root / "srv"), "--port", str(free_port()),
           "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    server = SimpleNamespace(proc=proc, log=log, dir=root / "srv")
    yield server
    if proc.poll() is None:  # the last test did not get to stop it
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    shutil.rmtree(root, ignore_errors=True)


def _ready(server: SimpleNamespace) -> SimpleNamespace:
    """Wait for the server's URI line (a fresh PostgreSQL and MLflow's migrations: ~30 s on 2 idle cores);
    the projects and Prefect's server are made meanwhile."""
    deadline = time.time() + 300
    while "export MLFLOW_TRACKING_URI=" not in server.log.read_text():
        assert server.proc.poll() is None, server.log.read_text()[-3000:]
        assert time.time() < deadline, server.log.read_text()[-3000:]
        time.sleep(0.5)
    text = server.log.read_text()
    server.uri = re.search(r"export MLFLOW_TRACKING_URI=(\S+)", text).group(1)
    server.backend = re.search(r"backend: (\S+)", text).group(1)
    return server


def _project(root: Path, name: str) -> Path:
    project = make_project(root / f"machine-{name}" / "proj", TINY_PARAMS)
    set_params(project, gate={"registered_model_name": f"policy-{name}"})
    return project


@pytest.fixture(scope="module")
def machines(tracking, prefect_server, tmp_path_factory):
    """Projects a and b run at once against the tracking server (and one Prefect server, as on a cluster);
    a pushes to a DVC remote outside it. a's outputs are then committed as a user would (dvc.lock, and
    the metrics DVC leaves to git)."""
    from prefect.settings import PREFECT_API_URL

    root = tmp_path_factory.mktemp("machines")
    remote = root / "shared-dvc-remote"
    a, b = _project(root, "a"), _project(root, "b")
    subprocess.run([str(BIN / "dvc"), "remote", "add", "-d", "shared", str(remote)], cwd=a, check=True,
                   capture_output=True)
    _git(a, "add", "-A")
    _git(a, "commit", "-qm", "the shared DVC remote, the model's name")
    _ready(tracking)
    start = time.perf_counter()
    env = pipeline_env(root / "prefect-home", tracking.uri, PREFECT_API_URL=PREFECT_API_URL.value())
    procs = {name: subprocess.Popen(flow_command(p), cwd=p, env=env, stdout=(root / f"{name}.log").open("w"),
                                    stderr=subprocess.STDOUT) for name, p in (("a", a), ("b", b))}
    codes = {name: proc.wait(timeout=800) for name, proc in procs.items()}
    print(f"two pipelines at once on the tracking server: {time.perf_counter() - start:.0f} s")
    logs = {name: (root / f"{name}.log").read_text() for name in procs}
    if codes["a"] == 0:
        _git(a, "add", "-A")
        _git(a, "commit", "-qm", "run")
    return SimpleNamespace(a=a, b=b, codes=codes, logs=logs, remote=remote, root=root)


def _key(project: Path) -> str:
    return f"{socket.gethostname()}:{project.resolve()}"


def test_two_projects_on_one_postgresql_server_keep_their_own_runs(machines, tracking):
    from mlflow.tracking import MlflowClient

    assert machines.codes == {"a": 0, "b": 0}, {k: v[-3000:] for k, v in machines.logs.items()}
    client = MlflowClient(tracking_uri=tracking.uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    parents = {}
    for name in ("a", "b"):
        key = _key(getattr(machines, name))
        mine = client.search_runs(exps, filter_string=f"tags.`reftflow.project` = '{key}'")
        [parent] = [r for r in mine if r.data.tags.get("reftflow.kind") == "pipeline"]
        assert parent.info.status == "FINISHED" and parent.data.tags["reftflow.gate.decision"] == "pass"
        parents[name] = parent.info.run_id
        children = client.search_runs(exps, filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        assert sorted(c.info.run_name for c in children) == ["evaluate", "gate", "prepare", "rl", "sft"]
        assert {c.data.tags["reftflow.project"] for c in children} == {key}  # never the other project's
        assert len(mine) == 1 + len(children)  # and none of its own runs hangs elsewhere
        champion = client.get_model_version_by_alias(f"policy-{name}", "champion")
        assert champion.version == "1"
        assert client.get_run(champion.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parents["a"] != parents["b"]

    import psycopg  # the rows are PostgreSQL's, not some SQLite file's

    with psycopg.connect(tracking.backend) as conn:
        versions = conn.execute("SELECT name, version FROM model_versions ORDER BY name").fetchall()
        stored = {r[0] for r in conn.execute("SELECT run_uuid FROM runs").fetchall()}
    assert versions == [("policy-a", 1), ("policy-b", 1)]
    assert set(parents.values()) <= stored
    weights = list((tracking.dir / "artifacts").rglob("model.safetensors"))
    assert len(weights) >= 2, "the champions' weights are not in the server's artifact store"


@pytest.fixture(scope="module")
def clone(machines):
    """`git clone` of project a elsewhere ("another machine"), then `dvc pull` from the shared remote."""
    assert machines.codes["a"] == 0, machines.logs["a"][-3000:]
    dest = machines.root / "machine-c" / "proj"
    dest.parent.mkdir()
    subprocess.run(["git", "clone", "-q", str(machines.a), str(dest)], check=True, capture_output=True)
    pull = subprocess.run([str(BIN / "dvc"), "pull"], cwd=dest, capture_output=True, text=True, timeout=300)
    return SimpleNamespace(path=dest, pull=pull)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _outs_match_the_lock(project: Path) -> dict[str, str]:
    """Each cached output of dvc.lock → 'ok', or what differs (a directory's files against its .dir listing)."""
    found = {}
    for stage in yaml.safe_load((project / "dvc.lock").read_text())["stages"].values():
        for out in stage.get("outs", []):
            path, md5 = project / out["path"], out["md5"]
            if md5.endswith(".dir"):
                obj = project / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
                listing = {e["relpath"]: e["md5"] for e in json.loads(obj.read_text())}
                files = {str(f.relative_to(path)): _md5(f) for f in path.rglob("*") if f.is_file()}
                found[out["path"]] = "ok" if files == listing and _md5(obj) == md5[:-4] else f"{files} != {listing}"
            else:
                found[out["path"]] = "ok" if path.exists() and _md5(path) == md5 else "differs"
    return found


def test_a_clone_on_another_machine_pulls_the_champion_from_the_shared_remote(machines, clone):
    assert "DVC remote: pushed to 'shared'" in machines.logs["a"], machines.logs["a"][-3000:]
    assert clone.pull.returncode == 0, clone.pull.stdout + clone.pull.stderr
    matches = _outs_match_the_lock(clone.path)
    assert {"models/rl", "models/sft", "data/prepared/train.jsonl", "data/prepared/val.jsonl"} <= set(matches)
    assert set(matches.values()) == {"ok"}, matches
    assert (clone.path / "models/rl/model.safetensors").exists()


def test_status_on_the_clone_says_what_it_says_on_the_first_machine(machines, clone, tracking):
    env = pipeline_env(machines.root / "prefect-status", tracking.uri)
    on_a = _cli("status", "--project-dir", str(machines.a), env=env, cwd=machines.root)
    on_c = _cli("status", "--project-dir", str(clone.path), env=env, cwd=machines.root)
    assert on_a.returncode == 0 and on_c.returncode == 0, on_a.stderr[-2000:] + on_c.stderr[-2000:]
    a_lines, c_lines = on_a.stdout.splitlines(), on_c.stdout.splitlines()
    assert a_lines[0] == f"project {machines.a.resolve()}" and c_lines[0] == f"project {clone.path.resolve()}"
    assert a_lines[1:] == c_lines[1:], "\n".join(a_lines + ["---"] + c_lines)
    assert "stale (DVC): nothing; every stage is up to date" in c_lines
    assert any(ln.startswith("last run: ") and "FINISHED; gate PASS" in ln for ln in c_lines), c_lines
    assert any(ln.startswith("champion: policy-a v1, ") for ln in c_lines), c_lines


def test_predict_on_the_clone_answers_with_the_champion_through_the_server(clone, tracking, machines):
    from reftflow.config import load_params
    from reftflow.modeling import load_model
    from reftflow.serving import ReftflowModel
    from tasks.gate import prompting

    env = pipeline_env(machines.root / "prefect-predict", tracking.uri)
    proc = _cli("predict", "--project-dir", str(clone.path), QUESTION, env=env, cwd=machines.root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # what the champion's weights answer, loaded from the clone's pulled models/rl (the gate registered them)
    params = load_params(clone.path / "params.yaml")
    model = ReftflowModel()
    model.model, model.tokenizer = load_model(clone.path / "models/rl")
    model.prompting, model.max_new_tokens = prompting(params), params.evaluate.max_new_tokens
    assert proc.stdout.strip() == model.predict(None, {"question": QUESTION})[0].strip()
    assert not (clone.path / "mlflow.db").exists() and not (clone.path / "mlruns").exists()  # no store of its own


def test_stopping_the_server_stops_postgresql_too(tracking):
    _ready(tracking)
    tracking.proc.send_signal(signal.SIGTERM)  # the command itself, as `kill` would: it stops what it started
    assert tracking.proc.wait(timeout=120) == 0, tracking.log.read_text()[-3000:]
    assert "reftflow tracking-server: stopped (MLflow and PostgreSQL)" in tracking.log.read_text()
    assert not (tracking.dir / "pgdata" / "postmaster.pid").exists()  # pg_ctl stop removes it
    port = int(tracking.uri.rsplit(":", 1)[1])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
