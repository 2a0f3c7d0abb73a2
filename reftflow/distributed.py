"""Which process this is, decided one way for the whole code base; and how a training stage spreads
over several processes and machines.

`torchrun` and `accelerate launch` both set RANK and WORLD_SIZE for every process they start; a
plain `python -m tasks.rl` sets neither and is the only (main) process.

A stage asked for several processes (`sft.num_processes`, `rl.num_processes`: the world size, every
machine's processes together) relaunches itself under torchrun (`launch`). How those processes are
laid out over machines comes from the environment, not params.yaml: the same project runs on every
machine and only the node rank differs, and the trained weights depend on the world size alone
(tests/test_multinode.py: 2 machines x 1 process train the weights 1 x 2 train), so DVC, which
compares params, has nothing to rerun when the layout changes. docs/scale.md has the commands.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Mapping

from reftflow.errors import InputError

NNODES_ENV = "REFTFLOW_NNODES"
"""how many machines train together (default 1): each starts num_processes / nnodes processes."""
NODE_RANK_ENV = "REFTFLOW_NODE_RANK"
"""this machine's place, 0 to nnodes - 1 (default 0); node 0 holds global rank 0, which logs and writes."""
RDZV_ENDPOINT_ENV = "REFTFLOW_RDZV_ENDPOINT"
"""host:port on node 0 that every machine reaches (torchrun's rendezvous); needed when nnodes > 1."""
RDZV_BACKEND_ENV = "REFTFLOW_RDZV_BACKEND"
"""static (default) or c10d: torchrun's rendezvous (see `Layout.backend`)."""

# torchrun reads each of its options from PET_<OPTION> when the command line leaves it out
# (torch/distributed/argparse_util.py `env`); a cluster that already exports those needs nothing else
_TORCHRUN_ENV = {NNODES_ENV: "PET_NNODES", NODE_RANK_ENV: "PET_NODE_RANK", RDZV_ENDPOINT_ENV: "PET_RDZV_ENDPOINT",
                 RDZV_BACKEND_ENV: "PET_RDZV_BACKEND"}


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Only the main process logs to MLflow, writes stage outputs and saves models."""
    return rank() == 0


def launched() -> bool:
    """True in a process that torchrun or `accelerate launch` started (it must not relaunch itself)."""
    return "RANK" in os.environ


@dataclass(frozen=True)
class Layout:
    """The machines a stage's processes run on: what each machine's environment says."""

    nnodes: int = 1
    node_rank: int = 0
    endpoint: str | None = None
    backend: str = "static"
    """static: torchrun's fixed ranks, node k holds ranks k*n .. k*n+n-1, so node 0 holds rank 0 (the one
    that logs and writes outputs) whatever the start order. c10d: torchrun's dynamic rendezvous, which
    ignores --node_rank and numbers the machines by sorted host name (torch/distributed/elastic/
    rendezvous/dynamic_rendezvous.py); rank 0 may then be any machine: only for a shared project directory."""


def _env(environ: Mapping[str, str], name: str) -> tuple[str, str | None]:
    """(the variable that is set, its value): ours, else torchrun's own."""
    for var in (name, _TORCHRUN_ENV[name]):
        if environ.get(var, "").strip():
            return var, environ[var].strip()
    return name, None


def _whole(environ: Mapping[str, str], name: str, default: int, low: int) -> int:
    var, value = _env(environ, name)
    if value is None:
        return default
    if not value.isdigit() or int(value) < low:
        raise InputError(f"{var}: expected a whole number >= {low} (got {value!r})")
    return int(value)


def layout(environ: Mapping[str, str] | None = None) -> Layout:
    """This machine's `Layout` from REFTFLOW_NNODES, REFTFLOW_NODE_RANK, REFTFLOW_RDZV_ENDPOINT and
    REFTFLOW_RDZV_BACKEND (or torchrun's PET_NNODES, ...); a bad value is one line naming the variable."""
    environ = os.environ if environ is None else environ
    nnodes = _whole(environ, NNODES_ENV, 1, 1)
    node_rank = _whole(environ, NODE_RANK_ENV, 0, 0)
    if node_rank >= nnodes:
        raise InputError(f"{_env(environ, NODE_RANK_ENV)[0]}={node_rank}: the node rank must be below the number "
                         f"of machines ({_env(environ, NNODES_ENV)[0]}={nnodes}): 0 to {nnodes - 1}")
    var, endpoint = _env(environ, RDZV_ENDPOINT_ENV)
    if endpoint is not None:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise InputError(f"{var}: expected host:port, node 0's address and a free port (got {endpoint!r})")
    elif nnodes > 1:
        raise InputError(f"{_env(environ, NNODES_ENV)[0]}={nnodes} needs {RDZV_ENDPOINT_ENV}=host:port: node 0's "
                         "address and a free port, the same on every machine")
    var, backend = _env(environ, RDZV_BACKEND_ENV)
    if backend not in (None, "static", "c10d"):
        raise InputError(f"{var}: expected static or c10d (got {backend!r})")
    return Layout(nnodes, node_rank, endpoint, backend or "static")


def torchrun_command(stage: str, processes: int, params_file: str, where: Layout, key: str) -> list[str]:
    """The torchrun command line that runs `tasks.<stage>` as this machine's share of `processes`
    processes in all; `key` (e.g. `rl.num_processes`) names the setting in errors."""
    if processes % where.nnodes:
        raise InputError(f"{key}={processes} is not a multiple of {NNODES_ENV}={where.nnodes}: each machine starts "
                         "the same number of processes")
    per_node = processes // where.nnodes
    run = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={per_node}"]
    tail = ["-m", f"tasks.{stage}", "--params", params_file]
    if where.nnodes == 1 and where.endpoint is None:
        return [*run, "--standalone", *tail]
    # no restarts: a failed rank fails the stage, whose checkpoint the next run resumes (docs/reliability.md)
    return [*run, f"--nnodes={where.nnodes}", f"--node_rank={where.node_rank}", f"--rdzv_backend={where.backend}",
            f"--rdzv_endpoint={where.endpoint}", f"--rdzv_id=reftflow-{stage}", "--max_restarts=0", *tail]


def launch(stage: str, processes: int, params_file: str, key: str) -> int | None:
    """Where a stage asked for `processes` processes (`key` names the setting) trains: None in this
    process (one process on node 0, or a process torchrun already started), else the exit code of this
    machine's share run under torchrun. A one-process stage runs on node 0 alone: another machine has
    nothing to join and says so, exit 0 (its `python -m tasks.sft && python -m tasks.rl` goes on)."""
    import subprocess

    if launched():
        return None
    where = layout()
    if processes == 1:
        if where.node_rank == 0:
            return None
        print(f"{stage}: {key} is 1, so the stage runs on node 0 alone: nothing for node {where.node_rank} to join")
        return 0
    return subprocess.run(torchrun_command(stage, processes, params_file, where, key)).returncode


def same_everywhere(value, what: str) -> None:
    """Raise a one-line InputError unless every process of the job holds the same `value` (e.g. the
    checkpoint it would resume: processes that disagree would train different steps and hang in a
    collective). A collective itself: every process calls it; nothing to do on one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    seen: list = [None] * dist.get_world_size()
    dist.all_gather_object(seen, value)
    if any(v != seen[0] for v in seen):
        shown = ", ".join(f"rank {r}: {v}" for r, v in enumerate(seen))
        raise InputError(f"{what} differs between the processes ({shown}): on several machines the project's "
                         "checkpoints/ must be on a filesystem they all see (or remove it to start over)")
