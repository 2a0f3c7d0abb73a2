"""Shared fixtures: privacy env for every test, one Prefect test server per session."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from reftflow.env import PRIVACY_ENV

ROOT = Path(__file__).resolve().parents[1]
SHARED_GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"


@pytest.fixture(autouse=True, scope="session")
def _privacy_env():
    for key, value in PRIVACY_ENV.items():
        os.environ.setdefault(key, value)
    yield


@pytest.fixture(scope="session")
def prefect_server():
    """Prefect's temporary SQLite server, started once per session (~10-17 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def make_project(dest: Path, params_text: str) -> Path:
    """A real project in `dest`: the pipeline's code, dvc.yaml and params, in a git + DVC repo."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, dest / name)
    for pkg in ("reftflow", "tasks", "flows"):
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # DVC needs every param key that dvc.yaml names: start from the full params.yaml, then override
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in yaml.safe_load(params_text).items():
        if isinstance(values, dict):
            params[section] = {**params.get(section, {}), **values}
        else:
            params[section] = values
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / ".gitignore").write_text("/mlflow.db\n/mlruns/\n/checkpoints/\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"],
                ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        if cmd[0] == "dvc":
            cmd = [str(Path(os.sys.executable).parent / "dvc"), *cmd[1:]]
        subprocess.run(cmd, cwd=dest, check=True, env=env, capture_output=True)
    return dest


# the stage-level tests exercise PPO, the algorithm with the most moving parts (critic, reference,
# several processes); the shipped default (raft) runs through the same stage in test_ppo_stage.py
TINY_PARAMS = """\
seed: 0
data: {source: synthetic, num_train: 48, num_val: 12, max_ops: 2}
model: {hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64, max_length: 128, torch_threads: 1}
sft: {epochs: 1, batch_size: 8, max_steps: 3, logging_steps: 1, lr: 1.0e-3}
ppo: {algorithm: ppo, steps: 2, questions_per_step: 4, samples_per_question: 2, minibatch_size: 4, ppo_epochs: 1,
      max_new_tokens: 12, checkpoint_every: 1}
evaluate: {max_new_tokens: 12, batch_size: 12, num_logged_samples: 3}
gate: {min_pass_rate: 0.0, min_gain: -1.0}
"""


# what the reliability suite attacked, counted from the results (docs/reliability.md)
_ATTACKS = {"bad inputs": "test_bad_inputs.py::test_a_bad_input_is_one_line_and_exit_2[",
            "kill points": "test_kill_points.py::test_kill_the_whole_flow_then_run_again[",
            "two-at-once and resource cases": "test_concurrency_and_resources.py::"}


def pytest_terminal_summary(terminalreporter):
    counts = {}
    for label, prefix in _ATTACKS.items():
        for outcome in ("passed", "failed"):
            n = sum(prefix in r.nodeid for r in terminalreporter.stats.get(outcome, []) if r.when == "call")
            counts.setdefault(label, {})[outcome] = n
    if any(sum(c.values()) for c in counts.values()):
        terminalreporter.write_sep("-", "reliability")
        for label, c in counts.items():
            terminalreporter.write_line(f"{label}: {c['passed']} passed, {c['failed']} failed")
