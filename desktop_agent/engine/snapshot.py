"""Snapshot documents (``snapshots/<id>``), as restic's ``Snapshot`` struct."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import malformed
from .gocompat import parse_time
from .ids import BlobId, SnapshotId, parse_id

__all__ = ["BackupCounts", "Snapshot", "SnapshotSummary"]


@dataclass
class BackupCounts:
    """What a backup counts, with restic's names: the counters of a snapshot's summary.

    The backup pipeline's parts count into these (:class:`~.pipeline.BackupStats`);
    :class:`SnapshotSummary` adds the start and end times.
    """

    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    dirs_new: int = 0
    dirs_changed: int = 0
    dirs_unmodified: int = 0
    data_blobs: int = 0
    tree_blobs: int = 0
    data_added: int = 0  # plaintext bytes of new blobs
    data_added_packed: int = 0  # what they added to packs (compressed, encrypted)
    total_files_processed: int = 0
    total_bytes_processed: int = 0

    def counts(self) -> dict[str, int]:
        """The counters by name, in restic's order."""
        return {f.name: getattr(self, f.name) for f in fields(BackupCounts)}


@dataclass
class SnapshotSummary(BackupCounts):
    """Statistics restic >= 0.17 records; we write them too. Treat it as a value."""

    backup_start: str = ""
    backup_end: str = ""

    def to_json(self) -> dict[str, Any]:
        """Field order as restic writes it."""
        return {"backup_start": self.backup_start, "backup_end": self.backup_end, **self.counts()}


def _summary(obj: Any) -> SnapshotSummary | None:
    """The summary, or None when there is none or it holds values of the wrong kind."""
    if not isinstance(obj, dict):
        return None
    values: dict[str, Any] = {}
    for f in fields(SnapshotSummary):
        name = f.name
        if name not in obj:
            continue
        value = obj[name]
        if f.type == "str":
            if not isinstance(value, str):
                return None
        elif isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
            return None
        values[name] = value
    return SnapshotSummary(**values)


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{what} is not a string")
    return value


def _texts(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise TypeError(f"{what} is not a list")
    return tuple(_text(v, what) for v in value)


def _id(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 32:
        raise ValueError(f"uid/gid {value!r} is out of range")
    return value


@dataclass(frozen=True)
class Snapshot:
    """One backup: the root tree plus who, when and what."""

    time: str
    tree: BlobId
    paths: tuple[str, ...]
    hostname: str = ""
    username: str = ""
    uid: int = 0
    gid: int = 0
    excludes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    parent: SnapshotId | None = None
    original: SnapshotId | None = None
    program_version: str = ""
    summary: SnapshotSummary | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    id: SnapshotId | None = field(default=None, compare=False)

    @property
    def time_ns(self) -> int:
        """The snapshot time in nanoseconds since the epoch."""
        return parse_time(self.time)

    @property
    def short_id(self) -> str:
        """First 8 hex digits of the id, as restic prints it."""
        return self.id.hex()[:8] if self.id else "????????"

    def to_json(self) -> dict[str, Any]:
        """The document in restic's field order and omitempty rules."""
        doc: dict[str, Any] = {"time": self.time}
        if self.parent is not None:
            doc["parent"] = self.parent.hex()
        doc["tree"] = self.tree.hex()
        doc["paths"] = list(self.paths)
        if self.hostname:
            doc["hostname"] = self.hostname
        if self.username:
            doc["username"] = self.username
        if self.uid:
            doc["uid"] = self.uid
        if self.gid:
            doc["gid"] = self.gid
        if self.excludes:
            doc["excludes"] = list(self.excludes)
        if self.tags:
            doc["tags"] = list(self.tags)
        if self.original is not None:
            doc["original"] = self.original.hex()
        if self.program_version:
            doc["program_version"] = self.program_version
        if self.summary is not None:
            doc["summary"] = self.summary.to_json()
        doc.update(self.extra)
        return doc

    def to_listing_json(self) -> dict[str, Any]:
        """The snapshot as ``restic snapshots --json`` lists it: :meth:`to_json`,
        then ``id`` and ``short_id`` (when it has an id)."""
        doc = self.to_json()
        if self.id is not None:
            doc["id"] = self.id.hex()
            doc["short_id"] = self.short_id
        return doc

    def to_bytes(self) -> bytes:
        """Compact JSON encoding."""
        return json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, doc: Any, snapshot_id: SnapshotId | None = None) -> Snapshot:
        """Parse a snapshot document; unknown fields are kept in ``extra``."""
        known = {
            "time", "parent", "tree", "paths", "hostname", "username", "uid", "gid",
            "excludes", "tags", "original", "program_version", "summary",
        }  # fmt: skip
        try:
            if not isinstance(doc, dict):
                raise TypeError("not an object")
            summary = doc.get("summary")
            time = _text(doc["time"], "time")
            parse_time(time)
            return cls(
                time=time,
                tree=BlobId(parse_id(doc["tree"])),
                paths=_texts(doc.get("paths"), "paths"),
                hostname=_text(doc.get("hostname"), "hostname"),
                username=_text(doc.get("username"), "username"),
                uid=_id(doc.get("uid")),
                gid=_id(doc.get("gid")),
                excludes=_texts(doc.get("excludes"), "excludes"),
                tags=_texts(doc.get("tags"), "tags"),
                parent=SnapshotId(parse_id(doc["parent"])) if doc.get("parent") else None,
                original=SnapshotId(parse_id(doc["original"])) if doc.get("original") else None,
                program_version=_text(doc.get("program_version"), "program_version"),
                summary=_summary(summary),
                extra={k: v for k, v in doc.items() if k not in known},
                id=snapshot_id,
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise malformed("snapshot", exc) from None
