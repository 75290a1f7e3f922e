"""The tray's state machine in words and icons (no Qt needed)."""

from __future__ import annotations

from desktop_agent.jobs import JobChanged, JobKind, JobState
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
)
from desktop_agent.ui.model import TrayModel, ago, eta_words


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
