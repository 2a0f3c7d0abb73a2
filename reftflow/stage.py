"""What every stage entry point shares: privacy env, `--help`, params parsing, one-line errors,
and the report that tells the Prefect flow how the stage ended.

DVC runs `python -m tasks.<stage>` and so does the Prefect flow (through `dvc repro`), so this is
the single place where a bad input becomes one clear line and a non-zero exit, never a traceback.

DVC turns any failing command into its own exit 255 and its own error line, so the flow cannot
tell a bad input (never worth retrying) from a crash by DVC's exit code or output. When
REFTFLOW_STAGE_REPORT names a file, the stage writes {"stage", "exit_code", "message"} there as
it ends; a missing file after `dvc repro` means DVC found the stage up to date and skipped it.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from reftflow.config import Params, load_params
from reftflow.env import apply_defaults
from reftflow import exits
from reftflow.errors import DiskFull, InputError, ResourceError

REPORT_ENV = "REFTFLOW_STAGE_REPORT"


@dataclass(frozen=True)
class StageReport:
    stage: str
    exit_code: int
    message: str = ""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the user's input is wrong" (one line, exit 2)."""
    return (InputError,)


def read_report(path: str | Path) -> StageReport | None:
    """The report a stage left at `path`, or None when it never ran (or died before it could write)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return StageReport(str(data.get("stage", "")), int(data.get("exit_code", exits.CRASH)), str(data.get("message", "")))


def _write_report(report: StageReport) -> None:
    """Write the report if the flow asked for one (atomically: the flow never reads half a file)."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    from reftflow.distributed import is_main_process
    from reftflow.io import write_json

    # under torchrun every rank runs main(); rank 0 speaks for the group (it is the one that writes outputs)
    if not is_main_process():
        return

    write_json(path, asdict(report))


def _exit_status(exc: SystemExit) -> tuple[int, str]:
    """What Python's exit status will be for this SystemExit, and its message if it carries one."""
    if exc.code is None:
        return 0, ""
    if isinstance(exc.code, int):
        return exc.code, ""
    return exits.CRASH, str(exc.code)  # sys.exit("text") prints the text and exits 1


def _report_exit(stage: str, exc: SystemExit) -> None:
    code, message = _exit_status(exc)
    if code:
        # a stage that relaunches itself (rl under torchrun) exits with the launcher's code; a
        # failure its rank 0 already reported says more than that code does, so keep it
        path = os.environ.get(REPORT_ENV)
        earlier = read_report(path) if path else None
        if earlier is not None and earlier.exit_code:
            return
    _write_report(StageReport(stage, code, message))


_NO_SPACE = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
             errno.EFBIG: "a write failed on the file size limit or a full disk"}


_NO_SPACE_TEXT = {errno.ENOSPC: re.compile(r"no space left|os error 28|ENOSPC", re.I),
                  errno.EDQUOT: re.compile(r"quota exceeded|os error 122", re.I),
                  errno.EFBIG: re.compile(r"file too large|FileTooLarge|os error 27|file write failed", re.I)}


def as_resource_error(e: BaseException) -> ResourceError | None:
    """A full disk (however deep the library that hit it wrapped it) as one DiskFull line; a tracking
    failure as itself; None for anything else."""
    if isinstance(e, ResourceError):
        return e
    seen: BaseException | None = e
    while seen is not None:
        # torch and safetensors report a failed write as RuntimeError text, not an OSError
        code = seen.errno if isinstance(seen, OSError) else next(
            (c for c, pattern in _NO_SPACE_TEXT.items() if pattern.search(str(seen))), None)
        if code in _NO_SPACE:
            name = getattr(seen, "filename", None)
            where = f" writing {name}" if name else ""
            return DiskFull(f"{_NO_SPACE[code]}{where}: the previous outputs are intact (every output is "
                            "written to a temp path and renamed); free space and run again")
        seen = seen.__cause__ or seen.__context__
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def main(stage: str, description: str, run: Callable[[Params, argparse.Namespace], None]) -> None:
    apply_defaults()
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{stage}", description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    args = parser.parse_args()
    try:
        params = load_params(args.params)
        run(params, args)
    except user_errors() as e:
        _write_report(StageReport(stage, exits.BAD_INPUT, str(e)))
        print(f"reftflow {stage}: error: {e}", file=sys.stderr)
        sys.exit(exits.BAD_INPUT)
    except KeyboardInterrupt:
        _write_report(StageReport(stage, exits.INTERRUPTED, "interrupted"))
        print(f"reftflow {stage}: interrupted", file=sys.stderr)
        sys.exit(exits.INTERRUPTED)
    except SystemExit as e:  # the stage chose its own exit (rl: exits.DIVERGED, after its error line)
        _report_exit(stage, e)
        raise
    except BaseException as e:
        resource = as_resource_error(e)
        if resource is not None:  # the machine, not the code: one line, no traceback
            _write_report(StageReport(stage, resource.exit_code, str(resource)))
            print(f"reftflow {stage}: error: {resource}", file=sys.stderr)
            sys.exit(resource.exit_code)
        # a bug: report it in one line, and keep the traceback for whoever fixes it
        _write_report(StageReport(stage, exits.CRASH, _one_line(e)))
        raise
    _write_report(StageReport(stage, 0))
