"""Run the pipeline on a schedule as a Prefect deployment with a cron.

    reftflow serve                                # serve 'reftflow-pipeline/nightly' at 02:00 every day
    reftflow serve --cron "0 */6 * * *"           # every six hours
    reftflow serve --apply-only                   # only register it (run it with a worker on a work pool)
    python -m flows.deploy ...                    # the same

Serving blocks and runs each scheduled flow run (or one started from the UI or with
`prefect deployment run reftflow-pipeline/nightly`) from this process; Prefect pauses the
deployment when it is stopped (serve's pause_on_shutdown). Point PREFECT_API_URL at a running
`prefect server start` (`make prefect-ui`) to see the schedule and the runs in the Prefect UI.

Runs never overlap: the deployment has a concurrency limit of 1, so a run due while another is
active waits for its slot, and the flow itself holds the project's run lock (reftflow/run_lock.py),
so a `reftflow run` started by hand meanwhile is refused with one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
        description="reftflow: prepare → base → sft → ppo → evaluate → gate (DVC skips what is up to date)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--name", default="nightly", help="deployment name (default: %(default)s)")
    parser.add_argument("--cron", default="0 2 * * *", help="cron schedule (default: %(default)r)")
    parser.add_argument("--timezone", default="UTC", help="timezone of the cron (default: %(default)s)")
    parser.add_argument("--project-dir", default=".", help="project root the runs use (default: .)")
    parser.add_argument("--apply-only", action="store_true", help="register the deployment and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    # environment defaults: applied when the `flows` package was imported, before Prefect was
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return run(add_arguments(parser).parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Register the deployment, then serve it (unless --apply-only)."""
    from flows.pipeline import check_project
    from reftflow.stage import user_errors

    try:
        from prefect.schedules import Cron

        Cron(args.cron, timezone=args.timezone)
    except Exception as e:  # noqa: BLE001 - croniter/pydantic raise several types; one line for the user
        print(f"reftflow serve: error: --cron {args.cron!r}: {e}".splitlines()[0], file=sys.stderr)
        return 2
    try:
        check_project(args.project_dir)  # a project that cannot run is refused now, not at 02:00
    except user_errors() as e:
        print(f"reftflow serve: error: {e}", file=sys.stderr)
        return 2
    deployment = build_deployment(args.name, args.cron, args.timezone, args.project_dir)
    if args.apply_only:
        dep_id = deployment.apply()
        print(f"registered deployment reftflow-pipeline/{args.name} ({dep_id}) on cron {args.cron!r}")
        return 0
    from prefect import serve

    serve(deployment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
