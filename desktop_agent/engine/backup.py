"""The backup: what callers use, and the pipeline's assembly.

See docs/design.md, sections 4 and 5. The work is done by parts, each in
its own module:

* the **walker** (:mod:`.walker`) lists the sources depth-first and decides
  per file whether it is unchanged since the parent snapshot (same type,
  size, mtime, ctime and inode: the content list is reused without reading
  a byte), and per directory whether the directory cache lets it keep its
  tree id;
* the **file saver** (:mod:`.filesaver`) stores the contents of the other
  files: small ones in batches (or in helper processes,
  :mod:`.helperpool` and :mod:`.smallfiles`), large ones read and cut into
  content-defined chunks, all through a worker pool with bounded bytes in
  flight (:class:`~.writer.BlobWriter` dedups, compresses, encrypts and
  packs);
* the **tree saver** (:mod:`.treesaver`) saves each directory once all its
  entries are done, in post-order;
* each counts into a :class:`~.pipeline.BackupStats`; their sum is the
  snapshot's summary.

At the end: remaining packs are flushed, then the index is written, then
the snapshot (the write ordering of docs/design.md, section 2). A cancelled
or failed backup writes the index for packs already stored, so the next run
reuses them, but never a snapshot.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .. import __version__
from . import crypto
from .chunker import Chunker
from .control import Control
from .dircache import DirCache, cache_file
from .errors import EngineError, SourceError, StorageError
from .filesaver import FileSaver
from .filter import ExcludeFilter
from .gocompat import format_time
from .ids import BlobId, SnapshotId
from .journal import ChangeJournal, JournalRun
from .lock import Lock
from .memory import fewer_gc_passes, limit_malloc_arenas
from .pipeline import BackupStats, DirJob, Notices, SkippedPath
from .progress import ProgressState, Reporter
from .repository import Repository, hostname, username
from .snapshot import Snapshot, SnapshotSummary
from .storage import NetworkError, gone_message
from .treesaver import TreeSaver
from .walker import Walker, node_from_stat, scan, source_trie
from .writer import BlobWriter, remove_stale_spool

__all__ = [
    "BackupOptions",
    "BackupResult",
    "SkippedPath",
    "backup",
    "find_parent",
    "node_from_stat",
]


@dataclass(frozen=True)
class BackupOptions:
    """What to back up and how."""

    sources: Sequence[str]
    excludes: Sequence[str] = ()
    tags: Sequence[str] = ()
    host: str | None = None
    parent: str | None = None  # snapshot ref; None = latest with same host and paths
    workers: int = 0  # 0 = number of CPUs
    scan: bool = True  # count totals in a background thread (for percent and ETA)
    cache_dir: str | None = None  # where the directory cache lives (None: no cache)
    helpers: int = -1  # processes for many small files; -1 = one per CPU, 0 = none
    # the running agent's change journal (None: every directory is listed)
    journal: ChangeJournal | None = None


@dataclass(frozen=True)
class BackupResult:
    """A finished backup."""

    snapshot: Snapshot
    summary: SnapshotSummary
    skipped: tuple[SkippedPath, ...] = ()
    warnings: tuple[str, ...] = ()

    def to_json(self, duration: float) -> dict[str, object]:
        """restic's ``backup --json`` summary message; ``duration``: the seconds
        the backup took, as its caller measured them."""
        s = self.summary
        return {
            "message_type": "summary",
            "files_new": s.files_new,
            "files_changed": s.files_changed,
            "files_unmodified": s.files_unmodified,
            "dirs_new": s.dirs_new,
            "dirs_changed": s.dirs_changed,
            "dirs_unmodified": s.dirs_unmodified,
            "data_blobs": s.data_blobs,
            "tree_blobs": s.tree_blobs,
            "data_added": s.data_added,
            "data_added_packed": s.data_added_packed,
            "total_files_processed": s.total_files_processed,
            "total_bytes_processed": s.total_bytes_processed,
            "total_duration": round(duration, 3),
            "snapshot_id": self.snapshot.id.hex() if self.snapshot.id else None,
            "skipped": [{"path": k.path, "reason": k.reason} for k in self.skipped],
            "warnings": list(self.warnings),
        }


def find_parent(repo: Repository, paths: Sequence[str], host: str) -> Snapshot | None:
    """The latest snapshot of the same host and the same set of paths."""
    want = sorted(paths)
    best: Snapshot | None = None
    for snap in repo.list_snapshots(skip_damaged=True):  # an unreadable one is no parent
        if snap.hostname == host and sorted(snap.paths) == want:
            best = snap
    return best


class _Backup:
    """One run of the pipeline: the walker feeding the file and tree savers."""

    def __init__(
        self,
        repo: Repository,
        options: BackupOptions,
        progress: ProgressState,
        control: Control,
        parent: Snapshot | None,
        cache: DirCache | None = None,
        journal: JournalRun | None = None,
    ) -> None:
        self.repo = repo
        self.parent = parent
        self.progress = progress
        self.control = control
        self.filter = ExcludeFilter(options.excludes)
        self.notices = Notices(progress)
        self.writer = BlobWriter(repo)
        self.files = FileSaver(
            repo,
            self.writer,
            Chunker(crypto.chunker_seed(repo.key, repo.config.id)),
            self.notices,
            progress,
            control,
            workers=options.workers or os.cpu_count() or 2,
            helpers=options.helpers,
            # a first backup of these sources reads every file
            first=parent is None,
        )
        # the directory cache this run builds for the next
        # only what this run visits or reuses: every entry's tree is in the new
        # snapshot (a folder reused unlisted brings its subtree's entries along)
        new_cache = DirCache() if options.cache_dir else None
        self.trees = TreeSaver(self.writer, self.notices, new_cache)
        self.walker = Walker(
            repo,
            self.filter,
            cache,
            self.files,
            self.trees,
            self.notices,
            progress,
            control,
            journal,
        )

    @property
    def new_cache(self) -> DirCache | None:
        """The directory cache for the next run (None: none is kept)."""
        return self.trees.new_cache

    def run(self, sources: list[bytes]) -> BlobId:
        """Walk the sources and store everything; returns the root tree's id."""
        root = DirJob(b"/", None, self.parent.tree if self.parent else None)
        # the whole filesystem, or the sources and the directories above them
        self.walker.walk(root, None if b"/" in sources else source_trie(sources))
        if self.repo.index_loaded:
            # the blobs indexed so far go into the index's tables while the
            # helpers seal their last batches, not after (the local index
            # cache is written from the tables at the end)
            self.repo.index.merge_overlays()
        self.files.finish()
        self.wait_all()
        assert not self.trees.pending and root.tree_id is not None
        return root.tree_id

    def wait_all(self) -> None:
        """Wait until every queued file is stored and every tree saved."""
        files, trees = self.files, self.trees

        def busy() -> bool:
            return files.reading_busy() or trees.waiting()

        while files.reading or trees.pending:
            files.check_failure()  # also takes in finished readers
            files.pause_point()
            trees.drain()
            files.wait(busy)

    def finish(self) -> None:
        """Store the last packs, then the index (packs before the index that lists them)."""
        self.files.shutdown()
        self.writer.flush()
        self.writer.write_index()
        self.writer.close()

    def stats(self) -> BackupStats:
        """Everything the parts counted."""
        total = BackupStats()
        total.add(self.walker.stats)
        total.add(self.trees.stats)
        total.add(self.files.all_stats())
        return total

    def abort(self) -> None:
        """Stop workers; store and index the blobs already packed.

        Complete blobs in open packs are finished into packs too, so a
        cancelled or interrupted run loses no work. No snapshot is written.
        """
        self.files.abort()
        try:
            try:
                self.writer.flush()
            except EngineError:
                pass  # e.g. the disk is full: the packs that did get stored are indexed below
            try:
                self.writer.write_index()
            except EngineError:
                pass  # what is stored but unindexed is harmless (prune removes it)
        finally:
            self.writer.abandon()
            self.writer.close()


