"""What every stage entry point shares: privacy env, `--help`, params parsing, one-line errors.

DVC runs `python -m tasks.<stage>` and so does the Prefect flow (through `dvc repro`), so this is
the single place where a bad input becomes one clear line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from reftflow.config import ConfigError, Params, load_params
from reftflow.env import apply_defaults

EXIT_BAD_INPUT = 2


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the user's input is wrong" (one line, exit 2)."""
    from reftflow.data.records import DataError

    errors: list[type[BaseException]] = [ConfigError, DataError]
    try:
        from reftflow.graders import GraderConfigError

        errors.append(GraderConfigError)
    except ImportError:  # graders not importable: nothing to catch from them
        pass
    return tuple(errors)


def main(stage: str, description: str, run: Callable[[Params, argparse.Namespace], None]) -> None:
    apply_defaults()
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{stage}", description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    args = parser.parse_args()
    try:
        params = load_params(args.params)
        run(params, args)
    except user_errors() as e:
        print(f"reftflow {stage}: error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print(f"reftflow {stage}: interrupted", file=sys.stderr)
        sys.exit(130)
