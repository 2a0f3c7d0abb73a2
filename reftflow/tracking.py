"""The one module that talks to MLflow about runs: their lifecycle, params, metrics, artifacts and datasets
(the registry, which only the gate and what reads the champion use, is `reftflow.registry`).

Lifecycle: the Prefect flow opens one parent run per pipeline
run and passes its id to each stage subprocess in `REFTFLOW_PARENT_RUN_ID`; a stage that actually
runs opens a child run named after itself with `parent_run_id=` (MLflow's active run is
thread-local, so nested=True alone would silently make a top-level run from a Prefect worker thread).
Training and math code never import this module: they return or yield metrics.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

from reftflow.errors import TrackingUnavailable
from reftflow.io import file_md5

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

    uri = tracking_uri(project_dir)
    if uri.startswith(("http://", "https://")):  # a tracking server serves its own UI
        return f"open {uri} and pick \"Model training\" in its sidebar"
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    # MLflow 3.17 opens an experiment on its GenAI view whatever the experiment's kind tag says: the
    # sidebar's switch decides (README, "The two commands")
    return (f"make ui  (or: {mlflow_bin} ui --backend-store-uri {uri} --port 5000)"
            "  then open http://127.0.0.1:5000 and pick \"Model training\" in its sidebar")


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


def connect(project_dir: str | Path = "."):
    """The mlflow module, pointed at the project's tracking store (`tracking_uri`)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(project_dir))
    return mlflow


EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
"""MLflow 3's UI opens an experiment on its GenAI traces overview unless this tag says it holds model
training (the UI's own values: genai_development, custom_model_development, ...)."""


def _experiment_id(mlflow, name: str, project_dir: str | Path = ".") -> str:
    client = RetryingClient(mlflow.get_tracking_uri())
    exp = client.get_experiment_by_name(name)
    if exp is None:
        # an absolute artifact root in the project: the default is resolved against the CWD at creation time
        root = (Path(project_dir) / "mlruns").resolve().as_uri() if not os.environ.get("MLFLOW_TRACKING_URI") else None
        try:
            exp = client.get_experiment(client.create_experiment(name, artifact_location=root,
                                                                 tags=dict([EXPERIMENT_KIND])))
        except Exception:  # noqa: BLE001 - a concurrent creator won the race; read theirs
            exp = client.get_experiment_by_name(name)
    key, kind = EXPERIMENT_KIND
    if exp.tags.get(key) != kind:  # an experiment made before reftflow set it
        client.set_experiment_tag(exp.experiment_id, key, kind)
    return exp.experiment_id


TRACKING_ATTEMPTS = 4
"""tries of one MLflow call before the stage gives up (1 + 2 + 4 s apart; MLflow's own HTTP retries
inside each try are bounded in reftflow/env.py)."""
_TRANSIENT = ("database is locked", "database table is locked", "unable to open database", "connection",
              "max retries", "timed out", "timeout", "temporarily unavailable", "502", "503", "504")


def _duplicate_dataset(e: Exception) -> bool:  # PostgreSQL, SQLite and MySQL's words for it
    text = str(e).lower()
    return "dataset" in text and any(t in text for t in ("unique constraint", "duplicate entry"))


def _transient(e: Exception) -> bool:
    """A locked SQLite store or an unreachable server, which may pass; not a refused request."""
    return isinstance(e, (ConnectionError, TimeoutError)) or any(t in str(e).lower() for t in _TRANSIENT)


class RetryingClient:
    """An MlflowClient whose calls are retried a bounded number of times on a locked store or a server
    that does not answer, and then fail with one TrackingUnavailable line."""

    def __init__(self, uri: str, attempts: int = TRACKING_ATTEMPTS):
        from mlflow.tracking import MlflowClient

        self._client, self._uri, self._attempts = MlflowClient(tracking_uri=uri), uri, attempts

    def __getattr__(self, name: str):
        import time

        call = getattr(self._client, name)
        if not callable(call):
            return call

        def retried(*args, **kwargs):
            for attempt in range(self._attempts):
                try:
                    return call(*args, **kwargs)
                except Exception as e:  # noqa: BLE001 - MLflow wraps SQLAlchemy and requests errors in its own
                    if not _transient(e):
                        raise
                    if attempt == self._attempts - 1:
                        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                        raise TrackingUnavailable(
                            f"MLflow at {self._uri} failed {self._attempts} times on {name} ({first}); "
                            "nothing is lost: run again once MLflow answers (sft and ppo resume from their "
                            "checkpoints and only log what they already trained)") from None
                    time.sleep(2 ** attempt)

        return retried


