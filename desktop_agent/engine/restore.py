"""Restoring a snapshot (or parts of it) into a directory.

Layout as restic's: each node lands under the target at its full path in
the snapshot (``/home/me/a.txt`` -> ``TARGET/home/me/a.txt``).

Plan first, then write: the snapshot's trees are walked once to list the
directories, files (with every blob and its offset), links and special
files to create. Files are created at their final size, then the needed
packs are read pack by pack (ranges merged), each blob is decrypted,
decompressed and checked against its id in worker threads and written with
``pwrite`` to every place that needs it. All-zero blobs are skipped, which
leaves holes: sparse files stay sparse. Metadata (mode, owner, times) is set
last, directories deepest first so their times survive.

Existing files are never overwritten unless asked; each one is reported.
"""

from __future__ import annotations

import errno
import os
import stat as st
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from .control import Control
from .errors import EngineError, IntegrityError, NotFound, StorageError
from .ids import BlobId, BlobType, PackId
from .memory import limit_malloc_arenas
from .progress import ProgressState, Reporter
from .repository import Repository
from .snapshot import Snapshot
from .storage import FileType
from .tree import Node, NodeType, unix_mode

__all__ = ["RestoreOptions", "RestoreResult", "restore", "walk_snapshot"]

_MERGE_GAP = 1 << 20
_IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass(frozen=True)
class RestoreOptions:
    """Where to restore and what."""

    target: str
    includes: Sequence[str] = ()  # snapshot paths; empty = everything
    overwrite: bool = False
    workers: int = 0
    verify: bool = True  # check every blob's SHA-256 after decryption


@dataclass(frozen=True)
class RestoreResult:
    """What happened."""

    files: int
    dirs: int
    bytes_written: int
    errors: tuple[str, ...]


@dataclass
class _PlannedFile:
    node: Node
    dest: bytes
    link_to: bytes | None = None  # hard link to an earlier restored file


def _includes(patterns: Sequence[str]) -> list[list[bytes]]:
    out = []
    for p in patterns:
        comps = [c for c in os.fsencode(p).split(b"/") if c and c != b"."]
        out.append(comps)
    return out


def _selected(comps: list[bytes], includes: list[list[bytes]]) -> tuple[bool, bool]:
    """(take this node, descend into it)."""
    if not includes:
        return True, True
    take = False
    descend = False
    for inc in includes:
        n = min(len(inc), len(comps))
        if inc[:n] != comps[:n]:
            continue
        if len(comps) >= len(inc):  # at or below an include
            return True, True
        descend = True  # an ancestor of an include
        take = True
    return take, descend


def walk_snapshot(  # type: ignore[no-untyped-def]
    repo: Repository,
    snap: Snapshot,
    includes: Sequence[str] = (),
    on_error: Callable[[list[bytes], EngineError], None] | None = None,
):
    """Yield ``(components, node)`` for every selected node, parents first.

    A directory whose tree cannot be read (damaged or missing) is passed to
    ``on_error`` with the error, and its contents are skipped; without
    ``on_error``, or for the snapshot's root tree, the error is raised.
    """
    inc = _includes(includes)

    def rec(tree_id: BlobId, prefix: list[bytes]):  # type: ignore[no-untyped-def]
        try:
            nodes = repo.load_tree(tree_id)
        except EngineError as exc:
            if on_error is None or not prefix:
                raise
            on_error(prefix, exc)
            return
        for node in nodes:
            comps = prefix + [node.name]
            take, descend = _selected(comps, inc)
            if not take:
                continue
            yield comps, node
            if node.type == NodeType.DIR and node.subtree is not None and descend:
                yield from rec(node.subtree, comps)

    yield from rec(snap.tree, [])


