"""What the commands that start servers share (`reftflow serve`'s Prefect server, `reftflow tracking-server`'s
MLflow): is one answering, and stopping one with every process it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import urllib.request


def answers(url: str) -> bool:
    """Whether `url`/health answers 200 (Prefect's API and MLflow's server both have one)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group of `proc` (started with start_new_session: its workers too), SIGKILL
    after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
