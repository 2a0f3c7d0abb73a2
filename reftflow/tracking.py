"""The one module that talks to MLflow: run lifecycle, params, metrics, artifacts, datasets, registry.

Lifecycle: the Prefect flow opens one parent run per pipeline
run and passes its id to each stage subprocess in `REFTFLOW_PARENT_RUN_ID`; a stage that actually
runs opens a child run named after itself with `parent_run_id=` (MLflow's active run is
thread-local, so nested=True alone would silently make a top-level run from a Prefect worker thread).
Training and math code never import this module: they return or yield metrics.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import subprocess
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

PARENT_ENV = "REFTFLOW_PARENT_RUN_ID"
EXPERIMENT_ENV = "REFTFLOW_EXPERIMENT"
DEFAULT_EXPERIMENT = "reftflow"
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /:]")


def tracking_uri(project_dir: str | Path = ".") -> str:
    """MLFLOW_TRACKING_URI, else an absolute SQLite store in the project (absolute: stage
    subprocesses and Prefect workers may run from another CWD, and MLflow resolves a relative
    `sqlite:///mlflow.db` against the CWD of the moment)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(project_dir).resolve() / 'mlflow.db'}"


def ui_command(project_dir: str | Path = ".") -> str:
    """How to look at the results: the venv's own mlflow, so it works without activating anything."""
    import sys

    mlflow_bin = Path(sys.executable).parent / "mlflow"
    return (f"make ui  (or: {mlflow_bin} ui --backend-store-uri {tracking_uri(project_dir)} --port 5000)"
            "  then open http://127.0.0.1:5000")


def sanitize_key(key: str) -> str:
    """MLflow rejects some characters in metric/param names; keep the name readable instead of failing."""
    return _BAD_KEY_CHARS.sub("_", key)[:250]


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested config → {'ppo.lr': '0.0001', ...} (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix.rstrip(".")] = json.dumps(obj) if isinstance(obj, (list, dict)) else str(obj)
    return out


def file_md5(path: str | Path) -> str:
    """The same md5 DVC records for a file output in dvc.lock (the plain md5 of its bytes)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit(project_dir: str | Path = ".") -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_dir, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _mlflow(project_dir: str | Path = "."):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(project_dir))
    return mlflow


def _experiment_id(mlflow, name: str, project_dir: str | Path = ".") -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    # an absolute artifact root in the project: the default is resolved against the CWD at creation time
    root = (Path(project_dir) / "mlruns").resolve().as_uri() if not os.environ.get("MLFLOW_TRACKING_URI") else None
    try:
        return mlflow.create_experiment(name, artifact_location=root)
    except Exception:  # noqa: BLE001 - a concurrent creator won the race; read theirs
        return mlflow.get_experiment_by_name(name).experiment_id


class RunLogger:
    """Logs into one MLflow run by id (works from any thread; no reliance on the active run)."""

    def __init__(self, mlflow, run_id: str):
        self.mlflow = mlflow
        self.run_id = run_id
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=mlflow.get_tracking_uri())

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(sanitize_key(k), str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [
            Metric(sanitize_key(k), float(v), ts, step or 0)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step" and math.isfinite(float(v))
        ]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, sanitize_key(k), str(v))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.exists():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        import pandas as pd

        self.client.log_table(self.run_id, pd.DataFrame(rows), artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        import matplotlib.pyplot as plt

        self.client.log_figure(self.run_id, figure, artifact_file)
        plt.close(figure)

    def log_dataset(self, path: str | Path, name: str, context: str) -> str:
        """Record a prepared data file as a dataset input, its digest = DVC's md5 of the file."""
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        from mlflow.data.dataset_source_registry import resolve_dataset_source

        with warnings.catch_warnings():  # two local-file source classes both match; either is right
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(Path(path).resolve()))
        md5 = file_md5(path)
        ds = MetaDataset(source=source, name=name, digest=md5)
        tags = [InputTag("mlflow.data.context", context), InputTag("dvc_md5", md5)]
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), tags=tags)])
        return md5


@contextlib.contextmanager
def _run(mlflow, exp_id: str, name: str, tags: dict[str, str], params: Mapping[str, Any] | None,
         project_dir: str | Path = ".") -> Iterator[RunLogger]:
    """Create a run with the git commit tag, log params, and close it FINISHED or FAILED."""
    commit = git_commit(project_dir)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    run = mlflow.MlflowClient().create_run(exp_id, run_name=name, tags=tags)
    logger = RunLogger(mlflow, run.info.run_id)
    if params:
        logger.log_params(flatten(params))
    status = "FAILED"
    try:
        yield logger
        status = "FINISHED"
    finally:
        logger.client.set_terminated(run.info.run_id, status=status)


@contextlib.contextmanager
def pipeline_run(params: Mapping[str, Any], run_name: str | None = None, tags: Mapping[str, str] | None = None,
                 project_dir: str | Path = ".") -> Iterator[RunLogger]:
    """The parent run of one pipeline run; its id goes to stage subprocesses via the environment."""
    mlflow = _mlflow(project_dir)
    exp_id = _experiment_id(mlflow, os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT), project_dir)
    with _run(mlflow, exp_id, run_name or "pipeline", {"reftflow.kind": "pipeline", **(tags or {})}, params,
              project_dir) as logger:
        yield logger


