"""The reftflow pipeline as a Prefect flow: prepare → sft → ppo → evaluate → gate.

Wiring only. Each stage runs through `dvc repro --single-item <stage>`, the same entry point DVC
uses, so DVC alone decides what is stale (shared/DESIGN.md "Who owns what"); Prefect adds run
names, retries, logs and the gate report artifact; MLflow gets one parent run whose id reaches
each stage subprocess through REFTFLOW_PARENT_RUN_ID.

    python -m flows.pipeline            # what `make run` does
    python -m flows.pipeline --help
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from prefect import flow, get_run_logger, task

STAGES = ("prepare", "sft", "ppo", "evaluate", "gate")
EXIT_BAD_INPUT = 2  # reftflow.stage.EXIT_BAD_INPUT: retrying a bad input cannot help


class StageFailed(RuntimeError):
    def __init__(self, stage: str, exit_code: int, tail: str):
        super().__init__(f"stage '{stage}' failed (exit {exit_code}): {tail}")
        self.exit_code = exit_code


def _retry_unless_bad_input(task, task_run, state) -> bool:
    try:
        state.result()
    except StageFailed as e:
        return e.exit_code != EXIT_BAD_INPUT
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


# ppo resumes from its last checkpoint, so a retry there continues rather than restarts; gate's
# registry writes can hit a locked SQLite store. Bad input (exit 2) is never retried.
_RETRIES = {"prepare": 1, "sft": 0, "ppo": 1, "evaluate": 1, "gate": 2}


@task(task_run_name="{stage}", retry_condition_fn=_retry_unless_bad_input, retry_delay_seconds=5)
def run_stage(stage: str, parent_run_id: str, project_dir: str) -> bool:
    """`dvc repro --single-item <stage>`; returns whether DVC found it stale and ran it."""
    logger = get_run_logger()
    cwd = Path(project_dir)
    start = time.perf_counter()
    code, output = _run_streaming([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd,
                                  _stage_env(parent_run_id, cwd))
    if code != 0:
        lines = [ln.strip() for ln in output.replace("\r", "\n").splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        raise StageFailed(stage, code, (errors or lines or ["no output"])[-1])
    ran = f"Running stage '{stage}'" in output
    logger.info("stage %s %s in %.1f s", stage, "ran" if ran else "was up to date (skipped)",
                time.perf_counter() - start)
    return ran


def check_project(project_dir: str | Path) -> dict:
    """Refuse a bad params.yaml or grader before any stage starts; returns the validated params."""
    from reftflow.config import ConfigError, load_params, read_yaml
    from reftflow.graders import build_grader

    project = Path(project_dir)
    params = load_params(project / "params.yaml")
    # DVC refuses a stage whose declared params are absent from params.yaml: say which, up front
    raw = read_yaml(project / "params.yaml") or {}
    for name, stage in (read_yaml(project / "dvc.yaml") or {}).get("stages", {}).items():
        for key in stage.get("params", []):
            if isinstance(key, str) and key.split(".")[0] not in raw:
                raise ConfigError(f"{project / 'params.yaml'}: key '{key}' is missing (dvc.yaml stage '{name}' reads it)")
    build_grader(params.grader, base_dir=project).close()
    return params.model_dump()


validate = task(check_project, task_run_name="validate-params")


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
        s, p = ev["sft"], ev["ppo"]
        lines.append(f"  held-out accuracy: SFT {s['accuracy']:.3f} → PPO {p['accuracy']:.3f} "
                     f"({ev['gain']['accuracy']:+.3f});  mean grader score: SFT {s['mean_score']:.3f} → "
                     f"PPO {p['mean_score']:.3f}  ({int(p['samples'])} val questions)")
    for r in gate.get("rules", []):
        lines.append(f"  rule {r['name']}: {r['value']:.4f} vs {r['threshold']:.4f} → "
                     f"{'pass' if r['passed'] else 'FAIL'} ({r['margin']:+.4f})")
    lines.append(f"  stages run: {', '.join(ran) or 'none'}; up to date: {', '.join(skipped) or 'none'} "
                 f"({seconds:.0f} s)")
    lines.append(f"  MLflow UI: {ui_command(project_dir)}")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


@flow(name="reftflow-pipeline", flow_run_name="reftflow-{run_name}", log_prints=True)
def pipeline(project_dir: str = ".", run_name: str = "") -> dict:
    """Run the chain; returns the eval metrics, the gate decision and which stages ran."""
    from prefect.artifacts import create_markdown_artifact

    from reftflow import paths
    from reftflow.tracking import pipeline_run

    start = time.perf_counter()
    project = Path(project_dir).resolve()
    params = validate(str(project))
    ran: dict[str, bool] = {}
    with pipeline_run(params, run_name=f"pipeline-{run_name}" if run_name else "pipeline",
                      project_dir=project) as parent:
        for stage in STAGES:
            ran[stage] = run_stage.with_options(retries=_RETRIES[stage])(stage, parent.run_id, str(project))
        summary = _summary(project, ran)
        if summary["eval"]:
            parent.log_metrics({f"{m}/{k}": v for m in ("sft", "ppo") for k, v in summary["eval"][m].items()})
        if summary["gate"]:
            parent.set_tags({"reftflow.gate.decision": summary["gate"]["decision"],
                             "reftflow.stages_run": ",".join(s for s, r in ran.items() if r) or "none"})
        text = _print_summary(summary, project, time.perf_counter() - start)
        parent.log_text(text + "\n", "summary.txt")
    report = project / paths.GATE_REPORT
    if report.exists():
        create_markdown_artifact(report.read_text(), key="gate-report",
                                 description="reftflow gate: which rules passed or failed, and by how much")
    return summary


def main(argv: list[str] | None = None) -> int:
    from reftflow.env import apply_defaults

    apply_defaults()
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-dir", default=".", help="DVC project root holding params.yaml (default: .)")
    parser.add_argument("--run-name", default=datetime.now().strftime("%Y%m%d-%H%M%S"),
                        help="suffix of the Prefect flow run and MLflow parent run names")
    args = parser.parse_args(argv)
    from reftflow.stage import user_errors

    try:
        check_project(args.project_dir)  # before Prefect starts: a typo costs one line, not a server start
        state = pipeline(project_dir=args.project_dir, run_name=args.run_name, return_state=True)
        state.result()
    except user_errors() as e:
        print(f"reftflow: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StageFailed as e:
        print(f"reftflow: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
