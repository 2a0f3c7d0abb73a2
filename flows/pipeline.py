"""The reftflow pipeline as a Prefect flow: prepare → base → sft → rl → evaluate → gate.

Wiring only. Each stage runs through `dvc repro --single-item <stage>`, the same entry point DVC
uses, so DVC alone decides what is stale; Prefect adds run names, retries, logs and the gate
report artifact; MLflow gets one parent run whose id reaches each stage subprocess through
REFTFLOW_PARENT_RUN_ID. Each stage reports how it ended in a file named by REFTFLOW_STAGE_REPORT
(reftflow/stage.py): a stage that refused its input stops the chain, is not retried, and its
own error line is the last line printed (exit status 2).

    python -m flows.pipeline            # what `make run` does
    python -m flows.pipeline --help
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger, task
from prefect.states import Failed, State

from reftflow import exits
from reftflow.project import check_project

if TYPE_CHECKING:
    from reftflow.stage import StageReport

STAGES = ("prepare", "base", "sft", "rl", "evaluate", "gate")


class StageFailed(RuntimeError):
    """A stage failed in a way that may be worth a retry (a crash, a divergence, a locked store)."""

    def __init__(self, stage: str, exit_code: int, tail: str):
        super().__init__(stage, exit_code, tail)  # all args: the exception pickles, as Prefect may need
        self.stage, self.exit_code, self.tail = stage, exit_code, tail

    def __str__(self) -> str:
        return f"stage '{self.stage}' failed (exit {self.exit_code}): {self.tail}"


class StageBadInput(Exception):
    """A stage refused its input (exit 2): the chain stops and the stage's own line is the answer."""

    def __init__(self, stage: str, message: str):
        super().__init__(stage, message)
        self.stage, self.message = stage, message

    def __str__(self) -> str:
        return f"reftflow {self.stage}: error: {self.message}"


@dataclass(frozen=True)
class StageResult:
    """One `dvc repro` of one stage. `bad_input` holds the stage's message when it refused its input:
    the task returns that instead of raising, so Prefect neither retries it nor logs a traceback."""

    stage: str
    ran: bool
    bad_input: str | None = None


def _retry_unless_final(task, task_run, state) -> bool:
    try:
        state.result()
    except StageFailed as e:
        return e.exit_code not in exits.NOT_RETRIED
    except Exception:  # noqa: BLE001 - anything else (a crash) is worth one more try
        return True
    return False


def _stage_env(parent_run_id: str, project_dir: Path) -> dict[str, str]:
    from reftflow.tracking import PARENT_ENV, tracking_uri

    env = os.environ.copy()
    env[PARENT_ENV] = parent_run_id
    env["MLFLOW_TRACKING_URI"] = tracking_uri(project_dir)
    # dvc.yaml says `python -m tasks.<stage>`: make that the interpreter running this flow
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(project_dir), env.get("PYTHONPATH", "")] if p)
    return env


