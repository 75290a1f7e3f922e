"""Parsing and serializing ``/ws`` messages: pure functions, no I/O.

``decode_command`` turns a text frame from a client into a command or raises
:class:`ProtocolError` carrying the reply the agent sends back (message and
``request_type``). ``encode_event`` turns an event into a text frame. The
client-side pair (``encode_command``, ``decode_event``) serves the remote
CLI and the tests.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

from .messages import (
    AGENT_STATES,
    AgentStatus,
    BackupCancel,
    BackupCompleted,
    BackupFailed,
    BackupPause,
    BackupPaused,
    BackupProgress,
    BackupResume,
    BackupResumed,
    BackupStart,
    BackupStarted,
    Command,
    ErrorReply,
    Event,
    JobId,
    JobProgress,
    RestoreCancel,
    RestoreCompleted,
    RestoreFailed,
    RestorePause,
    RestorePaused,
    RestoreProgress,
    RestoreResume,
    RestoreResumed,
    RestoreStart,
    RestoreStarted,
    SchedulePause,
    ScheduleResume,
    Skipped,
    StatusRequest,
    UpkeepCancel,
    UpkeepCompleted,
    UpkeepFailed,
    UpkeepPause,
    UpkeepPaused,
    UpkeepProgress,
    UpkeepResume,
    UpkeepResumed,
    UpkeepStarted,
)

__all__ = [
    "ProtocolError",
    "decode_command",
    "encode_event",
    "encode_command",
    "decode_event",
    "MAX_JOB_ID",
    "MAX_SNAPSHOT_REF",
]

MAX_JOB_ID = 128
MAX_SNAPSHOT_REF = 128  # "latest", a snapshot id (64 hex digits) or a prefix of one
_EVENT_TYPES = {
    "backup:progress",
    "backup:started",
    "backup:completed",
    "backup:failed",
    "backup:paused",
    "backup:resumed",
    "restore:progress",
    "restore:started",
    "restore:completed",
    "restore:failed",
    "restore:paused",
    "restore:resumed",
    "upkeep:progress",
    "upkeep:started",
    "upkeep:completed",
    "upkeep:failed",
    "upkeep:paused",
    "upkeep:resumed",
    "error",
}
_JOB_COMMANDS: dict[
    str,
    type[BackupPause | BackupResume | BackupCancel | RestorePause | RestoreResume | RestoreCancel],
] = {
    c.TYPE: c
    for c in (BackupPause, BackupResume, BackupCancel, RestorePause, RestoreResume, RestoreCancel)
}
_UPKEEP_COMMANDS: dict[str, type[UpkeepPause | UpkeepResume | UpkeepCancel]] = {
    c.TYPE: c for c in (UpkeepPause, UpkeepResume, UpkeepCancel)
}


class ProtocolError(Exception):
    """A message the agent cannot act on; becomes an ``error`` reply."""

    def __init__(self, message: str, request_type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_type = request_type

    def reply(self) -> ErrorReply:
        """The ``error`` message to send to the client."""
        return ErrorReply(self.message, self.request_type)


def _parse(text: str | bytes) -> tuple[str, Any]:
    if isinstance(text, bytes):
        raise ProtocolError("binary frames are not supported; send JSON text")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("a message must be a JSON object with type and payload")
    kind = doc.get("type")
    if not isinstance(kind, str):
        raise ProtocolError('a message needs a string "type"')
    if "payload" not in doc:
        raise ProtocolError('a message needs a "payload" (null when empty)', kind)
    return kind, doc["payload"]


def _job_id(kind: str, payload: Any) -> JobId:
    if not isinstance(payload, dict):
        raise ProtocolError(f"{kind} needs a payload object with job_id", kind)
    job_id = payload.get("job_id")
    if not isinstance(job_id, str) or not job_id:
        raise ProtocolError(f"{kind} needs a non-empty string job_id", kind)
    if len(job_id) > MAX_JOB_ID:
        raise ProtocolError(f"job_id is longer than {MAX_JOB_ID} characters", kind)
    return JobId(job_id)


def _paths(kind: str, paths: Any) -> tuple[str, ...]:
    if not isinstance(paths, list) or not paths:
        raise ProtocolError("paths must be a non-empty list of paths", kind)
    if not all(isinstance(p, str) and p and "\0" not in p for p in paths):
        raise ProtocolError("every path must be a non-empty string", kind)
    return tuple(paths)


def _restore_start(kind: str, payload: Any) -> RestoreStart:
    usage = 'restore:start takes {"snapshot": "latest" or an id, "paths": [...] (optional)}'
    if not isinstance(payload, dict) or set(payload) - {"snapshot", "paths"}:
        raise ProtocolError(usage, kind)
    snapshot = payload.get("snapshot")
    if not isinstance(snapshot, str) or not snapshot.strip() or "\0" in snapshot:
        raise ProtocolError(f'{usage}: "snapshot" must be a non-empty string', kind)
    if len(snapshot) > MAX_SNAPSHOT_REF:
        raise ProtocolError(f"snapshot is longer than {MAX_SNAPSHOT_REF} characters", kind)
    paths = payload.get("paths")
    return RestoreStart(snapshot, None if paths is None else _paths(kind, paths))


MAX_PAUSE_MINUTES = 366 * 24 * 60  # a pause of more than a year is "until resumed" (null)


def _schedule_pause(kind: str, payload: Any) -> SchedulePause:
    usage = 'schedule:pause takes {"minutes": N} (N > 0) or {"minutes": null} (until resumed)'
    if not isinstance(payload, dict) or set(payload) != {"minutes"}:
        raise ProtocolError(usage, kind)
    minutes = payload["minutes"]
    if minutes is None:
        return SchedulePause(None)
    if isinstance(minutes, bool) or not isinstance(minutes, int | float):
        raise ProtocolError(usage, kind)
    if not (math.isfinite(minutes) and 0 < minutes <= MAX_PAUSE_MINUTES):
        raise ProtocolError(
            f"minutes must be more than 0 and at most {MAX_PAUSE_MINUTES} "
            "(null pauses until schedule:resume)",
            kind,
        )
    return SchedulePause(float(minutes))


def decode_command(text: str | bytes) -> Command:
    """Parse a frame a client sent; :class:`ProtocolError` when it is not a valid command."""
    kind, payload = _parse(text)
    job_command = _JOB_COMMANDS.get(kind)
    if job_command is not None:
        return job_command(_job_id(kind, payload))
    upkeep_command = _UPKEEP_COMMANDS.get(kind)
    if upkeep_command is not None:
        return upkeep_command(_job_id(kind, payload))
    if kind == "upkeep:start":
        raise ProtocolError(
            "upkeep:start is not a command: the agent starts upkeep on its own, "
            "as its [upkeep] configuration says",
            kind,
        )
    if kind == "restore:start":
        return _restore_start(kind, payload)
    if kind == "schedule:pause":
        return _schedule_pause(kind, payload)
    if kind == "schedule:resume":
        if payload is not None and payload != {}:
            raise ProtocolError("schedule:resume takes {}", kind)
        return ScheduleResume()
    if kind == "agent:status":
        if payload is not None and payload != {}:
            raise ProtocolError("agent:status takes a null payload", kind)
        return StatusRequest()
    if kind == "backup:start":
        if payload is None or payload == {}:
            return BackupStart(None)
        if not isinstance(payload, dict) or set(payload) - {"paths"}:
            raise ProtocolError('backup:start takes {} or {"paths": [...]}', kind)
        paths = payload.get("paths")
        if paths is None:
            return BackupStart(None)
        return BackupStart(_paths(kind, paths))
    if kind in _EVENT_TYPES:
        raise ProtocolError(f"{kind} is an event the agent sends, not a command", kind)
    raise ProtocolError(f"unknown message type {kind!r}", kind)


def _payload(event: Event) -> dict[str, Any]:
    data = asdict(event)
    if isinstance(event, AgentStatus):
        del data["extra_json"]
        if event.extra_json:
            extra = json.loads(event.extra_json)
            data.update({k: v for k, v in extra.items() if k not in data})
    if isinstance(event, BackupCompleted) and not event.skipped_total:
        del data["skipped"], data["skipped_total"]  # the seed's event, exactly
    if isinstance(event, JobProgress):
        pct = float(event.percent)
        data["percent"] = round(pct, 2) if math.isfinite(pct) else 0.0
    return data


def encode_event(event: Event) -> str:
    """The text frame for an event."""
    return json.dumps({"type": event.TYPE, "payload": _payload(event)}, separators=(",", ":"))


def encode_command(command: Command) -> str:
    """The text frame for a command (client side)."""
    payload: Any
    if isinstance(command, StatusRequest):
        payload = None
    elif isinstance(command, BackupStart):
        payload = {} if command.paths is None else {"paths": list(command.paths)}
    elif isinstance(command, RestoreStart):
        payload = {"snapshot": command.snapshot}
        if command.paths is not None:
            payload["paths"] = list(command.paths)
    elif isinstance(command, SchedulePause):
        payload = {"minutes": command.minutes}
    elif isinstance(command, ScheduleResume):
        payload = {}
    else:
        payload = {"job_id": command.job_id}
    return json.dumps({"type": command.TYPE, "payload": payload}, separators=(",", ":"))


def _int(p: dict[str, Any], key: str) -> int:
    v = p[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(f"{key} must be an integer")
    return v


def _str(p: dict[str, Any], key: str) -> str:
    v = p[key]
    if not isinstance(v, str):
        raise ProtocolError(f"{key} must be a string")
    return v


def _progress(
    cls: type[BackupProgress] | type[RestoreProgress] | type[UpkeepProgress], p: dict[str, Any]
) -> BackupProgress | RestoreProgress | UpkeepProgress:
    cf = p["current_file"]
    pct = p["percent"]
    if isinstance(pct, bool) or not isinstance(pct, int | float):
        raise ProtocolError("percent must be a number")
    return cls(
        job_id=JobId(_str(p, "job_id")),
        percent=float(pct),
        transferred_bytes=_int(p, "transferred_bytes"),
        total_bytes=_int(p, "total_bytes"),
        bytes_per_second=_int(p, "bytes_per_second"),
        eta_seconds=_int(p, "eta_seconds"),
        current_file=None if cf is None else str(cf),
        files_processed=_int(p, "files_processed"),
        total_files=_int(p, "total_files"),
    )


def _upkeep_event(kind: str, p: dict[str, Any]) -> Event:
    job_id = JobId(_str(p, "job_id"))
    if kind == "upkeep:progress":
        return _progress(UpkeepProgress, p)
    if kind == "upkeep:started":
        return UpkeepStarted(job_id, _str(p, "task"))
    if kind == "upkeep:completed":
        return UpkeepCompleted(job_id, _str(p, "task"), _str(p, "summary"))
    if kind == "upkeep:failed":
        return UpkeepFailed(job_id, _str(p, "error"))
    if kind == "upkeep:paused":
        return UpkeepPaused(job_id)
    if kind == "upkeep:resumed":
        return UpkeepResumed(job_id)
    raise ProtocolError(f"unknown message type {kind!r}", kind)


def decode_event(text: str | bytes) -> Event:
    """Parse a frame the agent sent (client side)."""
    kind, p = _parse(text)
    try:
        if kind == "backup:progress":
            return _progress(BackupProgress, p)
        if kind == "restore:progress":
            return _progress(RestoreProgress, p)
        if kind.startswith("upkeep:"):
            return _upkeep_event(kind, p)
        if kind == "restore:started":
            return RestoreStarted(JobId(_str(p, "job_id")), _str(p, "snapshot"), _str(p, "target"))
        if kind == "restore:completed":
            return RestoreCompleted(JobId(_str(p, "job_id")), _int(p, "total_bytes"))
        if kind == "restore:failed":
            return RestoreFailed(JobId(_str(p, "job_id")), _str(p, "error"))
        if kind == "restore:paused":
            return RestorePaused(JobId(_str(p, "job_id")))
        if kind == "restore:resumed":
            return RestoreResumed(JobId(_str(p, "job_id")))
        if kind == "backup:started":
            return BackupStarted(JobId(_str(p, "job_id")))
        if kind == "backup:completed":
            skipped = p.get("skipped", [])
            if not isinstance(skipped, list) or not all(
                isinstance(k, dict) and isinstance(k.get("path"), str) for k in skipped
            ):
                raise ProtocolError("skipped must be a list of {path, reason}")
            return BackupCompleted(
                JobId(_str(p, "job_id")),
                _int(p, "total_bytes"),
                tuple(Skipped(k["path"], str(k.get("reason", ""))) for k in skipped),
                _int(p, "skipped_total") if "skipped_total" in p else len(skipped),
            )
        if kind == "backup:failed":
            return BackupFailed(JobId(_str(p, "job_id")), _str(p, "error"))
        if kind == "backup:paused":
            return BackupPaused(JobId(_str(p, "job_id")))
        if kind == "backup:resumed":
            return BackupResumed(JobId(_str(p, "job_id")))
        if kind == "agent:status":
            status = _str(p, "status")
            if status not in AGENT_STATES:
                raise ProtocolError(f"unknown agent status {status!r}")
            seed = ("status", "active_jobs", "uptime_secs")
            extra = {k: v for k, v in p.items() if k not in seed}
            return AgentStatus(
                status,
                _int(p, "active_jobs"),
                _int(p, "uptime_secs"),
                json.dumps(extra, sort_keys=True) if extra else "",
            )
        if kind == "error":
            rt = p.get("request_type")
            return ErrorReply(_str(p, "message"), None if rt is None else str(rt))
    except (KeyError, TypeError) as exc:
        raise ProtocolError(f"{kind}: missing or malformed field {exc}", kind) from None
    raise ProtocolError(f"unknown message type {kind!r}", kind)
