"""The backup pipeline.

One engine thread walks the sources depth-first in name order and decides,
per file, whether it is unchanged since the parent snapshot (same type,
size, mtime, ctime and inode: the content list is reused without reading a
byte). Changed files are read and cut into content-defined chunks; every
chunk goes to a worker pool that hashes, deduplicates, compresses, encrypts
and packs it (:class:`~.writer.BlobWriter`). Small files travel in batches
so per-file overhead stays low.

The walker never waits for a file: each directory becomes a pending tree
that is finalized (encoded, hashed, stored) once the work of all its
entries is done. Directories finalize in post-order through one FIFO, so a
parent always sees its children's tree ids. Work in flight is bounded in
bytes, which bounds memory.

At the end: remaining packs are flushed, then the index is written, then the
snapshot (restic's write ordering). A cancelled or failed backup writes the
index for packs already stored, so the next run reuses them, but never a
snapshot.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import grp
import os
import pwd
import stat as st
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from .. import __version__
from . import crypto
from .chunker import MIN_SIZE, Chunker
from .control import Control
from .dircache import DirCache, DirEntrySig, cache_file, signature
from .errors import Cancelled, EngineError, SourceError, StorageError
from .filter import ExcludeFilter
from .gocompat import format_time
from .ids import BlobId, BlobType, PackId, SnapshotId
from .lock import Lock
from .memory import limit_malloc_arenas
from .pack import PackedBlob
from .progress import ProgressState, Reporter
from .repository import Repository, hostname, username
from .smallfiles import (
    FileResult,
    Helpers,
    open_for_reading,
    raise_if_failed,
    read_small,
    unportable,
)
from .snapshot import Snapshot, SnapshotSummary
from .storage import gone_message
from .tree import Node, NodeType, encode_tree, go_mode
from .writer import BlobWriter, SaveResult, remove_stale_spool

__all__ = [
    "BackupOptions",
    "BackupResult",
    "SkippedPath",
    "backup",
    "find_parent",
    "node_from_stat",
]

# Files up to this size are read whole and travel in batches.
SMALL_FILE = MIN_SIZE
_BATCH_FILES = 64
_BATCH_BYTES = 4 * 1024 * 1024
# Bytes submitted to workers but not yet processed.
_INFLIGHT_BYTES = 16 * 1024 * 1024

# Helper processes start once this many small files are seen (their start
# costs about 0.1 s; below this, threads are as fast).
_HELPERS_AFTER = 2000
_HELPER_BATCH_FILES = 128
_HELPER_QUEUE = 3  # batches a helper may have waiting
_READERS = 1  # threads reading and chunking large files


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


@dataclass(frozen=True)
class SkippedPath:
    """A path left out of the snapshot, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class BackupResult:
    """A finished backup."""

    snapshot: Snapshot
    summary: SnapshotSummary
    skipped: tuple[SkippedPath, ...] = ()
    warnings: tuple[str, ...] = ()


def _display(path: bytes) -> str:
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


class _FileJob:
    """A file whose content is being stored."""

    __slots__ = (
        "path",
        "node",
        "futures",
        "submitted",
        "pending",
        "content",
        "error",
        "vanished",
        "size",
        "changed",
    )

    def __init__(self, path: bytes, node: Node) -> None:
        self.path = path
        self.node = node
        self.futures: list[Future[SaveResult]] = []
        self.submitted = False  # all its work is in futures (a batch may still be filling)
        self.pending = False  # waiting for a helper process's answer
        self.content: list[BlobId] | None = None  # set when known without futures
        self.error: str | None = None
        self.vanished = False
        self.size = -1  # bytes actually read; -1 = as stat said
        self.changed = False

    def done(self) -> bool:
        return self.submitted and not self.pending and all(f.done() for f in self.futures)


class _Batch:
    """Small files read and stored together by one worker task."""

    def __init__(self) -> None:
        self.jobs: list[_FileJob] = []
        self.nbytes = 0


class _DirJob:
    """A directory whose tree is finalized when all its entries are done."""

    __slots__ = ("node", "entries", "parent_subtree", "tree_id", "path", "sig", "hit")

    def __init__(self, path: bytes, node: Node | None, parent_subtree: BlobId | None) -> None:
        self.path = path
        self.node = node
        self.entries: list[Node | _FileJob | _DirJob] = []
        self.parent_subtree = parent_subtree
        self.tree_id: BlobId | None = None
        self.sig: bytes | None = None  # listing signature, for the directory cache
        self.hit = False  # unchanged since the parent snapshot (tree id reused)

    def ready(self) -> bool:
        return all(not isinstance(e, _FileJob) or e.done() for e in self.entries)