def backup(
    repo: Repository,
    options: BackupOptions,
    *,
    progress: Reporter | None = None,
    control: Control | None = None,
    progress_interval: float = 0.1,
) -> BackupResult:
    """Back up ``options.sources`` into ``repo`` and return the new snapshot.

    Raises :class:`SourceError` when no source can be read,
    :class:`Cancelled` when cancelled, and other :class:`EngineError`
    subclasses for repository failures. Unreadable files do not fail the
    backup: they are listed in :attr:`BackupResult.skipped`.
    """
    limit_malloc_arenas()
    control = control or Control()
    state = ProgressState(progress, progress_interval)
    start_ns = time.time_ns()
    paths = []
    for src in options.sources:
        p = os.path.abspath(os.path.expanduser(src))
        if p not in paths:
            paths.append(p)
    if not paths:
        raise SourceError("no backup sources configured")
    raw = [os.fsencode(p) for p in paths]
    missing = [p for p in paths if not os.path.lexists(p)]
    if len(missing) == len(paths):
        which = ", ".join(missing)
        raise SourceError(f"no backup source exists ({which})")

    host = options.host or hostname()
    # the compact index is kept beside the directory cache: a warm load reads one file
    repo.index_cache_dir = repo.index_cache_dir or options.cache_dir
    with Lock(repo, exclusive=False) as lock, fewer_gc_passes():
        remove_stale_spool(repo)
        # the index is loaded on first need: a run where nothing changed never needs it
        parent: Snapshot | None
        if options.parent:
            parent = repo.find_snapshot(options.parent)
        else:
            parent = find_parent(repo, paths, host)
        cache = None
        cache_path = cache_file(options.cache_dir, host, paths) if options.cache_dir else None
        if cache_path is not None and parent is not None and parent.id is not None:
            cache = DirCache.load(cache_path, repo.key, parent.id)
        journal_key = (host, tuple(paths), tuple(options.excludes))
        run: JournalRun | None = None
        if options.journal is not None and cache_path is not None:
            run = options.journal.begin(
                journal_key, parent.id if cache and parent else None, roots=raw
            )
        try:
            job = _Backup(repo, options, state, control, parent, cache, run)
            stop_scan = threading.Event()
            scanner = None
            last_root = cache.get(b"/") if cache is not None else None
            if options.scan and last_root is not None and last_root.files:
                # the last run's totals, from the cache: no second walk of the sources
                state.add_total(last_root.files, last_root.nbytes)
                state.finish_scan()
            elif options.scan:
                scanner = threading.Thread(
                    target=scan, args=(raw, job.filter, state, stop_scan), name="scan", daemon=True
                )
                scanner.start()
            else:
                state.finish_scan()
            try:
                tree_id = job.run(raw)
                job.finish()
            except BaseException as exc:
                stop_scan.set()
                job.abort()
                if isinstance(exc, StorageError) and not isinstance(exc, NetworkError):
                    try:
                        gone = not repo.storage.exists()
                    except NetworkError:
                        raise exc from None  # a server out of reach: the first error says it
                    if gone:
                        # whatever call met it first, the cause is the same
                        raise StorageError(gone_message(repo.storage.location)) from None
                raise
            finally:
                stop_scan.set()
                if scanner is not None:
                    scanner.join()
            summary = job.stats().summary(format_time(start_ns), format_time(time.time_ns()))
            snap = Snapshot(
                time=format_time(start_ns),
                tree=tree_id,
                paths=tuple(paths),
                hostname=host,
                username=username(),
                uid=os.getuid() if hasattr(os, "getuid") else 0,
                gid=os.getgid() if hasattr(os, "getgid") else 0,
                excludes=tuple(options.excludes),
                tags=tuple(options.tags),
                parent=parent.id if parent is not None else None,
                program_version=f"desktop-agent {__version__}",
                summary=summary,
            )
            control.checkpoint()  # a cancel that arrived at the very end still wins
            lock.ensure_held()  # never a snapshot after another client could prune
            snap_id = repo.save_snapshot(snap)
            repo.update_index_cache()
            if cache_path is not None and job.new_cache is not None:
                try:
                    job.new_cache.save(cache_path, repo.key, snap_id)
                except OSError:
                    cache_path = None  # only the next run's speed depends on it
            if run is not None and options.journal is not None and cache_path is not None:
                options.journal.commit(run, journal_key, snap_id)
                run = None  # committed: nothing to hand back
        finally:
            if run is not None and options.journal is not None:
                options.journal.abort(run)  # every way out but a commit hands the marks back
    state.report_final()
    return BackupResult(
        snapshot=replace(snap, id=SnapshotId(snap_id)),
        summary=summary,
        skipped=tuple(job.notices.skipped),
        warnings=tuple(job.notices.warnings),
    )
