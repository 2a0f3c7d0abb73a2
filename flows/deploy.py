"""Run the pipeline on a schedule as a Prefect deployment with a cron.

    reftflow serve                                # serve 'reftflow-pipeline/nightly' at 02:00 every day
    reftflow serve --cron "0 */6 * * *"           # every six hours
    reftflow serve --apply-only                   # only register it (a later `reftflow serve` runs it)
    reftflow serve --pool reftflow                # register it in a work pool: Prefect workers run it
    python -m flows.deploy ...                    # the same

Serving blocks and runs each scheduled flow run (or one started from the UI or with
`prefect deployment run reftflow-pipeline/nightly`) from this process; Prefect pauses the
deployment when it is stopped (serve's pause_on_shutdown). With no PREFECT_API_URL it uses the
Prefect server on 127.0.0.1:4200 (`make prefect-ui`), or starts one there for as long as it serves:
the schedule and the runs are in its UI.

With --pool the deployment goes to a Prefect work pool instead (a `process` pool, created if
missing) and the command returns: `prefect worker start --pool NAME`, on any machine that has the
project (at the path the deployment names) and reftflow installed, picks its runs up. Workers on
other machines must reach the same Prefect server, so --pool needs PREFECT_API_URL or a server on
127.0.0.1:--port; it never starts one (README, "More than one machine").

Runs never overlap: the deployment has a concurrency limit of 1, so a run due while another is
active waits for its slot, and the flow itself holds the project's run lock (reftflow/run_lock.py),
so a `reftflow run` started by hand meanwhile is refused with one line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from reftflow.errors import InputError
from reftflow.exits import CRASH, fail, one_line_errors
from reftflow.servers import answers, stop_group


def build_deployment(name: str = "nightly", cron: str = "0 2 * * *", timezone: str = "UTC",
                     project_dir: str | Path = ".", job_variables: dict | None = None):
    """The deployment. `job_variables` (a work pool's, so only with a pool) also makes the entrypoint a module
    path: a worker on another machine imports the flow from its installed reftflow, not from a file path of
    this machine."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from flows.pipeline import pipeline

    pool_only = {"job_variables": job_variables, "entrypoint_type": EntrypointType.MODULE_PATH} if job_variables else {}
    return pipeline.to_deployment(
        name=name,
        schedules=[Cron(cron, timezone=timezone)],
        parameters={"project_dir": os.path.abspath(project_dir)},
        tags=["reftflow"],
        concurrency_limit=1,  # a run that comes due while one is active waits (the server enforces it)
        description="reftflow: prepare → base → sft → rl → evaluate → gate (DVC skips what is up to date)",
        **pool_only,
    )


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--name", default="nightly", help="deployment name (default: %(default)s)")
    parser.add_argument("--cron", default="0 2 * * *", help="cron schedule (default: %(default)r)")
    parser.add_argument("--timezone", default="UTC", help="timezone of the cron (default: %(default)s)")
    parser.add_argument("--project-dir", default=".", help="project root the runs use (default: .)")
    parser.add_argument("--apply-only", action="store_true", help="register the deployment and exit (a later "
                        "`reftflow serve` runs it; for Prefect workers use --pool)")
    parser.add_argument("--pool", metavar="NAME", help="register the deployment in this Prefect work pool and exit: "
                        "`prefect worker start --pool NAME` runs it, on any machine with the project and reftflow")
    parser.add_argument("--pool-type", default="process", help="the type of work pool to create when --pool names "
                        "none yet (default: %(default)s; docker or kubernetes need prefect-docker or "
                        "prefect-kubernetes installed here)")
    parser.add_argument("--worker-project-dir", metavar="PATH", help="with --pool: the project's absolute path where "
                        "the workers run (default: --project-dir, resolved here)")
    parser.add_argument("--job-variables", metavar="JSON", help="with --pool: the work pool's job variables for "
                        "these runs, e.g. '{\"image\": \"reftflow:0.1.0\", \"volumes\": [\"/srv/p:/srv/p\"]}' "
                        "(env is merged with reftflow's privacy defaults)")
    parser.add_argument("--port", type=int, default=4200,
                        help="with no PREFECT_API_URL: the port of the local Prefect server to use or start "
                             "(default: %(default)s; its UI is there too)")
    return parser


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
    if not answers(url):
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / "prefect-server.log"
        print(f"reftflow serve: starting a Prefect server on http://127.0.0.1:{port} (its scheduler makes the cron's "
              f"runs; the UI is there too; log: {log})", flush=True)
        proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                                 "127.0.0.1", "--port", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + 180  # a fresh DB migrates first: ~11 s here, more on a busy machine
        while not answers(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_group(proc)
                raise RuntimeError(f"the Prefect server on port {port} did not start (see {log}); pass --port, or "
                                   "set PREFECT_API_URL to a running server")
            time.sleep(0.5)
    os.environ["PREFECT_API_URL"] = url  # the runner's flow-run subprocesses read it from the environment
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        if proc is not None:
            stop_group(proc)


def job_variables(text: str | None) -> dict:
    """--job-variables as a dict whose env also holds reftflow's privacy defaults: a container or a pod
    starts from a bare environment, and nothing should leave it unless the user asks (README, "Privacy")."""
    from reftflow.env import PRIVACY_ENV

    try:
        given = json.loads(text) if text else {}
    except ValueError as e:
        raise InputError(f"--job-variables: not JSON ({e})") from None
    if not isinstance(given, dict) or not isinstance(given.get("env", {}), dict):
        raise InputError("--job-variables: expected a JSON object (and its env, if given, an object)")
    return {**given, "env": {**PRIVACY_ENV, **given.get("env", {})}}


def pool_api_url(port: int) -> str:
    """The Prefect server the workers will poll: PREFECT_API_URL, else one answering on 127.0.0.1:`port`.
    Never a server started here: the registration would stop answering when this command returns."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value() or f"http://127.0.0.1:{port}/api"
    if not answers(url):
        raise InputError(f"--pool: no Prefect server answers at {url} (workers need one that keeps running: start it "
                         "with `prefect server start --host 0.0.0.0`, and set PREFECT_API_URL to it on every machine)")
    return url


def ensure_pool(name: str, pool_type: str) -> str:
    """The work pool `name`, created with `pool_type`'s default job template when missing; says which.
    The template comes from the worker class installed here, not from `prefect work-pool create`'s
    lookup, which asks Prefect's collection registry on GitHub for the types it does not know."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.base import BaseWorker

    with get_client(sync_client=True) as client:
        try:
            return f"a {client.read_work_pool(name).type} pool, already there"
        except ObjectNotFound:
            pass
        worker = BaseWorker.get_worker_class_from_type(pool_type)
        if worker is None:
            raise InputError(f"--pool-type {pool_type!r}: no worker of that type is installed here (docker: pip "
                             "install prefect-docker; kubernetes: pip install prefect-kubernetes), or create the pool "
                             f"yourself: prefect work-pool create {name} --type {pool_type}")
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type=pool_type,
                                                   base_job_template=worker.get_default_base_job_template()))
        except ObjectAlreadyExists:  # another `reftflow serve --pool` made it meanwhile
            return f"a {client.read_work_pool(name).type} pool, already there"
    return f"a {pool_type} pool, created"


