"""A pool of persistent sandboxed worker processes (reftflow/graders/sandbox_worker.py) and its pipe protocol.

PPO grades thousands of samples per step, so a fresh interpreter per sample (~40 ms) is too slow: workers
stay up, load each grader's source once, and take batches of tasks per round trip. The parent enforces the
wall-time limit itself (a worker that misses a deadline has its process group SIGKILLed) and replaces any
worker that dies, times out or runs out of memory; the task it was running scores an error, the rest of
its batch goes to the replacement. Replies are JSON, never pickle: nothing a worker sends can run code here.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKER_SCRIPT = str(Path(__file__).with_name("sandbox_worker.py"))
START_TIMEOUT_S = 30.0
MAX_REPLY_BYTES = 1 << 20
MAX_BATCH = 64
NOBODY = 65534


@dataclass(frozen=True)
class Reply:
    ok: bool
    value: Any = None
    error: str | None = None


class _WorkerGone(Exception):
    pass


class _Deadline(Exception):
    pass


def default_size() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _minimal_env(scratch: str) -> dict[str, str]:
    """No parent variables (tokens, keys, paths) reach graders: this is the worker's whole environment."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": scratch,
        "TMPDIR": scratch,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker leads its own session: this reaches anything it started
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except OSError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    for stream in (proc.stdin, proc.stdout):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass


