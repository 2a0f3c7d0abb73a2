"""`reftflow status [--project-dir D]`: what is stale, the last pipeline run, and the champion.

Stale is DVC's answer (`dvc status`: a stage whose own code, inputs, params or outputs changed; the
stages downstream of it run again when its outputs change). The last run is the newest MLflow
parent run (tag reftflow.kind = pipeline) that trained the project's registered model, with its gate
decision; the champion is the registered model version aliased `champion`, with the metrics of the
pipeline run that promoted it.

    reftflow status
    reftflow status --project-dir /tmp/g
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from reftflow.errors import InputError
from reftflow.exits import one_line_errors


def stale_stages(project_dir: str | Path) -> dict[str, list[str]]:
    """{stage: what changed} for each stage `dvc status` reports, in dvc.yaml's order."""
    from reftflow.project import refresh_digests

    project = Path(project_dir)
    refresh_digests(project)  # an initialised project's code digests, as `reftflow run` would see them
    proc = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=project, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise InputError(f"{project}: `dvc status` failed: {detail}")
    report = json.loads(proc.stdout or "{}")
    out: dict[str, list[str]] = {}
    for stage, changes in report.items():
        files, params, outs, other = [], [], [], []
        for change in changes:
            if isinstance(change, str):  # "always changed", ...
                other.append(change)
                continue
            # {"changed deps": {"reftflow/sft.py": "modified", "params.yaml": {"sft.lr": "modified"}}}
            for kind, items in change.items():
                for name, state in (items.items() if isinstance(items, dict) else []):
                    if isinstance(state, dict):
                        params += list(state)
                    elif "outs" in kind:
                        outs.append(f"{name} ({state})")
                    else:
                        files.append(name)
        named = (("params", params), ("code and inputs", files), ("outputs", outs))
        out[stage.split(":")[-1]] = [f"{label}: {_few(names)}" for label, names in named if names] + other
    return out


def _few(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def downstream(project_dir: str | Path, stages: list[str]) -> list[str]:
    """The stages that depend, through files, on the outputs of `stages` (in dvc.yaml's order)."""
    from reftflow.config import read_yaml

    spec = (read_yaml(Path(project_dir) / "dvc.yaml") or {}).get("stages", {})

    def outs(s: str) -> set[str]:
        return {o if isinstance(o, str) else next(iter(o)) for k in ("outs", "metrics", "plots")
                for o in spec[s].get(k, [])}

    found = set(stages)
    changed = True
    while changed:
        produced = set().union(*(outs(s) for s in found)) if found else set()
        more = {s for s in spec if s not in found and produced & set(spec[s].get("deps", []))}
        changed = bool(more)
        found |= more
    return [s for s in spec if s in found and s not in stages]


def last_run(client, name: str) -> Any | None:
    """The newest pipeline run that trained the registered model `name`: on a tracking server that several
    projects share, this project's (and its clones' on other machines), not whichever ran last."""
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`reftflow.kind` = 'pipeline' and "
                                            f"params.`gate.registered_model_name` = '{name}'",
                              order_by=["start_time DESC"], max_results=1)
    return runs[0] if runs else None


def champion(client, name: str) -> tuple[Any, Any] | None:
    """(model version, the pipeline run that promoted it) or None."""
    try:
        mv = client.get_model_version_by_alias(name, "champion")
    except Exception:  # noqa: BLE001 - no such model or no alias: no champion yet
        return None
    gate_run = client.get_run(mv.run_id)
    parent_id = gate_run.data.tags.get("mlflow.parentRunId")
    return mv, client.get_run(parent_id) if parent_id else gate_run


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if ms else "?"


def report(project_dir: str | Path = ".") -> str:
    from mlflow.tracking import MlflowClient

    from reftflow.config import load_params
    from reftflow.tracking import tracking_uri

    project = Path(project_dir).resolve()
    if not (project / "params.yaml").exists() or not (project / "dvc.yaml").exists():
        raise InputError(f"{project}: not a reftflow project (no params.yaml and dvc.yaml; pass --project-dir)")
    name = load_params(project / "params.yaml").gate.registered_model_name
    lines = [f"project {project}"]
    stale = stale_stages(project)
    if stale:
        lines.append("stale (DVC):")
        lines += [f"  {stage}: {'; '.join(why) or 'changed'}" for stage, why in stale.items()]
        after = downstream(project, list(stale))
        if after:
            lines.append(f"  and downstream of them: {', '.join(after)}")
    else:
        lines.append("stale (DVC): nothing; every stage is up to date")
    uri = tracking_uri(project)
    client = MlflowClient(tracking_uri=uri)
    run = last_run(client, name)
    if run is None:
        lines.append(f"last run: none of {name} in {uri}")
    else:
        tags = run.data.tags
        took = f", {(run.info.end_time - run.info.start_time) / 1000:.0f} s" if run.info.end_time else ""
        lines.append(f"last run: {run.info.run_id} ({run.info.run_name}), started {_when(run.info.start_time)}"
                     f"{took}, {run.info.status}; gate {tags.get('reftflow.gate.decision', 'not reached').upper()}"
                     f"; stages run: {tags.get('reftflow.stages_run', '?')}")
    from reftflow.record import machine, precisions

    ran_in = precisions(project)
    if ran_in:
        native = "has" if machine()["cpu_native_bf16"] else "has no"
        lines.append("precision: " + ", ".join(f"{s} {p}" for s, p in ran_in.items())
                     + f" (model.bf16: {load_params(project / 'params.yaml').model.bf16}; this CPU {native} native bf16)")
    found = champion(client, name)
    if found is None:
        lines.append(f"champion: none ({name}@champion is not registered yet)")
    else:
        mv, promoted_by = found
        metrics = {k: v for k, v in sorted(promoted_by.data.metrics.items()) if k.startswith(("rl/", "sft/"))}
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.split("/")[1] in ("pass_rate", "mean_score"))
        lines.append(f"champion: {name} v{mv.version}, registered {_when(mv.creation_timestamp)} by pipeline run "
                     f"{promoted_by.info.run_id} ({promoted_by.info.run_name}; gate run {mv.run_id})")
        if shown:
            lines.append(f"  {shown}")
    return "\n".join(lines)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("status", help="what is stale, the last pipeline run, and the champion",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project-dir", default=".", help="the project (default: .)")
    p.set_defaults(func=_run)
    return p


@one_line_errors("status")
def _run(args: argparse.Namespace) -> int:
    print(report(args.project_dir))
    return 0
