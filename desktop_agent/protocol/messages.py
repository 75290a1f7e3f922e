"""The messages of the ``/ws`` protocol as frozen dataclasses.

Every message on the wire is ``{"type": "...", "payload": ...}``. The seed
(``websocket-api.md``) defines the events and commands; ``CONTRACT.md`` adds
``backup:start``, ``backup:paused``, ``backup:resumed`` and ``error``.
Field names and JSON types are the seed's, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NewType

__all__ = [
    "JobId",
    "Event",
    "Command",
    "BackupProgress",
    "BackupStarted",
    "BackupCompleted",
    "Skipped",
    "MAX_SKIPPED_LISTED",
    "BackupFailed",
    "BackupPaused",
    "BackupResumed",
    "AgentStatus",
    "ErrorReply",
    "BackupPause",
    "BackupResume",
    "BackupCancel",
    "BackupStart",
    "StatusRequest",
    "AGENT_STATES",
    "CANCELLED",
]

JobId = NewType("JobId", str)

AGENT_STATES = ("idle", "running", "paused")
CANCELLED = "cancelled"  # the ``error`` of a job that was cancelled


# ------------------------------------------------------------------ events
@dataclass(frozen=True, slots=True)
class BackupProgress:
    """``backup:progress``: where a running job is."""

    job_id: JobId
    percent: float
    transferred_bytes: int
    total_bytes: int
    bytes_per_second: int
    eta_seconds: int
    current_file: str | None
    files_processed: int
    total_files: int

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

    TYPE = "agent:status"


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """``error``: a command that could not be carried out (to its sender only)."""

    message: str
    request_type: str | None

    TYPE = "error"


Event = (
    BackupProgress
    | BackupStarted
    | BackupCompleted
    | BackupFailed
    | BackupPaused
    | BackupResumed
    | AgentStatus
    | ErrorReply
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


Command = BackupPause | BackupResume | BackupCancel | BackupStart | StatusRequest