def register_in_pool(args: argparse.Namespace) -> int:
    """--pool: the deployment in a work pool, for Prefect workers to run; nothing is served here."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    worker_dir = args.worker_project_dir or str(Path(args.project_dir).resolve())
    if not Path(worker_dir).is_absolute():
        raise InputError(f"--worker-project-dir {worker_dir!r}: must be an absolute path (the workers' own)")
    variables = job_variables(args.job_variables)
    url = pool_api_url(args.port)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        pool = ensure_pool(args.pool, args.pool_type)
        deployment = build_deployment(args.name, args.cron, args.timezone, worker_dir, variables)
        dep_id = deployment.apply(work_pool_name=args.pool)
    print(f"registered deployment reftflow-pipeline/{args.name} ({dep_id}) on cron {args.cron!r} in work pool "
          f"{args.pool!r} ({pool}), at {url}; its runs use the project at {worker_dir}.\n"
          f"Start a worker on any machine that has the project there and reftflow installed:\n"
          f"  PREFECT_API_URL={url} prefect worker start --pool {args.pool}", flush=True)
    return 0


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
    if not args.pool and (args.worker_project_dir or args.job_variables):
        raise InputError(f"{'--worker-project-dir' if args.worker_project_dir else '--job-variables'} is only for "
                         "--pool (a work pool's runs)")
    check_project(args.project_dir)  # a project that cannot run is refused now, not at 02:00
    if args.pool:
        return register_in_pool(args)
    deployment = build_deployment(args.name, args.cron, args.timezone, Path(args.project_dir).resolve())
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
