"""What a job does: its kind and its inputs, as plain values.

Every kind of job goes through the same queue, state machine and commands
(:mod:`.controller`); what differs is the engine call it makes and the
messages it is reported with (``backup:*`` for backups, ``restore:*`` for
restores, ``upkeep:*`` for repository maintenance: forget + prune, and a
check of a part of the data). A new kind adds a spec here, a runner and its
messages there.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from desktop_agent.config import UpkeepConfig
from desktop_agent.engine.check import MAX_SUBSET_GROUPS
from desktop_agent.engine.forget import KeepPolicy
from desktop_agent.engine.snapshot import Snapshot

__all__ = ["BackupSpec", "JobKind", "JobSpec", "KEEP_RULES", "RestoreSpec", "UpkeepSpec"]

KEEP_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
"""The counted keep rules of a forget job, as ``[upkeep] keep_<rule>`` names them."""


class JobKind(enum.Enum):
    """What a job does."""

    BACKUP = "backup"
    RESTORE = "restore"
    UPKEEP = "upkeep"

    @property
    def noun(self) -> str:
        """The kind in a sentence: "a backup", "a restore", "an upkeep job"."""
        return "an upkeep job" if self is JobKind.UPKEEP else f"a {self.value}"


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


@dataclass(frozen=True)
class UpkeepSpec:
    """Repository maintenance: ``forget`` (then prune) or ``check`` (a part of the data).

    ``forget``: apply the keep policy ``keep`` (pairs of a rule of
    :data:`KEEP_RULES` and its count; -1 keeps all) to each group of this
    computer's snapshots with the same paths (restic's default grouping by
    host and paths; other computers' snapshots are left alone), then prune
    if a snapshot was removed. ``check``: verify the structure and read
    group ``n`` of ``t`` of the packs (``subset``, restic's
    ``check --read-data-subset n/t``). Raises ``ValueError`` for anything
    else: an empty policy would forget everything.
    """

    task: Literal["forget", "check"]
    keep: tuple[tuple[str, int], ...] = ()
    subset: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.task == "forget":
            if self.subset is not None:
                raise ValueError("a forget job reads no data: it takes no subset")
            for rule, count in self.keep:
                if rule not in KEEP_RULES:
                    raise ValueError(f"unknown keep rule {rule!r} (one of {', '.join(KEEP_RULES)})")
                if not isinstance(count, int) or count < -1:
                    raise ValueError(f"keep {rule}: {count!r} is not a count (0 or more, -1: all)")
            if self.policy.empty:
                raise ValueError(
                    "the keep policy keeps nothing: set at least one [upkeep] keep_* value "
                    "above 0, or every snapshot would be forgotten"
                )
        elif self.task == "check":
            if self.keep:
                raise ValueError("a check job forgets nothing: it takes no keep policy")
            if self.subset is None:
                raise ValueError("a check job needs the part of the data to read (n, t)")
            n, t = self.subset
            if not 1 <= n <= t <= MAX_SUBSET_GROUPS:
                raise ValueError(
                    f"cannot read part {n}/{t} of the data: it takes 1 <= n <= t <= "
                    f"{MAX_SUBSET_GROUPS} (restic's groups: by a pack id's first byte)"
                )
        else:
            raise ValueError(f"unknown upkeep task {self.task!r} (forget or check)")

    @classmethod
    def forget(cls, config: UpkeepConfig) -> UpkeepSpec:
        """Forget (then prune) by the ``[upkeep] keep_*`` policy."""
        keep = tuple(
            (rule, count) for rule in KEEP_RULES if (count := getattr(config, f"keep_{rule}"))
        )
        return cls("forget", keep=keep)

    @classmethod
    def check(cls, n: int, t: int) -> UpkeepSpec:
        """Check the repository and read part ``n`` of ``t`` of its data."""
        return cls("check", subset=(n, t))

    @property
    def kind(self) -> JobKind:
        """:attr:`JobKind.UPKEEP`."""
        return JobKind.UPKEEP

    @property
    def policy(self) -> KeepPolicy:
        """The keep policy of a forget job (empty for a check)."""
        counts: dict[str, int] = dict(self.keep)
        return KeepPolicy(
            last=counts.get("last", 0),
            hourly=counts.get("hourly", 0),
            daily=counts.get("daily", 0),
            weekly=counts.get("weekly", 0),
            monthly=counts.get("monthly", 0),
            yearly=counts.get("yearly", 0),
        )

    def describe(self) -> str:
        """One line for people: what the job does."""
        if self.task == "forget":
            return f"forget snapshots of this computer ({self.policy.describe()}), then prune"
        n, t = self.subset or (1, 1)
        return f"check of the repository, reading {n}/{t} of the data"


JobSpec = BackupSpec | RestoreSpec | UpkeepSpec
