"""Starts a backup when the last one is older than ``[backup] interval_minutes``.

It checks once a minute against the wall clock, so a laptop that slept
through a due backup starts it within a minute of waking, and a clock jump
is simply a new "now". A backup that failed is retried after at most ten
minutes, not at every check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .controller import JobController, JobError
from .spec import JobKind
from .state import JobState

__all__ = ["Scheduler", "RETRY_AFTER"]

log = logging.getLogger(__name__)

RETRY_AFTER = 600.0


class Scheduler:
    """Periodic backups for a :class:`JobController`."""

    def __init__(
        self,
        controller: JobController,
        *,
        check_every: float = 60.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.controller = controller
        self.check_every = check_every
        self._now = wall_clock
        self._task: asyncio.Task[None] | None = None
        self.last_success: float | None = None
        self._last_attempt: float | None = None

    def start(self) -> None:
        """Start checking (call on the running loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        """Stop checking."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def due(self) -> bool:
        """Whether a backup should start now."""
        minutes = self.controller.config.backup.interval_minutes
        if minutes <= 0:
            return False
        if self.controller.status().active_jobs:
            return False  # one queue: a running restore delays the backup, it does not skip it
        now = self._now()
        last = self.controller.last_finished(JobKind.BACKUP)  # a restore is no backup
        if last is not None and last.finished is not None:
            if last.state is JobState.COMPLETED:
                self.last_success = max(self.last_success or 0.0, last.finished)
            else:
                self._last_attempt = max(self._last_attempt or 0.0, last.finished)
        if self.last_success is not None and now - self.last_success < minutes * 60:
            return False
        if self._last_attempt is not None and now - self._last_attempt < min(
            RETRY_AFTER, minutes * 60
        ):
            return False
        return True

    async def _run(self) -> None:
        self.last_success = await self.controller.last_snapshot_time()
        while True:
            if self.due():
                try:
                    self._last_attempt = self._now()
                    job_id = self.controller.start_backup(origin="scheduler")
                    log.info("scheduled backup started: job %s", job_id)
                except JobError as exc:
                    log.warning("scheduled backup not started: %s", exc)
            await asyncio.sleep(self.check_every)