class RunLogger:
    """Logs into one MLflow run by id (works from any thread; no reliance on the active run)."""

    def __init__(self, mlflow, run_id: str):
        self.mlflow = mlflow
        self.run_id = run_id
        self.client = RetryingClient(mlflow.get_tracking_uri())

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
        inputs = [DatasetInput(ds._to_mlflow_entity(), tags=tags)]
        for attempt in range(TRACKING_ATTEMPTS):
            try:
                self.client.log_inputs(self.run_id, datasets=inputs)
                return md5
            except Exception as e:  # noqa: BLE001 - a RestException or SQLAlchemy's IntegrityError
                # MLflow's store looks the dataset up, then inserts it: two projects logging the same data to
                # one experiment at once can both miss it, and the second insert breaks the (experiment,
                # name, digest) key. Once the first one's row is there, a second try links to it.
                if not _duplicate_dataset(e) or attempt == TRACKING_ATTEMPTS - 1:
                    raise
        return md5


def source_tags(git, entry_point: str) -> dict[str, str]:
    """MLflow's own source tags (its runs list shows them in the Source column) and the dirty flag,
    from a `reftflow.record.GitState`."""
    tags = {"mlflow.source.name": entry_point, "mlflow.source.type": "LOCAL"}
    if git.commit:
        tags.update({"mlflow.source.git.commit": git.commit, "reftflow.git.dirty": str(git.dirty).lower()})
    if git.branch:
        tags["mlflow.source.git.branch"] = git.branch
    return tags


@contextlib.contextmanager
def _run(mlflow, exp_id: str, name: str, tags: dict[str, str], params: Mapping[str, Any] | None,
         project_dir: str | Path = ".") -> Iterator[RunLogger]:
    """Create a run tagged with its project, log params, and close it FINISHED or FAILED."""
    tags[PROJECT_TAG] = project_key(project_dir)
    run = RetryingClient(mlflow.get_tracking_uri()).create_run(exp_id, run_name=name, tags=tags)
    logger = RunLogger(mlflow, run.info.run_id)
    if params:
        logger.log_params(flatten(params))
    status = "FAILED"
    try:
        yield logger
        status = "FINISHED"
    finally:
        try:
            logger.client.set_terminated(run.info.run_id, status=status)
        except TrackingUnavailable:
            if status == "FINISHED":
                raise
            # the block's own error says more; the run stays RUNNING until the next run marks it KILLED


RECORD = "record"
"""the parent run's artifact folder holding what `reftflow rerun` rebuilds a run from."""


@contextlib.contextmanager
def pipeline_run(params: Mapping[str, Any], run_name: str | None = None, tags: Mapping[str, str] | None = None,
                 project_dir: str | Path = ".") -> Iterator[RunLogger]:
    """The parent run of one pipeline run; its id goes to stage subprocesses via the environment.
    It records the run whole (reftflow.record): git commit, dirty flag and diff, params.yaml, the
    package versions, the machine, and at the end dvc.lock and the data's md5s."""
    from reftflow import record

    project = Path(project_dir).resolve()
    mlflow = connect(project)
    exp_id = _experiment_id(mlflow, os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT), project)
    git = record.git_state(project)
    run_tags = {"reftflow.kind": "pipeline", **source_tags(git, "flows/pipeline.py"),
                "reftflow.project_dir": str(project), "reftflow.seed": str(params.get("seed")), **(tags or {})}
    cache = record.dvc_cache_dir(project)
    if cache:
        run_tags["reftflow.dvc.cache"] = cache
    if git.skipped:
        run_tags["reftflow.git.untracked_not_recorded"] = ",".join(git.skipped)[:8000]
    with _run(mlflow, exp_id, run_name or "pipeline", run_tags, params, project) as logger:
        logger.log_params({f"pkg.{k}": v for k, v in record.package_versions().items()})
        logger.log_params({f"machine.{k}": v for k, v in record.machine().items()})
        logger.log_artifact(project / "params.yaml", RECORD)
        if git.dirty:
            logger.log_text(git.diff, f"{RECORD}/git.diff")
        failed = True
        try:
            yield logger
            failed = False
        finally:  # a failed run is recorded too: how far it got is in its dvc.lock
            try:
                _record_end(logger, project)
            except TrackingUnavailable:
                if not failed:
                    raise
                # the block's own error (a stage's line) says more than this one


