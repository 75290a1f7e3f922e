"""Prune: remove data no snapshot references, in restic's safe order.

1. Take an exclusive lock; load the index fresh; list snapshots and packs.
2. Mark every tree and data blob reachable from a snapshot.
3. Classify packs: fully used (keep), fully unused (delete), partly used
   (repack when at least ``repack_threshold`` of it is unused, else keep),
   and packs no index knows (left by interrupted runs: delete). A blob
   stored twice counts as used only where the index points.
4. Repack: copy the used blobs of the packs to repack, still encrypted,
   into new packs, durably stored.
5. Write new index files that list every kept and new pack; only then
   delete the old index files (while both exist they agree on every pack
   still present; restic does it the same way);
6. only then delete the packs that are no longer needed.

A crash at any step leaves a valid repository: new packs are unreferenced
until the new index exists; while both old and new index files exist they
agree on every pack still present; packs are deleted last, when nothing
lists them. Deletions never precede the writes that make them safe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .control import Control
from .errors import EngineError, IntegrityError, describe_oserror
from .ids import BlobId, BlobType, PackId
from .index import MAX_BLOBS_PER_FILE, MasterIndex, index_bytes
from .lock import Lock
from .pack import PackBuilder, PackedBlob
from .progress import ProgressState, Reporter
from .repository import Repository
from .storage import FileType
from .writer import PACK_SIZE, remove_stale_spool

__all__ = ["prune", "PruneResult", "PrunePlan", "plan_prune"]


@dataclass
class PrunePlan:
    """What prune is about to do."""

    used: dict[BlobType, set[bytes]] = field(default_factory=dict)
    keep: list[PackId] = field(default_factory=list)
    repack: list[PackId] = field(default_factory=list)
    delete: list[PackId] = field(default_factory=list)  # unused packs listed in the index
    orphans: list[PackId] = field(default_factory=list)  # packs no index lists
    old_indexes: list[str] = field(default_factory=list)
    packs: dict[PackId, list[PackedBlob]] = field(default_factory=dict)
    sizes: dict[PackId, int] = field(default_factory=dict)
    unused_bytes: int = 0
    total_bytes: int = 0


@dataclass(frozen=True)
class PruneResult:
    """What prune did."""

    packs_before: int
    packs_after: int
    packs_deleted: int
    packs_repacked: int
    packs_written: int
    bytes_before: int
    bytes_after: int
    unused_blobs: int
    seconds: float

    def summary(self) -> str:
        """One paragraph for people."""
        freed = self.bytes_before - self.bytes_after
        return (
            f"prune: {self.packs_deleted} pack(s) deleted, {self.packs_repacked} repacked into "
            f"{self.packs_written} new; {self.unused_blobs} unused blob(s) removed; "
            f"{_mib(self.bytes_before)} -> {_mib(self.bytes_after)} ({_mib(freed)} freed) "
            f"in {self.seconds:.1f} s"
        )

    def to_json(self) -> dict[str, object]:
        """The ``--json`` message: its type, :meth:`summary`, then every field."""
        return {
            "message_type": "prune",
            "summary": self.summary(),
            "packs_before": self.packs_before,
            "packs_after": self.packs_after,
            "packs_deleted": self.packs_deleted,
            "packs_repacked": self.packs_repacked,
            "packs_written": self.packs_written,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "unused_blobs": self.unused_blobs,
            "seconds": self.seconds,
        }


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _mark_used(repo: Repository, control: Control) -> dict[BlobType, set[bytes]]:
    used: dict[BlobType, set[bytes]] = {BlobType.DATA: set(), BlobType.TREE: set()}
    trees = used[BlobType.TREE]
    data = used[BlobType.DATA]
    try:
        snaps = repo.list_snapshots()
    except IntegrityError as exc:
        # the data such a snapshot needs would look unused and be deleted
        raise IntegrityError(
            f"{exc}; prune stops so that the data it refers to is not deleted: restore that "
            "file from a copy of the repository, or remove it from snapshots/ if it is lost, "
            "then run prune again"
        ) from None
    for snap in snaps:
        stack = [snap.tree]
        while stack:
            control.checkpoint()
            tree_id = stack.pop()
            if tree_id in trees:
                continue
            trees.add(tree_id)
            try:
                nodes = repo.load_tree(tree_id)
            except EngineError as exc:
                raise IntegrityError(
                    f"snapshot {snap.short_id} cannot be read completely ({exc}); "
                    "prune stops here so that no data is lost: run `desktop-agent check`"
                ) from None
            for node in nodes:
                # whatever a node refers to stays, whatever its type says (an
                # undecodable node keeps the references that parsed): keeping
                # too much is harmless, deleting what a snapshot uses is not
                if node.content:
                    data.update(node.content)
                if node.subtree is not None:
                    stack.append(node.subtree)
    return used


def plan_prune(
    repo: Repository, *, repack_threshold: float = 0.1, control: Control | None = None
) -> PrunePlan:
    """Work out what to keep, repack and delete (reads only)."""
    control = control or Control()
    plan = PrunePlan()
    # a fresh index, read under the exclusive lock (superseded files are ignored)
    repo.index = MasterIndex()
    plan.old_indexes, plan.packs = repo.load_index()
    plan.sizes = {PackId(bytes.fromhex(n)): size for n, size in repo.storage.list(FileType.PACK)}
    plan.orphans = [p for p in plan.sizes if p not in plan.packs]
    missing = [p for p in plan.packs if p not in plan.sizes]
    if missing:
        raise IntegrityError(
            f"{len(missing)} pack(s) listed in the index are missing (e.g. {missing[0].hex()}); "
            "prune stops so that nothing else is lost: run `desktop-agent check`"
        )
    plan.used = _mark_used(repo, control)
    # restic's rule: every blob a snapshot needs must be in the index, or
    # the pack that still holds it (unindexed after an index file was lost)
    # would be deleted as an orphan
    for blob_type, ids in plan.used.items():
        absent = [b for b in ids if not repo.index.has(blob_type, b)]
        if absent:
            raise IntegrityError(
                f"{len(absent)} {blob_type.label} blob(s) that snapshots need are not in the "
                f"index (e.g. {absent[0].hex()}); prune stops so that no data is lost: run "
                "`desktop-agent check`; if the index is damaged, `restic rebuild-index` "
                "(restic 0.16 and newer: `restic repair index`) rebuilds it from the packs"
            )
    for pack_id, blobs in plan.packs.items():
        size = plan.sizes[pack_id]
        plan.total_bytes += size
        used_bytes = 0
        unused = 0
        for b in blobs:
            entry = repo.index.lookup(b.type, b.id)
            is_home = entry is not None and entry.pack == pack_id and entry.offset == b.offset
            if b.id in plan.used[b.type] and is_home:
                used_bytes += b.length
            else:
                unused += 1
        if unused == 0:
            plan.keep.append(pack_id)
        elif used_bytes == 0:
            plan.delete.append(pack_id)
            plan.unused_bytes += size
        elif (size - used_bytes) / size >= repack_threshold:
            plan.repack.append(pack_id)
            plan.unused_bytes += size - used_bytes
        else:
            plan.keep.append(pack_id)
    return plan


def prune(
    repo: Repository,
    *,
    repack_threshold: float = 0.1,
    progress: Reporter | None = None,
    control: Control | None = None,
) -> PruneResult:
    """Remove unreferenced data (see the module docstring for the order)."""
    control = control or Control()
    started = time.monotonic()
    state = ProgressState(progress, 0.2)
    with Lock(repo, exclusive=True) as lock:
        remove_stale_spool(repo)  # half-built packs of killed runs on this host
        plan = plan_prune(repo, repack_threshold=repack_threshold, control=control)
        # --- 4. repack, still encrypted, into new durable packs
        spool = repo.storage.spool_dir()
        builders = {
            BlobType.DATA: PackBuilder(repo.key, spool),
            BlobType.TREE: PackBuilder(repo.key, spool),
        }
        written: list[tuple[PackId, list[PackedBlob]]] = []
        written_bytes = 0
        state.add_total(len(plan.repack), sum(plan.sizes[p] for p in plan.repack))
        state.finish_scan()
        unused_blobs = 0

        def finish(blob_type: BlobType) -> None:
            nonlocal written_bytes
            builder = builders[blob_type]
            if len(builder):
                pack_id, path, blobs, size = builder.finish()
                repo.storage.save_file(FileType.PACK, pack_id.hex(), path)
                written.append((pack_id, blobs))
                written_bytes += size

        try:
            for pack_id in plan.repack:
                control.checkpoint()
                try:
                    raw = repo.storage.load(FileType.PACK, pack_id.hex())
                except EngineError as exc:
                    raise _stopped(pack_id, exc) from None
                view = memoryview(raw)
                sealed: memoryview | bytes = b""
                for b in plan.packs[pack_id]:
                    entry = repo.index.lookup(b.type, b.id)
                    home = entry is not None and entry.pack == pack_id and entry.offset == b.offset
                    if not (b.id in plan.used[b.type] and home):
                        unused_blobs += 1
                        continue
                    sealed = view[b.offset : b.offset + b.length]  # no copy
                    # verify before copying: never spread a damaged blob
                    try:
                        repo.decode_blob(b.type, b.id, sealed, b.uncompressed_length)
                    except EngineError as exc:
                        raise _stopped(pack_id, exc) from None
                    try:
                        builders[b.type].add(b.type, BlobId(b.id), sealed, b.uncompressed_length)
                        if builders[b.type].size >= PACK_SIZE:
                            finish(b.type)
                    except OSError as exc:
                        raise describe_oserror(exc, builders[b.type].path or spool) from None
                # let go of this pack before the next one is read (peak memory)
                sealed = b""
                del view, raw
                state.add_done(nbytes=plan.sizes[pack_id], files=1)
                state.maybe_report()
            try:
                finish(BlobType.DATA)
                finish(BlobType.TREE)
            except OSError as exc:
                raise describe_oserror(exc, spool) from None
        except BaseException:
            for builder in builders.values():
                builder.discard()
            raise
        for pack_id in plan.delete:
            unused_blobs += len(plan.packs[pack_id])
        # --- 5. the new index first, then the old index files go; not without a
        # fresh lock (a prune paused while the laptop slept may have lost it)
        lock.ensure_held()
        kept = [(p, plan.packs[p]) for p in plan.keep] + written
        new_names = _write_index(repo, kept)
        for name in plan.old_indexes:
            if name not in new_names:
                repo.storage.remove(FileType.INDEX, name)
        # --- 6. packs last
        for pack_id in plan.repack + plan.delete + plan.orphans:
            repo.storage.remove(FileType.PACK, pack_id.hex())
    after = sum(plan.sizes[p] for p in plan.keep) + written_bytes
    state.report_final()
    return PruneResult(
        packs_before=len(plan.sizes),
        packs_after=len(plan.keep) + len(written),
        packs_deleted=len(plan.delete) + len(plan.orphans),
        packs_repacked=len(plan.repack),
        packs_written=len(written),
        bytes_before=sum(plan.sizes.values()),
        bytes_after=after,
        unused_blobs=unused_blobs,
        seconds=time.monotonic() - started,
    )


def _stopped(pack_id: PackId, exc: EngineError) -> EngineError:
    """The error for a pack that cannot be repacked: nothing was deleted yet."""
    return type(exc)(
        f"pack {pack_id.hex()} cannot be repacked ({exc}); prune stopped before deleting "
        "anything: run `desktop-agent check --read-data`"
    )


def _write_index(repo: Repository, packs: list[tuple[PackId, list[PackedBlob]]]) -> list[str]:
    """Index files listing ``packs`` (split to keep each file small)."""
    names: list[str] = []
    batch: list[tuple[PackId, list[PackedBlob]]] = []
    count = 0
    for pack in packs:
        batch.append(pack)
        count += len(pack[1])
        if count >= MAX_BLOBS_PER_FILE:
            names.append(repo.save_unpacked(FileType.INDEX, index_bytes(batch)))
            batch, count = [], 0
    if batch or not names:
        names.append(repo.save_unpacked(FileType.INDEX, index_bytes(batch)))
    return names
