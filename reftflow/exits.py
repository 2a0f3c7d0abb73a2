"""The one table of reftflow's exit codes, read by the stages, the flow and every subcommand; and the
rule every subcommand follows for a bad input: one line naming what is wrong, exit 2, no traceback.

Where sysexits.h has a code for the case, it is that one (a scheduler or a shell script can tell
"try again later" from "fix your input").
"""

from __future__ import annotations

import functools
import sys
from typing import Callable

OK = 0
CRASH = 1
"""a bug, or a failure with no code of its own: the traceback is kept for whoever fixes it."""
BAD_INPUT = 2
"""the user's input is wrong (a params key, a data line, a grader, a command-line argument): never retried."""
DIVERGED = 3
"""RL training diverged (a NaN/inf reward, loss or gradient): nothing was saved or promoted."""
TRACKING_DOWN = 69
"""EX_UNAVAILABLE: MLflow's store stayed locked or its server down through every retry; the flow retries
the stage, which resumes from its checkpoint."""
DISK_FULL = 74
"""EX_IOERR: a write failed for lack of space; the previous outputs are intact (every write is atomic)."""
BUSY = 75
"""EX_TEMPFAIL: another run of this project is active; nothing is wrong with the input: try again later."""
INTERRUPTED = 130
"""someone stopped it on purpose (Ctrl-C): not retried."""

NOT_RETRIED = (BAD_INPUT, DISK_FULL, INTERRUPTED)
"""exits after which retrying the same stage cannot help."""


def one_line_errors(command: str, internal: bool = False) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """A subcommand's handler with the bad-input rule: `reftflow.errors.InputError` becomes
    `reftflow <command>: error: <message>` on stderr and exit 2; a `ResourceError` (disk full, tracking
    down) its own line and code; Ctrl-C one line and 130. `internal`: any other error is one line too
    (exit 1), for commands whose contract is never a traceback (`grade`, `data check`, run on user files).
    The handler returns its exit code."""
    from reftflow.errors import InputError, ResourceError

    def wrap(handler: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(handler)
        def wrapped(*args, **kwargs) -> int:
            try:
                return handler(*args, **kwargs)
            except InputError as e:
                return fail(f"reftflow {command}: error: {e}", BAD_INPUT)
            except ResourceError as e:
                return fail(f"reftflow {command}: error: {e}", e.exit_code)
            except KeyboardInterrupt:
                return fail(f"reftflow {command}: interrupted", INTERRUPTED)
            except Exception as e:  # noqa: BLE001 - only where the command's contract is one line
                if not internal:
                    raise
                return fail(f"reftflow {command}: error: internal error: {type(e).__name__}: "
                            f"{' '.join(str(e).split())}", CRASH)

        return wrapped

    return wrap


def fail(line: str, code: int) -> int:
    """Print `line` on stderr and return `code` (for a handler's `return`)."""
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
    return code
