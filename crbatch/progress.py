"""Progress for long work: a bar on a terminal, periodic log lines in batch jobs."""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("crbatch.progress")

# Seconds between log lines when not on a terminal (batch logs should not be flooded).
LOG_INTERVAL = float(os.environ.get("CRBATCH_PROGRESS_INTERVAL", "30"))


class Progress:
    def __init__(self, total: int | None, description: str, unit: str = "items"):
        self.total, self.description, self.unit = total, description, unit
        self.done = 0
        self.t0 = self._last = time.monotonic()
        self._bar = None
        if sys.stderr.isatty() and os.environ.get("CRBATCH_NO_BAR") is None:
            from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                transient=True,
            )  # fmt: skip
            self._bar.start()
            self._task = self._bar.add_task(description, total=total)

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n)
            return
        now = time.monotonic()
        if now - self._last >= LOG_INTERVAL:
            self._last = now
            rate = self.done / max(now - self.t0, 1e-9)
            of = f"/{self.total}" if self.total else ""
            log.info("%s: %d%s %s (%.0f %s/s)", self.description, self.done, of, self.unit, rate, self.unit)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
