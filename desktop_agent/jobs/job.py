"""A job as the controller keeps it, and the view of it everybody else gets.

:class:`Job` is the controller's mutable record (loop thread only): its
spec, state, the engine's :class:`~desktop_agent.engine.control.Control`,
and the progress bookkeeping. :class:`JobView` is its frozen copy for
consumers (the bridge, the server, tests). :data:`MESSAGES` says which
protocol messages report each kind of job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from desktop_agent.engine.backup import BackupResult
from desktop_agent.engine.control import Control
from desktop_agent.engine.progress import RateEstimator
from desktop_agent.engine.restore import RestoreResult
from desktop_agent.protocol import (
    BackupFailed,
    BackupPaused,
    BackupProgress,
    BackupResumed,
    JobId,
    ProgressEvent,
    RestoreFailed,
    RestorePaused,
    RestoreProgress,
    RestoreResumed,
    UpkeepFailed,
    UpkeepPaused,
    UpkeepProgress,
    UpkeepResumed,
)

from .spec import BackupSpec, JobKind, JobSpec, RestoreSpec, UpkeepSpec
from .state import JobState
from .upkeep import UpkeepResult

__all__ = ["MESSAGES", "Job", "JobResult", "JobView", "Messages"]

JobResult = BackupResult | RestoreResult | UpkeepResult


@dataclass(frozen=True)
class Messages:
    """How one kind of job is reported on the bus (and so on /ws)."""

    progress: type[BackupProgress] | type[RestoreProgress] | type[UpkeepProgress]
    paused: type[BackupPaused] | type[RestorePaused] | type[UpkeepPaused]
    resumed: type[BackupResumed] | type[RestoreResumed] | type[UpkeepResumed]
    failed: type[BackupFailed] | type[RestoreFailed] | type[UpkeepFailed]


MESSAGES = {
    JobKind.BACKUP: Messages(BackupProgress, BackupPaused, BackupResumed, BackupFailed),
    JobKind.RESTORE: Messages(RestoreProgress, RestorePaused, RestoreResumed, RestoreFailed),
    JobKind.UPKEEP: Messages(UpkeepProgress, UpkeepPaused, UpkeepResumed, UpkeepFailed),
}


@dataclass(frozen=True)
class JobView:
    """What consumers may know about a job.

    ``paths``: a backup's paths (None: the configured sources), a restore's
    snapshot paths (None: everything), None for upkeep. ``origin`` says who
    asked for it ("tray", "/ws", "scheduler"; "" when not said). ``result``
    is a :class:`BackupResult`, a :class:`RestoreResult` or an
    :class:`~.upkeep.UpkeepResult` once it completed.
    """

    id: JobId
    state: JobState
    paths: tuple[str, ...] | None
    created: float  # wall clock
    started: float | None = None
    finished: float | None = None
    progress: ProgressEvent | None = None
    error: str | None = None
    result: JobResult | None = None
    spec: JobSpec = BackupSpec()
    origin: str = ""

    @property
    def kind(self) -> JobKind:
        """Backup, restore or upkeep."""
        return self.spec.kind

    @property
    def restore(self) -> RestoreSpec | None:
        """A restore's snapshot, paths and target; None for other jobs."""
        return self.spec if isinstance(self.spec, RestoreSpec) else None


@dataclass
class Job:
    """The controller's record of one job (loop thread only)."""

    id: JobId
    spec: JobSpec
    created: float
    origin: str = ""
    state: JobState = JobState.QUEUED
    control: Control = field(default_factory=Control)
    started: float | None = None
    finished: float | None = None
    progress: ProgressEvent | None = None
    error: str | None = None
    result: JobResult | None = None
    pause_requested: bool = False
    resume_requested: bool = False  # a resume that arrived before the pause took effect
    stop_reason: str | None = None  # a stop (not a cancel) says why, in place of "cancelled"
    # progress bookkeeping (loop thread only)
    last_sent: float = 0.0
    dirty: bool = False
    rate: RateEstimator = field(default_factory=RateEstimator)
    percent: float = 0.0

    @property
    def kind(self) -> JobKind:
        return self.spec.kind

    @property
    def messages(self) -> Messages:
        return MESSAGES[self.spec.kind]

    @property
    def paths(self) -> tuple[str, ...] | None:
        if isinstance(self.spec, RestoreSpec):
            return self.spec.includes or None
        if isinstance(self.spec, UpkeepSpec):
            return None
        return self.spec.paths

    def describe(self) -> str:
        spec = self.spec
        if isinstance(spec, RestoreSpec):
            what = ", ".join(spec.includes) if spec.includes else "everything"
            text = f"restore of {what} from snapshot {spec.snapshot.short_id} into {spec.target}"
        elif isinstance(spec, UpkeepSpec):
            text = spec.describe()
        else:
            text = "backup of " + ("the sources" if spec.paths is None else ", ".join(spec.paths))
        return text + (f" (from {self.origin})" if self.origin else "")

    def view(self) -> JobView:
        return JobView(
            self.id,
            self.state,
            self.paths,
            self.created,
            self.started,
            self.finished,
            self.progress,
            self.error,
            self.result,
            self.spec,
            self.origin,
        )
