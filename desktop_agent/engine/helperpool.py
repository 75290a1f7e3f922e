"""The backup's side of the helper processes that seal small files.

See docs/design.md, section 5. Small files are routed to a helper by size
(identical files meet in the same helper and are stored once) and sent in
batches; a helper may have a few batches waiting, no more. A file a helper
reports as :class:`~.helpermsg.Stored` is in the helper's open pack, which
becomes durable only when the helper finishes that pack and this side
stores it: until then the file stays pending (its directory waits) and is
remembered, so that a helper that dies takes no reported file with it:
those files, and those of unanswered batches, are redone in this process.
Everything here runs on the walker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from .helpermsg import BATCH_BYTES_PER_FILE, BatchDone, Failed, FileResult, StoredTuple
from .ids import BlobId, BlobType
from .pack import FinishedPack
from .pipeline import BackupStats, FileJob, Notices
from .progress import ProgressState
from .repository import Repository
from .smallfiles import Helpers
from .writer import BlobWriter

__all__ = ["HelperPool"]

_BATCH_FILES = 128  # files per batch
_BATCH_BYTES = 4 * 1024 * 1024
# Batches a helper may have waiting: enough that a helper never runs dry while
# the walker is busy elsewhere. Each helper pack a helper finishes makes about
# 20 directories ready at once, and the walker stores them before it sends
# more: with 8 batches (about 20 ms of a helper's work) each helper still
# waited 0.1-0.4 s of a 1.8 s backup of 50,000 small files, with 16 0.03-0.16 s
# (3 left them idle 40% of the time). At most the socket's room of paths
# (Helpers.room), so that what the walker sends always fits the socket's
# buffer: a walker blocked in send while the helper is blocked sending its
# answers would wait forever. A batch larger than that goes to an idle helper.
_QUEUE = 16


class HelperPool:
    """Helper processes fed with the backup's small files.

    ``apply_read`` records a file result the helper passed through (a
    failure, or a file that grew) and returns data still to be stored;
    ``run_here`` reads and stores files in this process (``counted``: the
    progress already counted them). Both belong to the file saver.
    """

    def __init__(
        self,
        helpers: Helpers,
        writer: BlobWriter,
        progress: ProgressState,
        notices: Notices,
        apply_read: Callable[[FileJob, FileResult], bytes | None],
        run_here: Callable[[list[FileJob], bool], None],
    ) -> None:
        self.helpers: Helpers | None = helpers  # None once stopped or failed
        self.writer = writer
        self.progress = progress
        self.notices = notices
        self.apply_read = apply_read
        self.run_here = run_here
        self.stats = BackupStats()
        n = len(helpers)
        self.filling: list[list[FileJob]] = [[] for _ in range(n)]  # batches not yet sent
        self.filling_bytes = [0] * n
        # batch id -> its files and path bytes, until answered
        self.sent: dict[int, tuple[list[FileJob], int]] = {}
        self.provisional: list[list[FileJob]] = [[] for _ in range(n)]  # stored, not durable
        self.batch_seq = 0
        self.queued_bytes = [0] * n  # path bytes sent and not yet answered, per helper

    @classmethod
    def start(
        cls,
        count: int,
        repo: Repository,
        writer: BlobWriter,
        progress: ProgressState,
        notices: Notices,
        apply_read: Callable[[FileJob, FileResult], bytes | None],
        run_here: Callable[[list[FileJob], bool], None],
    ) -> HelperPool | None:
        """Start ``count`` helpers; None (with a warning) when they cannot start."""
        repo.ensure_index()
        # 32 bytes a blob, grouped as idtable.IdSet looks them up (no set of objects)
        known = repo.index.id_bytes(BlobType.DATA)
        try:
            helpers = Helpers(
                count,
                repo.key,
                repo.compression,
                repo.storage.spool_dir(),
                writer.pack_size,
                known,
            )
        except (OSError, ValueError, EOFError) as exc:
            notices.warn(f"cannot start helper processes ({exc}); using threads only")
            return None
        return cls(helpers, writer, progress, notices, apply_read, run_here)

    @property
    def alive(self) -> bool:
        """The helpers are running (not stopped, none failed)."""
        return self.helpers is not None

    def busy(self) -> bool:
        """A batch or a flush is waiting for its answer."""
        return self.helpers is not None and any(self.helpers.outstanding)

    def route(self, job: FileJob) -> bool:
        """Queue a small file for a helper; False when the helpers are gone."""
        helpers = self.helpers
        if helpers is None:
            return False
        size = job.node.size
        # routed by size: identical files meet in the same helper
        i = size % len(helpers)
        batch = self.filling[i]
        batch.append(job)
        self.filling_bytes[i] += size
        if len(batch) >= _BATCH_FILES or self.filling_bytes[i] >= _BATCH_BYTES:
            self.send(i)
        return True

    def send(self, i: int) -> None:
        """Send helper ``i`` its open batch (waiting while it is far behind)."""
        helpers = self.helpers
        jobs = self.filling[i]
        if helpers is None or not jobs:
            return
        self.filling[i] = []
        self.filling_bytes[i] = 0
        paths = [j.path for j in jobs]
        nbytes = sum(map(len, paths)) + BATCH_BYTES_PER_FILE * len(jobs)
        while (
            self.helpers is not None
            and helpers.outstanding[i]
            and (
                helpers.outstanding[i] >= _QUEUE or self.queued_bytes[i] + nbytes > helpers.room[i]
            )
        ):
            self.poll(block=True)
        self.batch_seq += 1
        self.sent[self.batch_seq] = (jobs, nbytes)
        self.queued_bytes[i] += nbytes
        for job in jobs:
            job.pending = True
            job.submitted = True
        if self.helpers is None:  # it died while we waited: do it here
            self.failed(RuntimeError("helper gone"))
            return
        try:
            nodes = [j.node for j in jobs]
            helpers.send(
                i, self.batch_seq, paths, [n.size for n in nodes], [n.mtime for n in nodes]
            )
        except (OSError, EOFError, ValueError) as exc:
            self.failed(exc)

    def poll(self, block: bool = False) -> None:
        """Take in whatever the helpers have answered."""
        helpers = self.helpers
        if helpers is None:
            return
        try:
            for i, msg in helpers.receive(None if block else 0.0):
                if isinstance(msg, Failed):
                    raise msg.error()  # a StorageError: the backup fails, as in-process
                if not isinstance(msg, BatchDone):
                    raise RuntimeError("helper answered out of order")
                jobs, nbytes = self.sent.pop(msg.batch_id)
                self.queued_bytes[i] -= nbytes
                self.apply(i, jobs, msg)
        except (EOFError, OSError, RuntimeError) as exc:
            self.failed(exc)

    def apply(self, helper: int, jobs: list[FileJob], done: BatchDone) -> None:
        """The results of one batch, and the packs the helper finished with it."""
        nbytes = files = new = 0
        provisional = self.provisional[helper]
        stats = self.stats
        for job, res in zip(jobs, done.results, strict=True):
            if type(res) is tuple:  # a Stored (helpermsg), sent as a plain tuple
                # a changed file keeps the mtime it was listed with: older than
                # what was read, so the next backup reads it again
                blob_id, size, changed, stored = cast(StoredTuple, res)
                job.size = size
                job.changed = changed
                job.content = [] if blob_id is None else [BlobId(blob_id)]
                provisional.append(job)
                if stored:
                    stats.add_blob(size, stored)
                nbytes += size
                files += 1
                new += stored
                continue
            job.pending = False
            data = self.apply_read(job, cast(FileResult, res))
            if data is not None:  # only if it shrank back below the limit: store it here
                r = self.writer.save(BlobType.DATA, data)
                if r.new:
                    stats.add_blob(len(data), r.stored)
                job.content = [r.id]
                nbytes += len(data)
                files += 1
        self.progress.add_done(nbytes=nbytes, files=files, new=new)
        if done.packs:
            self.durable(helper, [p.finished() for p in done.packs])

    def durable(self, helper: int, packs: list[FinishedPack]) -> None:
        """A helper finished packs: everything it reported so far is durable once stored."""
        for pack in packs:
            self.writer.adopt(pack)
        for job in self.provisional[helper]:
            job.pending = False
        self.provisional[helper] = []

    def failed(self, exc: BaseException) -> None:
        """A helper died: redo here what the helpers had not made durable."""
        helpers, self.helpers = self.helpers, None
        if helpers is not None:
            helpers.close()  # their open packs are lost with them
        self.notices.warn(
            f"helper process failed ({type(exc).__name__}); continuing without helpers"
        )
        redo = [job for jobs in self.provisional for job in jobs]
        self.provisional = [[] for _ in self.provisional]
        unanswered = [job for jobs, _ in self.sent.values() for job in jobs]
        self.sent.clear()
        # batches still being filled were never sent
        unanswered += [job for jobs in self.filling for job in jobs]
        self.filling = [[] for _ in self.filling]
        self.filling_bytes = [0] * len(self.filling)
        for jobs, counted in ((redo, True), (unanswered, False)):
            if not jobs:
                continue
            for job in jobs:
                job.content = None
            self.run_here(jobs, counted)
            for job in jobs:
                job.pending = False
                job.submitted = True

    def stop(self, *, keep_work: bool) -> None:
        """Collect every outstanding result and pack (``keep_work``), then stop the helpers."""
        if self.helpers is None:
            return
        if keep_work:
            for i in range(len(self.filling)):
                self.send(i)
            while self.helpers is not None and any(self.helpers.outstanding):
                self.poll(block=True)
            if self.helpers is not None:
                try:
                    packs = self.helpers.flush()
                except (EOFError, OSError, RuntimeError) as exc:
                    self.failed(exc)
                else:
                    for i in range(len(self.provisional)):
                        self.durable(i, packs if i == 0 else [])
        helpers, self.helpers = self.helpers, None
        if helpers is not None:
            # all their work is in: their exit need not hold up the backup's end
            helpers.close(wait=not keep_work)