class _DirFrame:
    """A directory on the walk's stack: its listing and the subdirectories walked so far."""

    __slots__ = ("job", "trie", "listing", "cached", "old_nodes", "subdirs", "_pos")

    def __init__(
        self,
        job: _DirJob,
        trie: dict[bytes, object] | None,
        listing: list[tuple[bytes, bytes, os.stat_result]],
    ) -> None:
        self.job = job
        self.trie = trie
        self.listing = listing
        self.cached: DirEntrySig | None = None
        self.old_nodes: dict[bytes, Node] | None = None
        self.subdirs: dict[bytes, _DirJob] = {}
        self._pos = 0

    def next_subdir(self) -> tuple[_DirJob, dict[bytes, object] | None] | None:
        """The next subdirectory to walk (and its part of the trie), or None."""
        listing = self.listing
        while self._pos < len(listing):
            name, path, s = listing[self._pos]
            self._pos += 1
            if not st.S_ISDIR(s.st_mode):
                continue
            old = self.old_nodes
            prev = old.get(name) if old is not None else None
            sub = _DirJob(
                path,
                node_from_stat(name, s),
                prev.subtree if prev is not None and prev.type == NodeType.DIR else None,
            )
            self.subdirs[name] = sub
            sub_trie = self.trie[name] if self.trie is not None else None
            assert sub_trie is None or isinstance(sub_trie, dict)
            return sub, sub_trie
        return None


@dataclass
class _Stats:
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    dirs_new: int = 0
    dirs_changed: int = 0
    dirs_unmodified: int = 0
    data_blobs: int = 0
    tree_blobs: int = 0
    data_added: int = 0
    data_added_packed: int = 0
    files: int = 0
    nbytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_blob(self, res: SaveResult, plain: int, blob_type: BlobType) -> None:
        if not res.new:
            return
        with self.lock:
            if blob_type is BlobType.DATA:
                self.data_blobs += 1
            else:
                self.tree_blobs += 1
            self.data_added += plain
            self.data_added_packed += res.stored


_users: dict[int, str] = {}
_groups: dict[int, str] = {}


def _user(uid: int) -> str:
    name = _users.get(uid)
    if name is None:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = ""
        _users[uid] = name
    return name


def _group(gid: int) -> str:
    name = _groups.get(gid)
    if name is None:
        try:
            name = grp.getgrgid(gid).gr_name
        except KeyError:
            name = ""
        _groups[gid] = name
    return name


def node_from_stat(name: bytes, s: os.stat_result) -> Node:
    """A node with the metadata restic records for an lstat result."""
    mode = s.st_mode
    fmt = st.S_IFMT(mode)
    if fmt == st.S_IFREG:
        ntype = NodeType.FILE
    elif fmt == st.S_IFDIR:
        ntype = NodeType.DIR
    elif fmt == st.S_IFLNK:
        ntype = NodeType.SYMLINK
    elif fmt == st.S_IFCHR:
        ntype = NodeType.CHARDEV
    elif fmt == st.S_IFBLK:
        ntype = NodeType.DEV
    elif fmt == st.S_IFIFO:
        ntype = NodeType.FIFO
    elif fmt == st.S_IFSOCK:
        ntype = NodeType.SOCKET
    else:
        ntype = NodeType.IRREGULAR
    links = s.st_nlink if ntype != NodeType.DIR else 0
    return Node(
        name=name,
        type=ntype,
        mode=go_mode(mode),
        mtime=s.st_mtime_ns,
        atime=s.st_mtime_ns,  # as restic without --with-atime: reading must not change trees
        ctime=s.st_ctime_ns,
        uid=s.st_uid,
        gid=s.st_gid,
        user=_user(s.st_uid),
        group=_group(s.st_gid),
        inode=s.st_ino,
        # the device only matters to tell hard links apart; it changes across
        # mounts, so (like restic >= 0.17) keep it only for hard-linked files
        device_id=s.st_dev if links > 1 else 0,
        size=s.st_size if ntype == NodeType.FILE else 0,
        links=links,
        device=s.st_rdev if ntype in (NodeType.CHARDEV, NodeType.DEV) else 0,
    )


def find_parent(repo: Repository, paths: Sequence[str], host: str) -> Snapshot | None:
    """The latest snapshot of the same host and the same set of paths."""
    want = sorted(paths)
    best: Snapshot | None = None
    for snap in repo.list_snapshots(skip_damaged=True):  # an unreadable one is no parent
        if snap.hostname == host and sorted(snap.paths) == want:
            best = snap
    return best


