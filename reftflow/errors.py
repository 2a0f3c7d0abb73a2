"""The one base class of "the user's input is wrong" errors (a params key, a data line, a grader).

Entry points catch `InputError` alone and turn it into one line and exit code 2; nothing else is a
user error. Each subclass lives beside the code that raises it. Exit codes: `reftflow.exits`.
"""

from reftflow.exits import CRASH, DISK_FULL, TRACKING_DOWN


class InputError(ValueError):
    """A bad input: the message is one line naming the file, key or line and what is wrong."""


class ResourceError(RuntimeError):
    """The machine, not the input: the disk is full or the tracking store is unreachable. The message
    is one line saying what happened and that nothing trained was lost (see docs/reliability.md)."""

    exit_code = CRASH


class TrackingUnavailable(ResourceError):
    """MLflow's store stayed locked or its server down through every retry."""

    exit_code = TRACKING_DOWN  # the flow retries the stage, which resumes its checkpoint


class DiskFull(ResourceError):
    """A write failed for lack of space (ENOSPC, EDQUOT) or over the file size limit (EFBIG)."""

    exit_code = DISK_FULL  # not retried; the previous outputs are intact (writes are atomic)
