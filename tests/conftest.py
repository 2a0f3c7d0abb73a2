"""Shared fixtures: privacy env for every test, one Prefect test server per session, one finished tiny
pipeline run per session. What tests import lives in tests/helpers.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from reftflow.env import PRIVACY_ENV
from tests.helpers import TINY_PARAMS, loopback_only_prefix, make_project, pipeline_env, run_pipeline


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
    base = tmp_path_factory.mktemp("finished")
    project = make_project(base / "proj", _finished_params())
    prefix = loopback_only_prefix() or []
    start = time.perf_counter()
    proc = run_pipeline(project, pipeline_env(base / "prefect-home"), 900, prefix, "--run-name", "finished")
    return FinishedRun(project, proc.returncode, proc.stdout + proc.stderr, bool(prefix),
                       time.perf_counter() - start)


def _finished_params() -> str:
    params = yaml.safe_load(TINY_PARAMS)
    # a few more steps than TINY_PARAMS, validated every other one: the reward and validation curves
    # that the browser test looks at (and docs/ shows) have several points, not one
    params["rl"].update(steps=6, eval_interval=2, eval_samples=4)
    return yaml.safe_dump(params, sort_keys=False)



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
