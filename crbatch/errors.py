"""Exit codes and the errors that map onto them.

Batch schedulers act on exit codes, so the codes separate "do not retry, the input is bad" from
"transient, retry". The table is printed by ``crbatch exit-codes`` and documented in the README;
``jobs/*.sh`` maps it onto what each scheduler acts on.
"""

from __future__ import annotations

import errno as _errno
import re
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1  # a crbatch bug: an unexpected exception (retry is harmless, a report is better)
    USAGE = 2  # bad command line (argparse's own code)
    CONFIG = 3  # invalid config file or value
    INPUT_MISSING = 10  # an input file or directory does not exist
    INPUT_CORRUPT = 11  # unreadable, truncated or not the format it claims
    INPUT_SCHEMA = 12  # readable, but the wrong schema (missing tree/branch, other schema version)
    INPUT_EMPTY = 13  # nothing to work on where something is required (e.g. a class with no jets)
    OUTPUT_UNWRITABLE = 14  # the output location is read-only or not writable by this user
    TRAINING_DIVERGED = 15  # a non-finite loss or weight: the run stopped before writing the epoch
    LOCKED = 16  # another live process holds the output's lock (a second trainer on one run directory)
    TRANSIENT = 20  # I/O or resource error that may pass (network storage, disk full): retry
    INTERRUPTED = 21  # stopped by a signal before finishing, nothing written: retry
    CHECKPOINTED = 85  # self-checkpointed on SIGTERM; resubmit to continue (HTCondor checkpoint_exit_code)


DO_NOT_RETRY = frozenset(
    {ExitCode.USAGE, ExitCode.CONFIG, ExitCode.INPUT_MISSING, ExitCode.INPUT_CORRUPT, ExitCode.INPUT_SCHEMA,
     ExitCode.INPUT_EMPTY, ExitCode.OUTPUT_UNWRITABLE, ExitCode.TRAINING_DIVERGED}
)  # fmt: skip

EXIT_CODE_HELP = {
    ExitCode.OK: "success (also: output already complete and skipped; input with no surviving jet)",
    ExitCode.INTERNAL: "unexpected internal error (a bug: please report with the log)",
    ExitCode.USAGE: "bad command line",
    ExitCode.CONFIG: "invalid configuration file or value",
    ExitCode.INPUT_MISSING: "input file missing — do not retry",
    ExitCode.INPUT_CORRUPT: "input unreadable, truncated or corrupt — do not retry",
    ExitCode.INPUT_SCHEMA: "input has the wrong schema (missing tree/branch, other version) — do not retry",
    ExitCode.INPUT_EMPTY: "input has nothing to work on where something is required — do not retry",
    ExitCode.OUTPUT_UNWRITABLE: "output location read-only or not writable — do not retry (fix it or choose another)",
    ExitCode.TRAINING_DIVERGED: "training diverged (non-finite loss or weights); the epoch was not written "
    "— do not retry: lower the learning rate or check the inputs",
    ExitCode.LOCKED: "another process is writing this output (lock held) — retry later (with a delay)",
    ExitCode.TRANSIENT: "transient I/O or resource error (disk full, network storage) — retry",
    ExitCode.INTERRUPTED: "interrupted by a signal before finishing; nothing written — retry",
    ExitCode.CHECKPOINTED: "checkpoint written on SIGTERM — resubmit to continue",
}


class CrbatchError(Exception):
    """An error with a one-line message for the user and the exit code it maps to."""

    code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, code: ExitCode | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class ConfigError(CrbatchError):
    code = ExitCode.CONFIG


class InputMissing(CrbatchError):
    code = ExitCode.INPUT_MISSING


class InputCorrupt(CrbatchError):
    code = ExitCode.INPUT_CORRUPT


class InputSchema(CrbatchError):
    code = ExitCode.INPUT_SCHEMA


class InputEmpty(CrbatchError):
    code = ExitCode.INPUT_EMPTY


class Transient(CrbatchError):
    code = ExitCode.TRANSIENT


class TrainingDiverged(CrbatchError):
    code = ExitCode.TRAINING_DIVERGED


class Locked(CrbatchError):
    code = ExitCode.LOCKED


class OutputUnwritable(CrbatchError):
    code = ExitCode.OUTPUT_UNWRITABLE


# --- Errors while writing: one classifier for every output ---------------------------------------

DISK_FULL_ERRNO = frozenset({_errno.ENOSPC, _errno.EDQUOT, _errno.EFBIG})
UNWRITABLE_ERRNO = frozenset({_errno.EROFS, _errno.EACCES, _errno.EPERM})
IO_ERRNO = frozenset({_errno.EIO, _errno.ETIMEDOUT, _errno.ESTALE, _errno.ECONNRESET, _errno.EAGAIN,
                      _errno.ENETUNREACH, _errno.EHOSTUNREACH})  # fmt: skip
_H5_ERRNO = re.compile(r"errno = (\d+)")


def error_errno(e: BaseException) -> int | None:
    """The errno behind ``e``: ``OSError.errno``, or the one HDF5 puts in its message (h5py raises
    some write failures as RuntimeError with ``errno = 28`` in the text)."""
    n = getattr(e, "errno", None)
    if isinstance(n, int):
        return n
    m = _H5_ERRNO.search(str(e))
    return int(m.group(1)) if m else None


def classify_write_error(target: object, e: BaseException) -> CrbatchError | None:
    """The user-facing error for ``e`` raised while writing ``target``, or None if ``e`` is not a
    write error this classifier knows (the caller re-raises it unchanged).

    Disk full / quota → :class:`Transient` (20, retry: another node or a later attempt may have
    space); read-only or permission denied → :class:`OutputUnwritable` (14, a retry cannot help).
    """
    if isinstance(e, CrbatchError):
        return e
    n = error_errno(e)
    if n is None:
        return None
    what = _errno.errorcode.get(n, str(n))
    if n in DISK_FULL_ERRNO:
        return Transient(f"{target}: no space left on the device or quota exceeded ({what}) while writing; "
                         "nothing was left half-written; free space and retry")  # fmt: skip
    if n in UNWRITABLE_ERRNO:
        how = "read-only file system" if n == _errno.EROFS else "permission denied"
        return OutputUnwritable(f"{target}: cannot write here ({how}, {what}); nothing was written; make the "
                                "location writable or choose another output — a retry cannot help")  # fmt: skip
    if n in IO_ERRNO:
        return Transient(f"{target}: I/O error while writing ({what}); nothing was left half-written; retry")
    return None


def worst(codes: list[ExitCode]) -> ExitCode:
    """The exit code for a run over many files: retry wins over do-not-retry, which wins over OK.

    A run where one file hit a transient error should be retried (completed files are skipped),
    even if another file is bad; a run with only bad inputs should not.
    """
    failed = [c for c in codes if c != ExitCode.OK]
    if not failed:
        return ExitCode.OK
    retry = [c for c in failed if c not in DO_NOT_RETRY]
    return max(retry) if retry else max(failed)
