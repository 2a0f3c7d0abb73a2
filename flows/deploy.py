"""Run the pipeline on a schedule as a Prefect deployment with a cron.

    reftflow serve                                # serve 'reftflow-pipeline/nightly' at 02:00 every day
    reftflow serve --cron "0 */6 * * *"           # every six hours
    reftflow serve --apply-only                   # only register it (run it with a worker on a work pool)
    python -m flows.deploy ...                    # the same

Serving blocks and runs each scheduled flow run (or one started from the UI or with
`prefect deployment run reftflow-pipeline/nightly`) from this process; Prefect pauses the
deployment when it is stopped (serve's pause_on_shutdown). With no PREFECT_API_URL it uses the
Prefect server on 127.0.0.1:4200 (`make prefect-ui`), or starts one there for as long as it serves:
the schedule and the runs are in its UI.

Runs never overlap: the deployment has a concurrency limit of 1, so a run due while another is
active waits for its slot, and the flow itself holds the project's run lock (reftflow/run_lock.py),
so a `reftflow run` started by hand meanwhile is refused with one line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from reftflow.errors import InputError
from reftflow.exits import CRASH, fail, one_line_errors


def build_deployment(name: str = "nightly", cron: str = "0 2 * * *", timezone: str = "UTC",
                     project_dir: str | Path = "."):
    from prefect.schedules import Cron

    from flows.pipeline import pipeline

    return pipeline.to_deployment(
        name=name,
        schedules=[Cron(cron, timezone=timezone)],
        parameters={"project_dir": str(Path(project_dir).resolve())},
        tags=["reftflow"],
        concurrency_limit=1,  # a run that comes due while one is active waits (the server enforces it)
        description="reftflow: prepare → base → sft → rl → evaluate → gate (DVC skips what is up to date)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--name", default="nightly", help="deployment name (default: %(default)s)")
    parser.add_argument("--cron", default="0 2 * * *", help="cron schedule (default: %(default)r)")
    parser.add_argument("--timezone", default="UTC", help="timezone of the cron (default: %(default)s)")
    parser.add_argument("--project-dir", default=".", help="project root the runs use (default: .)")
    parser.add_argument("--apply-only", action="store_true", help="register the deployment and exit")
    parser.add_argument("--port", type=int, default=4200,
                        help="with no PREFECT_API_URL: the port of the local Prefect server to use or start "
                             "(default: %(default)s; its UI is there too)")
    return parser


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def prefect_api(port: int, log_dir: Path) -> Iterator[str]:
    """The Prefect API to serve against: PREFECT_API_URL when set; else the Prefect server on
    127.0.0.1:`port`, started here (and stopped on exit) unless one already answers there.

    Not Prefect's temporary server: it runs only the services marked for ephemeral use, and its
    scheduler is not one of them (prefect/server/api/server.py), so a cron served against it never
    produces a run (tried: a minutely cron, 150 s, no run)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield PREFECT_API_URL.value()
        return
    url = f"http://127.0.0.1:{port}/api"
    proc = None
    if not _answers(url):
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / "prefect-server.log"
        print(f"reftflow serve: starting a Prefect server on http://127.0.0.1:{port} (its scheduler makes the cron's "
              f"runs; the UI is there too; log: {log})", flush=True)
        proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                                 "127.0.0.1", "--port", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + 180  # a fresh DB migrates first: ~11 s here, more on a busy machine
        while not _answers(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                raise RuntimeError(f"the Prefect server on port {port} did not start (see {log}); pass --port, or "
                                   "set PREFECT_API_URL to a running server")
            time.sleep(0.5)
    os.environ["PREFECT_API_URL"] = url  # the runner's flow-run subprocesses read it from the environment
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        if proc is not None:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    # environment defaults: applied when the `flows` package was imported, before Prefect was
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return run(add_arguments(parser).parse_args(argv))


@one_line_errors("serve")
def run(args: argparse.Namespace) -> int:
    """Register the deployment, then serve it (unless --apply-only)."""
    from reftflow.project import check_project

    try:
        from prefect.schedules import Cron

        Cron(args.cron, timezone=args.timezone)
    except Exception as e:  # noqa: BLE001 - croniter/pydantic raise several types; one line for the user
        raise InputError(f"--cron {args.cron!r}: {str(e).splitlines()[0]}") from None
    check_project(args.project_dir)  # a project that cannot run is refused now, not at 02:00
    deployment = build_deployment(args.name, args.cron, args.timezone, args.project_dir)
    if args.apply_only:
        dep_id = deployment.apply()
        print(f"registered deployment reftflow-pipeline/{args.name} ({dep_id}) on cron {args.cron!r}")
        return 0
    from prefect import serve

    try:
        with prefect_api(args.port, Path(args.project_dir).resolve() / ".dvc" / "tmp"):
            serve(deployment)
    except RuntimeError as e:
        return fail(f"reftflow serve: error: {e}", CRASH)
    return 0


if __name__ == "__main__":
    sys.exit(main())
