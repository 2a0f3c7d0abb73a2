"""Resumable checkpoints of an RL run: `step-NNNNNN/` directories holding the policy, a state file
(optimizer, scheduler, step, ...) and one RNG file per process, written atomically.

A checkpoint counts once its `meta.json` is in place and its directory renamed to its final name,
so a run killed while saving leaves the previous checkpoint as the newest. Whatever complete
checkpoint sits in the directory is resumed: the caller keys the directory by the run's inputs.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from reftflow.io import replace_dir

PREFIX = "step-"
STATE_FILE = "trainer_state.pt"
META_FILE = "meta.json"


def latest(directory: Path | None) -> Path | None:
    """The newest complete checkpoint in `directory`, if any."""
    if directory is None or not directory.is_dir():
        return None
    complete = [p for p in sorted(directory.glob(f"{PREFIX}*")) if (p / META_FILE).is_file()]
    return complete[-1] if complete else None


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(rng: dict[str, Any]) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def save(directory: Path, step: int, save_policy: Callable[[Path], None], state: Callable[[], dict[str, Any]],
         rank: int = 0, barrier: Callable[[], None] = lambda: None) -> Path:
    """Write checkpoint `step` (every process calls this; the main process, rank 0, writes the policy
    and the state) and remove the older ones."""
    final, tmp = directory / f"{PREFIX}{step:06d}", directory / f".tmp-{PREFIX}{step:06d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    try:
        torch.save(_rng_state(), tmp / f"rng_state_{rank}.pt")
        if rank == 0:
            save_policy(tmp)
            torch.save({"step": step, **state()}, tmp / STATE_FILE)
    except BaseException:  # a full disk: the previous checkpoint stays the newest, no half-written one
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()
    if rank == 0:
        (tmp / META_FILE).write_text(json.dumps({"step": step}))  # last: marks the checkpoint complete
        replace_dir(tmp, final)
        for old in directory.glob(f"{PREFIX}*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load(path: Path, rank: int = 0) -> dict[str, Any]:
    """The state saved with checkpoint `path`; this process's RNG state is restored from it."""
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    rng_file = path / f"rng_state_{rank}.pt"
    if rng_file.exists():
        _set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False))
    return state
