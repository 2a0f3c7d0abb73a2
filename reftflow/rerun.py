"""`reftflow rerun RUN_ID [--dir D]`: rebuild a recorded pipeline run in a new directory and run it again.

From the MLflow parent run's record (reftflow.tracking.pipeline_run): a git clone of the project at
the recorded commit, with the recorded diff applied when the tree was dirty, the recorded params.yaml
and dvc.lock, and the data and models dvc.lock names through `dvc pull` (from the original project's DVC
cache, added as a local remote, then from the project's default DVC remote). Then the pipeline
runs there, with its own MLflow store (D/mlflow.db: a rerun never touches the original's registry),
and its metrics/eval.json is compared with the original run's.

    reftflow rerun 3f2a... --dir /tmp/r            # the run id is the MLflow parent run's
    reftflow rerun 3f2a... --dir /tmp/r --no-run   # rebuild only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from reftflow.errors import InputError
from reftflow.exits import CRASH, fail, one_line_errors

ORIGIN_REMOTE = "reftflow-origin"


class RerunError(RuntimeError):
    """A step of the rebuild failed (git, DVC): not the user's input."""


def _check(cmd: list[str], cwd: Path, what: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise RerunError(f"{what} failed: {detail}")
    return proc.stdout


def _client(project_dir: str | Path):
    from mlflow.tracking import MlflowClient

    from reftflow.tracking import tracking_uri

    return MlflowClient(tracking_uri=tracking_uri(project_dir))


def pipeline_record(run_id: str, project_dir: str | Path = "."):
    """The MLflow parent run `run_id`, refused in one line when it is not a recorded pipeline run."""
    client = _client(project_dir)
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - MLflow raises its own exception types for an unknown id
        raise InputError(f"run {run_id!r}: no such MLflow run in {client.tracking_uri}") from None
    if run.data.tags.get("reftflow.kind") != "pipeline":
        raise InputError(f"run {run_id!r}: not a reftflow pipeline run (a stage's child run? pass its parent's id)")
    if not run.data.tags.get("mlflow.source.git.commit"):
        raise InputError(f"run {run_id!r}: no git commit recorded (its project was not a git repo)")
    return client, run


def rebuild(run_id: str, directory: str | Path, project_dir: str | Path = ".") -> Path:
    """The recorded state of run `run_id` in `directory` (absent or empty): code, params, lock, data."""
    from reftflow import tracking

    client, run = pipeline_record(run_id, project_dir)
    tags = run.data.tags
    commit = tags["mlflow.source.git.commit"]
    source = Path(tags.get("reftflow.project_dir") or project_dir)
    if not (source / ".git").exists():
        source = Path(project_dir).resolve()
    dest = Path(directory).resolve()
    if dest.exists() and any(dest.iterdir()):
        raise InputError(f"--dir {dest}: not empty (a rerun is built in a new directory)")
    _check(["git", "clone", "-q", "--no-checkout", str(source), str(dest)], Path.cwd(), f"git clone {source}")
    _check(["git", "checkout", "-q", "--detach", commit], dest, f"git checkout {commit[:12]} (from {source})")
    with tempfile.TemporaryDirectory(prefix="reftflow-rerun-") as tmp:
        record = Path(client.download_artifacts(run_id, tracking.RECORD, tmp))
        if tags.get("reftflow.git.dirty") == "true" and (record / "git.diff").stat().st_size:
            _check(["git", "apply", "--binary", "--whitespace=nowarn", str(record / "git.diff")], dest,
                   "git apply of the recorded diff")
        for name in ("params.yaml", "dvc.lock"):
            if (record / name).exists():
                (dest / name).write_bytes((record / name).read_bytes())
    for warning in _pull(dest, tags.get("reftflow.dvc.cache"), source):
        print(f"reftflow rerun: warning: {warning}", file=sys.stderr)
    return dest


def _pull(dest: Path, origin_cache: str | None, origin: Path) -> list[str]:
    """The outputs dvc.lock names: from the original project's DVC cache (on this machine, it holds them
    unless a `dvc gc` removed them), then from the original project's local remote (what its gate
    passes pushed), then from the project's default remote for anything still missing. What none
    holds is left for the pipeline to recompute. Returns warnings."""
    from reftflow.project import REMOTE_DIR

    dvc = [sys.executable, "-m", "dvc"]
    sources = []
    # the clone's own default remote is a relative path, so it names the clone's empty .dvc-remote
    for name, path in ((ORIGIN_REMOTE, origin_cache), (f"{ORIGIN_REMOTE}-remote", str(origin / REMOTE_DIR))):
        if path and Path(path).is_dir():
            _check([*dvc, "remote", "add", "--local", name, path], dest, "dvc remote add")
            sources.append(name)
    default = subprocess.run([*dvc, "remote", "default"], cwd=dest, capture_output=True, text=True)
    if default.returncode == 0 and default.stdout.strip():
        sources.append(default.stdout.strip())
    warnings = []
    for remote in sources:
        try:
            _check([*dvc, "pull", "-q", "--allow-missing", "-r", remote], dest, f"dvc pull from {remote}")
        except RerunError as e:  # another source, or the pipeline itself, may still provide it
            warnings.append(str(e))
    return warnings


def run_pipeline(dest: Path, run_id: str) -> int:
    """The pipeline in `dest`, with the code at the recorded commit (python -m from `dest`) and
    `dest`'s own MLflow store; its parent run is tagged `reftflow.rerun_of`."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{dest / 'mlflow.db'}"}
    env.pop("REFTFLOW_PARENT_RUN_ID", None)
    code = subprocess.run([sys.executable, "-m", "flows.pipeline", "--project-dir", str(dest),
                           "--run-name", f"rerun-{run_id[:8]}"], cwd=dest, env=env).returncode
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`reftflow.kind` = 'pipeline'", order_by=["start_time DESC"],
                              max_results=1)
    if runs:
        client.set_tag(runs[0].info.run_id, "reftflow.rerun_of", run_id)
    return code


def version_warnings(run_id: str, project_dir: str | Path = ".") -> list[str]:
    """Installed packages whose version differs from the recorded one: the rerun may then differ (a
    project made by `reftflow init` also runs the installed reftflow, not the recorded one)."""
    from reftflow.record import package_versions

    _, run = pipeline_record(run_id, project_dir)
    recorded = {k.removeprefix("pkg."): v for k, v in run.data.params.items() if k.startswith("pkg.")}
    return [f"{name} is {now} here, the run had {recorded[name]}" for name, now in package_versions().items()
            if name in recorded and recorded[name] != now]


def original_eval(run_id: str, project_dir: str | Path = ".") -> dict | None:
    """metrics/eval.json as the original run's evaluate stage logged it (None if it never ran)."""
    client = _client(project_dir)
    run = client.get_run(run_id)
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run_id}' and "
                                                "tags.`reftflow.stage` = 'evaluate'")
    if not children:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(children[0].info.run_id, "metrics/eval.json", tmp)
        return json.loads(Path(path).read_text())


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("rerun", help="rebuild a recorded pipeline run in a new directory and run it again",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_id", metavar="RUN_ID", help="the MLflow parent run's id (`reftflow status` shows the last)")
    p.add_argument("--dir", help="the new directory (absent or empty; default: a reftflow-rerun-<id> directory "
                                 "in the system's temporary directory)")
    p.add_argument("--project-dir", default=".", help="the project whose MLflow store holds the run (default: .)")
    p.add_argument("--no-run", action="store_true", help="rebuild only; run it later with "
                                                         "`reftflow run --project-dir DIR`")
    p.set_defaults(func=_run)
    return p


@one_line_errors("rerun")
def _run(args: argparse.Namespace) -> int:
    directory = args.dir or str(Path(tempfile.gettempdir()) / f"reftflow-rerun-{args.run_id[:12]}")
    try:
        dest = rebuild(args.run_id, directory, args.project_dir)
    except RerunError as e:
        return fail(f"reftflow rerun: error: {e}", CRASH)
    print(f"reftflow rerun: run {args.run_id} rebuilt in {dest}", flush=True)
    for line in version_warnings(args.run_id, args.project_dir):
        print(f"reftflow rerun: warning: {line}", flush=True)
    if args.no_run:
        return 0
    code = run_pipeline(dest, args.run_id)
    if code:
        return code
    before = original_eval(args.run_id, args.project_dir)
    after = json.loads((dest / "metrics/eval.json").read_text())
    if before is None:
        print("reftflow rerun: the original run has no evaluation to compare with")
    elif before == after:
        print("reftflow rerun: metrics/eval.json is identical to the original run's")
    else:
        print("reftflow rerun: metrics/eval.json differs from the original run's:\n"
              f"  original {json.dumps(before, sort_keys=True)}\n  rerun    {json.dumps(after, sort_keys=True)}")
        return 1
    return 0
