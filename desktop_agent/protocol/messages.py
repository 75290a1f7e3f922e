"""The messages of the ``/ws`` protocol as frozen dataclasses.

Every message on the wire is ``{"type": "...", "payload": ...}``.
``docs/protocol.md`` is the reference: the seed's events and commands
(field names and JSON types exactly the seed's), and the additions:
``backup:start``, ``backup:paused``, ``backup:resumed``, ``error``, the
``restore:*`` messages of restore jobs and the ``upkeep:*`` messages of
upkeep jobs (forget + prune, check). The seed's messages are about backup
jobs only; a restore job speaks ``restore:*``, an upkeep job ``upkeep:*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NewType

__all__ = [
    "AGENT_STATES",
    "CANCELLED",
    "MAX_SKIPPED_LISTED",
    "UPKEEP_TASKS",
    "AgentStatus",
    "BackupCancel",
    "BackupCompleted",
    "BackupFailed",
    "BackupPause",
    "BackupPaused",
    "BackupProgress",
    "BackupResume",
    "BackupResumed",
    "BackupStart",
    "BackupStarted",
    "Command",
    "ErrorReply",
    "EndEvent",
    "Event",
    "JobId",
    "JobProgress",
    "ProgressEvent",
    "RestoreCancel",
    "RestoreCompleted",
    "RestoreFailed",
    "RestorePause",
    "RestorePaused",
    "RestoreProgress",
    "RestoreResume",
    "RestoreResumed",
    "RestoreStart",
    "RestoreStarted",
    "SchedulePause",
    "ScheduleResume",
    "Skipped",
    "StatusRequest",
    "UpkeepCancel",
    "UpkeepCompleted",
    "UpkeepFailed",
    "UpkeepPause",
    "UpkeepPaused",
    "UpkeepProgress",
    "UpkeepResume",
    "UpkeepResumed",
    "UpkeepStarted",
]

JobId = NewType("JobId", str)

AGENT_STATES = ("idle", "running", "paused")
CANCELLED = "cancelled"  # the ``error`` of a job that was cancelled


# ------------------------------------------------------------------ events
@dataclass(frozen=True, slots=True)
class JobProgress:
    """The nine fields of the seed's ``backup:progress``: where a running job is.

    Not a message itself: :class:`BackupProgress` and :class:`RestoreProgress`
    are (an event of one is never equal to, nor an instance of, the other).
    """

    job_id: JobId
    percent: float
    transferred_bytes: int
    total_bytes: int
    bytes_per_second: int
    eta_seconds: int
    current_file: str | None
    files_processed: int
    total_files: int


@dataclass(frozen=True, slots=True)
class BackupProgress(JobProgress):
    """``backup:progress``: where a running backup is."""

    TYPE = "backup:progress"


@dataclass(frozen=True, slots=True)
class BackupStarted:
    """``backup:started``: a job was accepted (it may wait behind another)."""

    job_id: JobId

    TYPE = "backup:started"


@dataclass(frozen=True, slots=True)
class Skipped:
    """A path a completed backup left out (unreadable), and why."""

    path: str
    reason: str


MAX_SKIPPED_LISTED = 100  # paths named in one backup:completed; skipped_total counts all


@dataclass(frozen=True, slots=True)
class BackupCompleted:
    """``backup:completed``: the snapshot is stored.

    ``skipped`` (an addition) names up to :data:`MAX_SKIPPED_LISTED` paths
    that could not be read and are not in the snapshot, ``skipped_total``
    counts them all; both are on the wire only when something was skipped,
    so a clean backup's event is exactly the seed's.
    """

    job_id: JobId
    total_bytes: int
    skipped: tuple[Skipped, ...] = ()
    skipped_total: int = 0

    TYPE = "backup:completed"


@dataclass(frozen=True, slots=True)
class BackupFailed:
    """``backup:failed``: the job ended without a snapshot (``error`` says why)."""

    job_id: JobId
    error: str

    TYPE = "backup:failed"


@dataclass(frozen=True, slots=True)
class BackupPaused:
    """``backup:paused``: the pause has taken effect."""

    job_id: JobId

    TYPE = "backup:paused"


@dataclass(frozen=True, slots=True)
class BackupResumed:
    """``backup:resumed``: the job runs again."""

    job_id: JobId

    TYPE = "backup:resumed"


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """``agent:status`` (agent to server): the agent as a whole."""

    status: str  # one of AGENT_STATES
    active_jobs: int
    uptime_secs: int
    # the optional fields after the seed's three (next_backup, last_success,
    # paused_until, conditions...), as the text of a JSON object ("" for none):
    # text keeps the event hashable, so it is encoded once for every client
    extra_json: str = ""

    TYPE = "agent:status"


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """``error``: a command that could not be carried out (to its sender only)."""

    message: str
    request_type: str | None

    TYPE = "error"


# ------------------------------------------------------- restore events
@dataclass(frozen=True, slots=True)
class RestoreStarted:
    """``restore:started``: a restore job was accepted (it may wait behind another job).

    ``snapshot`` is the full id of the snapshot restored, ``target`` the
    folder the files go into (each at its full original path below it).
    """

    job_id: JobId
    snapshot: str
    target: str

    TYPE = "restore:started"


@dataclass(frozen=True, slots=True)
class RestoreProgress(JobProgress):
    """``restore:progress``: where a running restore is (the fields of ``backup:progress``)."""

    TYPE = "restore:progress"


@dataclass(frozen=True, slots=True)
class RestoreCompleted:
    """``restore:completed``: the restore ran to its end (``total_bytes`` of file content written).

    Files it could not restore (an existing file, a damaged entry) do not
    make it fail; the tray lists them.
    """

    job_id: JobId
    total_bytes: int

    TYPE = "restore:completed"


@dataclass(frozen=True, slots=True)
class RestoreFailed:
    """``restore:failed``: the restore stopped (``error`` says why; ``"cancelled"``)."""

    job_id: JobId
    error: str

    TYPE = "restore:failed"


@dataclass(frozen=True, slots=True)
class RestorePaused:
    """``restore:paused``: the pause of a restore has taken effect."""

    job_id: JobId

    TYPE = "restore:paused"


@dataclass(frozen=True, slots=True)
class RestoreResumed:
    """``restore:resumed``: the restore runs again."""

    job_id: JobId

    TYPE = "restore:resumed"


# -------------------------------------------------------- upkeep events
UPKEEP_TASKS = ("forget", "check")  # forget: forget + prune; check: read a part of the data


@dataclass(frozen=True, slots=True)
class UpkeepStarted:
    """``upkeep:started``: the agent queued repository upkeep (it may wait behind another job).

    ``task`` is one of :data:`UPKEEP_TASKS`. There is no command to start
    one: the agent decides when (its ``[upkeep]`` configuration).
    """

    job_id: JobId
    task: str

    TYPE = "upkeep:started"


@dataclass(frozen=True, slots=True)
class UpkeepProgress(JobProgress):
    """``upkeep:progress``: where running upkeep is (the fields of ``backup:progress``)."""

    TYPE = "upkeep:progress"


@dataclass(frozen=True, slots=True)
class UpkeepCompleted:
    """``upkeep:completed``: the upkeep ran to its end; ``summary`` says what it did, one line."""

    job_id: JobId
    task: str
    summary: str

    TYPE = "upkeep:completed"


@dataclass(frozen=True, slots=True)
class UpkeepFailed:
    """``upkeep:failed``: the upkeep stopped, or a check found errors (``error`` says which)."""

    job_id: JobId
    error: str

    TYPE = "upkeep:failed"


@dataclass(frozen=True, slots=True)
class UpkeepPaused:
    """``upkeep:paused``: the pause of upkeep has taken effect."""

    job_id: JobId

    TYPE = "upkeep:paused"


@dataclass(frozen=True, slots=True)
class UpkeepResumed:
    """``upkeep:resumed``: the upkeep runs again."""

    job_id: JobId

    TYPE = "upkeep:resumed"


Event = (
    BackupProgress
    | BackupStarted
    | BackupCompleted
    | BackupFailed
    | BackupPaused
    | BackupResumed
    | AgentStatus
    | ErrorReply
    | RestoreStarted
    | RestoreProgress
    | RestoreCompleted
    | RestoreFailed
    | RestorePaused
    | RestoreResumed
    | UpkeepStarted
    | UpkeepProgress
    | UpkeepCompleted
    | UpkeepFailed
    | UpkeepPaused
    | UpkeepResumed
)
ProgressEvent = BackupProgress | RestoreProgress | UpkeepProgress
# the events that end a job (usable with isinstance, too)
EndEvent = (
    BackupCompleted
    | BackupFailed
    | RestoreCompleted
    | RestoreFailed
    | UpkeepCompleted
    | UpkeepFailed
)


# ---------------------------------------------------------------- commands
@dataclass(frozen=True, slots=True)
class BackupPause:
    """``backup:pause``."""

    job_id: JobId

    TYPE = "backup:pause"


@dataclass(frozen=True, slots=True)
class BackupResume:
    """``backup:resume``."""

    job_id: JobId

    TYPE = "backup:resume"


@dataclass(frozen=True, slots=True)
class BackupCancel:
    """``backup:cancel``."""

    job_id: JobId

    TYPE = "backup:cancel"


@dataclass(frozen=True, slots=True)
class BackupStart:
    """``backup:start``: payload ``{}`` (configured sources) or ``{"paths": [...]}``."""

    paths: tuple[str, ...] | None = None

    TYPE = "backup:start"


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """``agent:status`` (server to agent) with payload ``null``."""

    TYPE = "agent:status"


@dataclass(frozen=True, slots=True)
class RestoreStart:
    """``restore:start``: ``{"snapshot": "latest" | id, "paths": [...]}`` (``paths`` optional).

    Honoured only when the agent's ``[agent] allow_remote_restore`` is true;
    the files always go into a new folder.
    """

    snapshot: str
    paths: tuple[str, ...] | None = None

    TYPE = "restore:start"


@dataclass(frozen=True, slots=True)
class RestorePause:
    """``restore:pause``."""

    job_id: JobId

    TYPE = "restore:pause"


@dataclass(frozen=True, slots=True)
class RestoreResume:
    """``restore:resume``."""

    job_id: JobId

    TYPE = "restore:resume"


@dataclass(frozen=True, slots=True)
class RestoreCancel:
    """``restore:cancel``."""

    job_id: JobId

    TYPE = "restore:cancel"


@dataclass(frozen=True, slots=True)
class SchedulePause:
    """``schedule:pause``: ``{"minutes": N}`` holds scheduled work for N minutes,
    ``{"minutes": null}`` until ``schedule:resume``."""

    minutes: float | None

    TYPE = "schedule:pause"


@dataclass(frozen=True, slots=True)
class ScheduleResume:
    """``schedule:resume`` ``{}``: scheduled work runs again."""

    TYPE = "schedule:resume"


@dataclass(frozen=True, slots=True)
class UpkeepPause:
    """``upkeep:pause``."""

    job_id: JobId

    TYPE = "upkeep:pause"


@dataclass(frozen=True, slots=True)
class UpkeepResume:
    """``upkeep:resume``."""

    job_id: JobId

    TYPE = "upkeep:resume"


@dataclass(frozen=True, slots=True)
class UpkeepCancel:
    """``upkeep:cancel``."""

    job_id: JobId

    TYPE = "upkeep:cancel"


Command = (
    BackupPause
    | BackupResume
    | BackupCancel
    | BackupStart
    | StatusRequest
    | RestoreStart
    | RestorePause
    | RestoreResume
    | RestoreCancel
    | UpkeepPause
    | UpkeepResume
    | UpkeepCancel
    | SchedulePause
    | ScheduleResume
)
