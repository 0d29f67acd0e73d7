"""The local backend (the default): a process pool on this machine running the same ``jobs/*.sh``.

Stages run in order, the tasks of a stage in parallel (``--workers``, at most the stage's
``resources.throttle``). A job that fails with a retryable code is run again up to
``resources.retries`` times; one that checkpointed (85) is run again at once and resumes. A stage
with a failed task stops the pipeline (its dependants would fail too). Ctrl-C or SIGTERM passes
SIGTERM to the running jobs (the training checkpoints) and waits for them. A job whose output is
locked by another live process (exit 16, e.g. the training of an earlier ``submit`` that was killed
with -9 and whose ``crbatch train`` still runs) is not retried: that process is doing the work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from .. import signals
from ..errors import ExitCode, worst
from . import codes
from .plan import SCRIPTS, STAGES, Plan, Task
from .status import collect_status, read_status_file, todo

_KNOWN = {int(c) for c in ExitCode}

log = logging.getLogger(__name__)


def job_environment(plan: Plan, jobs_dir: Path, scheduler: str) -> dict[str, str]:
    """Environment of a job started from this process: how to find crbatch and the entry scripts."""
    env = dict(os.environ)
    exe = Path(sys.executable).with_name("crbatch")
    if exe.exists():
        env["CRBATCH"] = str(exe)
    else:
        env.pop("CRBATCH", None)
        env["CRBATCH_PYTHON"] = sys.executable
    env["CRBATCH_JOBS"] = str(jobs_dir)
    env["CRBATCH_SCHEDULER"] = scheduler
    env.setdefault("CRBATCH_LOCKED_WAIT", "0")  # jobs/common.sh spaces scheduler retries of exit 16; not here
    env.update(plan.pipeline.env)
    return env


class LocalRunner:
    """Runs the tasks of a plan on this machine; :meth:`run` returns the pipeline's exit code."""

    def __init__(self, plan: Plan, plan_dir: Path, jobs_dir: Path, workers: int):
        self.plan, self.plan_dir, self.jobs_dir = plan, plan_dir, jobs_dir
        self.workers = max(1, workers)
        self.env = job_environment(plan, jobs_dir, "local")
        self.stopping = threading.Event()
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def _stage_config(self, stage: str):
        return getattr(self.plan.pipeline, stage)

    def _once(self, task: Task) -> tuple[int, str]:
        cmd = ["bash", str(self.jobs_dir / SCRIPTS[task.stage]), str(self.plan_dir), str(task.index)]
        # A session of its own: Ctrl-C in the terminal reaches this process only, which then sends the
        # jobs SIGTERM (the training checkpoints on SIGTERM; SIGINT would be a second, harder stop).
        proc = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        with self._lock:
            self._procs.add(proc)
        try:
            out, _ = proc.communicate()
        finally:
            with self._lock:
                self._procs.discard(proc)
        return proc.returncode, out.decode(errors="replace")

    def run_task(self, task: Task) -> int:
        """Run one task to its end: retries after retryable failures, reruns after checkpoints."""
        res = self._stage_config(task.stage).resources
        max_requeues = self.plan.pipeline.train.max_requeues
        failures = requeues = 0
        while True:
            t0 = time.monotonic()
            code, out = self._once(task)
            took = time.monotonic() - t0
            if code == 0:
                log.info("%s: done (%.0f s)", task.job, took)
                return 0
            if self.stopping.is_set():
                return code
            if code == ExitCode.LOCKED:
                for line in out.strip().splitlines()[-3:]:
                    log.warning("  %s", line)
                log.error("%s: its output is locked by another live process (above); not started twice", task.job)
                return code
            if code == codes.CHECKPOINT and requeues < max_requeues:
                requeues += 1
                log.warning("%s: checkpointed; resuming (%d)", task.job, requeues)
                continue
            for line in out.strip().splitlines()[-12:]:
                log.warning("  %s", line)
            if code < 0:  # the job script itself was killed by a signal
                code = codes.KILLED
            if codes.retryable(code) and failures < res.retries:
                failures += 1
                log.warning("%s: failed with exit %d; retry %d/%d", task.job, code, failures, res.retries)
                continue
            log.error("%s: failed with exit %d%s", task.job, code,
                      " (do not retry: fix the input or config)" if code == codes.DO_NOT_RETRY else "")  # fmt: skip
            return code

    def _terminate(self) -> None:
        self.stopping.set()
        with self._lock:
            procs = list(self._procs)
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)  # the job script passes it on to crbatch

    def run_stage(self, stage: str, tasks: list[Task]) -> int:
        res = self._stage_config(stage).resources
        n = min(self.workers, res.throttle or self.workers, len(tasks))
        log.info("%s: %d job(s), %d at a time", stage, len(tasks), n)
        failed: list[Task] = []
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix=f"crbatch-{stage}") as pool:
            futures = {pool.submit(self.run_task, t): t for t in tasks}
            pending: set[Future] = set(futures)
            try:
                while pending:
                    finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                    failed += [futures[f] for f in finished if f.result() != 0]
            except BaseException:  # Ctrl-C, SIGTERM (SystemExit from crbatch.cli): stop the jobs cleanly
                log.warning("stopping: sending SIGTERM to the running jobs")
                self._terminate()
                for f in pending:
                    f.cancel()
                wait(pending)
                raise
        if not failed:
            return 0
        # The pipeline's exit code is crbatch's (`crbatch exit-codes`), not the scheduler's: take the
        # codes the jobs recorded, the one that says most about retrying first.
        recorded = []
        for task in failed:
            st = read_status_file(self.plan.layout.status_file(task.job)) or {}
            exit_ = st.get("exit", "")
            recorded.append(ExitCode(int(exit_)) if exit_.isdigit() and int(exit_) in _KNOWN else ExitCode.TRANSIENT)
        return int(worst(recorded))

    def run(self) -> int:
        signals.set_deadline(None)  # on SIGTERM it waits for its jobs' checkpoints on purpose
        states = collect_status(self.plan)
        work = todo(self.plan, states)
        for stage in (s for s in STAGES if self.plan.stage(s)):
            tasks = work[stage]
            if not tasks:
                log.info("%s: all %d job(s) done already", stage, len(self.plan.stage(stage)))
                continue
            try:
                rc = self.run_stage(stage, tasks)
            except KeyboardInterrupt:
                return int(ExitCode.INTERRUPTED)
            if rc:
                log.error("%s failed: the stages after it were not run (crbatch status shows why)", stage)
                self.report()
                return rc
        self.report()
        return 0

    def report(self) -> None:
        """The pipeline's status report (the FINAL node of the other backends)."""
        task = self.plan.stage("report")[0]
        code, out = self._once(task)
        if code not in (0, codes.KILLED):
            log.warning("status report: exit %d\n%s", code, out)


def run_local(plan: Plan, plan_dir: Path, jobs_dir: Path, workers: int) -> int:
    return LocalRunner(plan, plan_dir, jobs_dir, workers).run()
