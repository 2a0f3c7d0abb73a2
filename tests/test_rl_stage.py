"""The rl stage entry point itself: the shipped default algorithm through the stage, PPO on several
processes via `rl.num_processes` (rank 0 alone logs), and the precision it ran in, recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from reftflow.config import load_params
from tests.helpers import ROOT, TINY_PARAMS, make_project, set_params

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # each runs prepare, sft and rl: 30-40 s


def _stages(project, env, *stages):
    for stage in stages:
        proc = subprocess.run([sys.executable, "-m", f"tasks.{stage}"], cwd=project, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _rl_run(uri):
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`reftflow.stage` = 'rl'")
    assert len(runs) == 1  # one process logs
    return client, runs[0]


def test_ppo_runs_on_two_processes(tmp_path):
    project = make_project(tmp_path / "proj", TINY_PARAMS)
    set_params(project, rl={"algorithm": "ppo", "num_processes": 2})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(project), "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1"}
    _stages(project, env, "prepare", "sft", "rl")
    assert (project / "models/rl/model.safetensors").exists()
    curve = (project / "plots/rl_curve.csv").read_text().splitlines()
    assert curve[0].startswith("step,") and len(curve) == 1 + load_params(project / "params.yaml").rl.steps
    client, run = _rl_run(uri)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_reward_mean")] == [1, 2]


def test_the_shipped_default_algorithm_runs_through_the_stage(tmp_path):
    """params.yaml's own `rl.algorithm`: the stage's checkpoints, curves, validation and record."""
    shipped = load_params(ROOT / "params.yaml").rl.algorithm
    project = make_project(tmp_path / "proj", TINY_PARAMS)
    set_params(project, rl={"eval_interval": 1})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(project)}
    proc = _stages(project, env, "prepare", "sft", "rl")
    assert f"rl ({shipped}, " in proc.stdout and "2 steps" in proc.stdout
    assert (project / "models/rl/model.safetensors").exists() and not list(project.glob("checkpoints/rl/*/step-*"))
    summary = json.loads((project / "metrics/rl.json").read_text())
    assert summary["algorithm"] == shipped and summary["precision"] in ("bf16", "float32")
    client, run = _rl_run(uri)
    assert run.data.tags["reftflow.precision"] == summary["precision"]
    assert run.data.tags["reftflow.rl.algorithm"] == shipped
    # the run's params hold the shared keys and the chosen algorithm's section only
    assert f"rl.{shipped}.lr" in run.data.params
    assert not [k for k in run.data.params if k.startswith("rl.") and k.split(".")[1] in {"ppo", "raft", "grpo"} - {shipped}]
    for key in ("train_reward_mean", "valid_reward_mean", "valid_pass_rate"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