def _trie(sources: Sequence[bytes]) -> dict[bytes, object]:
    """Nested dict of path components; ``None`` marks a source (a leaf)."""
    root: dict[bytes, object] = {}
    for src in sorted(sources, key=len):
        comps = [c for c in src.split(b"/") if c]
        node = root
        covered = False
        for i, comp in enumerate(comps):
            if i == len(comps) - 1:
                node[comp] = None
            else:
                child = node.get(comp, {})
                if child is None:  # an enclosing directory is already a source
                    covered = True
                    break
                node[comp] = child
                assert isinstance(child, dict)
                node = child
        if covered:
            continue
    return root


class _Backup:
    def __init__(
        self,
        repo: Repository,
        options: BackupOptions,
        progress: ProgressState,
        control: Control,
        parent: Snapshot | None,
        cache: DirCache | None = None,
    ) -> None:
        self.repo = repo
        # the directory cache of the parent snapshot (None: compare trees),
        # and the one this run builds for the next
        self.cache = cache
        self.new_cache: DirCache | None = DirCache() if options.cache_dir else None
        self.options = options
        self.progress = progress
        self.control = control
        self.parent = parent
        self.filter = ExcludeFilter(options.excludes)
        self.chunker = Chunker(crypto.chunker_seed(repo.key, repo.config.id))
        self.writer = BlobWriter(repo)
        workers = options.workers or os.cpu_count() or 2
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backup")
        self.readers = ThreadPoolExecutor(max_workers=_READERS, thread_name_prefix="read")
        self.reading: deque[Future[None]] = deque()  # large files being read
        self._budget = threading.Condition()
        self._inflight = 0  # bytes submitted to the pool and not yet processed
        self._failure: BaseException | None = None
        self.walker = threading.get_ident()  # the thread that walks (and reports pauses)
        self.pending_dirs: deque[_DirJob] = deque()
        self.stats = _Stats()
        self.skipped: list[SkippedPath] = []
        self.warnings: list[str] = []
        self.batch = _Batch()
        self._errors_lock = threading.Lock()
        self.helpers: Helpers | None = None
        self.helper_open: list[_Batch] = []
        self.helper_batches: dict[int, list[_FileJob]] = {}
        self.helper_provisional: list[list[_FileJob]] = []
        self.batch_seq = 0
        self.small_files = 0

    # ---------------------------------------------------------------- utils
    def skip(self, path: bytes, reason: str) -> None:
        with self._errors_lock:
            self.skipped.append(SkippedPath(_display(path), reason))
            self.progress.errors += 1

    def warn(self, message: str) -> None:
        with self._errors_lock:
            self.warnings.append(message)

    def parent_nodes(self, subtree: BlobId | None) -> dict[bytes, Node]:
        if subtree is None:
            return {}
        try:
            return {n.name: n for n in self.repo.load_tree(subtree) if n.type != NodeType.INVALID}
        except EngineError as exc:
            self.warn(f"parent tree {subtree.hex()[:12]} unreadable ({exc}); files are re-read")
            return {}

    # ------------------------------------------------------- work in flight
    def submit(self, fn: Callable[..., object], nbytes: int, *args: object) -> Future[object]:
        """Queue work for the pool, waiting while too many bytes are in flight.

        Called by the walker and by the readers of large files; a task's
        bytes are released when it completes, and its failure is remembered
        for the walker to raise.
        """
        while True:
            with self._budget:
                if self._failure is not None:
                    raise self._failure
                if self._inflight == 0 or self._inflight + nbytes <= _INFLIGHT_BYTES:
                    self._inflight += nbytes
                    break
                self._budget.wait(0.05)
            self.pause_point()
        fut = self.pool.submit(self._guarded, fn, *args)
        fut.add_done_callback(lambda f: self._release(nbytes, f))
        return fut

    def _release(self, nbytes: int, fut: Future[object]) -> None:
        with self._budget:
            self._inflight -= nbytes
            if not fut.cancelled() and self._failure is None:
                self._failure = fut.exception()
            self._budget.notify_all()

    def _guarded(self, fn: Callable[..., object], *args: object) -> object:
        # Work already queued finishes even during a pause (the walker waits
        # for it before reporting the pause); a cancel stops it at once.
        if self.control.cancelled:
            raise Cancelled()
        return fn(*args)

    def pause_point(self) -> None:
        """A checkpoint in a wait: primary on the walker thread, secondary elsewhere."""
        if threading.get_ident() == self.walker:
            self.control.checkpoint(quiesce=self.quiesce)
        else:
            self.control.checkpoint(secondary=True)

    def quiesce(self) -> None:
        """Before a pause counts as effective: let work in flight finish (walker).

        That includes packs being stored and the index checkpoint that may
        follow them, so that nothing is written while the pause lasts.
        """
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if self.helpers is not None:
                self.poll_helpers()
            helpers_busy = self.helpers is not None and any(self.helpers.outstanding)
            with self._budget:
                if self._inflight == 0 and not helpers_busy:
                    break
                self._budget.wait(0.01)
        self.writer.wait_idle()

    def check_failure(self) -> None:
        """Raise the first failure of any task or reader."""
        if self._failure is not None:
            raise self._failure
        while self.reading and self.reading[0].done():
            self.reading.popleft().result()

    def reap(self) -> None:
        """Take in finished work and finalize what is ready (walker thread)."""
        if self.helpers is not None:
            self.poll_helpers()
        self.check_failure()
        self.drain()

    def wait_all(self) -> None:
        """Wait until every queued file is stored and every tree finalized."""
        while self.reading or self.pending_dirs:
            self.check_failure()  # also takes in finished readers
            self.pause_point()
            self.drain()
            with self._budget:
                reading = bool(self.reading) and not self.reading[0].done()
                waiting = bool(self.pending_dirs) and not self.pending_dirs[0].ready()
                if reading or waiting:
                    self._budget.wait(0.05)

    # ----------------------------------------------------------- file data
    def save_chunk(self, data: bytes | memoryview) -> SaveResult:
        res = self.writer.save(BlobType.DATA, data)
        self.stats.add_blob(res, len(data), BlobType.DATA)
        self.progress.add_done(nbytes=len(data), new=res.stored)
        return res

    def _read_error(self, job: _FileJob, exc: OSError) -> None:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            job.vanished = True
        elif exc.errno == errno.ELOOP:  # replaced by a symlink since we listed it
            job.vanished = True
        else:
            job.error = exc.strerror or str(exc)

    def run_batch(self, batch: _Batch, counted: bool = False) -> None:
        """Read a batch of small files and store their contents together.

        Usually in a worker thread. ``counted``: progress already counted
        these files (work redone after a helper died).
        """
        plain: list[tuple[_FileJob, bytes]] = []
        for job in batch.jobs:
            data = self.apply_read(job, read_small(job.path))
            if data is not None:
                plain.append((job, data))
        if not plain:
            return
        saved = self.writer.save_many(BlobType.DATA, [d for _, d in plain])
        nbytes = new = 0
        for (job, data), r in zip(plain, saved, strict=True):
            job.content = [r.id]
            nbytes += len(data)
            new += r.stored
            if not counted:
                self.stats.add_blob(r, len(data), BlobType.DATA)
        if not counted:
            self.progress.add_done(nbytes=nbytes, files=len(plain), new=new)

    def apply_read(self, job: _FileJob, res: FileResult) -> bytes | None:
        """Record how reading went; returns data still to be stored, if any."""
        kind = res[0]
        if kind == "vanished":
            job.vanished = True
            return None
        if kind == "error":
            job.error = res[1]
            return None
        _, data, size, changed, mtime = res
        job.size = size
        job.changed = changed
        if changed:
            job.node.mtime = mtime
        if not data:
            job.content = []
            self.progress.add_done(files=1)
            return None
        if len(data) > SMALL_FILE:  # it grew since we listed it: chunk it here
            job.content = [self.save_chunk(bytes(c)).id for c in self.chunker.buffer(data)]
            self.progress.add_done(files=1)
            return None
        return bytes(data)

    # ------------------------------------------------------- helper processes
    def apply_helper(self, helper: int, jobs: list[_FileJob], results: list[FileResult]) -> None:
        """Results of a helper's batch (main thread).

        A blob a helper reports is in its open pack, which only becomes
        durable when the helper finishes that pack; until then the jobs stay
        pending (their directories wait) and are remembered, so that a helper
        that dies takes no reported blob with it: those files are redone.
        """
        nbytes = files = new = 0
        provisional = self.helper_provisional[helper]
        for job, res in zip(jobs, results, strict=True):
            if res[0] == "stored":
                _, blob_id, size, changed, mtime, stored = res
                job.size = size
                job.changed = changed
                if changed:
                    job.node.mtime = mtime
                job.content = [] if blob_id is None else [BlobId(blob_id)]
                provisional.append(job)
                if stored:
                    with self.stats.lock:
                        self.stats.data_blobs += 1
                        self.stats.data_added += size
                        self.stats.data_added_packed += stored
                nbytes += size
                files += 1
                new += stored
                continue
            job.pending = False
            data = self.apply_read(job, res)
            if data is not None:  # only if it shrank back below the limit: store it here
                r = self.writer.save(BlobType.DATA, data)
                job.content = [r.id]
                nbytes += len(data)
                files += 1
        self.progress.add_done(nbytes=nbytes, files=files, new=new)

    def helper_packs(
        self, helper: int, packs: list[tuple[PackId, str, list[PackedBlob], int]]
    ) -> None:
        """A helper finished packs: everything it reported so far is durable."""
        for pack in packs:
            self.writer.adopt(pack)
        for job in self.helper_provisional[helper]:
            job.pending = False
        self.helper_provisional[helper] = []

    def poll_helpers(self, block: bool = False) -> None:
        """Take in whatever helpers have finished (main thread)."""
        helpers = self.helpers
        if helpers is None:
            return
        try:
            for i, msg in helpers.receive(None if block else 0.0):
                raise_if_failed(msg)  # a StorageError: the backup fails, as in-process
                jobs = self.helper_batches.pop(msg[1])
                self.apply_helper(i, jobs, msg[2])
                if msg[3]:
                    self.helper_packs(i, [unportable(p) for p in msg[3]])
        except (EOFError, OSError) as exc:
            self.helper_failed(exc)

    def helper_failed(self, exc: BaseException) -> None:
        """A helper died: redo here what the helpers had not made durable."""
        helpers, self.helpers = self.helpers, None
        if helpers is not None:
            helpers.close()  # their open packs are lost with them
        self.warn(f"helper process failed ({type(exc).__name__}); continuing without helpers")
        redo = [job for jobs in self.helper_provisional for job in jobs]
        self.helper_provisional = [[] for _ in self.helper_provisional]
        unanswered = [job for jobs in self.helper_batches.values() for job in jobs]
        self.helper_batches.clear()
        # batches still being filled for the helpers were never sent
        unanswered += [job for batch in self.helper_open for job in batch.jobs]
        self.helper_open = [_Batch() for _ in self.helper_open]
        for jobs, counted in ((redo, True), (unanswered, False)):
            if not jobs:
                continue
            batch = _Batch()
            batch.jobs = jobs
            for job in jobs:
                job.content = None
            self.run_batch(batch, counted=counted)
            for job in jobs:
                job.pending = False
                job.submitted = True

    def start_helpers(self) -> None:
        """Start helper processes for small files (see :mod:`.smallfiles`)."""
        n = self.options.helpers
        if n < 0:
            n = os.cpu_count() or 2
        if n == 0:
            return
        self.repo.ensure_index()
        known = b"".join(self.repo.index.blob_ids(BlobType.DATA))
        try:
            self.helpers = Helpers(
                n,
                self.repo.key,
                self.repo.compression,
                self.repo.storage.spool_dir(),
                self.writer.pack_size,
                known,
            )
        except (OSError, ValueError, EOFError) as exc:
            self.warn(f"cannot start helper processes ({exc}); using threads only")
            self.helpers = None
            return
        self.helper_open = [_Batch() for _ in range(n)]
        self.helper_provisional = [[] for _ in range(n)]

    def send_helper_batch(self, i: int) -> None:
        """Send helper ``i`` its open batch (waiting if it is far behind)."""
        helpers = self.helpers
        batch = self.helper_open[i]
        if helpers is None or not batch.jobs:
            return
        self.helper_open[i] = _Batch()
        while helpers.outstanding[i] >= _HELPER_QUEUE and self.helpers is not None:
            self.poll_helpers(block=True)
        self.batch_seq += 1
        self.helper_batches[self.batch_seq] = batch.jobs
        for job in batch.jobs:
            job.pending = True
            job.submitted = True
        if self.helpers is None:  # it died while we waited: do it here
            self.helper_failed(RuntimeError("helper gone"))
            return
        try:
            helpers.send(i, self.batch_seq, [j.path for j in batch.jobs])
        except (OSError, EOFError, ValueError) as exc:
            self.helper_failed(exc)

    def stop_helpers(self, *, keep_work: bool) -> None:
        """Collect every outstanding result and pack, then stop the helpers."""
        if self.helpers is None:
            return
        if keep_work:
            for i in range(len(self.helper_open)):
                self.send_helper_batch(i)
            while self.helpers is not None and any(self.helpers.outstanding):
                self.poll_helpers(block=True)
            if self.helpers is not None:
                try:
                    packs = self.helpers.flush()
                except (EOFError, OSError, RuntimeError) as exc:
                    self.helper_failed(exc)
                else:
                    for i in range(len(self.helper_provisional)):
                        self.helper_packs(i, packs if i == 0 else [])
        helpers, self.helpers = self.helpers, None
        if helpers is not None:
            helpers.close()

    def flush_batch(self) -> None:
        batch = self.batch
        if not batch.jobs:
            return
        self.batch = _Batch()
        fut = self.submit(self.run_batch, batch.nbytes, batch)
        for job in batch.jobs:
            job.futures = [fut]  # type: ignore[list-item]
            job.submitted = True

    def add_file(self, path: bytes, node: Node) -> _FileJob:
        job = _FileJob(path, node)
        self.progress.current_file = _display(path)
        if node.size <= SMALL_FILE:
            self.small_files += 1
            if self.small_files == _HELPERS_AFTER:
                self.flush_batch()  # its files must not wait for the end
                self.start_helpers()
            if self.helpers is not None:
                # routed by size: identical files meet in the same helper
                i = node.size % len(self.helpers)
                hb = self.helper_open[i]
                hb.jobs.append(job)
                hb.nbytes += node.size
                if len(hb.jobs) >= _HELPER_BATCH_FILES or hb.nbytes >= _BATCH_BYTES:
                    self.send_helper_batch(i)
                return job
            self.batch.jobs.append(job)
            self.batch.nbytes += node.size
            if len(self.batch.jobs) >= _BATCH_FILES or self.batch.nbytes >= _BATCH_BYTES:
                self.flush_batch()
            return job
        self.flush_batch()
        self.reading.append(self.readers.submit(self.read_large, job))
        return job

    def read_large(self, job: _FileJob) -> None:
        """Read and chunk a large file (a reader thread); chunks go to the pool."""
        try:
            self._read_large(job)
        finally:
            job.submitted = True
            with self._budget:
                self._budget.notify_all()

    def _read_large(self, job: _FileJob) -> None:
        self.control.checkpoint(secondary=True)
        try:
            fd = open_for_reading(job.path)
        except OSError as exc:
            self._read_error(job, exc)
            return
        self.progress.current_file = _display(job.path)
        with open(fd, "rb", buffering=0) as fh:
            try:
                before = os.fstat(fd)
                if not st.S_ISREG(before.st_mode):
                    job.vanished = True
                    return
                total = 0
                for view in self.chunker.blocks(fh):
                    self.control.checkpoint(secondary=True)
                    total += len(view)
                    job.futures.append(self.submit(self.save_chunk, len(view), view))  # type: ignore[arg-type]
                    self.progress.maybe_report()
                after = os.fstat(fd)
            except OSError as exc:
                self._read_error(job, exc)
                return
        job.size = total
        job.changed = after.st_mtime_ns != before.st_mtime_ns or after.st_size != total
        if job.changed:
            job.node.mtime = before.st_mtime_ns
        self.progress.add_done(files=1)

    # --------------------------------------------------------------- walk
    def entry(
        self, path: bytes, name: bytes, s: os.stat_result, old: Node | None, out: _DirJob
    ) -> None:
        """Back up one directory entry into ``out``."""
        node = node_from_stat(name, s)
        self.stats.files += node.type == NodeType.FILE
        if node.type == NodeType.FILE:
            self.stats.nbytes += node.size
            if (
                old is not None
                and old.type == NodeType.FILE
                and old.size == node.size
                and old.mtime == node.mtime
                and old.ctime == node.ctime
                and old.inode == node.inode
                and old.content is not None
                and all(self.repo.index.has(BlobType.DATA, b) for b in old.content)
            ):
                node.content = list(old.content)
                self.stats.files_unmodified += 1
                self.progress.add_done(nbytes=node.size, files=1)
                out.entries.append(node)
                return
            if old is None:
                self.stats.files_new += 1
            else:
                self.stats.files_changed += 1
            out.entries.append(self.add_file(path, node))
        elif node.type == NodeType.SYMLINK:
            try:
                node.linktarget = os.readlink(path)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return
                self.skip(path, exc.strerror or str(exc))
                return
            out.entries.append(node)
        else:
            out.entries.append(node)

    def list_dir(self, path: bytes) -> list[tuple[bytes, bytes, os.stat_result]]:
        """Sorted, filtered ``(name, path, lstat)`` of a directory's entries."""
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.skip(path, f"cannot list directory: {exc.strerror or exc}")
            return []
        listing = []
        flt = self.filter
        for e in entries:
            child = e.path
            if flt and flt.excluded(child):
                continue
            try:
                listing.append((e.name, child, e.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue
            except OSError as exc:
                self.skip(child, exc.strerror or str(exc))
        return listing

    def list_trie(
        self, path: bytes, trie: dict[bytes, object]
    ) -> list[tuple[bytes, bytes, os.stat_result]]:
        """``(name, path, lstat)`` of the sources and their parents below ``path``."""
        listing = []
        for name in sorted(trie):
            child = path.rstrip(b"/") + b"/" + name
            try:
                s = os.lstat(child)
            except OSError as exc:
                reason = (
                    "does not exist" if exc.errno == errno.ENOENT else (exc.strerror or str(exc))
                )
                self.skip(child, f"source {reason}")
                continue
            if trie[name] is not None and not st.S_ISDIR(s.st_mode):
                self.skip(child, "a parent of a source is not a directory")
                continue
            if trie[name] is None and self.filter and self.filter.excluded(child):
                continue  # a source that the excludes name, as restic does
            listing.append((name, child, s))
        return listing

    def walk_dir(self, root: _DirJob, trie: dict[bytes, object] | None = None) -> None:
        """Back up a directory hierarchy, depth first, with an explicit stack.

        Each directory is listed, its subdirectories are walked first, then
        its other entries are backed up and its tree is queued. ``trie``
        limits a listing to the sources below that directory (for the
        directories above the sources). With a directory cache, a directory
        whose subdirectories are all unchanged and whose listing signature
        matches reuses the cached tree id as is. No recursion: a hierarchy
        thousands of levels deep cannot exhaust Python's stack.
        """
        stack = [self._open_dir(root, trie)]
        while stack:
            frame = stack[-1]
            sub = frame.next_subdir()
            if sub is not None:
                stack.append(self._open_dir(*sub))
                continue
            stack.pop()
            self._close_dir(frame)

    def _open_dir(self, job: _DirJob, trie: dict[bytes, object] | None) -> _DirFrame:
        """List a directory and look up what the parent snapshot knows of it."""
        self.control.checkpoint(quiesce=self.quiesce)
        listing = self.list_dir(job.path) if trie is None else self.list_trie(job.path, trie)
        frame = _DirFrame(job, trie, listing)
        if self.cache is not None:
            frame.cached = self.cache.get(job.path)
            # the cache belongs to the parent snapshot: its tree ids are the parent's
            job.parent_subtree = frame.cached.tree_id if frame.cached is not None else None
        else:
            frame.old_nodes = self.parent_nodes(job.parent_subtree)
        if self.new_cache is not None:
            job.sig = signature(listing, _user, _group, partial=trie is not None)
        return frame

    def _close_dir(self, frame: _DirFrame) -> None:
        """Back up a directory's other entries once its subdirectories are done."""
        job, listing, subdirs = frame.job, frame.listing, frame.subdirs
        cached = frame.cached
        if cached is not None and cached.sig == job.sig and all(d.hit for d in subdirs.values()):
            self.reuse_dir(job, listing, cached.tree_id)
            return
        old_nodes = frame.old_nodes
        if old_nodes is None:
            old_nodes = self.parent_nodes(job.parent_subtree)
        checkpoint = self.control.checkpoint
        for name, path, s in listing:
            checkpoint(quiesce=self.quiesce)
            done_sub = subdirs.get(name)
            if done_sub is not None:
                job.entries.append(done_sub)
            else:
                self.entry(path, name, s, old_nodes.get(name), job)
            self.progress.maybe_report()
        self.pending_dirs.append(job)
        self.reap()

    def reuse_dir(
        self, job: _DirJob, listing: list[tuple[bytes, bytes, os.stat_result]], tree_id: BlobId
    ) -> None:
        """An unchanged directory: account for it and reuse its tree."""
        files = 0
        nbytes = 0
        for _name, _path, s in listing:
            if st.S_ISREG(s.st_mode):
                files += 1
                nbytes += s.st_size
        job.tree_id = tree_id
        job.hit = True
        stats = self.stats
        stats.files += files
        stats.nbytes += nbytes
        stats.files_unmodified += files
        stats.dirs_unmodified += 1
        self.progress.add_done(nbytes=nbytes, files=files)
        self.progress.maybe_report()
        assert self.new_cache is not None and job.sig is not None
        self.new_cache.put(job.path, job.sig, tree_id)

    # ------------------------------------------------------------ finalize
    def drain(self) -> None:
        while self.pending_dirs and self.pending_dirs[0].ready():
            self.finalize(self.pending_dirs.popleft())

    def finalize(self, job: _DirJob) -> None:
        nodes: list[Node] = []
        for e in job.entries:
            if isinstance(e, Node):
                nodes.append(e)
            elif isinstance(e, _DirJob):
                assert e.node is not None and e.tree_id is not None
                e.node.subtree = e.tree_id
                nodes.append(e.node)
            else:
                node = self.finish_file(e)
                if node is not None:
                    nodes.append(node)
        data = encode_tree(nodes)
        tree_id = BlobId(crypto.sha256(data))
        if job.parent_subtree is None:
            self.stats.dirs_new += 1
        elif job.parent_subtree == tree_id:
            self.stats.dirs_unmodified += 1
        else:
            self.stats.dirs_changed += 1
        res = self.writer.save(BlobType.TREE, data, tree_id)
        self.stats.add_blob(res, len(data), BlobType.TREE)
        job.tree_id = tree_id
        job.entries = []  # the parent needs only the id: let the nodes go
        if self.new_cache is not None and job.sig is not None:
            self.new_cache.put(job.path, job.sig, tree_id)

    def finish_file(self, job: _FileJob) -> Node | None:
        for f in job.futures:
            f.result()  # re-raise worker failures (storage errors, cancel)
        if job.vanished:
            self.warn(f"{_display(job.path)} vanished during the backup; not included")
            return None
        if job.error is not None:
            self.skip(job.path, job.error)
            return None
        node = job.node
        if job.content is not None:
            node.content = job.content
        else:
            node.content = [f.result().id for f in job.futures]
        if job.size >= 0 and job.size != node.size:
            node.size = job.size
        if job.changed:
            self.warn(
                f"{_display(job.path)} changed while it was read; the snapshot holds what was read"
            )
        return node

    # ---------------------------------------------------------------- run
    def run(self, sources: list[bytes]) -> BlobId:
        root = _DirJob(b"/", None, self.parent.tree if self.parent else None)
        trie = _trie(sources)
        # the whole filesystem, or the sources and the directories above them
        self.walk_dir(root, None if b"/" in sources else trie)
        self.flush_batch()
        self.stop_helpers(keep_work=True)
        self.wait_all()
        assert not self.pending_dirs and root.tree_id is not None
        return root.tree_id

    def abort(self) -> None:
        """Stop workers; store and index the blobs already packed.

        Complete blobs in open packs are finished into packs too, so a
        cancelled or interrupted run loses no work. No snapshot is written.
        """
        with self._budget:
            if self._failure is None:
                self._failure = Cancelled("backup stopped")  # readers waiting for room give up
            self._budget.notify_all()
        self.readers.shutdown(wait=True, cancel_futures=True)
        self.pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.stop_helpers(keep_work=True)
        except BaseException:  # noqa: BLE001 - aborting anyway
            self.stop_helpers(keep_work=False)
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


def _scan(
    sources: list[bytes], flt: ExcludeFilter, progress: ProgressState, stop: threading.Event
) -> None:
    stack = list(sources)
    while stack and not stop.is_set():
        path = stack.pop()
        try:
            s = os.lstat(path)
        except OSError:
            continue
        if st.S_ISREG(s.st_mode):
            progress.add_total(1, s.st_size)
            continue
        if not st.S_ISDIR(s.st_mode):
            continue
        files = 0
        nbytes = 0
        try:
            with os.scandir(path) as it:
                for e in it:
                    if flt and flt.excluded(e.path):
                        continue
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        elif e.is_file(follow_symlinks=False):
                            files += 1
                            nbytes += e.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
        progress.add_total(files, nbytes)
    progress.finish_scan()


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Run the cyclic GC less often while a backup allocates millions of
    short-lived, acyclic objects (about 10% faster on small files)."""
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], 50_000), old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)


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
    with Lock(repo, exclusive=False) as lock, _fewer_collections():
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
        job = _Backup(repo, options, state, control, parent, cache)
        stop_scan = threading.Event()
        scanner = None
        if options.scan:
            scanner = threading.Thread(
                target=_scan, args=(raw, job.filter, state, stop_scan), name="scan", daemon=True
            )
            scanner.start()
        else:
            state.finish_scan()
        try:
            tree_id = job.run(raw)
            job.readers.shutdown(wait=True)
            job.pool.shutdown(wait=True)
            job.writer.flush()
            job.writer.write_index()
            job.writer.close()
        except BaseException as exc:
            stop_scan.set()
            job.abort()
            if isinstance(exc, StorageError) and not repo.storage.exists():
                # whatever call met it first, the cause is the same
                raise StorageError(gone_message(repo.storage.location)) from None
            raise
        finally:
            stop_scan.set()
            if scanner is not None:
                scanner.join()
        end_ns = time.time_ns()
        stats = job.stats
        summary = SnapshotSummary(
            backup_start=format_time(start_ns),
            backup_end=format_time(end_ns),
            files_new=stats.files_new,
            files_changed=stats.files_changed,
            files_unmodified=stats.files_unmodified,
            dirs_new=stats.dirs_new,
            dirs_changed=stats.dirs_changed,
            dirs_unmodified=stats.dirs_unmodified,
            data_blobs=stats.data_blobs,
            tree_blobs=stats.tree_blobs,
            data_added=stats.data_added,
            data_added_packed=stats.data_added_packed,
            total_files_processed=stats.files,
            total_bytes_processed=stats.nbytes,
        )
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
        if cache_path is not None and job.new_cache is not None:
            try:
                job.new_cache.save(cache_path, repo.key, snap_id)
            except OSError:
                pass  # only the next run's speed depends on it
    state.report_final()
    return BackupResult(
        snapshot=replace(snap, id=SnapshotId(snap_id)),
        summary=summary,
        skipped=tuple(job.skipped),
        warnings=tuple(job.warnings),
    )
