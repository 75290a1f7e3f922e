"""Storing the contents of files: batches, chunks, workers and the memory budget.

See docs/design.md, section 5. Work is split by file size:

* **large files** (over one minimum chunk) are read and cut by a reader
  thread in fresh blocks, so chunks are views, never copies; a thread pool
  hashes, deduplicates, compresses, encrypts and packs each chunk
  (:class:`~.writer.BlobWriter`);
* **small files** travel in batches to the same pool, or, once a backup
  has met many of them, to helper processes (:mod:`.helperpool`).

Bytes submitted to the pool and not yet processed are bounded (the memory
budget): a reader or the walker that would exceed it waits. A task's
failure is remembered and raised in the walker at its next look.

Pause and cancel: the walker, the reader and every pool task pass
:meth:`Control.checkpoint` between chunks; before the walker reports a
pause as effective, :meth:`FileSaver.quiesce` lets the work in flight
finish, so that nothing is read or written while the pause lasts.
"""

from __future__ import annotations

import errno
import os
import stat as st
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from .chunker import MIN_SIZE, Chunker
from .control import Control
from .errors import Cancelled
from .helpermsg import FileRead, FileResult, ReadFailed, Vanished
from .helperpool import HelperPool
from .ids import BlobType
from .pipeline import BackupStats, FileJob, Notices
from .progress import ProgressState
from .repository import Repository
from .smallfiles import open_for_reading, read_small
from .tree import Node
from .writer import BlobWriter, SaveResult

__all__ = ["FileSaver", "SMALL_FILE"]

# Files up to this size are read whole and travel in batches.
SMALL_FILE = MIN_SIZE
_BATCH_FILES = 64
_BATCH_BYTES = 4 * 1024 * 1024
# Bytes submitted to workers but not yet processed.
_INFLIGHT_BYTES = 16 * 1024 * 1024
# Helper processes start once this many small files are to be stored (their
# start costs about 0.1 s; below this, threads are as fast), or this many in
# a first backup of the sources, which reads every file: the walker goes on
# while they start (up to 8 batches wait for each), and they do most of the
# small files rather than the threads.
_HELPERS_AFTER = 2000
_HELPERS_AFTER_FIRST = 300
_READERS = 1  # threads reading and chunking large files

_T = TypeVar("_T")