def _run_streaming(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run a command, passing its output through unchanged (progress bars stay live), and keep it."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    chunks: list[bytes] = []
    assert proc.stdout is not None
    while chunk := os.read(proc.stdout.fileno(), 4096):
        chunks.append(chunk)
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
    return proc.wait(), b"".join(chunks).decode("utf-8", "replace")


def _failure_line(stage: str, report_message: str, output: str) -> str:
    """The line that says why a stage failed: its report's, else its own last `reftflow <stage>:` line
    (rl prints one before exiting with exits.DIVERGED), else DVC's last error line (DVC itself failed)."""
    lines = [ln.strip() for ln in output.replace("\r", "\n").splitlines() if ln.strip()]
    own = [ln for ln in lines if ln.startswith(f"reftflow {stage}:")]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return report_message or (own or errors or lines or ["no output"])[-1]


def _outcome(stage: str, code: int, report: StageReport | None, output: str) -> StageResult:
    """DVC's exit code, the stage's report and the output → the result, or StageFailed to retry."""
    if report is not None and report.exit_code == exits.BAD_INPUT:
        return StageResult(stage, ran=True, bad_input=report.message)
    if code != 0:
        failed = report is not None and report.exit_code != 0  # else DVC itself failed, before or after it
        raise StageFailed(stage, report.exit_code if failed else code,
                          _failure_line(stage, report.message if failed else "", output))
    return StageResult(stage, ran=report is not None)


# sft and rl resume from their last checkpoints, so a retry there continues rather than restarts; gate's
# registry writes can hit a locked SQLite store. Bad input (exit 2) is returned, never retried.
_RETRIES = {"prepare": 1, "base": 1, "sft": 1, "rl": 1, "evaluate": 1, "gate": 2}


@task(task_run_name="{stage}", retry_condition_fn=_retry_unless_final, retry_delay_seconds=5)
def run_stage(stage: str, parent_run_id: str, project_dir: str) -> StageResult:
    """`dvc repro --single-item <stage>`. The stage reports how it ended through a file named in
    REFTFLOW_STAGE_REPORT (DVC's own exit code and output hide the stage's); no file: DVC skipped it."""
    from reftflow.stage import REPORT_ENV, read_report

    logger = get_run_logger()
    cwd = Path(project_dir)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"reftflow-{stage}-") as tmp:  # fresh for every attempt
        report_file = Path(tmp) / "report.json"
        env = {**_stage_env(parent_run_id, cwd), REPORT_ENV: str(report_file)}
        code, output = _run_streaming([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd, env)
        report = read_report(report_file)
    result = _outcome(stage, code, report, output)
    if result.bad_input is not None:
        logger.error("stage %s refused its input (exit %d): not retried", stage, exits.BAD_INPUT)
    else:
        logger.info("stage %s %s in %.1f s", stage, "ran" if result.ran else "was up to date (skipped)",
                    time.perf_counter() - start)
    return result


validate = task(check_project, task_run_name="validate-params")


def push_outputs(project_dir: str | Path) -> str:
    """`dvc push`: every cached output (data, models) to the project's default remote, so a champion
    can be restored with `dvc pull` after its cache is cleaned (README, "Restoring a champion").
    Run by the flow after the chain, not by the gate stage: DVC caches a stage's outputs only once
    the stage has exited. Returns what happened; a failed push is reported, never raised: the gate's
    decision and the registry entry stand either way."""
    dvc, cwd = [sys.executable, "-m", "dvc"], Path(project_dir)
    remote = subprocess.run([*dvc, "remote", "default"], cwd=cwd, capture_output=True, text=True)
    if remote.returncode != 0 or not remote.stdout.strip():
        return "not pushed: the project has no default DVC remote (dvc remote add -d NAME URL)"
    proc = subprocess.run([*dvc, "push"], cwd=cwd, capture_output=True, text=True)
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    if proc.returncode != 0:  # DVC's own ERROR line, not the support link it prints after it
        why = ([ln for ln in lines if ln.startswith("ERROR")] or lines or ["no output"])[-1]
        return f"push to '{remote.stdout.strip()}' FAILED (exit {proc.returncode}): {why}"
    return f"pushed to '{remote.stdout.strip()}': {lines[-1] if lines else 'done'}"


push = task(push_outputs, task_run_name="dvc-push")


def _summary(project_dir: Path, ran: dict[str, bool]) -> dict:
    from reftflow import paths

    def read(p: Path) -> dict:
        f = project_dir / p
        return json.loads(f.read_text()) if f.exists() else {}

    return {"eval": read(paths.EVAL_METRICS), "gate": read(paths.GATE_METRICS), "ran": ran}


def _print_summary(summary: dict, project_dir: Path, seconds: float) -> str:
    from reftflow.tracking import ui_command

    ev, gate = summary["eval"], summary["gate"]
    ran = [s for s, r in summary["ran"].items() if r]
    skipped = [s for s, r in summary["ran"].items() if not r]
    decision = gate.get("decision", "?").upper()
    reg = gate.get("registered")
    lines = [f"reftflow: gate {decision}"
             + (f": {reg['name']} v{reg['version']} is now @{reg['alias']}" if reg else
                ": nothing promoted" if decision == "FAIL" else "")]
    if ev:
        s, p = ev["sft"], ev["rl"]
        g = ev["gain"]
        lines.append(f"  held-out pass rate: SFT {s['pass_rate']:.3f} → RL {p['pass_rate']:.3f} "
                     f"({g['pass_rate']:+.3f}, 95 % interval [{g['pass_rate_low']:+.3f}, {g['pass_rate_high']:+.3f}]);"
                     f"  mean grader score: SFT {s['mean_score']:.3f} → RL {p['mean_score']:.3f} "
                     f"({g['mean_score']:+.3f} [{g['mean_score_low']:+.3f}, {g['mean_score_high']:+.3f}])"
                     f"  ({int(p['samples'])} val questions, {ev.get('precision', '?')})")
    for r in gate.get("rules", []):
        lines.append(f"  rule {r['name']}: {r['value']:.4f} vs {r['threshold']:.4f} → "
                     f"{'pass' if r['passed'] else 'FAIL'} ({r['margin']:+.4f})")
    lines += [f"  note: {line}" for line in gate.get("noise", [])]
    lines.append(f"  stages run: {', '.join(ran) or 'none'}; up to date: {', '.join(skipped) or 'none'} "
                 f"({seconds:.0f} s)")
    if "dvc_push" in summary:
        lines.append(f"  DVC remote: {summary['dvc_push']}")
    lines.append(f"  MLflow UI: {ui_command(project_dir)}")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _run_chain(parent, project: Path) -> dict[str, bool]:
    """Each stage in order; a refused input stops the chain (raised: the parent run is marked FAILED)."""
    ran: dict[str, bool] = {}
    for stage in STAGES:
        result = run_stage.with_options(retries=_RETRIES[stage])(stage, parent.run_id, str(project))
        if result.bad_input is not None:
            raise StageBadInput(stage, result.bad_input)
        ran[stage] = result.ran
    return ran


@flow(name="reftflow-pipeline", flow_run_name="reftflow-{run_name}", log_prints=True)
def pipeline(project_dir: str = ".", run_name: str = "") -> dict | State:
    """Run the chain; returns the eval metrics, the gate decision and which stages ran, or a Failed
    state whose message is the stage's own error line when a stage refused its input, or when another
    run of this project is active (reftflow/run_lock.py)."""

    from reftflow.run_lock import RunActive, hold

    start = time.perf_counter()
    project = Path(project_dir).resolve()
    try:
        with hold(project, f"reftflow pipeline run {run_name}"):
            return _locked_pipeline(project, run_name, start)
    except RunActive as e:  # a scheduled run while another is active: refused, the active one untouched
        return Failed(message=f"reftflow: error: {e}")


def _locked_pipeline(project: Path, run_name: str, start: float) -> dict | State:
    from prefect.artifacts import create_markdown_artifact

    from reftflow import paths
    from reftflow.tracking import close_orphaned_runs, pipeline_run

    params = validate(str(project))
    if orphans := close_orphaned_runs(project):  # safe: we hold the lock, so no run of ours is alive
        print(f"reftflow: {len(orphans)} MLflow run(s) of an earlier run that was killed are now marked KILLED")
    try:
        with pipeline_run(params, run_name=f"pipeline-{run_name}" if run_name else "pipeline",
                          project_dir=project) as parent:
            ran = _run_chain(parent, project)
            summary = _summary(project, ran)
            if summary["gate"].get("decision") == "pass":  # the champion's data and models, kept (README)
                summary["dvc_push"] = push(str(project))
                parent.set_tags({"reftflow.dvc_push": summary["dvc_push"]})
            if summary["eval"]:
                parent.log_metrics({f"{m}/{k}": v for m in ("sft", "rl") for k, v in summary["eval"][m].items()
                                    if isinstance(v, (int, float))})
            if summary["gate"]:
                parent.set_tags({"reftflow.gate.decision": summary["gate"]["decision"],
                                 "reftflow.stages_run": ",".join(s for s, r in ran.items() if r) or "none"})
            text = _print_summary(summary, project, time.perf_counter() - start)
            parent.log_text(text + "\n", "summary.txt")
    except StageBadInput as e:
        # a returned Failed state ends the run Failed with this message and no traceback in the log
        return Failed(message=str(e), data=e)
    report = project / paths.GATE_REPORT
    if report.exists():
        create_markdown_artifact(report.read_text(), key="gate-report",
                                 description="reftflow gate: which rules passed or failed, and by how much")
    return summary


def _fail(line: str, code: int) -> int:
    """Print the line the user must read last: after everything Prefect and DVC already wrote, and
    with Prefect's INFO lines still to come at exit ("Stopping temporary server") silenced."""
    import logging

    logging.getLogger("prefect").setLevel(logging.WARNING)  # the run is over: only trouble is news now
    sys.stdout.flush()
    sys.stderr.flush()
    print(line, file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    # the environment defaults (privacy, Prefect's startup timeout) were applied when the `flows`
    # package was imported, before Prefect was: Prefect reads its settings only at import
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-dir", default=".", help="DVC project root holding params.yaml (default: .)")
    parser.add_argument("--run-name", default=datetime.now().strftime("%Y%m%d-%H%M%S"),
                        help="suffix of the Prefect flow run and MLflow parent run names")
    args = parser.parse_args(argv)
    from reftflow.errors import ResourceError
    from reftflow.run_lock import RunActive, hold
    from reftflow.stage import user_errors

    try:
        with hold(args.project_dir):  # refused before Prefect starts; the flow re-enters it
            check_project(args.project_dir)  # before Prefect starts: a typo costs one line, not a server start
            state = pipeline(project_dir=args.project_dir, run_name=args.run_name, return_state=True)
            state.result()
    except RunActive as e:
        return _fail(f"reftflow: error: {e}", exits.BUSY)
    except ResourceError as e:  # the flow's own MLflow calls (the parent run) found no tracking store
        return _fail(f"reftflow: error: {e}", e.exit_code)
    except user_errors() as e:
        return _fail(f"reftflow: error: {e}", exits.BAD_INPUT)
    except StageBadInput as e:
        return _fail(str(e), exits.BAD_INPUT)
    except StageFailed as e:
        return _fail(f"reftflow: {e}", exits.CRASH)
    return 0


if __name__ == "__main__":
    sys.exit(main())
