"""Kill a PPO run with SIGKILL after its first checkpoint; the rerun resumes and ends exactly like an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import make_policy

ROOT = Path(__file__).resolve().parents[1]

ARGS = ["--steps", "4", "--checkpoint-every", "1", "--threads", "1"]


def _run(workdir: Path, *extra: str, wait: bool = True):
    cmd = [sys.executable, "-m", "tests.ppo_smoke", "--workdir", str(workdir), *ARGS, *extra]
    if wait:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120, cwd=ROOT)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)


def _metrics(workdir: Path) -> dict[int, dict]:
    """The last line logged for each step, without wall-clock timings."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        out[m["step"]] = {k: v for k, v in m.items() if not k.startswith("time/") and k != "rl/episodes_per_s"}
    return out


@pytest.mark.slow  # two PPO runs in subprocesses, one killed and resumed: ~22 s
def test_killed_run_resumes_to_the_same_result(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    for d in (full, killed):
        make_policy(d / "sft")
    _run(full)

    proc = _run(killed, "--sleep", "1", wait=False)  # the pause keeps it mid-run when the checkpoint lands
    deadline = time.time() + 90
    while not list((killed / "checkpoints").glob("step-*")):
        assert proc.poll() is None, "the run ended before writing a checkpoint"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "ppo").exists() and not (killed / "rank0.json").exists()
    assert [p.name for p in (killed / "checkpoints").glob("step-*")] == ["step-000001"]

    _run(killed)
    assert _metrics(killed) == _metrics(full)  # bitwise: every step is reseeded from (seed, step, rank)
    a = json.loads((full / "rank0.json").read_text())
    b = json.loads((killed / "rank0.json").read_text())
    assert a["param_hash"] == b["param_hash"] and b["step"] == 4
    assert not list((killed / "checkpoints").glob("step-*"))  # a finished run clears its checkpoints
