"""What a pipeline run's MLflow record holds besides params and metrics: enough to rebuild the run.

The git state (commit, branch, dirty flag and the diff that makes the tree what it was), the data's
md5s from dvc.lock, the installed package versions and the machine. `reftflow.tracking` logs these
on the parent run; `reftflow.rerun` reads them back. Nothing here talks to MLflow.
"""

from __future__ import annotations

import json
import importlib.metadata as md
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGES = ("reftflow", "torch", "transformers", "trl", "peft", "accelerate", "tokenizers", "datasets", "mlflow",
            "prefect", "dvc", "pydantic", "numpy")
"""the packages whose versions decide what a run computes and records."""
MAX_UNTRACKED_BYTES = 1 << 20
"""an untracked file bigger than this is not put into the diff (it is named in the record instead)."""


def _git(project_dir: str | Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=project_dir, capture_output=True, text=True, timeout=60)


@dataclass(frozen=True)
class GitState:
    commit: str | None
    branch: str | None
    dirty: bool
    diff: str
    """`git apply`-able on `commit`: tracked changes, staged or not, and the untracked files."""
    skipped: tuple[str, ...] = ()
    """untracked files left out of `diff` (over MAX_UNTRACKED_BYTES)."""


def git_state(project_dir: str | Path = ".", with_diff: bool = True) -> GitState:
    """The project's git state; commit None when it is not a git repo (or git is missing).
    `with_diff=False` leaves the diff out (a stage's run needs only the dirty flag)."""
    try:
        head = _git(project_dir, "rev-parse", "HEAD")
    except (OSError, subprocess.TimeoutExpired):
        return GitState(None, None, False, "")
    if head.returncode != 0:
        return GitState(None, None, False, "")
    branch = _git(project_dir, "rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
    status = _git(project_dir, "status", "--porcelain").stdout
    if not status.strip() or not with_diff:
        return GitState(head.stdout.strip(), branch if branch != "HEAD" else None, bool(status.strip()), "")
    diff = _git(project_dir, "diff", "--binary", "HEAD").stdout
    skipped = []
    untracked = _git(project_dir, "ls-files", "--others", "--exclude-standard", "-z").stdout.split("\0")
    for name in filter(None, untracked):
        if (Path(project_dir) / name).stat().st_size > MAX_UNTRACKED_BYTES:
            skipped.append(name)
            continue
        # `git diff --no-index` exits 1 when the files differ, which is the point here
        diff += _git(project_dir, "diff", "--binary", "--no-index", "/dev/null", name).stdout
    return GitState(head.stdout.strip(), branch if branch != "HEAD" else None, True, diff, tuple(skipped))


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict[str, Any]:
    """Where the run ran: a result is only expected to repeat exactly on the same kind of machine."""
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # Linux only
    from reftflow.precision import native_bf16

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"platform": platform.platform(), "arch": platform.machine(), "host": platform.node(),
            "cpu_count": os.cpu_count(), "cpus_usable": usable, "torch_threads": torch.get_num_threads(),
            "cpu_native_bf16": native_bf16(torch.device("cpu")), "gpu": gpu, "cuda": torch.version.cuda or "none"}


def precisions(project_dir: str | Path) -> dict[str, str]:
    """{stage: bf16 | float32} for each stage that trained or generated, as its metrics file says."""
    from reftflow import paths

    out = {}
    for stage, path in (("sft", paths.SFT_METRICS), ("rl", paths.RL_METRICS), ("evaluate", paths.EVAL_METRICS)):
        try:
            found = json.loads((Path(project_dir) / path).read_text()).get("precision")
        except (OSError, ValueError, AttributeError):
            continue
        if found:
            out[stage] = found
    return out


def lock_md5s(project_dir: str | Path, stage: str = "prepare") -> dict[str, str]:
    """{out path: md5} of a stage's outputs as dvc.lock records them (empty when it has none yet)."""
    from reftflow.config import read_yaml

    lock = Path(project_dir) / "dvc.lock"
    if not lock.exists():
        return {}
    stages = (read_yaml(lock) or {}).get("stages", {})
    return {o["path"]: o["md5"] for o in stages.get(stage, {}).get("outs", []) if "md5" in o}


def dvc_cache_dir(project_dir: str | Path) -> str | None:
    """The project's DVC cache root (usable as a local remote: DVC 3 lays both out as files/md5/...)."""
    from dvc.repo import Repo

    try:
        with Repo(str(project_dir)) as repo:
            return str(Path(repo.cache.local.path).parents[1])  # <root>/files/md5
    except Exception:  # noqa: BLE001 - not a DVC project: nothing to restore from
        return None
