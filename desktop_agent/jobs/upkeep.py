"""The upkeep jobs' work: forget + prune by the keep policy, and a check of a part of the data.

Blocking functions for the controller's worker thread, like :mod:`.restores`
(the protocol's ``upkeep:*`` messages report them, see docs/protocol.md).
The repository is locked as restic locks it:

* forget holds an exclusive lock while it lists and removes snapshots, then
  lets it go; prune takes its own exclusive lock (one after the other, as
  ``restic forget --prune`` does in restic 0.14). Only this computer's
  snapshots are forgotten, each group of the same paths on its own (restic's
  default grouping by host and paths); prune runs only when a snapshot was
  removed, as restic's ``forget --prune`` does.
* check holds a shared lock (as ``desktop-agent check`` does): backups may
  run beside it elsewhere, a prune may not. A repository where no lock can
  be written (read-only media) is checked without one, with a warning.

Pause and cancel go through the engine's :class:`~desktop_agent.engine.control.Control`:
at a checkpoint before each step, and wherever the engine checkpoints
(prune: while it marks what is used and while it repacks; check: while it
walks the trees and before each pack it reads). Prune checkpoints nowhere
after it starts writing the new index, so a cancel never interrupts a
deletion: a cancelled prune leaves at most new packs no index lists, which
the next prune removes. A paused prune keeps its exclusive lock until it is
resumed or cancelled.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from desktop_agent.engine.check import check
from desktop_agent.engine.control import Control
from desktop_agent.engine.errors import EngineError, IntegrityError, StorageError
from desktop_agent.engine.forget import (
    ForgetGroup,
    ForgetRefused,
    KeepPolicy,
    apply_policy,
    group_snapshots,
)
from desktop_agent.engine.lock import Lock
from desktop_agent.engine.progress import Progress, Reporter
from desktop_agent.engine.prune import PruneResult, prune
from desktop_agent.engine.repository import Repository, hostname
from desktop_agent.engine.storage import FileType
from desktop_agent.termtext import human_bytes

from .spec import UpkeepSpec

__all__ = ["MAX_ERROR", "UpkeepResult", "one_line", "run_upkeep"]

log = logging.getLogger(__name__)

MAX_ERROR = 600  # characters of an error message sent to clients; the log has it all
_LOGGED_FINDINGS = 50  # check errors and warnings logged one by one
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class UpkeepResult:
    """What an upkeep job did; ``summary`` says it in one line.

    ``items_processed`` and ``bytes_processed`` are the totals its progress
    counted: packs repacked by prune, or packs read by check, and their bytes.
    """

    task: str
    summary: str
    forgotten: int = 0  # snapshots removed
    kept: int = 0  # snapshots of this computer kept
    prune: PruneResult | None = None  # None: nothing was forgotten, so nothing pruned
    packs: int = 0  # check: packs in the repository
    packs_read: int = 0
    warnings: tuple[str, ...] = ()
    items_processed: int = 0
    bytes_processed: int = 0

    @property
    def freed_bytes(self) -> int:
        """Bytes prune removed from the repository (0 without a prune)."""
        p = self.prune
        return p.bytes_before - p.bytes_after if p is not None else 0


class _Tally:
    """Passes progress on and remembers the last report (the final totals)."""

    def __init__(self, out: Reporter | None) -> None:
        self.out = out
        self.last: Progress | None = None

    def __call__(self, p: Progress) -> None:
        self.last = p
        if self.out is not None:
            self.out(p)

    @property
    def totals(self) -> tuple[int, int]:
        last = self.last
        return (last.files_done, last.bytes_done) if last is not None else (0, 0)


def run_upkeep(
    repo: Repository,
    spec: UpkeepSpec,
    *,
    progress: Reporter | None = None,
    control: Control | None = None,
) -> UpkeepResult:
    """Run the upkeep ``spec`` asks for; raises what the engine raises.

    ``Cancelled`` when cancelled; :class:`~desktop_agent.engine.errors.IntegrityError`
    with a one-line message (naming the first problem) when a check finds
    errors; another ``EngineError`` when the work cannot be done.
    """
    control = control or Control()
    tally = _Tally(progress)
    if spec.task == "forget":
        return _forget_and_prune(repo, spec.policy, tally, control)
    assert spec.subset is not None  # the spec checked it
    return _check(repo, spec.subset, tally, control)


def one_line(text: str, limit: int = MAX_ERROR) -> str:
    """``text`` on one line (control characters, in file names say, as ``?``), shortened."""
    text = _UNPRINTABLE.sub("?", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ------------------------------------------------------------ forget + prune
def _forget_and_prune(
    repo: Repository, policy: KeepPolicy, tally: _Tally, control: Control
) -> UpkeepResult:
    control.checkpoint()
    groups = _forget(repo, policy, hostname())
    removed = sum(len(g.remove) for g in groups)
    kept = sum(len(g.keep) for g in groups)
    log.info("upkeep: forgot %d snapshot(s), kept %d (%s)", removed, kept, policy.describe())
    if not removed:
        return UpkeepResult(
            "forget",
            f"forgot no snapshots (kept {kept}): nothing to prune",
            kept=kept,
        )
    # Cancelling here is safe: the snapshots are gone, their data stays until
    # the next prune.
    control.checkpoint()
    pruned = prune(repo, progress=tally, control=control)
    log.info("upkeep: %s", pruned.summary())
    items, nbytes = tally.totals
    freed = pruned.bytes_before - pruned.bytes_after
    return UpkeepResult(
        "forget",
        f"forgot {_plural(removed, 'snapshot')} (kept {kept}), pruned {human_bytes(freed)}",
        forgotten=removed,
        kept=kept,
        prune=pruned,
        items_processed=items,
        bytes_processed=nbytes,
    )


def _forget(repo: Repository, policy: KeepPolicy, host: str) -> list[ForgetGroup]:
    """engine.forget's rules applied to ``host``'s groups only (restic's ``--host``).

    Refuses (:class:`ForgetRefused`) before removing anything when the
    policy would leave a group empty; a snapshot that cannot be removed
    fails the job (the others are removed; nothing is pruned).
    """
    with Lock(repo, exclusive=True):
        # unreadable snapshots are left alone; prune then refuses to run and says why
        readable = repo.list_snapshots(skip_damaged=True)
        groups: list[ForgetGroup] = []
        for (group_host, paths), snaps in group_snapshots(
            s for s in readable if s.hostname == host
        ).items():
            keep, remove, reasons = apply_policy(snaps, policy)
            group = ForgetGroup(
                group_host,
                paths,
                tuple(keep),
                tuple(remove),
                {k: tuple(v) for k, v in reasons.items()},
            )
            if not keep:
                raise ForgetRefused(
                    f"refusing to forget every snapshot of {group.describe()}: none matches "
                    f"the policy ({policy.describe()})"
                )
            groups.append(group)
        failed: list[str] = []
        for group in groups:
            for snap in group.remove:
                try:
                    repo.storage.remove(FileType.SNAPSHOT, (snap.id or b"").hex())
                except (EngineError, OSError) as exc:
                    failed.append(f"snapshot {snap.short_id}: {exc}")
        if failed:
            raise StorageError(
                one_line(
                    f"{len(failed)} snapshot(s) could not be forgotten, nothing was pruned: "
                    f"{failed[0]}"
                )
            )
    return groups


# -------------------------------------------------------------------- check
@contextmanager
def _shared_lock(repo: Repository) -> Iterator[None]:
    """A shared lock, or none where none can be written (read-only media), as the CLI does."""
    lock = Lock(repo, exclusive=False)
    try:
        lock.acquire()
    except StorageError as exc:
        log.warning("cannot lock the repository (%s); checking it without a lock", exc)
    try:
        yield
    finally:
        lock.release()  # a lock never taken has nothing to remove


def _check(
    repo: Repository, subset: tuple[int, int], tally: _Tally, control: Control
) -> UpkeepResult:
    n, t = subset
    control.checkpoint()
    with _shared_lock(repo):
        found = check(repo, read_data_subset=(n, t), progress=tally, control=control)
    for warning in found.warnings[:_LOGGED_FINDINGS]:
        log.warning("upkeep check: %s", warning)
    if not found.ok:
        for error in found.errors[:_LOGGED_FINDINGS]:
            log.error("upkeep check: %s", error)
        more = len(found.errors) - 1
        tail = f" (and {more} more, see the log)" if more else ""
        first = one_line(found.errors[0], MAX_ERROR - 100)
        raise IntegrityError(
            f"check of {n}/{t} of the data found {_plural(len(found.errors), 'error')}: "
            f"{first}{tail}"
        )
    items, nbytes = tally.totals
    summary = f"checked {n}/{t} of the data: {_plural(found.packs_read, 'pack')}, no errors"
    if found.warnings:
        summary += f" ({_plural(len(found.warnings), 'warning')}, see the log)"
    return UpkeepResult(
        "check",
        summary,
        packs=found.packs,
        packs_read=found.packs_read,
        warnings=tuple(found.warnings),
        items_processed=items,
        bytes_processed=nbytes,
    )
