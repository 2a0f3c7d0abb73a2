"""`reftflow` command line: one entry, subcommands registered by the modules that own them."""

from __future__ import annotations

import argparse
import sys

from reftflow.env import apply_defaults


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reftflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from reftflow.graders import cli as grade_cli

    grade_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_defaults()
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
