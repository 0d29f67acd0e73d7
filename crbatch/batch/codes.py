"""What a scheduler sees: crbatch's exit codes mapped by ``jobs/common.sh`` (docs/batch.md).

Schedulers act on one number. HTCondor's DAGMan takes one value in ``RETRY node N UNLESS-EXIT v``,
so every "do not retry" code (bad command line, bad config, missing/corrupt/wrong-schema/empty
input) becomes :data:`DO_NOT_RETRY`; the checkpoint code passes through (HTCondor's
``checkpoint_exit_code``, Slurm requeue); everything else passes through and is retried.
The shell implementation is ``crb_map_exit`` in ``jobs/common.sh``; a test keeps the two equal.
"""

from __future__ import annotations

from ..errors import DO_NOT_RETRY as _CRBATCH_DO_NOT_RETRY
from ..errors import ExitCode

DO_NOT_RETRY = 65
"""The one scheduler exit code meaning "bad input or config: retrying cannot help" (sysexits' EX_DATAERR)."""

CHECKPOINT = int(ExitCode.CHECKPOINTED)
"""Checkpoint written on SIGTERM: restart (HTCondor) or requeue (Slurm) the job to continue."""

KILLED = int(ExitCode.TRANSIENT)
"""crbatch killed by a signal it could not handle (SIGKILL, OOM killer): retry."""


def scheduler_code(rc: int) -> int:
    """The exit code a job script returns for crbatch's exit code ``rc``."""
    if rc in (0, CHECKPOINT):
        return rc
    if rc in {int(c) for c in _CRBATCH_DO_NOT_RETRY}:
        return DO_NOT_RETRY
    if rc > 128:
        return KILLED
    return rc


def retryable(code: int) -> bool:
    """Whether a scheduler should run a job again after it returned ``code`` (a mapped code)."""
    return code not in (0, DO_NOT_RETRY)
