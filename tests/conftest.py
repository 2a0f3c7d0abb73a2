"""Shared fixtures: privacy env for every test, one Prefect test server per session."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from reftflow.env import PRIVACY_ENV
from reftflow.project import REMOTE_DIR, REMOTE_NAME

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


def loopback_only_prefix() -> list[str] | None:
    """The command prefix that runs a command in a network namespace holding only loopback, brought
    up (Prefect's temporary server listens on 127.0.0.1), or None where this machine cannot make one
    (no user namespaces, no `unshare`/`ip`)."""
    prefix = ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if probe.returncode == 0 else None


class FinishedRun:
    """A tiny project after one whole pipeline run (see `finished_project`)."""

    def __init__(self, project: Path, returncode: int, output: str, isolated: bool, seconds: float):
        self.project, self.returncode, self.output = project, returncode, output
        self.isolated, self.seconds = isolated, seconds

    @property
    def tail(self) -> str:
        return self.output[-3000:]


@pytest.fixture(scope="session")
def finished_project(tmp_path_factory) -> FinishedRun:
    """One tiny project after one whole pipeline run, shared by the tests that look at a finished run
    (the DVC remote, the zero-network and the browser tests): the command a user types, `python -m
    flows.pipeline --project-dir P`, as a subprocess with its own Prefect temporary server (and its
    own PREFECT_HOME, not the user's) and the project's own MLflow store (P/mlflow.db). Where the
    machine allows it, it runs in a network namespace with only loopback, so every test built on it
    also shows that nothing needed the network. Its result is returned, not asserted: each test
    says what it needs."""
    import time

    base = tmp_path_factory.mktemp("finished")
    project = make_project(base / "proj", _finished_params())
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    env["PREFECT_HOME"] = str(base / "prefect-home")
    prefix = loopback_only_prefix() or []
    start = time.perf_counter()
    proc = subprocess.run([*prefix, os.sys.executable, "-m", "flows.pipeline", "--project-dir", str(project),
                           "--run-name", "finished"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=900)
    return FinishedRun(project, proc.returncode, proc.stdout + proc.stderr, bool(prefix),
                       time.perf_counter() - start)


def _finished_params() -> str:
    params = yaml.safe_load(TINY_PARAMS)
    # a few more steps than TINY_PARAMS, validated every other one: the reward and validation curves
    # that the browser test looks at (and docs/ shows) have several points, not one
    params["ppo"].update(steps=6, eval_interval=2, eval_samples=4)
    return yaml.safe_dump(params, sort_keys=False)


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
    (dest / ".gitignore").write_text(f"/mlflow.db\n/mlruns/\n/checkpoints/\n/{REMOTE_DIR}/\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"],
                ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                ["dvc", "remote", "add", "-d", REMOTE_NAME, REMOTE_DIR]):  # as the repo's .dvc/config
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