class _Restorer:
    def __init__(
        self, repo: Repository, options: RestoreOptions, progress: ProgressState, control: Control
    ) -> None:
        self.repo = repo
        self.options = options
        self.progress = progress
        self.control = control
        self.target = os.fsencode(os.path.abspath(options.target))
        self.dirs: list[tuple[bytes, Node]] = []
        self.files: list[_PlannedFile] = []
        self.others: list[tuple[bytes, Node]] = []
        self.errors: list[str] = []
        self.failed_files: set[bytes] = set()
        self.bytes_written = 0
        self.fresh: set[bytes] = set()  # directories this restore created (empty before)
        self.ends: list[int] = []  # per file: end of the furthest data written
        self.remaining: list[int] = []  # per file: blob placements still to write
        self._lock = threading.Lock()

    def error(self, path: bytes, message: str) -> None:
        with self._lock:
            self.errors.append(f"{os.fsdecode(path)}: {message}")
            self.progress.errors += 1

    # ---------------------------------------------------------------- plan
    def plan(self, snap: Snapshot) -> None:
        hardlinks: dict[tuple[int, int], bytes] = {}

        def lost(comps: list[bytes], exc: EngineError) -> None:
            self.error(self.target + b"/" + b"/".join(comps), f"directory contents lost: {exc}")

        for comps, node in walk_snapshot(self.repo, snap, self.options.includes, lost):
            if any(c in (b"..", b".") or b"/" in c or not c for c in comps):
                self.error(b"/".join(comps), "unsafe name in snapshot; skipped")
                continue
            dest = self.target + b"/" + b"/".join(comps)
            if node.type == NodeType.DIR:
                self.dirs.append((dest, node))
            elif node.type == NodeType.FILE:
                pf = _PlannedFile(node, dest)
                if node.links > 1 and node.inode:
                    key = (node.device_id, node.inode)
                    if key in hardlinks:
                        pf.link_to = hardlinks[key]
                    else:
                        hardlinks[key] = dest
                self.files.append(pf)
                if pf.link_to is None:
                    self.progress.add_total(1, node.size)
                else:
                    self.progress.add_total(1, 0)
            else:
                self.others.append((dest, node))
        self.progress.finish_scan()

    # ------------------------------------------------------------- prepare
    def _exists(self, dest: bytes) -> bool:
        # nothing can be in a directory this restore created itself
        if os.path.dirname(dest) in self.fresh:
            return False
        return os.path.lexists(dest)

    def make_dirs(self) -> None:
        """Create the target and every directory of the snapshot (parents first)."""
        os.makedirs(self.target, mode=0o700, exist_ok=True)
        for dest, _node in self.dirs:
            try:
                os.mkdir(dest, 0o700)
                self.fresh.add(dest)
            except FileExistsError:
                if not os.path.isdir(dest):
                    self.error(dest, "exists and is not a directory; not overwritten")
            except FileNotFoundError:  # its parent could not be made
                try:
                    os.makedirs(dest, mode=0o700, exist_ok=True)
                except OSError as exc:
                    self.error(dest, f"cannot create directory: {exc.strerror}")
            except OSError as exc:
                self.error(dest, f"cannot create directory: {exc.strerror}")

    def create_files(self) -> dict[BlobId, list[tuple[int, int]]]:
        """Check the files' places; map blob -> [(file index, offset)].

        Files are created by their first write (or, with no data to write, at
        the end), never before: one open per small file.
        """
        needs: dict[BlobId, list[tuple[int, int]]] = defaultdict(list)
        self.ends = [0] * len(self.files)
        self.remaining = [0] * len(self.files)
        for i, pf in enumerate(self.files):
            if pf.link_to is not None:
                continue
            dest = pf.dest
            if self._exists(dest):
                if not self.options.overwrite:
                    self.error(dest, "exists; not overwritten")
                    self.failed_files.add(dest)
                    continue
                try:
                    if os.path.isdir(dest) and not os.path.islink(dest):
                        raise IsADirectoryError(errno.EISDIR, "is a directory")
                    os.unlink(dest)
                except OSError as exc:
                    self.error(dest, f"cannot replace: {exc.strerror}")
                    self.failed_files.add(dest)
                    continue
            offset = 0
            for blob_id in pf.node.content or ():
                entry = self.repo.index.lookup(BlobType.DATA, blob_id)
                if entry is None:
                    self.error(
                        dest, f"data blob {blob_id.hex()[:12]} is missing from the repository"
                    )
                    self.failed_files.add(dest)
                    break
                needs[blob_id].append((i, offset))
                self.remaining[i] += 1
                offset += entry.plaintext_length
            if not self.remaining[i]:
                self.progress.add_done(files=1)
        return needs

    def restore_pack(
        self,
        pack: PackId,
        blobs: list[tuple[BlobId, int, int, int]],
        needs: dict[BlobId, list[tuple[int, int]]],
    ) -> None:
        """Read the needed ranges of one pack and write its blobs out."""
        self.control.checkpoint()
        blobs.sort(key=lambda b: b[1])
        groups: list[list[tuple[BlobId, int, int, int]]] = []
        for b in blobs:
            if groups and b[1] - (groups[-1][-1][1] + groups[-1][-1][2]) <= _MERGE_GAP:
                groups[-1].append(b)
            else:
                groups.append([b])
        for group in groups:
            start = group[0][1]
            end = group[-1][1] + group[-1][2]
            try:
                raw = self.repo.storage.load(FileType.PACK, pack.hex(), start, end - start)
            except (StorageError, NotFound) as exc:
                for blob_id, *_ in group:
                    self._blob_failed(blob_id, needs, f"pack {pack.hex()[:12]} unreadable: {exc}")
                continue
            view = memoryview(raw)
            for blob_id, offset, length, ulen in group:
                self.control.checkpoint()
                try:
                    plain = self.repo.decode_blob(
                        BlobType.DATA,
                        blob_id,
                        view[offset - start : offset - start + length],
                        ulen,
                        verify=self.options.verify,
                    )
                except IntegrityError as exc:
                    self._blob_failed(blob_id, needs, str(exc))
                    continue
                self.write_blob(plain, needs[blob_id])

    def _blob_failed(
        self, blob_id: BlobId, needs: dict[BlobId, list[tuple[int, int]]], message: str
    ) -> None:
        for idx, _off in needs[blob_id]:
            dest = self.files[idx].dest
            self.error(dest, f"content lost: {message}")
            with self._lock:
                self.failed_files.add(dest)

    def write_blob(self, plain: bytes, where: list[tuple[int, int]]) -> None:
        """Write one blob to every place that holds it (all-zero blocks stay holes)."""
        zero = len(plain) >= 4096 and plain.count(0) == len(plain)
        for idx, offset in where:
            pf = self.files[idx]
            if not zero:
                try:
                    fd = os.open(
                        pf.dest, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
                    )
                    try:
                        view = memoryview(plain)
                        pos = offset
                        while view:
                            n = os.pwrite(fd, view, pos)
                            view = view[n:]
                            pos += n
                    finally:
                        os.close(fd)
                except OSError as exc:
                    self.error(pf.dest, f"write failed: {exc.strerror}")
                    with self._lock:
                        self.failed_files.add(pf.dest)
                    if exc.errno == errno.ENOSPC:
                        raise StorageError(
                            f"the restore target is full (no space left) at {os.fsdecode(pf.dest)}"
                        ) from None
                    continue
            with self._lock:
                self.bytes_written += len(plain)
                end = offset + len(plain)
                if end > self.ends[idx] and not zero:
                    self.ends[idx] = end
                self.remaining[idx] -= 1
                finished = self.remaining[idx] == 0
            self.progress.add_done(nbytes=len(plain), files=1 if finished else 0)
            self.progress.current_file = os.fsdecode(pf.dest)
            self.progress.maybe_report()

    def restore_contents(self, needs: dict[BlobId, list[tuple[int, int]]]) -> None:
        by_pack: dict[PackId, list[tuple[BlobId, int, int, int]]] = defaultdict(list)
        for blob_id in needs:
            entry = self.repo.index.lookup(BlobType.DATA, blob_id)
            assert entry is not None
            by_pack[entry.pack].append(
                (blob_id, entry.offset, entry.length, entry.uncompressed_length)
            )
        workers = self.options.workers or min(8, (os.cpu_count() or 2) * 2)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore") as pool:
            futures: list[Future[None]] = [
                pool.submit(self.restore_pack, pack, blobs, needs)
                for pack, blobs in by_pack.items()
            ]
            try:
                for fut in futures:
                    fut.result()
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise

    # ------------------------------------------------------------ metadata
    def _meta(self, dest: bytes, node: Node, *, follow: bool = True) -> None:
        try:
            if _IS_ROOT:
                os.chown(dest, node.uid, node.gid, follow_symlinks=follow)
            if follow:
                os.chmod(dest, unix_mode(node.mode))
            os.utime(dest, ns=(node.atime or node.mtime, node.mtime), follow_symlinks=follow)
        except OSError as exc:
            self.error(dest, f"cannot set metadata: {exc.strerror}")

    def finish(self) -> None:
        for i, pf in enumerate(self.files):
            if pf.link_to is not None:
                if pf.link_to in self.failed_files:
                    self.error(pf.dest, "hard link target was not restored")
                    continue
                try:
                    if self._exists(pf.dest):
                        if not self.options.overwrite:
                            self.error(pf.dest, "exists; not overwritten")
                            continue
                        os.unlink(pf.dest)
                    os.link(pf.link_to, pf.dest)
                    self.progress.add_done(files=1)
                except OSError as exc:
                    self.error(pf.dest, f"cannot create hard link: {exc.strerror}")
                continue
            if pf.dest in self.failed_files:
                continue
            if pf.node.size == 0 or self.ends[i] != pf.node.size:  # empty, sparse, ending in zeros
                try:
                    fd = os.open(
                        pf.dest, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
                    )
                    try:
                        os.ftruncate(fd, pf.node.size)
                    finally:
                        os.close(fd)
                except OSError as exc:
                    self.error(pf.dest, f"cannot create file: {exc.strerror}")
                    continue
            self._meta(pf.dest, pf.node)
        for dest, node in self.others:
            if self._exists(dest):
                if not self.options.overwrite:
                    self.error(dest, "exists; not overwritten")
                    continue
                try:
                    os.unlink(dest)
                except OSError as exc:
                    self.error(dest, f"cannot replace: {exc.strerror}")
                    continue
            try:
                os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
                if node.type == NodeType.SYMLINK:
                    os.symlink(node.linktarget, dest)
                elif node.type == NodeType.FIFO:
                    os.mkfifo(dest, unix_mode(node.mode))
                elif node.type in (NodeType.DEV, NodeType.CHARDEV):
                    if not _IS_ROOT:
                        self.error(dest, "device files need root; skipped")
                        continue
                    kind = st.S_IFCHR if node.type == NodeType.CHARDEV else st.S_IFBLK
                    os.mknod(dest, kind | unix_mode(node.mode), node.device)
                elif node.type == NodeType.SOCKET:
                    continue  # sockets are not restored, as restic does
                else:
                    self.error(dest, f"cannot restore node type {node.type!r}")
                    continue
            except OSError as exc:
                self.error(dest, f"cannot create: {exc.strerror}")
                continue
            self._meta(dest, node, follow=node.type != NodeType.SYMLINK)
        for dest, node in sorted(self.dirs, key=lambda d: d[0].count(b"/"), reverse=True):
            self._meta(dest, node)


def restore(
    repo: Repository,
    snap: Snapshot,
    options: RestoreOptions,
    *,
    progress: Reporter | None = None,
    control: Control | None = None,
    progress_interval: float = 0.1,
) -> RestoreResult:
    """Restore ``snap`` into ``options.target``; per-file problems are listed, not raised."""
    limit_malloc_arenas()
    control = control or Control()
    state = ProgressState(progress, progress_interval)
    repo.ensure_index()
    r = _Restorer(repo, options, state, control)
    r.plan(snap)
    if options.includes and not (r.dirs or r.files or r.others):
        raise NotFound(
            "none of the --include paths is in the snapshot: " + ", ".join(options.includes)
        )
    try:
        r.make_dirs()
        needs = r.create_files()
        r.restore_contents(needs)
        r.finish()
    except OSError as exc:
        raise EngineError(f"restore failed: {exc.strerror or exc}") from None
    state.report_final()
    return RestoreResult(
        files=sum(1 for f in r.files if f.dest not in r.failed_files),
        dirs=len(r.dirs),
        bytes_written=r.bytes_written,
        errors=tuple(r.errors),
    )
