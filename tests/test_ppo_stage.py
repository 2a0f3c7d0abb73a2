"""The ppo stage entry point itself: several processes via `ppo.num_processes`, rank 0 alone logs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import TINY_PARAMS, make_project

pytestmark = pytest.mark.timeout(600)


def test_ppo_stage_runs_on_two_processes(tmp_path):
    project = make_project(tmp_path / "proj", TINY_PARAMS)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ppo"]["num_processes"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(project), "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1"}
    for stage in ("prepare", "sft", "ppo"):
        proc = subprocess.run([sys.executable, "-m", f"tasks.{stage}"], cwd=project, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert (project / "models/ppo/model.safetensors").exists()
    curve = (project / "plots/ppo_curve.csv").read_text().splitlines()
    assert curve[0].startswith("step,") and len(curve) == 1 + params["ppo"]["steps"]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`reftflow.stage` = 'ppo'")
    assert len(runs) == 1  # one process logs
    history = client.get_metric_history(runs[0].info.run_id, "train_reward_mean")
    assert [m.step for m in history] == [1, 2]


def test_raft_the_default_algorithm_runs_through_the_stage(tmp_path):
    """params.yaml ships `ppo.algorithm: raft`: the same stage, checkpoints and curves."""
    project = make_project(tmp_path / "proj", TINY_PARAMS)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ppo"]["algorithm"] = "raft"
    params["ppo"]["eval_interval"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(project)}
    for stage in ("prepare", "sft", "ppo"):
        proc = subprocess.run([sys.executable, "-m", f"tasks.{stage}"], cwd=project, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ppo (raft): 2 steps" in proc.stdout
    assert (project / "models/ppo/model.safetensors").exists() and not list(project.glob("checkpoints/ppo/*/step-*"))
    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([e.experiment_id for e in client.search_experiments()],
                             filter_string="tags.`reftflow.stage` = 'ppo'")[0]
    for key in ("train_reward_mean", "raft/kept", "valid_reward_mean", "valid_pass_rate"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