class FileSaver:
    """Hands out the contents of files to be stored; owns the workers and helpers.

    Driven by the walker thread (:meth:`add_file`, :meth:`reap`); large
    files are read by reader threads. ``helpers``: processes for many small
    files (-1 = one per CPU, 0 = none); ``first``: a first backup of the
    sources (no parent snapshot), which reads every file.
    """

    def __init__(
        self,
        repo: Repository,
        writer: BlobWriter,
        chunker: Chunker,
        notices: Notices,
        progress: ProgressState,
        control: Control,
        *,
        workers: int,
        helpers: int,
        first: bool = False,
    ) -> None:
        self.repo = repo
        self.writer = writer
        self.chunker = chunker
        self.notices = notices
        self.progress = progress
        self.control = control
        self.helper_count = helpers
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backup")
        self.readers = ThreadPoolExecutor(max_workers=_READERS, thread_name_prefix="read")
        self.reading: deque[Future[None]] = deque()  # large files being read
        self.stats = BackupStats()  # data blobs stored in this process
        self._stats_lock = threading.Lock()
        self._budget = threading.Condition()
        self._inflight = 0  # bytes submitted to the pool and not yet processed
        self._readers_busy = 0  # readers at work (not idle, not held by a pause)
        self._failure: BaseException | None = None
        self.walker = threading.get_ident()  # the thread that walks (and reports pauses)
        self.batch: list[FileJob] = []  # small files for the next pool task
        self.batch_bytes = 0
        self.helpers: HelperPool | None = None
        self.small_files = 0
        self.helpers_after = _HELPERS_AFTER_FIRST if first else _HELPERS_AFTER

    # ------------------------------------------------------- work in flight
    def submit(self, fn: Callable[..., _T], nbytes: int, *args: object) -> Future[_T]:
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

    def _release(self, nbytes: int, fut: Future[_T]) -> None:
        with self._budget:
            self._inflight -= nbytes
            if not fut.cancelled() and self._failure is None:
                self._failure = fut.exception()
            self._budget.notify_all()

    def _guarded(self, fn: Callable[..., _T], *args: object) -> _T:
        # Work already queued finishes even during a pause (the walker waits
        # for it before reporting the pause); a cancel stops it at once.
        if self.control.cancelled:
            raise Cancelled()
        return fn(*args)

    def pause_point(self) -> None:
        """A checkpoint in a wait: primary on the walker thread, a reader's elsewhere."""
        if threading.get_ident() == self.walker:
            self.control.checkpoint(quiesce=self.quiesce)
        else:
            self._reader_checkpoint()

    def _reader_checkpoint(self) -> None:
        """A reader's checkpoint: while a pause holds it, it no longer counts as busy,
        which is what :meth:`quiesce` waits for."""
        control = self.control
        if not control.paused and not control.cancelled:
            return
        with self._budget:
            self._readers_busy -= 1
            self._budget.notify_all()
        try:
            control.checkpoint(secondary=True)
        finally:
            with self._budget:
                self._readers_busy += 1

    def quiesce(self) -> None:
        """Before a pause counts as effective: let work in flight finish (walker).

        Readers go on to their next checkpoint, where the pause holds them;
        tasks in the pool and batches in the helpers finish; so do packs
        being stored and the index checkpoint that may follow them. Nothing
        is then read, written or reported while the pause lasts.
        """
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            helpers = self.helpers
            if helpers is not None:
                helpers.poll()
            helpers_busy = helpers is not None and helpers.busy()
            with self._budget:
                if self._inflight == 0 and self._readers_busy == 0 and not helpers_busy:
                    break
                self._budget.wait(0.01)
        self.writer.wait_idle()
        # a pause may be the machine going to sleep (or losing power after):
        # what is stored so far gets indexed, so none of it is lost
        self.writer.checkpoint_index()

    def check_failure(self) -> None:
        """Raise the first failure of any task or reader."""
        if self._failure is not None:
            raise self._failure
        while self.reading and self.reading[0].done():
            self.reading.popleft().result()

    def reap(self) -> None:
        """Take in what helpers answered; raise what failed (walker thread)."""
        if self.helpers is not None:
            self.helpers.poll()
        self.check_failure()

    def wait(self, busy: Callable[[], bool], timeout: float = 0.05) -> None:
        """Wait up to ``timeout`` for a task or reader to finish, if ``busy()`` says
        there is something to wait for (asked under the lock their ends notify)."""
        with self._budget:
            if busy():
                self._budget.wait(timeout)

    def reading_busy(self) -> bool:
        """The first large file handed to a reader is still being read."""
        return bool(self.reading) and not self.reading[0].done()

    # ----------------------------------------------------------- file data
    def save_chunk(self, data: bytes | memoryview) -> SaveResult:
        """Store one chunk of a file (a pool task)."""
        res = self.writer.save(BlobType.DATA, data)
        if res.new:
            with self._stats_lock:
                self.stats.add_blob(len(data), res.stored)
        self.progress.add_done(nbytes=len(data), new=res.stored)
        return res

    def run_batch(self, jobs: list[FileJob], counted: bool = False) -> None:
        """Read small files and store their contents together.

        Usually a pool task. ``counted``: progress already counted these
        files (work redone after a helper died).
        """
        plain: list[tuple[FileJob, bytes]] = []
        for job in jobs:
            node = job.node
            data = self.apply_read(job, read_small(job.path, node.size, node.mtime))
            if data is not None:
                plain.append((job, data))
        if not plain:
            return
        saved = self.writer.save_many(BlobType.DATA, [d for _, d in plain])
        nbytes = new = 0
        delta = BackupStats()
        for (job, data), r in zip(plain, saved, strict=True):
            job.content = [r.id]
            nbytes += len(data)
            new += r.stored
            if r.new:
                delta.add_blob(len(data), r.stored)
        if not counted:
            with self._stats_lock:
                self.stats.add(delta)
            self.progress.add_done(nbytes=nbytes, files=len(plain), new=new)

    def apply_read(self, job: FileJob, res: FileResult) -> bytes | None:
        """Record how reading went; returns data still to be stored, if any."""
        if type(res) is not FileRead:
            if isinstance(res, Vanished):
                job.vanished = True
            elif isinstance(res, ReadFailed):
                job.error = res.message
            return None
        data, changed = res  # a changed file keeps the mtime it was listed with
        job.size = len(data)
        job.changed = changed
        if not data:
            job.content = []
            self.progress.add_done(files=1)
            return None
        if len(data) > SMALL_FILE:  # it grew since we listed it: chunk it here
            job.content = [self.save_chunk(bytes(c)).id for c in self.chunker.buffer(data)]
            self.progress.add_done(files=1)
            return None
        return data

    # ------------------------------------------------------------ handing out
    def add_file(self, path: bytes, node: Node) -> FileJob:
        """Hand out a file to be read and stored; its job is done when its content is."""
        job = FileJob(path, node)
        self.progress.current_file = path
        size = node.size
        if size <= SMALL_FILE:
            self.small_files += 1
            if self.small_files == self.helpers_after:
                self.flush_batch()  # its files must not wait for the end
                self.start_helpers()
            helpers = self.helpers
            if helpers is not None and helpers.route(job):
                return job
            self.batch.append(job)
            self.batch_bytes += size
            if len(self.batch) >= _BATCH_FILES or self.batch_bytes >= _BATCH_BYTES:
                self.flush_batch()
            return job
        self.flush_batch()
        self.reading.append(self.readers.submit(self.read_large, job))
        return job

    def flush_batch(self) -> None:
        """Submit the small files collected so far as one pool task."""
        jobs = self.batch
        if not jobs:
            return
        self.batch = []
        nbytes, self.batch_bytes = self.batch_bytes, 0
        fut = self.submit(self.run_batch, nbytes, jobs)
        for job in jobs:
            job.batch = fut
            job.submitted = True

    def start_helpers(self) -> None:
        """Start helper processes for small files (see :mod:`.helperpool`)."""
        n = self.helper_count
        if n < 0:
            n = os.cpu_count() or 2
        if n == 0:
            return
        self.helpers = HelperPool.start(
            n,
            self.repo,
            self.writer,
            self.progress,
            self.notices,
            self.apply_read,
            self.run_batch,
        )

    def finish(self) -> None:
        """Hand out what is still collected and take in the helpers' work (walker)."""
        self.flush_batch()
        self.stop_helpers(keep_work=True)

    def stop_helpers(self, *, keep_work: bool) -> None:
        """Stop the helper processes, first taking in their work (``keep_work``)."""
        if self.helpers is not None:
            self.helpers.stop(keep_work=keep_work)

    def all_stats(self) -> BackupStats:
        """What was stored here and by the helpers."""
        total = BackupStats()
        with self._stats_lock:
            total.add(self.stats)
        if self.helpers is not None:
            total.add(self.helpers.stats)
        return total

    # ------------------------------------------------------------ large files
    def read_large(self, job: FileJob) -> None:
        """Read and chunk a large file (a reader thread); chunks go to the pool."""
        with self._budget:
            self._readers_busy += 1
        try:
            self._read_large(job)
        finally:
            job.submitted = True
            with self._budget:
                self._readers_busy -= 1
                self._budget.notify_all()

    def _read_large(self, job: FileJob) -> None:
        self._reader_checkpoint()
        try:
            fd = open_for_reading(job.path)
        except OSError as exc:
            _read_error(job, exc)
            return
        self.progress.current_file = job.path
        with open(fd, "rb", buffering=0) as fh:
            try:
                before = os.fstat(fd)
                if not st.S_ISREG(before.st_mode):
                    job.vanished = True
                    return
                total = 0
                for view in self.chunker.blocks(fh):
                    self._reader_checkpoint()
                    total += len(view)
                    job.futures.append(self.submit(self.save_chunk, len(view), view))
                    self.progress.maybe_report()
                after = os.fstat(fd)
            except OSError as exc:
                _read_error(job, exc)
                return
        job.size = total
        job.changed = after.st_mtime_ns != before.st_mtime_ns or after.st_size != total
        if job.changed:
            job.node.mtime = before.st_mtime_ns
        self.progress.add_done(files=1)

    # --------------------------------------------------------------- stopping
    def shutdown(self) -> None:
        """Wait for the readers and workers to finish, then stop them."""
        self.readers.shutdown(wait=True)
        self.pool.shutdown(wait=True)

    def abort(self) -> None:
        """Stop readers, workers and helpers; keep what helpers already packed."""
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


def _read_error(job: FileJob, exc: OSError) -> None:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        job.vanished = True
    elif exc.errno == errno.ELOOP:  # replaced by a symlink since we listed it
        job.vanished = True
    else:
        job.error = exc.strerror or str(exc)
