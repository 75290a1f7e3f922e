"""Restoring a snapshot (or parts of it) into a directory.

See docs/design.md, section 6. Layout as restic's: each node lands under
the target at its full path in the snapshot (``/home/me/a.txt`` ->
``TARGET/home/me/a.txt``).

The repository may have been written by someone else, so restore trusts
none of it, nor anything already in the target. The work is in parts:

* the **tree walk** (:mod:`.restorewalk`): a first pass counts the work for
  the progress display; the second walks the trees again depth first (an
  explicit stack, no recursion), and a tree reached more often than
  ``max_tree_repeats`` (a DAG built to expand into billions of entries) is
  an error for the entries that reach it once more;
* the **target** (:mod:`.restoretarget`): directories reached through
  descriptors, each checked to be the one created or found earlier, files
  opened with ``O_NOFOLLOW``: a symlink already in the target is an error
  for that entry (or, with ``overwrite``, the link itself is removed, never
  what it points to);
* the **restorer** (here): entries are planned in batches of bounded size;
  a batch's files are filled pack range by pack range in worker threads
  (:mod:`.restorefill`), then its links and special files are created and
  metadata set, directories last and deepest first. Memory does not grow
  with the number of entries.

Existing files are never overwritten unless asked; each one is reported.
A bad entry (unreadable, invalid, in the way) is an error for that entry,
named with its path (as :func:`os.fsdecode` text), and the rest of the
restore goes on.
"""

from __future__ import annotations

import errno
import os
import stat as st
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .control import Control
from .errors import EngineError, NotFound
from .ids import BlobId, BlobType
from .memory import fewer_gc_passes, limit_malloc_arenas
from .progress import ProgressState, Reporter
from .repository import Repository
from .restorefill import Batch, Filler, LinkSource, PlannedFile, reason
from .restoretarget import (
    IS_ROOT,
    Dir,
    DirFds,
    at,
    open_dir,
    open_file,
    open_target,
    set_dir_meta,
    set_meta,
)
from .restorewalk import (
    DEFAULT_MAX_TREE_REPEATS,
    MAX_HARDLINKS,
    TreeWalk,
    count_selected,
    walk_snapshot,
)
from .snapshot import Snapshot
from .tree import Node, NodeType

__all__ = [
    "DEFAULT_MAX_TREE_REPEATS",
    "RestoreOptions",
    "RestoreResult",
    "restore",
    "walk_snapshot",
]

_BATCH_DIRS = 20_000  # directories waiting for their metadata
_MAX_ERRORS = 1_000  # error lines kept (all are counted)


@dataclass(frozen=True)
class RestoreOptions:
    """Where to restore and what."""

    target: str
    includes: Sequence[str] = ()  # snapshot paths; empty = everything
    overwrite: bool = False
    workers: int = 0
    verify: bool = True  # check every blob's SHA-256 after decryption
    # a tree reached more often is refused (empty directories do not count)
    max_tree_repeats: int = DEFAULT_MAX_TREE_REPEATS


@dataclass(frozen=True)
class RestoreResult:
    """What happened. ``errors`` holds the first problems; ``errors_total`` counts all."""

    files: int
    dirs: int
    bytes_written: int
    errors: tuple[str, ...]
    errors_total: int = 0


