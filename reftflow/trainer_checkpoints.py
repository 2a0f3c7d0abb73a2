"""Resumable checkpoints of a Hugging Face Trainer (TRL's SFTTrainer and GRPOTrainer).

The Trainer writes `checkpoint-N/` in place, so a run killed while writing one leaves it half
written, and the Trainer would resume from it. `MarkComplete` marks each checkpoint once the Trainer
has finished it; `last_complete` resumes only from a marked one and removes the rest.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

COMPLETE_MARKER = "reftflow-complete"


def last_complete(directory: Path | None) -> Path | None:
    """The newest `checkpoint-N` the Trainer finished writing (see `MarkComplete`); the unfinished ones a
    kill left behind are removed, so the Trainer cannot pick one up either."""
    if directory is None or not directory.is_dir():
        return None
    found = sorted((p for p in directory.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]))
    for p in [p for p in found if not (p / COMPLETE_MARKER).is_file()]:
        shutil.rmtree(p, ignore_errors=True)
    complete = [p for p in found if (p / COMPLETE_MARKER).is_file()]
    return complete[-1] if complete else None


def global_step(checkpoint: Path) -> int:
    """The Trainer's optimizer step at `checkpoint` (its directory name says it)."""
    return int(checkpoint.name.split("-")[-1])


def log_history(checkpoint: Path) -> list[dict[str, float]]:
    """The Trainer's logs up to `checkpoint`: a resumed run's record and curve start at step 1."""
    entries = json.loads((checkpoint / "trainer_state.json").read_text()).get("log_history", [])
    return [{k: float(v) for k, v in e.items() if isinstance(v, (int, float))} for e in entries]


def mark_complete_callback():
    """A TrainerCallback that marks each checkpoint complete once the Trainer has written it."""
    from transformers import TrainerCallback

    class MarkComplete(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            # rank 0 writes the model and optimizer: another process may get here before they are written
            if not state.is_world_process_zero:
                return
            marker = Path(args.output_dir) / f"checkpoint-{state.global_step}" / COMPLETE_MARKER
            if marker.parent.is_dir():
                marker.write_text("")

    return MarkComplete()