def _record_end(logger: RunLogger, project: Path) -> None:
    """What a pipeline run leaves: dvc.lock, the data's md5s and the datasets, and the precision each
    stage ran in, on its parent run."""
    from reftflow import paths, record

    logger.log_artifact(project / "dvc.lock", RECORD)
    logger.set_tags({f"reftflow.precision.{stage}": p for stage, p in record.precisions(project).items()})
    md5s = record.lock_md5s(project)
    logger.set_tags({f"reftflow.data.{Path(p).stem}.md5": m for p, m in md5s.items()})
    if md5s:
        logger.log_dict(md5s, f"{RECORD}/data_md5.json")
    for path, name, context in ((paths.TRAIN, "train", "training"), (paths.VAL, "val", "evaluation")):
        if str(path) in md5s and (project / path).exists():  # the runs list's Dataset column
            logger.log_dataset(project / path, name, context)


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
    from reftflow.record import git_state

    if not is_main_process():
        yield NullLogger()  # type: ignore[misc]
        return
    mlflow = connect()
    parent = os.environ.get(PARENT_ENV)
    # `dvc exp run` ran this stage, not the flow: under its experiment's parent (dvc_experiment_parent)
    if not parent and os.environ.get(DVC_EXP_ENV):
        with dvc_experiment_parent(mlflow), stage_run(stage, params) as logger:
            yield logger
        return
    tags = {"reftflow.stage": stage, "reftflow.kind": "stage"}
    if parent:
        exp_id = RetryingClient(mlflow.get_tracking_uri()).get_run(parent).info.experiment_id
        tags["mlflow.parentRunId"] = parent
    else:
        exp_id = _experiment_id(mlflow, os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT))
    tags.update(source_tags(git_state(".", with_diff=False), f"tasks/{stage}.py"))  # it runs in the project
    with _run(mlflow, exp_id, stage, tags, params) as logger:
        yield logger


@contextlib.contextmanager
def command_run(kind: str, name: str, params: Mapping[str, Any], project_dir: str | Path = ".",
                tags: Mapping[str, str] | None = None) -> Iterator[RunLogger]:
    """A top-level run in the project's experiment for a subcommand that measures something (`reftflow
    eval`), tagged `reftflow.kind` = `kind`: no pipeline run is its parent, and the runs list shows it
    beside them."""
    from reftflow.record import git_state

    project = Path(project_dir).resolve()
    mlflow = connect(project)
    exp_id = _experiment_id(mlflow, os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT), project)
    run_tags = {"reftflow.kind": kind, **source_tags(git_state(project, with_diff=False), f"reftflow {kind}"),
                **(tags or {})}
    with _run(mlflow, exp_id, name, run_tags, params, project) as logger:
        yield logger


PROJECT_TAG = "reftflow.project"


def project_key(project_dir: str | Path = ".") -> str:
    """Which project a run belongs to (host and directory): projects may share one tracking server."""
    import socket

    return f"{socket.gethostname()}:{Path(project_dir).resolve()}"


def close_orphaned_runs(project_dir: str | Path = ".") -> list[str]:
    """Mark KILLED the runs of this project still RUNNING although no run of it is active (the caller
    holds the project's run lock): what a SIGKILLed run leaves behind. Returns their ids."""
    client = RetryingClient(connect(project_dir).get_tracking_uri())
    exp = client.get_experiment_by_name(os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT))
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.status = 'RUNNING' and "
                              f"tags.`{PROJECT_TAG}` = '{project_key(project_dir)}'", max_results=1000)
    for run in runs:
        client.set_tag(run.info.run_id, "reftflow.stop_reason", "killed: found RUNNING by the next run")
        client.set_terminated(run.info.run_id, status="KILLED")
    return [r.info.run_id for r in runs]


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
    from reftflow.record import git_state

    name, baseline = os.environ[DVC_EXP_ENV], os.environ.get("DVC_EXP_BASELINE_REV", "")
    client = RetryingClient(mlflow.get_tracking_uri())
    exp_id = _experiment_id(mlflow, os.environ.get(EXPERIMENT_ENV, DEFAULT_EXPERIMENT))
    found = client.search_runs([exp_id], filter_string=f"tags.`reftflow.dvc_exp` = '{name}' and "
                               f"tags.`reftflow.dvc_exp.baseline` = '{baseline}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        tags = {"reftflow.kind": "pipeline", "reftflow.dvc_exp": name, "reftflow.dvc_exp.baseline": baseline,
                PROJECT_TAG: project_key(), **source_tags(git_state(".", with_diff=False), "dvc exp run")}
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
