"""Which process this is, decided one way for the whole code base.

`torchrun` and `accelerate launch` both set RANK and WORLD_SIZE for every process they start; a
plain `python -m tasks.rl` sets neither and is the only (main) process.
"""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Only the main process logs to MLflow, writes stage outputs and saves models."""
    return rank() == 0