class NullLogger:
    """What non-main processes of a multi-process stage get: one process logs (accelerate/torchrun set RANK)."""

    run_id = None

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def stage_run(stage: str, params: Mapping[str, Any] | None = None) -> Iterator[RunLogger]:
    """A child run for one stage under the parent named in REFTFLOW_PARENT_RUN_ID (or a top-level
    run tagged with the stage when a stage is run alone, e.g. by a bare `dvc repro`)."""
    from reftflow.distributed import is_main_process

    if not is_main_process():
        yield NullLogger()  # type: ignore[misc]
        return
    mlflow = _mlflow()
    parent = os.environ.get(PARENT_ENV)
    # `dvc exp run` ran this stage, not the flow: under its experiment's parent (dvc_experiment_parent)
    if not parent and os.environ.get(DVC_EXP_ENV):
        with dvc_experiment_parent(mlflow), stage_run(stage, params) as logger:
            yield logger
        return
    tags = {"reftflow.stage": stage, "reftflow.kind": "stage"}
    if parent:
        exp_id = mlflow.get_run(parent).info.experiment_id
        tags["mlflow.parentRunId"] = parent
    else:
        exp_id = _experiment_id(mlflow, os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT))
    with _run(mlflow, exp_id, stage, tags, params) as logger:
        yield logger


def champion_info(name: str, alias: str = "champion") -> dict[str, Any] | None:
    """The current champion's version and tags, or None when there is none."""
    mlflow = _mlflow()
    try:
        mv = mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except Exception:  # noqa: BLE001 - no such model or alias: there is no champion yet
        return None
    info: dict[str, Any] = {"version": str(mv.version), **mv.tags}
    if "pass_rate" in info:
        info["pass_rate"] = float(info["pass_rate"])
    return info


def register_champion(logger: RunLogger, model_dir: str | Path, name: str, prompting: Mapping[str, Any],
                      alias: str = "champion", tags: Mapping[str, Any] | None = None,
                      max_new_tokens: int = 48) -> dict[str, Any]:
    """Log the model as a reftflow pyfunc (`reftflow.serving`: requests are rendered as in training,
    chat messages included; `prompting`: the `data` keys that render an item) in `logger`'s run, register it
    and alias it."""
    import importlib.metadata as md

    import mlflow

    from reftflow.serving import log_pyfunc

    reqs = [f"{p}=={md.version(p)}" for p in ("transformers", "torch", "accelerate", "tokenizers", "pydantic",
                                                "pyyaml")]
    with mlflow.start_run(run_id=logger.run_id):
        info = log_pyfunc(model_dir, prompting, max_new_tokens, reqs)
    mv = mlflow.register_model(info.model_uri, name)
    logger.client.set_registered_model_alias(name, alias, mv.version)
    logger.client.set_model_version_tag(name, mv.version, "validation", "passed")
    for key, value in (tags or {}).items():
        logger.client.set_model_version_tag(name, mv.version, key, str(value))
    return {"model_uri": info.model_uri, "name": name, "version": str(mv.version), "alias": alias}


DVC_EXP_ENV = "DVC_EXP_NAME"
"""set by `dvc exp run` for every stage it runs, with DVC_EXP_BASELINE_REV (dvc/repo/experiments/queue/base.py)."""


@contextlib.contextmanager
def dvc_experiment_parent(mlflow) -> Iterator[str]:
    """Under `dvc exp run` DVC runs the stages, not the Prefect flow, so no parent run id comes in and
    each stage would open a lone top-level run. Instead there is one parent run per DVC experiment
    (its name and baseline commit): the first stage that runs creates it with the experiment's
    params (params.yaml, which `-S` has rewritten), later stages reopen it; while the stage runs its
    id is in REFTFLOW_PARENT_RUN_ID, and the stage leaves it ended with its own status (no stage knows
    it is the last: DVC skips the up-to-date ones). A `--force` rerun of one name on one commit joins
    the earlier parent."""
    from reftflow.config import load_params

    name, baseline = os.environ[DVC_EXP_ENV], os.environ.get("DVC_EXP_BASELINE_REV", "")
    client = mlflow.MlflowClient()
    exp_id = _experiment_id(mlflow, os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT))
    found = client.search_runs([exp_id], filter_string=f"tags.`reftflow.dvc_exp` = '{name}' and "
                               f"tags.`reftflow.dvc_exp.baseline` = '{baseline}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        tags = {"reftflow.kind": "pipeline", "reftflow.dvc_exp": name, "reftflow.dvc_exp.baseline": baseline}
        run_id = client.create_run(exp_id, run_name=f"exp-{name}", tags=tags).info.run_id
        RunLogger(mlflow, run_id).log_params(flatten(load_params("params.yaml").model_dump()))
    os.environ[PARENT_ENV] = run_id
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    finally:
        os.environ.pop(PARENT_ENV, None)
        client.set_terminated(run_id, status=status)
