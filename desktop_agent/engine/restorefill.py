"""Filling a restore batch's files with their contents.

See docs/design.md, section 6. The restore plans files in batches of
bounded size (:class:`Batch`); :class:`Filler` then reads, for each pack,
the ranges the batch needs (at most :data:`MAX_RANGE` each, a larger blob
alone; checked against the pack's size), in worker threads one range at a
time: a pack holds thousands of small files, so ranges, not packs, keep
every worker busy. The bytes the workers hold at once (ranges read, and
the plaintext of the blob being decoded) stay within :data:`IN_FLIGHT`, so
the restore's memory does not grow with the number of workers or the size
of the blobs. Ranges of small blobs (small files) run one at a time: their
work is mostly the interpreter's, between system calls that hand its lock
around, and more workers on them only slow it (:data:`SMALL_BLOBS`).
Each blob is decrypted, decompressed within the length the index gives
and checked against its id, then written with ``pwrite`` to every place
that holds it. All-zero blocks are not written: holes stay
holes. The write that completes a file also sets its size and metadata
through the descriptor it wrote with.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from .control import Control
from .errors import IntegrityError, NotFound, StorageError
from .ids import BlobId, BlobType, PackId
from .limits import MAX_BLOB_PLAINTEXT, MAX_BLOB_STORED
from .progress import ProgressState
from .repository import Repository
from .restoretarget import IS_ROOT, Dir, DirFds, open_file
from .storage import FileType
from .tree import Node, unix_mode

__all__ = [
    "IN_FLIGHT",
    "MAX_RANGE",
    "Batch",
    "Filler",
    "LinkSource",
    "PlannedFile",
    "all_zero",
    "reason",
]

_MERGE_GAP = 1 << 20  # read across a gap this small rather than issue two reads
# read at most this much of a pack at once (one larger blob alone): small enough
# that a pack of thousands of small files is shared out among the workers
MAX_RANGE = 2 << 20
# bytes the workers hold at once, ranges read plus plaintext being decoded (a
# range that alone costs more waits until it is the only one)
IN_FLIGHT = 16 << 20
_ZERO_BLOCK = bytes(64 << 10)
# a range whose blobs average less than this is mostly per-blob and per-file
# work in the interpreter (a few system calls per file, each releasing and
# taking back the interpreter lock): one worker at a time runs such ranges,
# because more only hand the lock around (measured on 2 cores, 50,000 files
# of 4 KiB: 4 workers 8.1 s, 1 worker 6.2 s; 1 GiB of large blobs needs 2)
SMALL_BLOBS = 128 << 10
_BATCH_FILES = 10_000
_BATCH_BLOBS = 125_000


@dataclass
class PlannedFile:
    """A file of the batch, and how far its writing got."""

    parent: Dir
    node: Node
    remaining: int = 0  # blob placements still to write
    end: int = 0  # end of the furthest data written
    failed: bool = False
    done: bool = False  # size and metadata set by the write that completed it


@dataclass
class LinkSource:
    """The first restored path of a hard link group."""

    parent: Dir
    name: bytes
    file: PlannedFile | None  # None once its batch is done
    ok: bool = True


@dataclass
class Batch:
    """The files, hard links and other entries restored together."""

    files: list[PlannedFile] = field(default_factory=list)
    # blob -> (index in files, offset in that file) of every place that holds it
    needs: dict[BlobId, list[tuple[int, int]]] = field(default_factory=dict)
    links: list[tuple[Dir, Node, LinkSource]] = field(default_factory=list)
    others: list[tuple[Dir, Node]] = field(default_factory=list)
    # hard link groups whose first path is a file of this batch
    sources: list[LinkSource] = field(default_factory=list)
    # directories whose entries are all planned by this batch: metadata after it
    dirs: list[Dir] = field(default_factory=list)
    blob_refs: int = 0

    def full(self) -> bool:
        """Time to restore what is planned (memory stays bounded)."""
        return len(self.files) >= _BATCH_FILES or self.blob_refs >= _BATCH_BLOBS


# Workers writing blobs into the same file take turns on one of these locks
# (by file): on Linux a second writer of a file spins on the kernel's inode
# lock while the first copies its data in, which took 9% of the CPU of a
# 1 GiB restore of large files when that copy was slow; a Python lock lets
# the waiter sleep and the other core decode.
_WRITE_STRIPES = 64

# (blob id, offset, length, uncompressed length) of a blob in a pack
_Where = tuple[BlobId, int, int, int]


class Filler:
    """Writes the contents of a batch's files (the workers' part of a restore).

    ``error(path, message)`` reports a problem with one entry.
    """

    def __init__(
        self,
        repo: Repository,
        fds: DirFds,
        pool: ThreadPoolExecutor,
        progress: ProgressState,
        control: Control,
        error: Callable[[bytes, str], None],
        *,
        verify: bool,
    ) -> None:
        self.repo = repo
        self.fds = fds
        self.pool = pool
        self.progress = progress
        self.control = control
        self.error = error
        self.verify = verify
        self.pack_sizes: dict[bytes, int] | None = None
        self._lock = threading.Lock()
        # workers inside restore_range and not blocked at a pause: a pause is
        # reported as taken (Control.wait_paused) only once this is zero
        self._busy = 0
        self._idle = threading.Condition()
        # bytes held by workers (ranges read, plaintext being decoded): at most
        # IN_FLIGHT, or one range alone that costs more
        self._flight = 0
        self._room = threading.Condition()
        self._small = threading.Lock()  # held by the worker running a range of small blobs
        self._writing = [threading.Lock() for _ in range(_WRITE_STRIPES)]
        self.bytes_written = 0
        self.files_done = 0  # files completed (size and metadata) by their last write

    def fill(self, batch: Batch) -> None:
        """Fill the batch's files and wait until they are written."""
        self.wait(self.start(batch))

    def start(self, batch: Batch) -> list[Future[None]]:
        """Hand the batch's ranges to the workers: the needed ranges of each
        pack, read and written one range at a time (a pack holds thousands of
        small files: ranges, not packs, keep every worker busy)."""
        by_pack: dict[PackId, list[_Where]] = {}
        for blob_id in batch.needs:
            entry = self.repo.index.lookup(BlobType.DATA, blob_id)
            assert entry is not None
            by_pack.setdefault(entry.pack, []).append(
                (blob_id, entry.offset, entry.length, entry.uncompressed_length)
            )
        futures: list[Future[None]] = []
        for pack, blobs in by_pack.items():
            for group in self.ranges(batch, pack, blobs):
                futures.append(self.pool.submit(self.restore_range, batch, pack, group))
        return futures

    def wait(self, futures: list[Future[None]]) -> None:
        """Wait for a batch's ranges, taking pauses; the first failure is raised
        once no range of the batch runs any more."""
        try:
            pending: set[Future[None]] = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.05, return_when=FIRST_EXCEPTION)
                for fut in done:
                    fut.result()
                # the primary thread takes the pause once every worker stands still
                self.control.checkpoint(quiesce=self.quiesce)
        except BaseException:
            for fut in futures:
                fut.cancel()
            for fut in futures:
                if not fut.cancelled():
                    try:
                        fut.result()
                    except BaseException:  # noqa: BLE001, S110 - the first failure is raised
                        pass
            raise

    def _pack_size(self, pack: PackId) -> int | None:
        if self.pack_sizes is None:
            listing = self.repo.storage.list(FileType.PACK)
            self.pack_sizes = {bytes.fromhex(name): size for name, size in listing}
        return self.pack_sizes.get(pack)

    def ranges(self, batch: Batch, pack: PackId, blobs: list[_Where]) -> list[list[_Where]]:
        """The blobs of one pack in ranges to read, each checked against the pack's size."""
        size = self._pack_size(pack)
        if size is None:
            for blob_id, *_ in blobs:
                self.blob_failed(batch, blob_id, f"pack {pack.hex()[:12]} is missing")
            return []
        good = []
        for b in blobs:
            _id, offset, length, ulen = b
            if offset + length > size:
                self.blob_failed(
                    batch, _id, f"the index places it beyond the end of pack {pack.hex()[:12]}"
                )
            elif length > MAX_BLOB_STORED or ulen > MAX_BLOB_PLAINTEXT[BlobType.DATA]:
                self.blob_failed(batch, _id, "the index gives it a length beyond any genuine blob")
            else:
                good.append(b)
        good.sort(key=lambda b: b[1])
        groups: list[list[_Where]] = []
        for b in good:
            if groups:
                last = groups[-1]
                start, end = last[0][1], last[-1][1] + last[-1][2]
                if b[1] - end <= _MERGE_GAP and b[1] + b[2] - start <= MAX_RANGE:
                    last.append(b)
                    continue
            groups.append([b])
        return groups

    def quiesce(self) -> None:
        """Wait until no worker reads or writes (each stands at a pause point or is idle)."""
        with self._idle:
            self._idle.wait_for(lambda: self._busy == 0)

    def _pause_point(self) -> None:
        """A worker's checkpoint: while it blocks here it counts as idle."""
        control = self.control
        if not (control.paused or control.cancelled):
            return
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()
        try:
            control.checkpoint(secondary=True)
        finally:
            with self._idle:
                self._busy += 1

    def restore_range(self, batch: Batch, pack: PackId, group: list[_Where]) -> None:
        """Read one range of a pack and write its blobs out (on a worker thread).

        The range's bytes and the largest plaintext it decodes are taken
        from the in-flight budget first; waiting for room, or for the turn
        of a range of small blobs, is idle time (a pause does not wait for it).
        """
        if is_small(group):
            with self._small:
                self._restore_budgeted(batch, pack, group)
        else:
            self._restore_budgeted(batch, pack, group)

    def _restore_budgeted(self, batch: Batch, pack: PackId, group: list[_Where]) -> None:
        cost = range_cost(group)
        with self._room:
            self._room.wait_for(lambda: self._flight == 0 or self._flight + cost <= IN_FLIGHT)
            self._flight += cost
        try:
            with self._idle:
                self._busy += 1
            try:
                self._restore_range(batch, pack, group)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()
        finally:
            with self._room:
                self._flight -= cost
                self._room.notify_all()

    def _restore_range(self, batch: Batch, pack: PackId, group: list[_Where]) -> None:
        self._pause_point()
        start = group[0][1]
        end = max(b[1] + b[2] for b in group)
        try:
            raw = self.repo.storage.load(FileType.PACK, pack.hex(), start, end - start)
        except (StorageError, NotFound) as exc:
            for blob_id, *_ in group:
                self.blob_failed(batch, blob_id, f"pack {pack.hex()[:12]} unreadable: {exc}")
            return
        view = memoryview(raw)
        for blob_id, offset, length, ulen in group:
            self._pause_point()
            try:
                plain = self.repo.decode_blob(
                    BlobType.DATA,
                    blob_id,
                    view[offset - start : offset - start + length],
                    ulen,
                    verify=self.verify,
                )
            except IntegrityError as exc:
                self.blob_failed(batch, blob_id, str(exc))
                continue
            self.write_blob(batch, plain, batch.needs[blob_id])

    def blob_failed(self, batch: Batch, blob_id: BlobId, message: str) -> None:
        """A blob cannot be had: every file that needs it is an error (once each)."""
        for idx, _off in batch.needs[blob_id]:
            pf = batch.files[idx]
            with self._lock:
                first = not pf.failed
                pf.failed = True
            if first:
                self.error(pf.parent.path(pf.node.name), f"content lost: {message}")

    def write_blob(self, batch: Batch, plain: bytes, where: list[tuple[int, int]]) -> None:
        """Write one blob to every place that holds it (all-zero blocks stay holes).

        The write that completes a file also sets its size and metadata
        through the descriptor it wrote with: no second open, and the work
        is spread over the workers instead of left to one thread at the end.
        """
        fds = self.fds
        zero = all_zero(plain)
        for idx, offset in where:
            pf = batch.files[idx]
            if pf.failed:
                continue
            fd = -1
            try:
                if not zero:
                    pfd = fds.acquire(pf.parent)
                    try:
                        fd = open_file(pfd, pf.node.name)
                    finally:
                        fds.release(pf.parent)
                    view = memoryview(plain)
                    pos = offset
                    with self._writing[idx % _WRITE_STRIPES]:
                        while view:
                            n = os.pwrite(fd, view, pos)
                            view = view[n:]
                            pos += n
                with self._lock:
                    self.bytes_written += len(plain)
                    end = offset + len(plain)
                    if end > pf.end and not zero:
                        pf.end = end
                    pf.remaining -= 1
                    finished = pf.remaining == 0
                if finished and fd >= 0:
                    self.complete(fd, pf)
            except OSError as exc:
                with self._lock:
                    first = not pf.failed
                    pf.failed = True
                if first:
                    self.error(pf.parent.path(pf.node.name), _write_failure(exc))
                if exc.errno == errno.ENOSPC:
                    raise StorageError(
                        "the restore target is full (no space left) at "
                        + os.fsdecode(pf.parent.path(pf.node.name))
                    ) from None
                continue
            finally:
                if fd >= 0:
                    os.close(fd)
            self.progress.add_done(nbytes=len(plain), files=1 if finished else 0)
            if self.progress.due():
                self.progress.current_file = os.fsdecode(pf.parent.path(pf.node.name))
                self.progress.maybe_report()

    def complete(self, fd: int, pf: PlannedFile) -> None:
        """Size and metadata of a file whose last blob was just written through ``fd``."""
        node = pf.node
        try:
            if pf.end != node.size:  # sparse, or ending in zeros
                os.ftruncate(fd, node.size)
            if IS_ROOT:
                os.fchown(fd, node.uid, node.gid)  # before chmod: chown clears setuid bits
            os.fchmod(fd, unix_mode(node.mode))
            os.utime(fd, ns=(node.atime or node.mtime, node.mtime))
        except (OSError, OverflowError) as exc:
            pf.failed = True
            self.error(pf.parent.path(node.name), f"cannot finish file: {reason(exc)}")
            return
        with self._lock:
            pf.done = True
            self.files_done += 1


