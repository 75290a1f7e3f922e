"""What a job does: its kind and its inputs, as plain values.

Every kind of job goes through the same queue, state machine and commands
(:mod:`.controller`); what differs is the engine call it makes and the
messages it is reported with (``backup:*`` for backups, ``restore:*`` for
restores). A new kind (maintenance: prune, check) adds a spec here, a
runner and its messages there.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from desktop_agent.engine.snapshot import Snapshot

__all__ = ["BackupSpec", "JobKind", "JobSpec", "RestoreSpec"]


class JobKind(enum.Enum):
    """What a job does."""

    BACKUP = "backup"
    RESTORE = "restore"


@dataclass(frozen=True)
class BackupSpec:
    """A backup of ``paths`` (None: the configured sources), with the configured excludes."""

    paths: tuple[str, ...] | None = None

    @property
    def kind(self) -> JobKind:
        """:attr:`JobKind.BACKUP`."""
        return JobKind.BACKUP


@dataclass(frozen=True)
class RestoreSpec:
    """A restore of ``includes`` (snapshot paths; empty: everything) of ``snapshot``
    into ``target``, each entry at its full original path below it.

    Existing files are never replaced (each one is reported). ``new_folder``:
    the agent made ``target`` for this restore (a restore asked for over
    /ws); if the restore ends without having put anything into it, the
    folder is removed again.
    """

    snapshot: Snapshot
    includes: tuple[str, ...]
    target: str
    new_folder: bool = False

    @property
    def kind(self) -> JobKind:
        """:attr:`JobKind.RESTORE`."""
        return JobKind.RESTORE

    @property
    def snapshot_id(self) -> str:
        """The snapshot's full id (hex)."""
        return self.snapshot.id.hex() if self.snapshot.id else ""


JobSpec = BackupSpec | RestoreSpec