class _Restorer:
    """One restore: plans batches while walking, restores each when it is full."""

    def __init__(
        self, repo: Repository, options: RestoreOptions, progress: ProgressState, control: Control
    ) -> None:
        self.repo = repo
        self.options = options
        self.progress = progress
        self.control = control
        self.target = os.fsencode(os.path.abspath(options.target))
        self.errors: list[str] = []
        self.errors_total = 0
        self.files_ok = 0  # files finished here (the filler counts those it finished)
        self.dirs = 0
        self.hardlinks: dict[tuple[int, int], LinkSource] = {}
        self.batch = Batch()
        self.left: list[Dir] = []  # directories walked, waiting for their metadata
        self._lock = threading.Lock()
        self.fds: DirFds | None = None
        self.filler: Filler | None = None
        workers = options.workers or min(8, (os.cpu_count() or 2) * 2)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore")

    def error(self, path: bytes, message: str) -> None:
        """A problem with one entry (any thread): kept for the result, counted."""
        with self._lock:
            self.errors_total += 1
            if len(self.errors) < _MAX_ERRORS:
                self.errors.append(f"{os.fsdecode(path)}: {message}")
            self.progress.errors += 1

    # ------------------------------------------------------------ restoring
    def open_target(self) -> None:
        """Make (if need be) and open the target directory."""
        self.fds = open_target(self.target)
        self.filler = Filler(
            self.repo,
            self.fds,
            self.pool,
            self.progress,
            self.control,
            self.error,
            verify=self.options.verify,
        )

    def run(self, snap: Snapshot) -> None:
        """The second pass: walk the snapshot and restore it batch by batch."""
        assert self.fds is not None
        walk = TreeWalk(
            self.repo.load_tree, self.options.includes, self.options.max_tree_repeats, self.control
        )
        walk.run(snap.tree, self.fds.root, self.enter, self.entry, self.leave, self.lost)
        self.flush()

    def lost(self, d: Dir, message: str) -> None:
        """The contents of a directory cannot be restored."""
        self.error(d.path(), message)

    def leave(self, d: Dir) -> None:
        """A directory's entries are all planned: its metadata comes after its batch."""
        if d.parent is None:  # the target itself keeps its metadata
            return
        self.left.append(d)
        if len(self.left) >= _BATCH_DIRS:
            self.flush()

    def enter(self, parent: Dir, node: Node) -> Dir | None:
        """Make (or check) the directory ``node`` in ``parent``; None if it cannot be used."""
        assert self.fds is not None
        name = node.name
        try:
            with self.fds.fd(parent) as pfd:
                where, kw = at(pfd, name)
                fresh = True
                try:
                    os.mkdir(where, 0o700, **kw)
                except FileExistsError:
                    fresh = False
                try:
                    fd, dev, ino = open_dir(pfd, name)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        raise
                    # a symlink or a file where the directory goes
                    if not self.options.overwrite:
                        self.error(
                            parent.path(name),
                            "exists and is not a directory (a symlink or a file); not "
                            "overwritten, nothing restored below it",
                        )
                        return None
                    os.unlink(where, **kw)  # the link itself, never what it points to
                    os.mkdir(where, 0o700, **kw)
                    fresh = True
                    fd, dev, ino = open_dir(pfd, name)
        except OSError as exc:
            self.error(parent.path(name), f"cannot create directory: {exc.strerror or exc}")
            return None
        d = Dir(parent, name, node, dev, ino, fresh)
        self.fds.adopt(d, fd)
        self.dirs += 1
        return d

    def entry(self, parent: Dir, node: Node) -> None:
        """Plan one file, link or special file."""
        if node.type == NodeType.INVALID:
            self.error(
                parent.path(node.name or b"<undecodable entry>"), f"left out: {node.invalid}"
            )
            return
        if node.type == NodeType.SOCKET:
            return  # sockets are not restored, as restic does
        if node.type != NodeType.FILE:
            self.batch.others.append((parent, node))
            return
        if node.links > 1 and node.inode:
            key = (node.device_id, node.inode)
            source = self.hardlinks.get(key)
            if source is not None:
                self.batch.links.append((parent, node, source))
                return
        if not self.clear_place(parent, node.name, "file"):
            return
        pf = PlannedFile(parent, node)
        batch = self.batch
        idx = len(batch.files)
        offset = 0
        places: list[tuple[BlobId, int]] = []
        for blob_id in node.content or ():
            found = self.repo.index.lookup(BlobType.DATA, blob_id)
            if found is None:
                self.error(
                    parent.path(node.name),
                    f"data blob {blob_id.hex()[:12]} is missing from the repository",
                )
                return
            places.append((blob_id, offset))
            offset += found.plaintext_length
        batch.files.append(pf)
        for blob_id, off in places:
            batch.needs.setdefault(blob_id, []).append((idx, off))
        pf.remaining = len(places)
        batch.blob_refs += len(places)
        if node.links > 1 and node.inode and len(self.hardlinks) < MAX_HARDLINKS:
            source = LinkSource(parent, node.name, pf)
            self.hardlinks[(node.device_id, node.inode)] = source
            batch.sources.append(source)
        if not pf.remaining:
            self.progress.add_done(files=1)
        if batch.full():
            self.flush()

    def clear_place(self, parent: Dir, name: bytes, what: str) -> bool:
        """Make room for a new entry ``name``: True when the place is free."""
        if parent.fresh:
            return True
        assert self.fds is not None
        try:
            with self.fds.fd(parent) as pfd:
                where, kw = at(pfd, name)
                try:
                    s = os.stat(where, follow_symlinks=False, **kw)
                except FileNotFoundError:
                    return True
                if not self.options.overwrite:
                    self.error(parent.path(name), "exists; not overwritten")
                    return False
                if st.S_ISDIR(s.st_mode):
                    self.error(parent.path(name), f"is a directory; not replaced by a {what}")
                    return False
                os.unlink(where, **kw)  # a symlink: the link itself, never its target
                return True
        except OSError as exc:
            self.error(parent.path(name), f"cannot replace: {exc.strerror or exc}")
            return False

    # ------------------------------------------------------------- a batch
    def flush(self) -> None:
        """Write the batch's contents, make its links and special files, set metadata.

        The walk waits meanwhile: planning the next batch while this one is
        written was measured slower for many small files (the walk's tree
        decoding holds the interpreter lock that every worker needs back
        after each system call).
        """
        batch, self.batch = self.batch, Batch()
        batch.dirs, self.left = self.left, []
        assert self.filler is not None and self.fds is not None
        if batch.needs:
            self.filler.fill(batch)
        for i, pf in enumerate(batch.files):
            if i % 256 == 0:
                self.control.checkpoint()
            self.finish_file(pf)
        for parent, node, source in batch.links:
            self.make_link(parent, node, source)
        for parent, node in batch.others:
            self.make_other(parent, node)
        for d in batch.dirs:  # post-order: every directory after its subdirectories
            self.finish_dir(d)
            self.fds.forget(d)
        for source in batch.sources:
            if source.file is not None:
                source.ok = not source.file.failed
                source.file = None  # let the batch go

    # ------------------------------------------------------------ metadata
    def finish_file(self, pf: PlannedFile) -> None:
        """Give a written file its size (holes, empty files) and its metadata.

        On the main thread, after the batch's writes: the metadata calls go
        by name relative to the directory's descriptor and never follow a
        symlink (chmod refuses one), so there is no second open per file.
        """
        if pf.failed or pf.done:
            return
        assert self.fds is not None
        node = pf.node
        try:
            with self.fds.fd(pf.parent) as pfd:
                if not pf.end or pf.end != node.size:  # empty, all holes, or ending in zeros
                    fd = open_file(pfd, node.name)
                    try:
                        if not st.S_ISREG(os.fstat(fd).st_mode):
                            raise OSError(errno.EINVAL, "not a regular file")
                        os.ftruncate(fd, node.size)
                    finally:
                        os.close(fd)
                set_meta(pfd, node.name, node)
        except (OSError, OverflowError, ValueError) as exc:
            pf.failed = True
            self.error(pf.parent.path(node.name), f"cannot finish file: {reason(exc)}")
            return
        self.files_ok += 1

    def make_link(self, parent: Dir, node: Node, source: LinkSource) -> None:
        """A hard link to the first restored path of its group."""
        path = parent.path(node.name)
        if not source.ok or (source.file is not None and source.file.failed):
            self.error(path, "hard link target was not restored")
            return
        if not self.clear_place(parent, node.name, "hard link"):
            return
        assert self.fds is not None
        try:
            with self.fds.fd(source.parent) as sfd, self.fds.fd(parent) as pfd:
                if isinstance(sfd, int) and isinstance(pfd, int):
                    os.link(
                        source.name,
                        node.name,
                        src_dir_fd=sfd,
                        dst_dir_fd=pfd,
                        follow_symlinks=False,
                    )
                else:
                    os.link(at(sfd, source.name)[0], at(pfd, node.name)[0])
        except OSError as exc:
            self.error(path, f"cannot create hard link: {exc.strerror or exc}")
            return
        self.files_ok += 1
        self.progress.add_done(files=1)

    def make_other(self, parent: Dir, node: Node) -> None:
        """Create a symlink, FIFO or device node, then its metadata."""
        path = parent.path(node.name)
        if node.type in (NodeType.DEV, NodeType.CHARDEV) and not IS_ROOT:
            self.error(path, "device files need root; skipped")
            return
        if node.type not in (NodeType.SYMLINK, NodeType.FIFO, NodeType.DEV, NodeType.CHARDEV):
            self.error(path, f"cannot restore node type {node.type!r}")
            return
        if not self.clear_place(parent, node.name, node.type):
            return
        assert self.fds is not None
        name = node.name
        try:
            with self.fds.fd(parent) as pfd:
                where, kw = at(pfd, name)
                if node.type == NodeType.SYMLINK:
                    os.symlink(node.linktarget, where, **kw)
                elif node.type == NodeType.FIFO:
                    os.mkfifo(where, 0o600, **kw)
                else:
                    kind = st.S_IFCHR if node.type == NodeType.CHARDEV else st.S_IFBLK
                    os.mknod(where, kind | 0o600, node.device, **kw)
                set_meta(pfd, name, node, chmod=node.type != NodeType.SYMLINK)
        except (OSError, OverflowError, ValueError) as exc:
            self.error(path, f"cannot create: {reason(exc)}")

    def finish_dir(self, d: Dir) -> None:
        """A directory's metadata, through its own descriptor."""
        node = d.node
        if node is None:
            return
        assert self.fds is not None
        try:
            with self.fds.fd(d) as fd:
                set_dir_meta(fd, node)
        except (OSError, OverflowError) as exc:
            self.error(d.path(), f"cannot set metadata: {reason(exc)}")

    def close(self) -> None:
        """Stop the workers and close every descriptor."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.fds is not None:
            self.fds.close()


def restore(
    repo: Repository,
    snap: Snapshot,
    options: RestoreOptions,
    *,
    progress: Reporter | None = None,
    control: Control | None = None,
    progress_interval: float = 0.1,
) -> RestoreResult:
    """Restore ``snap`` into ``options.target``; per-entry problems are listed, not raised."""
    limit_malloc_arenas()
    control = control or Control()
    state = ProgressState(progress, progress_interval)
    repo.ensure_index()
    r = _Restorer(repo, options, state, control)
    # trees and nodes by the ten thousand: the collector's default thresholds
    # would pass over them again and again (see engine.memory)
    with fewer_gc_passes():
        try:
            # the first pass gives the progress its totals and finds the
            # --include paths; with neither, nothing needs it
            if progress is not None or options.includes:
                selected = count_selected(
                    repo, snap, options.includes, options.max_tree_repeats, state, control
                )
                if not selected and options.includes:
                    raise NotFound(
                        "none of the --include paths is in the snapshot: "
                        + ", ".join(options.includes)
                    )
            else:
                # the root tree is read before the target is made, as the
                # first pass did: an unreadable one leaves no folder behind
                repo.load_tree(snap.tree)
                state.finish_scan()
            try:
                r.open_target()
                r.run(snap)
            except OSError as exc:
                raise EngineError(f"restore failed: {exc.strerror or exc}") from None
        finally:
            r.close()
    state.report_final()
    return RestoreResult(
        files=r.files_ok + (r.filler.files_done if r.filler is not None else 0),
        dirs=r.dirs,
        bytes_written=r.filler.bytes_written if r.filler is not None else 0,
        errors=tuple(r.errors),
        errors_total=r.errors_total,
    )
