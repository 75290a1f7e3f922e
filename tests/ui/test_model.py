"""The tray's state machine in words and icons (no Qt needed)."""

from __future__ import annotations

from datetime import datetime, timedelta

from desktop_agent.jobs import JobChanged, JobKind, JobState
from desktop_agent.jobs.bus import ScheduleChanged
from desktop_agent.jobs.schedule import ScheduleStatus, Verdict
from desktop_agent.protocol import (
    BackupCompleted,
    BackupFailed,
    BackupPaused,
    BackupProgress,
    BackupResumed,
    JobId,
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
from desktop_agent.ui.model import TrayModel, ago, clock, eta_words, next_midnight


def progress(percent: float, eta: int = 130) -> BackupProgress:
    return BackupProgress(JobId("j"), percent, 45, 100, 10, eta, "/x", 1, 2)


def test_words():
    assert ago(30) == "just now"
    assert ago(300) == "5 minutes ago"
    assert ago(3600) == "1 hour ago"
    assert ago(3 * 86400 + 5) == "3 days ago"
    assert eta_words(0) == ""
    assert eta_words(30) == "less than a minute left"
    assert eta_words(130) == "3 min left"
    assert eta_words(3 * 3600) == "3 h left"


def test_a_backup_from_start_to_end():
    now = [1_000_000.0]
    m = TrayModel(wall_clock=lambda: now[0])
    assert m.kind() == "warning" and "no backup yet" in m.status_line()
    m.apply(JobChanged("j", None, JobState.QUEUED))
    assert m.queued == 1 and "1 more backup waiting" in m.tooltip()
    m.apply(JobChanged("j", JobState.QUEUED, JobState.RUNNING))
    assert m.kind() == "running" and m.status_line() == "Backing up: starting"
    m.apply(progress(45.0))
    assert m.status_line() == "Backing up: 45% - 3 min left"
    assert m.tooltip() == "desktop-agent\nBacking up: 45% - 3 min left"
    m.apply(BackupPaused(JobId("j")))
    assert m.kind() == "paused" and m.status_line() == "Paused at 45%"
    m.apply(BackupResumed(JobId("j")))
    assert m.kind() == "running"
    now[0] += 125
    m.apply(BackupCompleted(JobId("j"), 2_000_000))
    assert m.kind() == "idle" and not m.active
    assert m.status_line() == "Backups are up to date"
    assert m.last_backup_line() == "Last backup: just now"
    assert m.completion_message() == "1.9 MiB backed up in 2 min 5 s"
    now[0] += 300
    assert m.last_backup_line() == "Last backup: 5 minutes ago"
    now[0] += 3 * 86400
    assert m.kind() == "warning" and "3 days" in m.status_line()


def test_failure_is_an_error_but_cancel_is_not():
    m = TrayModel()
    m.last_success = m._now()
    m.apply(JobChanged("a", JobState.QUEUED, JobState.RUNNING))
    m.apply(BackupFailed(JobId("a"), "cancelled"))
    assert m.kind() == "idle"
    m.apply(JobChanged("b", JobState.QUEUED, JobState.RUNNING))
    m.apply(BackupFailed(JobId("b"), "the backup destination is full"))
    assert m.kind() == "error"
    assert m.status_line() == "Last backup failed: the backup destination is full"
    m.apply(JobChanged("c", JobState.QUEUED, JobState.RUNNING))
    m.apply(BackupCompleted(JobId("c"), 1))
    assert m.kind() == "idle"


def test_skipped_files_are_a_warning():
    m = TrayModel()
    m.apply(JobChanged("a", JobState.QUEUED, JobState.RUNNING))
    m.apply(BackupCompleted(JobId("a"), 1))
    m.note_skipped(2)
    assert m.kind() == "warning"
    assert m.status_line() == "Needs attention: the last backup skipped 2 unreadable files"


def test_events_of_other_jobs_do_not_disturb_the_current_one():
    m = TrayModel()
    m.apply(JobChanged("a", JobState.QUEUED, JobState.RUNNING))
    m.apply(progress(10.0))
    m.apply(BackupPaused(JobId("other")))
    m.apply(BackupFailed(JobId("other"), "x"))
    assert m.kind() == "running" and m.percent == 0.0  # progress was for job "j"


def test_a_restore_is_shown_beside_the_backups_not_as_one():
    """The icon, its Pause and the queue count are about backups; a restore has its line."""
    m = TrayModel()
    m.last_success = m._now()
    r = JobId("r")
    m.apply(RestoreStarted(r, "ab" * 32, "/home/me/Downloads/x"))
    m.apply(JobChanged("r", None, JobState.QUEUED, JobKind.RESTORE))
    assert m.queued == 0 and m.restore_line() == "Restore waiting for the running job to finish"
    m.apply(JobChanged("r", JobState.QUEUED, JobState.RUNNING, JobKind.RESTORE))
    m.apply(RestoreProgress(r, 40.0, 4, 10, 1, 6, "/x", 1, 3))
    assert m.kind() == "idle" and not m.active and m.job_id is None
    assert m.restore_line() == "Restoring files: 40%"
    # a second restore waits behind it: the running one is shown
    m.apply(RestoreStarted(JobId("r2"), "ab" * 32, "/t2"))
    assert m.restore_line() == "Restoring files: 40%"
    assert m.tooltip().endswith("\nRestoring files: 40%")
    m.apply(RestorePaused(r))
    assert m.restore_line() == "Restore paused at 40%" and m.kind() == "idle"
    # a backup queued meanwhile counts as waiting; it does not touch the restore
    m.apply(JobChanged("b", None, JobState.QUEUED))
    assert m.queued == 1
    m.apply(RestoreResumed(r))
    assert m.restore_line() == "Restoring files: 40%"
    m.apply(RestoreCompleted(r, 10))
    assert m.restore_line() == "Restore waiting for the running job to finish"
    m.apply(RestoreFailed(JobId("r2"), "cancelled"))
    assert m.restore_line() is None and "Restor" not in m.tooltip()
    assert m.last is None  # a restore is not the last backup


def test_a_failed_restore_is_not_a_failed_backup():
    m = TrayModel()
    m.last_success = m._now()
    m.apply(RestoreStarted(JobId("r"), "ab" * 32, "/t"))
    m.apply(RestoreFailed(JobId("r"), "the restore target is full"))
    assert m.kind() == "idle" and m.restore_line() is None


# ------------------------------------------------------------- the schedule
NOON = datetime(2024, 5, 14, 12, 0).timestamp()  # a Tuesday, local time


def at(hour: int, minute: int = 0, days: int = 0) -> float:
    return (datetime(2024, 5, 14, hour, minute) + timedelta(days=days)).timestamp()


def test_clock_words():
    assert clock(at(14, 5), NOON) == "14:05"
    assert clock(at(0, 0, days=1), NOON) == "tomorrow 00:00"
    assert clock(at(9, 30, days=2), NOON) == "Thu 09:30"
    assert next_midnight(NOON) == at(0, 0, days=1)
    assert next_midnight(at(23, 59)) == at(0, 0, days=1)


def scheduled(**fields: object) -> ScheduleChanged:
    values: dict[str, object] = {"verdict": Verdict.WAIT, "reason": "next backup at Tue 14:05"}
    values.update(fields)
    return ScheduleChanged(ScheduleStatus(**values))  # type: ignore[arg-type]


def test_the_schedule_in_words():
    m = TrayModel(wall_clock=lambda: NOON)
    m.last_success = NOON - 600
    assert m.schedule_line() is None  # no scheduler: nothing said about it
    m.apply(scheduled(next_backup=at(14, 5), last_success=NOON - 600))
    assert m.status_line() == "Backups are up to date"
    assert m.schedule_line() == "Next backup at 14:05"
    assert m.tooltip().split("\n")[1:] == [
        "Backups are up to date",
        "Next backup at 14:05",
        "Last backup: 10 minutes ago",
    ]
    # paused: the pause first, then when the next backup is expected (if not then)
    m.apply(scheduled(next_backup=at(15, 0), paused_until=at(15, 0)))
    assert m.status_line() == "Backups paused until 15:00"
    assert m.schedule_line() is None
    m.apply(scheduled(next_backup=at(16, 30), paused_until=at(15, 0)))
    assert m.schedule_line() == "Next backup at 16:30"
    m.apply(scheduled(reason="paused until you resume", paused_forever=True))
    assert m.status_line() == "Backups paused until you resume" and m.schedule_line() is None
    # skipped: why, without repeating the pause
    m.apply(scheduled(verdict=Verdict.SKIP, reason="on battery"))
    assert m.status_line() == "Backup skipped: on battery" and m.kind() == "idle"
    m.apply(
        scheduled(
            verdict=Verdict.SKIP,
            reason="paused until Tue 15:00; on a metered network",
            paused_until=at(15, 0),
        )
    )
    assert m.status_line() == "Backups paused until 15:00"
    assert m.schedule_line() == "Backup skipped: on a metered network"
    m.apply(scheduled(verdict=Verdict.SKIP, reason="quiet hours until 07:00"))
    assert m.status_line() == "Backup skipped: quiet hours until 07:00"
    # waiting for something else than the clock
    m.apply(scheduled(reason="waiting for the network", next_backup=NOON))
    assert m.schedule_line() == "Waiting for the network"
    m.apply(scheduled(verdict=Verdict.OFF, reason="backups run only when you start them"))
    assert m.schedule_line() == "Backups run only when you start them"
    # failing: an error, and when the next try comes
    m.apply(scheduled(next_backup=at(12, 20), failures=2, last_error="the disk is full"))
    assert m.kind() == "error"
    assert m.status_line() == "Last backup failed: the disk is full"
    assert m.schedule_line() == "Retrying at 12:20"


def test_a_held_backup_says_why():
    m = TrayModel(wall_clock=lambda: NOON)
    m.apply(JobChanged("j", JobState.QUEUED, JobState.RUNNING))
    m.apply(progress(30.0))
    m.apply(
        scheduled(verdict=Verdict.WAIT, reason="waiting for the running job", held="on battery")
    )
    m.apply(BackupPaused(JobId("j")))
    assert m.kind() == "paused" and m.status_line() == "Backup paused: on battery"
    m.apply(scheduled(verdict=Verdict.WAIT, reason="waiting for the running job"))
    assert m.status_line() == "Paused at 30%"  # paused by hand, or the hold is over


def test_stale_backups_need_attention():
    now = [NOON]
    m = TrayModel(wall_clock=lambda: now[0])
    old = NOON - 4 * 86400 - 60
    m.apply(scheduled(verdict=Verdict.SKIP, reason="on battery", last_success=old, stale=True))
    assert m.last_success == old and m.kind() == "warning"
    assert m.status_line() == "Backup skipped: on battery"
    assert m.stale_notice() == ("No backup for 4 days", "Backups are skipped: on battery.")
    # a backup succeeded since the scheduler said so: not stale any more
    m.apply(JobChanged("j", JobState.QUEUED, JobState.RUNNING))
    m.apply(BackupCompleted(JobId("j"), 1))
    assert m.kind() == "idle" and m.stale_notice() is None
    # without a scheduler, by the model's own age limit (0: never)
    m = TrayModel(wall_clock=lambda: now[0], stale_after=86400)
    m.last_success = NOON - 2 * 86400
    assert m.kind() == "warning"
    m.stale_after = 0
    assert m.kind() == "idle"


def test_a_stopped_backup_is_not_a_failure():
    m = TrayModel()
    m.last_success = m._now()
    m.apply(JobChanged("a", JobState.QUEUED, JobState.RUNNING))
    m.apply(JobChanged("a", JobState.RUNNING, JobState.CANCELLED))
    m.apply(BackupFailed(JobId("a"), "stopped after the maximum runtime of 60 min"))
    assert m.kind() == "idle" and m.last is None and not m.active


def test_upkeep_is_shown_in_words_not_as_a_backup():
    m = TrayModel(wall_clock=lambda: NOON)
    m.last_success = NOON
    u = JobId("u")
    m.apply(UpkeepStarted(u, "check"))
    m.apply(JobChanged("u", None, JobState.QUEUED, JobKind.UPKEEP))
    assert m.upkeep is None and m.status_line() == "Backups are up to date"
    m.apply(JobChanged("u", JobState.QUEUED, JobState.RUNNING, JobKind.UPKEEP))
    m.apply(UpkeepProgress(u, 40.0, 4, 10, 1, 6, None, 1, 3))
    assert m.status_line() == "Checking the repository… 40 %"
    assert m.kind() == "idle" and not m.active and m.job_id is None and m.queued == 0
    m.apply(scheduled(held="on battery"))
    m.apply(UpkeepPaused(u))
    assert m.status_line() == "Checking the repository paused: on battery"
    m.apply(scheduled())
    assert m.status_line() == "Checking the repository paused at 40 %"
    m.apply(UpkeepResumed(u))
    m.apply(JobChanged("u", JobState.RUNNING, JobState.COMPLETED, JobKind.UPKEEP))
    m.apply(UpkeepCompleted(u, "check", "no errors"))
    assert m.upkeep is None and m.status_line() == "Backups are up to date"
    f = JobId("f")
    m.apply(UpkeepStarted(f, "forget"))
    m.apply(JobChanged("f", JobState.QUEUED, JobState.RUNNING, JobKind.UPKEEP))
    m.apply(UpkeepProgress(f, 40.0, 4, 10, 1, 6, None, 1, 3))
    assert m.status_line() == "Cleaning up old backups… 40 %"
    m.apply(UpkeepFailed(f, "the repository is locked"))
    assert m.upkeep is None and m.last is None and m.kind() == "idle"
