"""What the tray shows, as plain state (no Qt): fed by bus events, read by views.

One :class:`TrayModel` turns the agent's events into the things a user sees
at a glance: which icon (idle, running, paused, warning, error), the
progress, the tooltip in words, "Last backup: 5 minutes ago". The icon and
its commands are about backups; a restore job (from the restore window or
a backup server) is shown beside them, in words, and so is repository
upkeep (forget + prune, a check). The scheduler's
:class:`~desktop_agent.jobs.schedule.ScheduleStatus` (``ScheduleChanged``)
says why no backup runs: paused, skipped on battery, the next one at
14:05, failing, stale (see docs/architecture.md). The dial-out connection
to the backup server (``[server] url``, docs/protocol.md) has a line of its
own: connected, connecting, not reachable, refused. Views read it when they
draw; nothing here decides anything about jobs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from desktop_agent.jobs import BusEvent, JobChanged, JobKind, JobState
from desktop_agent.jobs.bus import ScheduleChanged
from desktop_agent.jobs.schedule import ScheduleStatus, Verdict
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
    UpkeepCompleted,
    UpkeepFailed,
    UpkeepPaused,
    UpkeepProgress,
    UpkeepResumed,
    UpkeepStarted,
)
from desktop_agent.termtext import human_bytes

__all__ = [
    "TrayModel",
    "Kind",
    "ago",
    "clock",
    "eta_words",
    "next_midnight",
    "server_state_words",
]

UPKEEP_WORDS = {"check": "Checking the repository", "forget": "Cleaning up old backups"}

Kind = str  # "idle" | "running" | "paused" | "warning" | "error"


def server_state_words(state: str, error: str | None) -> str:
    """The dial-out state for the settings window: ``Connected``, ``Connecting…``,
    ``Refused: <why>``, ``Unreachable: <why>`` or ``Off``."""
    if state == "connected":
        return "Connected"
    if state == "connecting":
        return "Connecting…"
    if state == "refused":
        return f"Refused: {error}" if error else "Refused"
    if state == "unreachable":
        return f"Unreachable: {error}" if error else "Unreachable"
    return "Off"


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


def clock(ts: float, now: float) -> str:
    """A time as read on a clock: ``14:05`` today, ``tomorrow 14:05``, else ``Tue 14:05``."""
    when = datetime.fromtimestamp(ts)
    today = datetime.fromtimestamp(now).date()
    if when.date() == today:
        return when.strftime("%H:%M")
    if when.date() == today + timedelta(days=1):
        return when.strftime("tomorrow %H:%M")
    return when.strftime("%a %H:%M")


def next_midnight(now: float) -> float:
    """The next 00:00 local time after ``now`` (the start of tomorrow)."""
    tomorrow = datetime.fromtimestamp(now).date() + timedelta(days=1)
    return datetime(tomorrow.year, tomorrow.month, tomorrow.day).timestamp()


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


@dataclass
class _Upkeep:
    task: str  # "forget" (then prune) or "check"
    state: JobState = JobState.QUEUED
    progress: UpkeepProgress | None = None


class TrayModel:
    """Aggregated agent state for the tray icon, tooltip, menu and windows."""

    def __init__(
        self, *, wall_clock: Callable[[], float] = time.time, stale_after: float = 3 * 86400
    ) -> None:
        self._now = wall_clock
        # a warning when the last backup is older (0: never); the scheduler's
        # status decides instead once there is one
        self.stale_after = stale_after
        self.job_id: str | None = None
        self.state: JobState | None = None
        self.queued = 0
        self.progress: BackupProgress | None = None
        self.started_at: float | None = None
        self.last_success: float | None = None
        self.last: _Last | None = None
        self.restores: dict[str, _Restore] = {}  # restore jobs not ended, oldest first
        self.upkeeps: dict[str, _Upkeep] = {}  # upkeep jobs not ended, oldest first
        self.schedule: ScheduleStatus | None = None  # None: no scheduler (or not heard yet)
        # the backup server dialled out to: [server] url ("" = off), the connection's
        # state ("off", "connecting", "connected", "refused", "unreachable") and why
        self.server_url = ""
        self.server_state = "off"
        self.server_error: str | None = None

    # ------------------------------------------------------------- events
    def apply(self, event: BusEvent) -> None:
        """Update from one bus event."""
        if isinstance(event, ScheduleChanged):
            self.apply_schedule(event.status)
        elif isinstance(event, JobChanged) and event.kind is JobKind.UPKEEP:
            self._apply_upkeep(event)
        elif isinstance(
            event,
            UpkeepStarted
            | UpkeepProgress
            | UpkeepPaused
            | UpkeepResumed
            | UpkeepCompleted
            | UpkeepFailed,
        ):
            self._apply_upkeep(event)
        elif isinstance(event, JobChanged) and event.kind is not JobKind.BACKUP:
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
                # a job that ended cancelled was stopped (by hand, or at the
                # maximum runtime), not failed: the next backup continues it
                if event.error != CANCELLED and self.state is not JobState.CANCELLED:
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

    def apply_schedule(self, status: ScheduleStatus) -> None:
        """What the scheduler decided and holds now."""
        self.schedule = status
        if status.last_success is not None and (self.last_success or 0.0) < status.last_success:
            self.last_success = status.last_success

    def _apply_upkeep(self, event: BusEvent) -> None:
        if isinstance(event, UpkeepStarted):
            self.upkeeps[event.job_id] = _Upkeep(event.task)
            return
        upkeep = self.upkeeps.get(str(getattr(event, "job_id", "")))
        if upkeep is None:
            return
        if isinstance(event, JobChanged):
            if event.new in (JobState.RUNNING, JobState.PAUSED):
                upkeep.state = event.new
            elif event.new in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED):
                del self.upkeeps[event.job_id]
        elif isinstance(event, UpkeepProgress):
            upkeep.progress = event
        elif isinstance(event, UpkeepPaused):
            upkeep.state = JobState.PAUSED
        elif isinstance(event, UpkeepResumed):
            upkeep.state = JobState.RUNNING
        elif isinstance(event, UpkeepCompleted | UpkeepFailed):
            self.upkeeps.pop(event.job_id, None)

    @property
    def upkeep(self) -> _Upkeep | None:
        """The upkeep job running (or paused) now, if any."""
        for upkeep in self.upkeeps.values():
            if upkeep.state is not JobState.QUEUED:
                return upkeep
        return None

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
        if self.failure() is not None:
            return "error"
        if self.warning() is not None:
            return "warning"
        return "idle"

    def failure(self) -> str | None:
        """Why the last backup failed, if it did: the last one seen here, else
        the scheduler's count of scheduled attempts that failed in a row."""
        if self.last is not None:
            return None if self.last.ok else self.last.error
        s = self.schedule
        if s is not None and s.failures > 0:
            return s.last_error or "see the log for details"
        return None

    def stale(self) -> bool:
        """Whether the last successful backup is too old (the scheduler's
        ``stale_after_days``; without a scheduler, :attr:`stale_after`)."""
        s = self.schedule
        if s is not None and (s.last_success or 0.0) >= (self.last_success or 0.0):
            return s.stale
        # no scheduler, or a backup succeeded since it last said: by the age here
        if self.last_success is None or self.stale_after <= 0:
            return False
        return self._now() - self.last_success > self.stale_after

    def warning(self) -> str | None:
        """Why the backups need attention, if they do (not counting failures)."""
        if self.last_success is None:
            return "no backup yet"
        if self.stale():
            age = self._now() - self.last_success
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

    @property
    def schedule_paused(self) -> bool:
        """Whether the user paused scheduled backups (for a while or until resumed)."""
        return self.schedule is not None and self.schedule.paused

    def pause_line(self) -> str | None:
        """``"Backups paused until 15:00"`` (or ``until you resume``); None when not paused."""
        s = self.schedule
        if s is None or not s.paused:
            return None
        if s.paused_forever or s.paused_until is None:
            return "Backups paused until you resume"
        return f"Backups paused until {clock(s.paused_until, self._now())}"

    def _held(self) -> str | None:
        return self.schedule.held if self.schedule is not None else None

    def _skip_reason(self) -> str | None:
        """Why the due backup is skipped, less a pause (:meth:`pause_line` says that)."""
        s = self.schedule
        if s is None or s.verdict is not Verdict.SKIP:
            return None
        parts = [p for p in s.reason.split("; ") if p and not (s.paused and p.startswith("paused"))]
        return "; ".join(parts) or None

    def status_line(self) -> str:
        """The state in words, for the tooltip and the menu's first line."""
        if self.state is JobState.RUNNING:
            p = self.progress
            if p is None:
                return "Backing up: starting"
            left = eta_words(p.eta_seconds)
            return f"Backing up: {int(p.percent)}%" + (f" - {left}" if left else "")
        if self.state is JobState.PAUSED:
            held = self._held()
            return f"Backup paused: {held}" if held else f"Paused at {int(self.percent)}%"
        upkeep = self.upkeep_line()
        if upkeep is not None:
            return upkeep
        paused = self.pause_line()
        if paused is not None:
            return paused
        failure = self.failure()
        if failure is not None:
            return f"Last backup failed: {failure}"
        skip = self._skip_reason()
        if skip is not None:
            return f"Backup skipped: {skip}"
        warning = self.warning()
        if warning is not None:
            return f"Needs attention: {warning}"
        return "Backups are up to date"

    def schedule_line(self) -> str | None:
        """The schedule in words, unless :meth:`status_line` says it already:
        ``"Next backup at 14:05"``, ``"Retrying at 14:05"``, ``"Backup skipped:
        on battery"``, a pause, or why the scheduler waits. None without a scheduler.
        """
        s = self.schedule
        if s is None:
            return None
        status = self.status_line()
        for line in self._schedule_lines(s):
            if line != status:
                return line
        return None

    def _schedule_lines(self, s: ScheduleStatus) -> list[str]:
        lines: list[str] = []
        paused = self.pause_line()
        if paused is not None:
            lines.append(paused)
        if self.active or self.upkeep is not None:
            return lines  # while a job runs, only the pause the user asked for matters
        skip = self._skip_reason()
        if skip is not None:
            lines.append(f"Backup skipped: {skip}")
        elif s.verdict is Verdict.WAIT:
            now = self._now()
            if s.next_backup is not None and s.next_backup > now:
                word = "Retrying" if s.failures > 0 else "Next backup"
                when = clock(s.next_backup, now)
                # at the end of the pause: the pause's line says that time already
                if s.paused_until is None or clock(s.paused_until, now) != when:
                    lines.append(f"{word} at {when}")
            elif s.reason and not (s.paused and s.reason.startswith("paused")):
                lines.append(s.reason[:1].upper() + s.reason[1:])
        elif s.verdict is Verdict.OFF:
            lines.append(s.reason[:1].upper() + s.reason[1:])
        return lines

    def upkeep_line(self) -> str | None:
        """Repository upkeep under way (``"Checking the repository… 40 %"``), or None."""
        upkeep = self.upkeep
        if upkeep is None:
            return None
        words = UPKEEP_WORDS.get(upkeep.task, "Repository upkeep")
        percent = int(upkeep.progress.percent) if upkeep.progress is not None else 0
        if upkeep.state is JobState.PAUSED:
            held = self._held()
            return f"{words} paused: {held}" if held else f"{words} paused at {percent} %"
        return f"{words}… {percent} %"

    def stale_notice(self) -> tuple[str, str] | None:
        """The notification for backups that are too old (title, why), or None."""
        if not self.stale() or self.last_success is None:
            return None
        days = max(1, int((self._now() - self.last_success) // 86400))
        title = f"No backup for {days} day{'s' if days != 1 else ''}"
        s = self.schedule
        failure = self.failure()
        if failure is not None:
            why = f"The last backup failed: {failure}"
        elif (paused := self.pause_line()) is not None:
            why = paused + "."
        elif (skip := self._skip_reason()) is not None:
            why = f"Backups are skipped: {skip}."
        elif s is not None and s.verdict is Verdict.OFF:
            why = "Backups run only when you start them: choose Back up now."
        elif s is not None and s.reason:
            why = f"The scheduler says: {s.reason}."
        else:
            why = "Choose Back up now in the tray menu."
        return title, why

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

    def apply_server(self, url: str, state: str, error: str | None) -> None:
        """The dial-out connection's state (``url`` empty: none is configured)."""
        self.server_url = url
        self.server_state = state
        self.server_error = error

    def server_line(self) -> str | None:
        """The backup server in words (``"Backup server: connected"``); None when
        no ``[server] url`` is set."""
        if not self.server_url:
            return None
        state, error = self.server_state, self.server_error
        if state == "connected":
            return "Backup server: connected"
        if state == "connecting":
            return "Backup server: connecting"
        if state == "unreachable":
            return (
                f"Backup server: not reachable ({error})"
                if error
                else ("Backup server: not reachable")
            )
        if state == "refused":
            if error is None or "refused the token" in error:
                return "Backup server: refused the token"
            return f"Backup server: not connecting ({error})"  # a setting forbids it
        return "Backup server: not connected"

    def tooltip(self) -> str:
        """Tooltip text: the state, the schedule, the last backup, a restore under
        way, the backup server."""
        lines = ["desktop-agent", self.status_line()]
        schedule = self.schedule_line()
        if schedule is not None:
            lines.append(schedule)
        if self.state is None:
            lines.append(self.last_backup_line())
        if self.queued:
            lines.append(f"{self.queued} more backup{'s' if self.queued != 1 else ''} waiting")
        restore = self.restore_line()
        if restore is not None:
            lines.append(restore)
        server = self.server_line()
        if server is not None:
            lines.append(server)
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