class _Worker:
    def __init__(self, memory_mb: int, cpu_s: int, fsize_mb: int) -> None:
        self.scratch = tempfile.mkdtemp(prefix="reftflow-sandbox-")
        if os.geteuid() == 0:
            os.chown(self.scratch, NOBODY, NOBODY)  # the worker drops to nobody and must own its scratch
        self.loaded: set[str] = set()
        self._buf = bytearray()
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-B", WORKER_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=self.scratch,
            env=_minimal_env(self.scratch),
            close_fds=True,
            start_new_session=True,
        )
        self._fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        setup = {"scratch": self.scratch, "memory_mb": memory_mb, "cpu_s": cpu_s, "fsize_mb": fsize_mb}
        try:
            self.send(setup)
            hello = self.recv(time.monotonic() + START_TIMEOUT_S)
        except (_WorkerGone, _Deadline) as e:
            self.kill()
            raise RuntimeError(f"sandbox worker failed to start ({e or 'no reply'})") from None
        if not hello.get("ready"):
            self.kill()
            raise RuntimeError(f"sandbox worker failed to start ({hello.get('fatal', hello)})")

    def send(self, obj: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(obj, default=str).encode() + b"\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError, ValueError):
            raise _WorkerGone(self.exit_reason()) from None

    def recv(self, deadline: float) -> dict:
        buf = self._buf
        while True:
            newline = buf.find(b"\n")
            if newline >= 0:
                line = bytes(buf[:newline])
                del buf[: newline + 1]
                try:
                    reply = json.loads(line)
                except ValueError:
                    raise _WorkerGone("sandbox worker sent an invalid reply") from None
                if not isinstance(reply, dict):
                    raise _WorkerGone("sandbox worker sent an invalid reply")
                return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Deadline()
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise _WorkerGone(self.exit_reason())
            buf += chunk
            if len(buf) > MAX_REPLY_BYTES:
                raise _WorkerGone("sandbox worker sent an oversized reply")

    def exit_reason(self) -> str:
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "sandbox worker stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            hint = " (CPU limit)" if name == "SIGXCPU" else " (killed: memory or CPU limit)" if name == "SIGKILL" else ""
            return f"sandbox worker died from {name}{hint}"
        return f"sandbox worker exited with status {code}"

    def kill(self) -> None:
        _kill_group(self.proc)
        shutil.rmtree(self.scratch, ignore_errors=True)


@dataclass
class _State:
    """Everything the finalizer needs, without a reference back to the pool."""

    workers: set = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _shutdown(state: _State) -> None:
    with state.lock:
        workers = list(state.workers)
        state.workers.clear()
    for w in workers:
        w.kill()


class SandboxPool:
    """Persistent sandboxed workers, started on first use; `close()` stops them (a later run restarts)."""

    def __init__(self, memory_mb: int = 1024, size: int | None = None, cpu_s: int = 600, fsize_mb: int = 16) -> None:
        self.memory_mb, self.cpu_s, self.fsize_mb = memory_mb, cpu_s, fsize_mb
        self.size = size or default_size()
        self._sources: dict[str, dict] = {}
        self._idle: list[_Worker] = []
        self._live = 0
        self._cv = threading.Condition()
        self._executor: ThreadPoolExecutor | None = None
        self._state = _State()
        # a forgotten close() must not leave processes behind: runs on garbage collection and at exit
        self._finalizer = weakref.finalize(self, _shutdown, self._state)

    def register(self, key: str, kind: str, source: str | None = None, entry: str = "solution", load_timeout: float = 10.0) -> None:
        self._sources[key] = {"op": "load", "key": key, "kind": kind, "source": source, "entry": entry, "timeout": load_timeout}

    @property
    def started(self) -> bool:
        return self._live > 0

    def run(self, key: str, tasks: list[dict], timeout: float) -> list[Reply]:
        """One Reply per task, in order. Never raises for a task's failure."""
        if not tasks:
            return []
        per = max(1, min(MAX_BATCH, -(-len(tasks) // (self.size * 2))))
        batches = [tasks[i : i + per] for i in range(0, len(tasks), per)]
        if len(batches) == 1:
            return self._run_batch(key, batches[0], timeout)
        with self._cv:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="reftflow-sandbox")
            executor = self._executor
        out: list[Reply] = []
        for part in executor.map(lambda b: self._run_batch(key, b, timeout), batches):
            out.extend(part)
        return out

    def close(self) -> None:
        with self._cv:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        with self._cv:
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            self._cv.notify_all()
        for w in idle:
            self._forget(w)
        _shutdown(self._state)  # anything still running belongs to a caller that did not wait: stop it too

    # --- internals ---

    def _acquire(self) -> _Worker:
        with self._cv:
            while not self._idle and self._live >= self.size:
                self._cv.wait()
            if self._idle:
                return self._idle.pop()
            self._live += 1
        try:
            worker = _Worker(self.memory_mb, self.cpu_s, self.fsize_mb)
        except BaseException:
            with self._cv:
                self._live -= 1
                self._cv.notify()
            raise
        with self._state.lock:
            self._state.workers.add(worker)
        return worker

    def _release(self, worker: _Worker) -> None:
        with self._cv:
            self._idle.append(worker)
            self._cv.notify()

    def _discard(self, worker: _Worker) -> None:
        self._forget(worker)
        with self._cv:
            self._live -= 1
            self._cv.notify()

    def _forget(self, worker: _Worker) -> None:
        with self._state.lock:
            self._state.workers.discard(worker)
        worker.kill()

    def _run_batch(self, key: str, tasks: list[dict], timeout: float) -> list[Reply]:
        results: list[Reply | None] = [None] * len(tasks)
        done = 0
        while done < len(tasks):
            try:
                worker = self._acquire()
            except Exception as e:  # noqa: BLE001 - cannot start a worker: every remaining task says why
                for i in range(done, len(tasks)):
                    results[i] = Reply(False, error=str(e))
                break
            done = self._drive(worker, key, tasks, done, results, timeout)
        return results  # type: ignore[return-value]

    def _drive(self, worker: _Worker, key: str, tasks: list[dict], start: int, results: list, timeout: float) -> int:
        """Run tasks[start:] on one worker; returns how far it got. Releases or discards the worker."""
        grace = max(1.0, 0.5 * timeout)  # the worker's own SIGALRM fires first; this is the backstop
        try:
            if key not in worker.loaded:
                load = self._sources[key]
                worker.send(load)
                reply = worker.recv(time.monotonic() + load["timeout"] + grace)
                if not reply.get("ok"):
                    error = str(reply.get("error", "the grader source failed to load"))
                    for i in range(start, len(tasks)):
                        results[i] = Reply(False, error=error)
                    self._discard(worker)
                    return len(tasks)
                worker.loaded.add(key)
            worker.send({"op": "run", "key": key, "timeout": timeout, "tasks": tasks[start:]})
            for i in range(start, len(tasks)):
                try:
                    reply = worker.recv(time.monotonic() + timeout + grace)
                except _Deadline:
                    results[i] = Reply(False, error=f"timed out after {timeout:g} s (worker killed)")
                    self._discard(worker)
                    return i + 1
                if reply.get("ok"):
                    results[i] = Reply(True, value=reply.get("value"))
                else:
                    results[i] = Reply(False, error=str(reply.get("error", "unknown error"))[:300])
                if reply.get("recycle"):
                    self._discard(worker)
                    return i + 1
        except _WorkerGone as e:
            # whichever task was running when the worker went away carries the error
            first_missing = next((i for i in range(start, len(tasks)) if results[i] is None), None)
            if first_missing is not None:
                results[first_missing] = Reply(False, error=str(e))
                self._discard(worker)
                return first_missing + 1
            self._discard(worker)
            return len(tasks)
        except _Deadline:
            for i in range(start, len(tasks)):
                results[i] = results[i] or Reply(False, error="the grader source timed out while loading")
            self._discard(worker)
            return len(tasks)
        self._release(worker)
        return len(tasks)


class PoolRegistry:
    """The pools one grader tree shares, one per memory limit (RLIMIT_AS is per process)."""

    def __init__(self) -> None:
        self._pools: dict[int, SandboxPool] = {}

    def get(self, memory_mb: int) -> SandboxPool:
        if memory_mb not in self._pools:
            self._pools[memory_mb] = SandboxPool(memory_mb=memory_mb)
        return self._pools[memory_mb]

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
