"""`reftflow serve --pool`: the deployment registered in a Prefect work pool and run by a real worker.

A real Prefect server (`prefect server start`, its own PREFECT_HOME, a free port) and a real
`prefect worker start --pool` started elsewhere than the project (it needs only the package and the
project's path); `prefect deployment run` triggers the deployment, and the run completes with its
MLflow record. Nothing here is mocked; Docker and Kubernetes pools are not run (no engine here).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reftflow.servers import answers, stop_group
from tests.helpers import TINY_PARAMS, free_port, make_project, pipeline_env

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]

BIN = Path(sys.executable).parent


def _start(cmd: list[str], env: dict, log: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 240  # a fresh DB is migrated first
    while not answers(url):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def _wait_for_run(url: str, run_id: str, watched: list[tuple[subprocess.Popen, Path]]):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.time() + 720
    with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                return run, client.read_deployment(run.deployment_id)
            for proc, log in watched:
                assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, f"{run.state}\n" + watched[-1][1].read_text()[-3000:]
            time.sleep(2)


def test_a_worker_runs_the_deployment_registered_in_a_work_pool(tmp_path):
    from mlflow.tracking import MlflowClient

    project = make_project(tmp_path / "proj", TINY_PARAMS)
    url = f"http://127.0.0.1:{free_port()}/api"
    env = pipeline_env(tmp_path / "prefect-home", PREFECT_API_URL=url, PREFECT_WORKER_QUERY_SECONDS="2")
    elsewhere = tmp_path / "worker-machine"
    elsewhere.mkdir()
    port = url.split(":")[2].split("/")[0]
    server = _start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port, "--no-ui"],
                    env, tmp_path / "server.log", tmp_path)
    worker = None
    try:
        _wait_for_server(url, server, tmp_path / "server.log")
        reg = subprocess.run([str(BIN / "reftflow"), "serve", "--pool", "reftflow-test", "--name", "pooled",
                              "--project-dir", str(project)], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
        assert reg.returncode == 0, reg.stdout[-2000:] + reg.stderr[-2000:]
        assert "in work pool 'reftflow-test' (a process pool, created)" in reg.stdout, reg.stdout
        assert f"PREFECT_API_URL={url} prefect worker start --pool reftflow-test" in reg.stdout
        worker = _start([str(BIN / "prefect"), "worker", "start", "--pool", "reftflow-test"], env,
                        tmp_path / "worker.log", elsewhere)
        trigger = subprocess.run([str(BIN / "prefect"), "deployment", "run", "reftflow-pipeline/pooled"],
                                 cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert trigger.returncode == 0, trigger.stdout + trigger.stderr
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", trigger.stdout).group(1)
        run, deployment = _wait_for_run(url, run_id, [(server, tmp_path / "server.log"),
                                                      (worker, tmp_path / "worker.log")])
    finally:
        for proc in (worker, server):
            if proc is not None:
                stop_group(proc)

    worker_log = (tmp_path / "worker.log").read_text()
    assert run.state.type.value == "COMPLETED", worker_log[-4000:]
    assert run.id.hex in worker_log.replace("-", "")  # this worker, not something else, ran it
    assert deployment.work_pool_name == "reftflow-test" and deployment.entrypoint == "flows.pipeline.pipeline"
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.job_variables["env"]["DO_NOT_TRACK"] == "true"
    assert deployment.parameters["project_dir"] == str(project.resolve())

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    [parent] = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string="tags.`reftflow.kind` = 'pipeline'")
    assert parent.info.status == "FINISHED" and parent.data.tags["reftflow.gate.decision"] == "pass"
    assert parent.data.tags["reftflow.stages_run"] == "prepare,base,sft,rl,evaluate,gate"
    assert json.loads((project / "metrics/gate.json").read_text())["decision"] == "pass"


def _make_docker_pool(url: str, name: str) -> None:
    """A Docker pool with prefect-docker's own default job template, as the copy Prefect ships holds it
    (`prefect work-pool create --type docker` would have the server ask GitHub for it first)."""
    import prefect.server.api
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    shipped = Path(prefect.server.api.__file__).parent / "collections_data/views/aggregate-worker-metadata.json"
    template = json.loads(shipped.read_text())["prefect-docker"]["docker"]["default_base_job_configuration"]
    with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=name, type="docker", base_job_template=template))


def test_job_variables_reach_a_docker_pool_the_user_made(tmp_path):
    """A Docker pool made beforehand (no prefect-docker here, and no worker runs it) receives the
    deployment with the image, volumes and env given to --job-variables, the privacy defaults merged
    into that env. Without prefect-docker, reftflow cannot make one itself, and says so in one line."""
    url = f"http://127.0.0.1:{free_port()}/api"
    env = pipeline_env(tmp_path / "prefect-home", PREFECT_API_URL=url)
    project = make_project(tmp_path / "proj", TINY_PARAMS)
    port = url.split(":")[2].split("/")[0]
    server = _start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port, "--no-ui"],
                    env, tmp_path / "server.log", tmp_path)
    try:
        _wait_for_server(url, server, tmp_path / "server.log")
        missing = subprocess.run([str(BIN / "reftflow"), "serve", "--pool", "new-docker", "--pool-type", "docker",
                                  "--project-dir", str(project)], cwd=tmp_path, env=env, capture_output=True, text=True,
                                 timeout=300)
        assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
            "reftflow serve: error: --pool-type 'docker': no worker of that type is installed here (docker: pip "
            "install prefect-docker; kubernetes: pip install prefect-kubernetes), or create the pool yourself: "
            "prefect work-pool create new-docker --type docker"], missing.stderr
        _make_docker_pool(url, "reftflow-docker")
        variables = {"image": "reftflow:0.1.0", "volumes": ["/srv/reftflow/proj:/srv/reftflow/proj"],
                     "env": {"MLFLOW_TRACKING_URI": "http://tracking.lan:5000"}}
        reg = subprocess.run([str(BIN / "reftflow"), "serve", "--pool", "reftflow-docker", "--name", "in-docker",
                              "--project-dir", str(project), "--worker-project-dir", "/srv/reftflow/proj",
                              "--job-variables", json.dumps(variables)], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300)
        assert reg.returncode == 0, reg.stdout[-2000:] + reg.stderr[-2000:]
        assert "(a docker pool, already there)" in reg.stdout, reg.stdout
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name("reftflow-pipeline/in-docker")
    finally:
        stop_group(server)
    assert dep.work_pool_name == "reftflow-docker" and dep.parameters["project_dir"] == "/srv/reftflow/proj"
    assert dep.job_variables["image"] == "reftflow:0.1.0" and dep.job_variables["volumes"] == variables["volumes"]
    assert dep.job_variables["env"]["MLFLOW_TRACKING_URI"] == "http://tracking.lan:5000"
    assert dep.job_variables["env"]["MLFLOW_DISABLE_TELEMETRY"] == "true"
