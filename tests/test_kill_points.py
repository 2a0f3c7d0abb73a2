"""SIGKILL the whole flow (the Prefect process, its temporary server, DVC and the stage) during each
stage, then run it again as `make run` would: it completes, sft and rl resume from their checkpoints
rather than starting over, `metrics/eval.json` equals an uninterrupted run's, no process of the
killed run survives, and no lock blocks the rerun.

Each case starts from a copy of one finished project with the killed stage and everything after it
made stale (their outputs and the DVC cache removed), so earlier stages are skipped as up to date
instead of retrained: one uninterrupted run, then five short ones.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY_PARAMS, flow_command, make_project, pipeline_env, run_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1800)]

STAGES = ["prepare", "base", "sft", "rl", "evaluate", "gate"]
OUTS = {"prepare": ["data/prepared", "metrics/prepare.json"], "base": ["models/base"],
        "sft": ["models/sft", "metrics/sft.json", "plots/sft_loss.csv"],
        "rl": ["models/rl", "metrics/rl.json", "plots/rl_curve.csv"],
        "evaluate": ["data/predictions", "metrics/eval.json"], "gate": ["metrics/gate.md", "metrics/gate.json"]}
SFT_STEPS, RL_STEPS = 8, 4


def _env(prefect_home: Path) -> dict[str, str]:
    return pipeline_env(prefect_home)


def _run(project: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_pipeline(project, env)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A project run once, uninterrupted, with enough sft and rl steps to be killed between checkpoints."""
    root = tmp_path_factory.mktemp("kill")
    project = make_project(root / "reference", TINY_PARAMS)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sft"].update(max_steps=SFT_STEPS, checkpoint_every=2)
    params["rl"].update(steps=RL_STEPS, checkpoint_every=1)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = _env(root / "prefect-home")
    done = _run(project, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return project, env, json.loads((project / "metrics/eval.json").read_text())


def _stale_copy(reference: Path, dest: Path, stage: str) -> Path:
    """The finished project with `stage` and every stage after it to be redone."""
    shutil.copytree(reference, dest, symlinks=True)
    shutil.rmtree(dest / ".dvc" / "cache", ignore_errors=True)  # else DVC restores the outputs instead of running
    for later in STAGES[STAGES.index(stage):]:
        if later == "base" and stage != "base":
            continue  # base depends on nothing upstream: it stays up to date
        for rel in OUTS[later]:
            p = dest / rel
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    return dest


def _stage_alive(stage: str) -> bool:
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"tasks.{stage}".encode() in (proc / "cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def _in_session(sid: int) -> list[str]:
    """Processes still alive in the killed run's session (the flow started it: start_new_session)."""
    left = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getsid(int(proc.name)) == sid and \
                    (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":  # a zombie is dead
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                left.append(f"{proc.name}: {cmd[:120]}")
        except (OSError, ProcessLookupError):
            continue
    return left


def _complete(pattern: str, project: Path, below: int) -> bool:
    """A complete checkpoint before the last step exists (`pattern` matches its completion marker)."""
    for marker in project.glob(pattern):
        step = int(marker.parent.name.rsplit("-", 1)[-1])
        if step < below:
            return True
    return False


def _triggers(project: Path):
    """When each stage is under way (a stage that finishes fast is killed while its process is alive)."""
    alive_since: dict[str, float] = {}

    def alive_for(stage: str, seconds: float) -> bool:
        if not _stage_alive(stage):
            alive_since.pop(stage, None)
            return False
        return time.time() - alive_since.setdefault(stage, time.time()) >= seconds

    return {
        "prepare": lambda: alive_for("prepare", 0.5),
        "sft": lambda: _complete("checkpoints/sft/*/checkpoint-*/reftflow-complete", project, SFT_STEPS),
        "rl": lambda: _complete("checkpoints/rl/*/step-*/meta.json", project, RL_STEPS),
        "evaluate": lambda: alive_for("evaluate", 2.0),
        "gate": lambda: alive_for("gate", 0.5),
    }


@pytest.mark.parametrize("stage", ["prepare", "sft", "rl", "evaluate", "gate"])
def test_kill_the_whole_flow_then_run_again(finished, tmp_path, stage):
    reference, env, reference_eval = finished
    project = _stale_copy(reference, tmp_path / "proj", stage)

    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(flow_command(project), cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    trigger, deadline = _triggers(project)[stage], time.time() + 600
    while not trigger():
        assert proc.poll() is None, f"the run ended before it was killed during {stage}:\n" + \
            (tmp_path / "killed.log").read_text()[-3000:]
        assert time.time() < deadline, f"{stage} never got under way"
        time.sleep(0.05)
    under_way = _stage_alive(stage)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole flow: Prefect, its server, DVC, the stage
    proc.wait()
    log.close()
    time.sleep(1.0)
    assert _in_session(proc.pid) == [], "processes of the killed run survived"
    assert under_way, f"the {stage} process had already ended when the flow was killed"

    again = _run(project, env)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    assert json.loads((project / "metrics/eval.json").read_text()) == reference_eval
    if stage == "sft":
        assert "sft: resuming from" in out, out[-3000:]
    if stage == "rl":
        assert "rl: resuming from step" in out, out[-3000:]
    assert not [p for p in project.glob("models/.*") if ".tmp-" in p.name or ".old-" in p.name], \
        "a temp or set-aside model dir was left behind"
    assert not list((project / "checkpoints").glob("*/*")), "checkpoints of a finished run were left behind"
    curve = (project / "plots/rl_curve.csv").read_text().splitlines()
    assert len(curve) == 1 + RL_STEPS  # a resumed rl stage's curve still starts at step 1

    # the killed run's MLflow runs were closed as KILLED, not left RUNNING forever
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    exps = [e.experiment_id for e in client.search_experiments()]
    assert not client.search_runs(exps, filter_string="attributes.status = 'RUNNING'")
    assert client.search_runs(exps, filter_string="attributes.status = 'KILLED'")
