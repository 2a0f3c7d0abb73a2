"""`reftflow tracking-server`: one MLflow tracking server for several machines, on a real PostgreSQL.

    reftflow tracking-server                       # http://127.0.0.1:5000, data in ~/.reftflow/tracking-server
    reftflow tracking-server --host 0.0.0.0 --allowed-hosts tracking.lan:5000
    make mlflow-server                             # the same as the first line

PostgreSQL 16 comes from the `pgserver` wheel (pip install 'reftflow[server]'): no system install, its
data in DIR/pgdata, reached by MLflow over a unix socket only (it listens on no TCP port). MLflow proxies
the artifacts (`--serve-artifacts`): clients upload and download them through the server, which stores
them in --artifacts (default DIR/artifacts; any MLflow artifact URI, s3://... included), so a worker needs
nothing but the server's URL. It prints the MLFLOW_TRACKING_URI to export on every machine, and runs until
Ctrl-C or SIGTERM, then stops MLflow and PostgreSQL.

As root, pgserver runs PostgreSQL as a `pgserver` system user it creates (PostgreSQL refuses root), and
makes the directories above DIR traversable by others (go+rx).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Iterator

from reftflow.errors import InputError
from reftflow.exits import CRASH, fail, one_line_errors
from reftflow.servers import answers, stop_group

DEFAULT_DIR = Path("~/.reftflow/tracking-server")
DATABASE = "mlflow"


class ServerFailed(RuntimeError):
    """PostgreSQL or MLflow did not start (their logs say why): not the user's input."""


def check_port(host: str, port: int) -> None:
    """Refuse a port something already listens on, before anything starts."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise InputError(f"--host {host} --port {port}: cannot listen there ({e.strerror}); pass another "
                             "--port") from None


@contextlib.contextmanager
def postgres(pgdata: Path) -> Iterator[str]:
    """PostgreSQL on `pgdata` (initialised on first use), with a database for MLflow; yields its SQLAlchemy
    URI and stops the server on exit (unless another process holds it too: pgserver counts its users)."""
    try:
        with warnings.catch_warnings():  # platformdirs warns at pgserver's import when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError:
        raise InputError("the PostgreSQL server comes from the `pgserver` wheel, which is not installed: "
                         "pip install 'reftflow[server]'") from None
    try:
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
    except Exception as e:  # noqa: BLE001 - initdb or pg_ctl failed: their log has the rest
        raise ServerFailed(f"PostgreSQL did not start on {pgdata} ({type(e).__name__}: {e}; see "
                           f"{pgdata / 'log'})") from None
    try:
        _create_database(server.get_uri(), DATABASE)
        yield server.get_uri(DATABASE)
    finally:
        server.cleanup()


def _create_database(admin_uri: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_uri, autocommit=True) as conn:  # CREATE DATABASE refuses a transaction
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def mlflow_command(backend_uri: str, artifacts: str, host: str, port: int, workers: int,
                   allowed_hosts: str | None) -> list[str]:
    """`mlflow server` on `backend_uri`, proxying the artifacts it stores in `artifacts`."""
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend_uri,
           "--serve-artifacts", "--artifacts-destination", artifacts, "--host", host, "--port", str(port),
           "--workers", str(workers)]
    return cmd + (["--allowed-hosts", allowed_hosts] if allowed_hosts else [])


def client_url(host: str, port: int) -> str:
    """The URL other machines use: this machine's name when the server listens on every interface."""
    name = socket.getfqdn() if host in ("0.0.0.0", "::", "") else host
    return f"http://{name}:{port}"


@contextlib.contextmanager
def mlflow_server(cmd: list[str], log: Path, local_url: str, timeout: float = 300) -> Iterator[subprocess.Popen]:
    """The MLflow server, once it answers /health (a fresh database is migrated first: ~30 s on 2 cores);
    stopped with its workers on exit."""
    # MLflow's job runner and its queue consumers serve GenAI jobs that reftflow has none of
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not answers(local_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ServerFailed(f"the MLflow server did not start (exit {proc.poll()}; see {log})")
            time.sleep(0.5)
        yield proc
    finally:
        stop_group(proc)


class _Stopped(Exception):
    """SIGTERM: stop as on Ctrl-C, through every `finally` (Python's default would skip them)."""


def _on_sigterm(signum, frame) -> None:
    raise _Stopped()


def serve(directory: Path, host: str, port: int, artifacts: str | None, workers: int,
          allowed_hosts: str | None) -> None:
    """Start PostgreSQL and MLflow, say how to reach them, and wait until stopped."""
    if not 0 < port < 65536:
        raise InputError(f"--port {port}: not a TCP port (1-65535)")
    if workers < 1:
        raise InputError(f"--workers {workers}: at least 1")
    directory = directory.expanduser().resolve()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--dir {directory}: cannot create it ({e.strerror})") from None
    check_port(host, port)
    # a path made absolute: the printed line and MLflow (which resolves it against its own directory) agree
    artifacts = artifacts if artifacts and "://" in artifacts else str(Path(artifacts or directory / "artifacts")
                                                                      .expanduser().resolve())
    url = client_url(host, port)
    with postgres(directory / "pgdata") as backend:
        cmd = mlflow_command(backend, artifacts, host, port, workers, allowed_hosts)
        local = f"http://127.0.0.1:{port}" if host in ("0.0.0.0", "::", "") else url
        with mlflow_server(cmd, directory / "mlflow-server.log", local) as proc:
            print(f"reftflow tracking-server: MLflow on PostgreSQL is up; on every machine that runs reftflow:\n"
                  f"  export MLFLOW_TRACKING_URI={url}\n"
                  f"  backend: {backend}\n  artifacts: {artifacts} (proxied: clients reach them through the server)\n"
                  f"  UI: {url}   log: {directory / 'mlflow-server.log'}\n"
                  "Ctrl-C stops MLflow and PostgreSQL.", flush=True)
            code = proc.wait()
            raise ServerFailed(f"the MLflow server exited (exit {code}; see {directory / 'mlflow-server.log'})")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("tracking-server", help="start a shared MLflow tracking server on PostgreSQL (pgserver)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=str(DEFAULT_DIR), help="where PostgreSQL's data, the artifacts and the log live "
                                                           "(default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="the interface to listen on (default: %(default)s; 0.0.0.0 for "
                                                       "other machines)")
    p.add_argument("--port", type=int, default=5000, help="(default: %(default)s)")
    p.add_argument("--artifacts", help="where the artifacts are stored: a directory or an MLflow artifact URI such as "
                                       "s3://bucket/path (default: DIR/artifacts)")
    p.add_argument("--workers", type=int, default=4, help="MLflow server worker processes (default: %(default)s)")
    p.add_argument("--allowed-hosts", help="the Host headers MLflow accepts, e.g. tracking.lan:5000 (MLflow's default: "
                                           "localhost and private IPs); needed when machines use a name for it")
    p.set_defaults(func=_run)
    return p


@one_line_errors("tracking-server")
def _run(args: argparse.Namespace) -> int:
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        serve(Path(args.dir), args.host, args.port, args.artifacts, args.workers, args.allowed_hosts)
    except (KeyboardInterrupt, _Stopped):  # how a server in the foreground is stopped: not a failure
        print("reftflow tracking-server: stopped (MLflow and PostgreSQL)", flush=True)
        return 0
    except ServerFailed as e:
        return fail(f"reftflow tracking-server: error: {e}", CRASH)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
