"""`reftflow` command line: one entry, subcommands registered by the modules that own them.

It lives in the app layer because `run` starts the Prefect flow: the `reftflow` library never
imports `flows`.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reftflow", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    from reftflow import eval_cli, predict, project, rerun, status, tracking_server
    from reftflow.data import check as data_check
    from reftflow.graders import cli as grade_cli

    project.add_parser(sub)
    grade_cli.add_parser(sub)
    data_check.add_parser(sub)
    rerun.add_parser(sub)
    status.add_parser(sub)
    predict.add_parser(sub)
    eval_cli.add_parser(sub)
    tracking_server.add_parser(sub)
    run = sub.add_parser("run", help="run the pipeline (the Prefect flow) in a project directory",
                         description="Same as `python -m flows.pipeline`: prepare → base → sft → rl → evaluate → gate.")
    run.add_argument("--project-dir", default=".", help="DVC project root holding params.yaml (default: .)")
    run.set_defaults(func=_run_pipeline)
    from flows import deploy

    serve = sub.add_parser("serve", help="serve the pipeline as a Prefect deployment on a cron (default nightly)",
                           description=deploy.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    deploy.add_arguments(serve).set_defaults(func=deploy.run)
    return parser


def _run_pipeline(args: argparse.Namespace) -> int:
    from reftflow import exits
    from reftflow.errors import InputError
    from reftflow.project import check_project

    try:  # a bad params.yaml costs one line before Prefect (1.5 s to import) is even loaded
        check_project(args.project_dir)
    except InputError as e:
        return exits.fail(f"reftflow: error: {e}", exits.BAD_INPUT)
    from flows.pipeline import main as pipeline_main  # imports Prefect: only for `run`

    return pipeline_main(["--project-dir", args.project_dir])


def main(argv: list[str] | None = None) -> int:
    # environment defaults: applied when the `flows` package was imported, before Prefect was
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
