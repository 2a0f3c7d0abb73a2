"""`reftflow serve` as a user runs it: a Prefect deployment served against a real (temporary) Prefect
server. Two runs of it triggered at once both complete, one after the other, never overlapping
(the deployment's concurrency limit), each with its MLflow record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import TINY_PARAMS, free_port, make_project, pipeline_env

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]


def test_served_deployment_runs_twice_without_overlap(prefect_server, tmp_path):
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    project = make_project(tmp_path / "proj", TINY_PARAMS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_RUNNER_POLL_FREQUENCY="2", PYTHONUNBUFFERED="1")
    log = tmp_path / "serve.log"
    serve = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--project-dir", str(project),
                              "--name", "test-serve", "--cron", "0 2 * * *"], cwd=project, env=env,
                             stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with get_client(sync_client=True) as client:
            deadline = time.time() + 120
            while True:
                try:
                    dep = client.read_deployment_by_name("reftflow-pipeline/test-serve")
                    break
                except Exception:  # noqa: BLE001 - not registered yet
                    assert serve.poll() is None, log.read_text()[-3000:]
                    assert time.time() < deadline, "the deployment never appeared"
                    time.sleep(0.5)
            limit = dep.global_concurrency_limit
            assert dep.schedules[0].schedule.cron == "0 2 * * *" and limit is not None and limit.limit == 1
            ids = [client.create_flow_run_from_deployment(dep.id).id for _ in range(2)]  # both due at once
            deadline = time.time() + 720
            while True:
                runs = [client.read_flow_run(i) for i in ids]
                if all(r.state is not None and r.state.is_final() for r in runs):
                    break
                assert serve.poll() is None, log.read_text()[-3000:]
                assert time.time() < deadline, [r.state for r in runs]
                time.sleep(1)
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=60)

    assert [r.state.type.value for r in runs] == ["COMPLETED", "COMPLETED"], log.read_text()[-3000:]
    first, second = sorted(runs, key=lambda r: r.start_time)
    assert first.end_time <= second.start_time  # the second waited for the first's slot

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    parents = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                 filter_string="tags.`reftflow.kind` = 'pipeline'", order_by=["start_time ASC"])
    assert [p.info.status for p in parents] == ["FINISHED", "FINISHED"]
    assert parents[0].data.tags["reftflow.gate.decision"] == "pass"
    assert parents[0].data.tags["reftflow.stages_run"] == "prepare,base,sft,rl,evaluate,gate"
    assert parents[1].data.tags["reftflow.stages_run"] == "none"  # DVC: nothing changed in between
    assert (project / "metrics/eval.json").exists()


def test_the_cron_fires_on_a_local_prefect_server_started_by_serve(tmp_path):
    """With no PREFECT_API_URL, `reftflow serve` starts a real Prefect server (a temporary one has no
    scheduler): a minutely cron produces a run that completes, with its MLflow record."""
    import socket

    from mlflow.tracking import MlflowClient

    project = make_project(tmp_path / "proj", TINY_PARAMS)
    port = free_port()
    env = pipeline_env(tmp_path / "prefect-home", PREFECT_RUNNER_POLL_FREQUENCY="2")
    log = tmp_path / "serve.log"
    serve = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--project-dir", str(project), "--name",
                              "minutely", "--cron", "* * * * *", "--port", str(port)], cwd=project, env=env,
                             stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    store = project / "mlflow.db"
    try:
        deadline = time.time() + 480
        while True:
            # not before the gate has written its report: a client opening a store that the run is still
            # creating would race its migrations (alembic's "expected to match one row")
            if store.exists() and (project / "metrics" / "gate.json").exists():
                client = MlflowClient(tracking_uri=f"sqlite:///{store}")
                parents = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                             filter_string="tags.`reftflow.kind` = 'pipeline'")
                if parents and parents[0].info.status == "FINISHED":
                    break
            assert serve.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no scheduled run completed:\n" + log.read_text()[-3000:]
            time.sleep(2)
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=90)
    text = log.read_text()
    assert f"starting a Prefect server on http://127.0.0.1:{port}" in text
    assert parents[0].data.tags["reftflow.gate.decision"] == "pass"
    with socket.socket() as s:  # serve stopped the server it started
        assert s.connect_ex(("127.0.0.1", port)) != 0
