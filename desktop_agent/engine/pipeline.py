"""The values the parts of the backup pipeline hand each other.

See docs/design.md, sections 4 and 5. The walker (:mod:`.walker`) turns each
directory into a :class:`DirJob` and each file to be read into a
:class:`FileJob`; the file saver (:mod:`.filesaver`, with
:mod:`.helperpool`) fills in the files' contents; the tree saver
(:mod:`.treesaver`) turns a directory whose entries are all done into a
tree. Each part counts what it did in a :class:`BackupStats` of its own; the
backup adds them up into the snapshot's summary. Paths left out and
warnings go to one :class:`Notices`.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass

from .ids import BlobId
from .progress import ProgressState
from .snapshot import BackupCounts, SnapshotSummary
from .tree import Node
from .writer import SaveResult

__all__ = ["BackupStats", "DirJob", "FileJob", "Notices", "SkippedPath"]


@dataclass
class BackupStats(BackupCounts):
    """What one part of a backup counted (:class:`~.snapshot.BackupCounts`), and the sum.

    Not thread-safe: each part of the pipeline keeps its own (guarded by its
    own lock where worker threads count into it) and the backup adds them up.
    """

    def add(self, other: BackupStats) -> None:
        """Add ``other``'s counts to these."""
        for name, value in other.counts().items():
            setattr(self, name, getattr(self, name) + value)

    def add_blob(self, plain: int, stored: int, *, tree: bool = False) -> None:
        """Count one new blob of ``plain`` bytes that added ``stored`` bytes to a pack."""
        if tree:
            self.tree_blobs += 1
        else:
            self.data_blobs += 1
        self.data_added += plain
        self.data_added_packed += stored

    def summary(self, backup_start: str, backup_end: str) -> SnapshotSummary:
        """The snapshot's summary: these counts and the backup's start and end."""
        return SnapshotSummary(backup_start=backup_start, backup_end=backup_end, **self.counts())


@dataclass(frozen=True)
class SkippedPath:
    """A path left out of the snapshot, and why."""

    path: str  # as os.fsdecode gives it (undecodable bytes as surrogate escapes)
    reason: str


class Notices:
    """Paths left out of the snapshot and warnings, from any thread.

    Paths are put into messages as :func:`os.fsdecode` text: the one form
    the display layers know how to show (see docs/design.md, section 4).
    """

    def __init__(self, progress: ProgressState) -> None:
        self.skipped: list[SkippedPath] = []
        self.warnings: list[str] = []
        self._progress = progress
        self._lock = threading.Lock()

    def skip(self, path: bytes, reason: str) -> None:
        """``path`` is left out of the snapshot (counted as an error in the progress)."""
        with self._lock:
            self.skipped.append(SkippedPath(os.fsdecode(path), reason))
            self._progress.errors += 1

    def warn(self, message: str) -> None:
        """Something the user should know; the snapshot is still complete as described."""
        with self._lock:
            self.warnings.append(message)


class FileJob:
    """A file whose content is being stored."""

    __slots__ = (
        "path",
        "node",
        "futures",
        "batch",
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
        self.futures: list[Future[SaveResult]] = []  # a large file's chunks
        self.batch: Future[None] | None = None  # a small file's batch, in a worker thread
        self.submitted = False  # all its work is handed out (a batch may still be filling)
        self.pending = False  # waiting for a helper process's answer
        self.content: list[BlobId] | None = None  # set when known without futures
        self.error: str | None = None
        self.vanished = False
        self.size = -1  # bytes actually read; -1 = as stat said
        self.changed = False

    def done(self) -> bool:
        """All its work has completed (its content is known, or why not)."""
        if not self.submitted or self.pending:
            return False
        if self.batch is not None and not self.batch.done():
            return False
        return not self.futures or all(f.done() for f in self.futures)


class DirJob:
    """A directory whose tree is saved once all its entries are done."""

    __slots__ = (
        "node",
        "entries",
        "parent_subtree",
        "tree_id",
        "path",
        "sig",
        "hit",
        "ident",
        "dev",
        "files",
        "nbytes",
        "dirs",
        "flags",
        "done_upto",
    )

    def __init__(self, path: bytes, node: Node | None, parent_subtree: BlobId | None) -> None:
        self.path = path
        self.node = node  # None for the root
        self.entries: list[Node | FileJob | DirJob] = []
        self.parent_subtree = parent_subtree  # its tree in the parent snapshot
        self.tree_id: BlobId | None = None
        self.sig: bytes | None = None  # listing signature, for the directory cache
        self.hit = False  # unchanged since the parent snapshot (tree id reused)
        # for the directory cache: the directory's identity and device, and its
        # subtree's regular files, their bytes, its directories, and flags
        self.ident = b""
        self.dev = -1
        self.files = 0
        self.nbytes = 0
        self.dirs = 1
        self.flags = 0
        self.done_upto = 0  # entries before this one are known to be done

    def ready(self) -> bool:
        """Every file in it is done (its subdirectories are saved before it).

        Asked again and again while a directory waits for its files (a
        helper's files wait for its pack): each call starts where the last
        one found a file not done, as files never become undone.
        """
        entries = self.entries
        for i in range(self.done_upto, len(entries)):
            e = entries[i]
            if isinstance(e, FileJob) and not e.done():
                self.done_upto = i
                return False
        self.done_upto = len(entries)
        return True