def range_cost(group: list[_Where]) -> int:
    """The bytes a worker holds for one range: the range read, and the plaintext
    of its largest blob (a blob's ciphertext and plaintext are alive at once)."""
    start = group[0][1]
    end = max(b[1] + b[2] for b in group)
    return end - start + max(b[3] or b[2] for b in group)


def is_small(group: list[_Where]) -> bool:
    """Whether a range's blobs average less than :data:`SMALL_BLOBS` (plaintext)."""
    return sum(b[3] or b[2] for b in group) < SMALL_BLOBS * len(group)


def all_zero(data: bytes) -> bool:
    """Whether a block of at least 4 KiB holds only zero bytes (it then stays a hole).

    Compared 64 KiB at a time with ``startswith`` (a ``memcmp``, no copy):
    a block with any data fails at its first or last byte or its first
    differing slice, and the interpreter lock is never held for long
    (``bytes.count`` would hold it for the whole block, about 0.4 s per GiB).
    """
    n = len(data)
    if n < 4096 or data[0] or data[-1]:
        return False
    step = len(_ZERO_BLOCK)
    for pos in range(0, n, step):
        zeros = _ZERO_BLOCK if n - pos >= step else _ZERO_BLOCK[: n - pos]
        if not data.startswith(zeros, pos):
            return False
    return True


def reason(exc: BaseException) -> str:
    """An error's reason for a message (an OSError's text without its errno and path)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _write_failure(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symlink is in the way; not followed, not overwritten"
    return f"write failed: {exc.strerror or exc}"
