"""What the tray shows, as plain state (no Qt): fed by bus events, read by views.

One :class:`TrayModel` turns the agent's events into the things a user sees
at a glance: which icon (idle, running, paused, warning, error), the
progress, the tooltip in words, "Last backup: 5 minutes ago". The icon and
its commands are about backups; a restore job (from the restore window or
a backup server) is shown beside them, in words. Views read it when they
draw; nothing here decides anything about jobs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from desktop_agent.jobs import BusEvent, JobChanged, JobKind, JobState
from desktop_agent.protocol import (
    CANCELLED,
    BackupCompleted,
    BackupFailed,
    BackupPaused,
    BackupProgress,
    BackupResumed,
    BackupStarted,
    RestoreCompleted,
    RestoreFailed,
    RestorePaused,
    RestoreProgress,
    RestoreResumed,
    RestoreStarted,
)
from desktop_agent.termtext import human_bytes

__all__ = ["TrayModel", "Kind", "ago", "eta_words"]

Kind = str  # "idle" | "running" | "paused" | "warning" | "error"


def ago(seconds: float) -> str:
    """``300`` -> ``"5 minutes ago"``."""
    s = max(0, int(seconds))
    if s < 60:
        return "just now"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= size:
            n = s // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def eta_words(seconds: int) -> str:
    """``130`` -> ``"3 min left"`` (rounded up), ``0`` -> ``""``."""
    if seconds <= 0:
        return ""
    if seconds < 60:
        return "less than a minute left"
    minutes = (seconds + 59) // 60
    if minutes < 90:
        return f"{minutes} min left"
    return f"{(minutes + 30) // 60} h left"


@dataclass
class _Last:
    finished: float  # wall clock
    ok: bool
    error: str | None = None
    total_bytes: int = 0
    duration: float = 0.0
    skipped: int = 0


@dataclass
class _Restore:
    state: JobState
    progress: RestoreProgress | None = None
    target: str = ""


class TrayModel:
    """Aggregated agent state for the tray icon, tooltip, menu and windows."""

    def __init__(
        self, *, wall_clock: Callable[[], float] = time.time, stale_after: float = 2 * 86400
    ) -> None:
        self._now = wall_clock
        self.stale_after = stale_after  # a warning when the last backup is older
        self.job_id: str | None = None
        self.state: JobState | None = None
        self.queued = 0
        self.progress: BackupProgress | None = None
        self.started_at: float | None = None
        self.last_success: float | None = None
        self.last: _Last | None = None
        self.restores: dict[str, _Restore] = {}  # restore jobs not ended, oldest first

    # ------------------------------------------------------------- events
    def apply(self, event: BusEvent) -> None:
        """Update from one bus event."""
        if isinstance(event, JobChanged) and event.kind is not JobKind.BACKUP:
            self._apply_restore(event)
        elif isinstance(
            event,
            RestoreStarted
            | RestoreProgress
            | RestorePaused
            | RestoreResumed
            | RestoreCompleted
            | RestoreFailed,
        ):
            self._apply_restore(event)
        elif isinstance(event, JobChanged):
            if event.new is JobState.QUEUED:
                self.queued += 1
            elif event.new is JobState.RUNNING:
                if event.old is JobState.QUEUED:
                    self.queued = max(0, self.queued - 1)
                    self.job_id = event.job_id
                    self.progress = None
                    self.started_at = self._now()
                self.state = JobState.RUNNING
            elif event.job_id == self.job_id:
                self.state = event.new
            elif event.new is JobState.CANCELLED and event.old is JobState.QUEUED:
                self.queued = max(0, self.queued - 1)
        elif isinstance(event, BackupProgress):
            if event.job_id == self.job_id:
                self.progress = event
        elif isinstance(event, BackupPaused):
            if event.job_id == self.job_id:
                self.state = JobState.PAUSED
        elif isinstance(event, BackupResumed):
            if event.job_id == self.job_id:
                self.state = JobState.RUNNING
        elif isinstance(event, BackupCompleted):
            if event.job_id == self.job_id:
                now = self._now()
                self.last = _Last(
                    now, True, None, event.total_bytes, now - (self.started_at or now)
                )
                self.last_success = now
                self._end()
        elif isinstance(event, BackupFailed):
            if event.job_id == self.job_id:
                now = self._now()
                if event.error != CANCELLED:
                    self.last = _Last(now, False, event.error, 0, now - (self.started_at or now))
                self._end()
        elif isinstance(event, BackupStarted):
            pass

    def _end(self) -> None:
        self.job_id = None
        self.state = None
        self.progress = None
        self.started_at = None

    def _apply_restore(self, event: BusEvent) -> None:
        if isinstance(event, RestoreStarted):
            self.restores[event.job_id] = _Restore(JobState.QUEUED, None, event.target)
            return
        restore = self.restores.get(str(getattr(event, "job_id", "")))
        if restore is None:
            return
        if isinstance(event, JobChanged):
            if event.new in (JobState.RUNNING, JobState.PAUSED):
                restore.state = event.new
        elif isinstance(event, RestoreProgress):
            restore.progress = event
        elif isinstance(event, RestorePaused):
            restore.state = JobState.PAUSED
        elif isinstance(event, RestoreResumed):
            restore.state = JobState.RUNNING
        elif isinstance(event, RestoreCompleted | RestoreFailed):
            del self.restores[event.job_id]

    @property
    def restore(self) -> _Restore | None:
        """The restore to show: the one running (or paused), else the first waiting."""
        for restore in self.restores.values():
            if restore.state is not JobState.QUEUED:
                return restore
        return next(iter(self.restores.values()), None)

    def note_skipped(self, count: int) -> None:
        """The last completed backup left ``count`` unreadable files out."""
        if self.last is not None:
            self.last.skipped = count

    # -------------------------------------------------------------- views
    @property
    def active(self) -> bool:
        """A job is running or paused."""
        return self.state in (JobState.RUNNING, JobState.PAUSED)

    @property
    def percent(self) -> float:
        """Progress of the current job, 0-100."""
        return self.progress.percent if self.progress is not None else 0.0

    def kind(self) -> Kind:
        """Which icon: running, paused, error, warning or idle."""
        if self.state is JobState.RUNNING:
            return "running"
        if self.state is JobState.PAUSED:
            return "paused"
        if self.last is not None and not self.last.ok:
            return "error"
        if self.warning() is not None:
            return "warning"
        return "idle"

    def warning(self) -> str | None:
        """Why the backups need attention, if they do (not counting failures)."""
        if self.last_success is None:
            return "no backup yet"
        age = self._now() - self.last_success
        if age > self.stale_after:
            return f"the last backup is {ago(age).removesuffix(' ago')} old"
        if self.last is not None and self.last.ok and self.last.skipped:
            n = self.last.skipped
            return f"the last backup skipped {n} unreadable file{'s' if n != 1 else ''}"
        return None

    def last_backup_line(self) -> str:
        """``"Last backup: 5 minutes ago"``."""
        if self.last_success is None:
            return "Last backup: never"
        return f"Last backup: {ago(self._now() - self.last_success)}"

    def status_line(self) -> str:
        """The state in words, for the tooltip and the menu's first line."""
        if self.state is JobState.RUNNING:
            p = self.progress
            if p is None:
                return "Backing up: starting"
            left = eta_words(p.eta_seconds)
            return f"Backing up: {int(p.percent)}%" + (f" - {left}" if left else "")
        if self.state is JobState.PAUSED:
            return f"Paused at {int(self.percent)}%"
        if self.last is not None and not self.last.ok:
            return f"Backup failed: {self.last.error}"
        warning = self.warning()
        if warning is not None:
            return f"Needs attention: {warning}"
        return "Backups are up to date"

    def restore_line(self) -> str | None:
        """The restore job in words (``"Restoring files: 40%"``), or None when there is none."""
        restore = self.restore
        if restore is None:
            return None
        percent = int(restore.progress.percent) if restore.progress else 0
        if restore.state is JobState.QUEUED:
            return "Restore waiting for the running job to finish"
        if restore.state is JobState.PAUSED:
            return f"Restore paused at {percent}%"
        return f"Restoring files: {percent}%"

    def tooltip(self) -> str:
        """Tooltip text: the state, the last backup, a restore under way."""
        lines = ["desktop-agent", self.status_line()]
        if self.state is None:
            lines.append(self.last_backup_line())
        if self.queued:
            lines.append(f"{self.queued} more backup{'s' if self.queued != 1 else ''} waiting")
        restore = self.restore_line()
        if restore is not None:
            lines.append(restore)
        return "\n".join(lines)

    def completion_message(self) -> str:
        """Notification text for a finished backup (the title says which)."""
        last = self.last
        if last is None:
            return ""
        if not last.ok:
            return str(last.error)
        took = int(last.duration)
        return f"{human_bytes(last.total_bytes)} backed up in {took // 60} min {took % 60} s"
