"""One pipeline run per project at a time: an exclusive `flock` on `.dvc/tmp/reftflow-run.lock`.

Two runs in one project would race on the same outputs, checkpoints and `dvc.lock` (DVC's own
lock only guards one `dvc` command, not the chain of six). The second run is refused before it
touches anything, with one line naming the active run. The kernel drops a `flock` when its process
dies, however it dies (SIGKILL included), so a killed run never leaves a stale lock behind; the
JSON inside is only there to say who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

LOCK_FILE = Path(".dvc") / "tmp" / "reftflow-run.lock"

_held: dict[Path, int] = {}  # lock path → fd, for the runs this process already holds (re-entrant)


class RunActive(RuntimeError):
    """Another run holds this project's lock."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"pid {info['pid']} on {info['host']}, started {started}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said who it is yet"


@contextlib.contextmanager
def hold(project_dir: str | Path, what: str = "") -> Iterator[Path]:
    """Hold the project's run lock for the block, or raise RunActive at once (never waits)."""
    path = (Path(project_dir).resolve() / LOCK_FILE)
    if path in _held:  # the CLI took it before starting Prefect; the flow in the same process re-enters
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunActive(f"another reftflow run is active in {Path(project_dir).resolve()} ({_holder(path)}): "
                        "this one did nothing; wait for it to finish, or stop it, and run again") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                 "command": what or " ".join(sys.argv)}).encode())
        _held[path] = fd
        yield path
    finally:
        _held.pop(path, None)
        os.close(fd)  # closing the only descriptor releases the flock
