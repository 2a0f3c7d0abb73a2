"""The MLflow model registry: the champion a gate pass promotes, and what reads it back.

Beside the gate (`reftflow.gate` decides, this module registers): the model is logged as a reftflow
pyfunc (`reftflow.serving`), registered under `gate.registered_model_name` and aliased `champion`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from reftflow.tracking import RunLogger, connect


def champion_info(name: str, alias: str = "champion") -> dict[str, Any] | None:
    """The current champion's version and tags, or None when there is none."""
    mlflow = connect()
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
