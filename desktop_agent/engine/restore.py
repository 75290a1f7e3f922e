"""Restoring a snapshot (or parts of it) into a directory.

Layout as restic's: each node lands under the target at its full path in
the snapshot (``/home/me/a.txt`` -> ``TARGET/home/me/a.txt``).

The repository may have been written by someone else, so restore trusts
none of it, nor anything already in the target:

* **Directory file descriptors.** The target is walked with ``openat``-style
  calls relative to directory descriptors (``O_NOFOLLOW | O_DIRECTORY``),
  every directory is checked to be the one created or found earlier
  (device and inode), files are opened with ``O_NOFOLLOW`` and their
  metadata set through the open descriptor. No path component that the
  restore did not create or check itself is followed: a symlink already in
  the target is an error for that entry (or, with ``overwrite``, the link
  itself is removed, never what it points to).
* **A streamed plan.** A first pass over the trees counts the work for the
  progress display; the second walks them again depth first (an explicit
  stack, no recursion) and restores in batches of bounded size: the
  batch's files are filled pack by pack, then its links and special files
  are created and metadata set, directories last and deepest first. Memory
  does not grow with the number of entries.
* **Repeated trees.** A tree reached more often than
  ``max_tree_repeats`` (a DAG built to expand into billions of entries) is
  an error for the entries that reach it once more.

Within a batch the needed packs are read pack by pack (ranges merged, at
most a few MiB at once), each blob is decrypted, decompressed within the
length the index gives and checked against its id in worker threads and
written with ``pwrite`` to every place that needs it. All-zero blobs are
skipped, which leaves holes: sparse files stay sparse.

Existing files are never overwritten unless asked; each one is reported.
A bad entry (unreadable, invalid, in the way) is an error for that entry,
named with its path, and the rest of the restore goes on.
"""

from __future__ import annotations

import errno
import os
import stat as st
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from .control import Control
from .errors import EngineError, IntegrityError, NotFound, StorageError
from .gocompat import go_unquote_name
from .ids import BlobId, BlobType, PackId, parse_id
from .limits import MAX_BLOB_PLAINTEXT, MAX_BLOB_STORED, loads_json
from .memory import limit_malloc_arenas
from .progress import ProgressState, Reporter
from .repository import Repository
from .snapshot import Snapshot
from .storage import FileType
from .tree import Node, NodeType, unix_mode

__all__ = [
    "DEFAULT_MAX_TREE_REPEATS",
    "RestoreOptions",
    "RestoreResult",
    "restore",
    "walk_snapshot",
]

_MERGE_GAP = 1 << 20  # read across a gap this small rather than issue two reads
# read at most this much of a pack at once (one larger blob alone): small enough
# that a pack of thousands of small files is shared out among the workers
_MAX_RANGE = 2 << 20
_BATCH_FILES = 20_000
_BATCH_BLOBS = 250_000
_BATCH_DIRS = 20_000  # directories waiting for their metadata
_MAX_HARDLINKS = 100_000  # hard link groups remembered; beyond, files are restored as copies
_MAX_ERRORS = 1_000  # error lines kept (all are counted)
_OPEN_DIRS = 64  # directory descriptors kept open
DEFAULT_MAX_TREE_REPEATS = 1_000

_IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_DIR_FLAGS = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
# O_NONBLOCK: a FIFO put where a file goes must fail the open, not hang it
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | _O_NOFOLLOW | _O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)


# Where the *at system calls exist (not on Windows), every operation goes by
# name relative to a directory descriptor; elsewhere by path, with the checks
# a path allows. A handle is a descriptor (int) or a directory's path (bytes).
_AT = os.open in os.supports_dir_fd and os.mkdir in os.supports_dir_fd
_Handle = int | bytes


def _at(h: _Handle, name: bytes) -> tuple[bytes, dict[str, Any]]:
    """``(name, {"dir_fd": h})`` for a descriptor, ``(h/name, {})`` for a path."""
    if isinstance(h, int):
        return name, {"dir_fd": h}
    return os.path.join(h, name), {}


def _open_dir(h: _Handle, name: bytes) -> tuple[_Handle, int, int]:
    """Open the directory ``name`` without following a symlink: ``(handle, dev, ino)``.

    Raises OSError ELOOP or ENOTDIR when something else is there.
    """
    if isinstance(h, int):
        fd = os.open(name, _DIR_FLAGS, dir_fd=h)
        s = os.fstat(fd)
        return fd, s.st_dev, s.st_ino
    path = os.path.join(h, name)
    s = os.lstat(path)
    if st.S_ISLNK(s.st_mode) or getattr(s, "st_reparse_tag", False):
        raise OSError(errno.ELOOP, "a symlink or junction is in the way", path)
    if not st.S_ISDIR(s.st_mode):
        raise OSError(errno.ENOTDIR, "not a directory", path)
    return path, s.st_dev, s.st_ino


def _open_file(h: _Handle, name: bytes) -> int:
    """Open (create) a file to write, never through a symlink."""
    if isinstance(h, int):  # the hot path: once per restored file
        return os.open(name, _FILE_FLAGS, 0o600, dir_fd=h)
    where, kw = _at(h, name)
    if not kw and os.path.islink(where):
        raise OSError(errno.ELOOP, "a symlink is in the way", where)
    return os.open(where, _FILE_FLAGS, 0o600, **kw)


def _set_meta(h: _Handle, name: bytes, node: Node, *, chmod: bool = True) -> None:
    """Owner, mode and times of ``name``, never through a symlink (``chmod=False``
    for a symlink itself)."""
    where, kw = _at(h, name)
    if _IS_ROOT:  # before chmod: chown clears setuid bits
        os.chown(where, node.uid, node.gid, follow_symlinks=False, **kw)
    if chmod:
        if kw:  # with a descriptor and no following, chmod refuses a symlink (ValueError)
            os.chmod(where, unix_mode(node.mode), follow_symlinks=False, **kw)
        elif not os.path.islink(where):
            os.chmod(where, unix_mode(node.mode))
    times = (node.atime or node.mtime, node.mtime)
    if kw or os.utime in os.supports_follow_symlinks:
        os.utime(where, ns=times, follow_symlinks=False, **kw)
    elif not os.path.islink(where):
        os.utime(where, ns=times)


def _set_dir_meta(h: _Handle, node: Node) -> None:
    """A directory's metadata through its own handle."""
    if isinstance(h, int):
        if _IS_ROOT:
            os.fchown(h, node.uid, node.gid)  # before chmod: chown clears setuid bits
        os.fchmod(h, unix_mode(node.mode))
        os.utime(h, ns=(node.atime or node.mtime, node.mtime))
        return
    os.chmod(h, unix_mode(node.mode))
    os.utime(h, ns=(node.atime or node.mtime, node.mtime))


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


# ------------------------------------------------------------------ walking
class _Entry(Protocol):
    """What the walk needs of a node."""

    @property
    def name(self) -> bytes: ...
    @property
    def type(self) -> str: ...
    @property
    def subtree(self) -> BlobId | None: ...


class _RepeatCounter:
    """How often each tree was reached, estimated in fixed memory.

    A count-min sketch: four rows of counters indexed by four slices of the
    tree id (a SHA-256, so uniformly spread). The estimate is never below the
    true count; with 2^17 counters per row a snapshot of ten million distinct
    directories adds about 80 to an estimate, far below any sensible bound.
    """

    _ROWS = 4
    _WIDTH = 1 << 17

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self._rows = [array("I", bytes(4 * self._WIDTH)) for _ in range(self._ROWS)]

    def reached(self, tree_id: bytes) -> bool:
        """Count one more reach; False once the tree was reached more than the bound."""
        estimate = 1 << 32
        mask = self._WIDTH - 1
        for r, row in enumerate(self._rows):
            i = int.from_bytes(tree_id[4 * r : 4 * r + 4], "little") & mask
            n = row[i]
            if n < 0xFFFFFFFF:
                n += 1
                row[i] = n
            estimate = min(estimate, n)
        return estimate <= self.bound


def _include_paths(patterns: Sequence[str]) -> list[list[bytes]]:
    return [[c for c in os.fsencode(p).split(b"/") if c and c != b"."] for p in patterns]


class _Frame:
    """One directory on the walk's stack."""

    __slots__ = ("ctx", "nodes", "pos", "below", "includes", "depth")

    def __init__(
        self,
        ctx: Any,
        nodes: Sequence[_Entry],
        below: bool,
        includes: list[list[bytes]],
        depth: int,
    ) -> None:
        self.ctx = ctx
        self.nodes = nodes
        self.pos = 0
        self.below = below  # at or below an include path: everything is taken
        self.includes = includes  # the include paths this directory is an ancestor of
        self.depth = depth


class _Walk:
    """Depth first over a snapshot's trees with an explicit stack.

    The caller's callbacks decide what a directory becomes (``enter`` returns
    the context its children see, or None to leave it out), handle other
    entries (``entry``) and hear when a directory is done (``leave``).
    """

    def __init__(
        self,
        load: Callable[[BlobId], Sequence[_Entry]],
        includes: Sequence[str],
        max_repeats: int,
        control: Control,
    ) -> None:
        self.load = load
        paths = _include_paths(includes)
        # an include of "/" takes everything
        self.includes = [] if any(not p for p in paths) else paths
        self.repeats = _RepeatCounter(max_repeats)
        self.max_repeats = max_repeats
        self.control = control
        self.selected = 0  # entries taken

    def run(
        self,
        root_tree: BlobId,
        root_ctx: Any,
        enter: Callable[[Any, Any], Any],
        entry: Callable[[Any, Any], None],
        leave: Callable[[Any], None],
        lost: Callable[[Any, str], None],
    ) -> None:
        """Walk from ``root_tree``; an unreadable root tree raises."""
        nodes = self.load(root_tree)
        stack = [_Frame(root_ctx, nodes, not self.includes, self.includes, 0)]
        while stack:
            frame = stack[-1]
            if frame.pos >= len(frame.nodes):
                stack.pop()
                leave(frame.ctx)
                continue
            if frame.pos % 256 == 0:
                self.control.checkpoint()
            node = frame.nodes[frame.pos]
            frame.pos += 1
            below, includes = frame.below, []
            if not below:
                taken = False
                for inc in frame.includes:
                    if inc[frame.depth] != node.name:
                        continue
                    taken = True
                    if len(inc) == frame.depth + 1:
                        below = True
                        break
                    includes.append(inc)
                # an ancestor of an include path is taken only as the directory it must be
                if not taken or (not below and node.type != NodeType.DIR):
                    continue
            self.selected += 1
            if node.type != NodeType.DIR:
                entry(frame.ctx, node)
                continue
            ctx = enter(frame.ctx, node)
            if ctx is None:
                continue
            if node.subtree is None:
                lost(ctx, "the directory has no subtree in the snapshot")
                leave(ctx)
                continue
            try:
                children = self.load(node.subtree)
            except EngineError as exc:
                lost(ctx, f"directory contents lost: {exc}")
                leave(ctx)
                continue
            if children and not self.repeats.reached(node.subtree):
                lost(
                    ctx,
                    f"its tree {node.subtree.hex()[:12]} is reached more than "
                    f"{self.max_repeats} times in this snapshot (a damaged or hostile "
                    "repository?); its contents are left out here",
                )
                leave(ctx)
                continue
            stack.append(_Frame(ctx, children, below, includes, frame.depth + 1))


class _Light(NamedTuple):
    """The few fields of a node the counting pass needs."""

    name: bytes
    type: str
    subtree: BlobId | None
    size: int
    links: int
    inode: int
    device_id: int


def _light_tree(repo: Repository, tree_id: BlobId) -> list[_Light]:
    """A tree's nodes, read only as far as counting needs (bad nodes left out)."""
    doc = loads_json(repo.load_blob(BlobType.TREE, tree_id), f"tree {tree_id.hex()}")
    raw = doc.get("nodes") if isinstance(doc, dict) else None
    out = []
    for obj in raw if isinstance(raw, list) else ():
        try:
            subtree = obj.get("subtree")
            size = obj.get("size") or 0
            links = obj.get("links") or 0
            inode = obj.get("inode") or 0
            device_id = obj.get("device_id") or 0
            if not all(isinstance(v, int) for v in (size, links, inode, device_id)):
                continue
            out.append(
                _Light(
                    go_unquote_name(obj["name"]),
                    str(obj["type"]),
                    None if subtree is None else BlobId(parse_id(subtree)),
                    size,
                    links,
                    inode,
                    device_id,
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return out


def walk_snapshot(
    repo: Repository,
    snap: Snapshot,
    includes: Sequence[str] = (),
    on_error: Callable[[list[bytes], EngineError], None] | None = None,
) -> Iterator[tuple[list[bytes], Node]]:
    """Yield ``(components, node)`` for every selected node, parents first.

    A directory whose tree cannot be read (damaged or missing) is passed to
    ``on_error`` with the error, and its contents are skipped; without
    ``on_error``, or for the snapshot's root tree, the error is raised.
    Depth first with an explicit stack.
    """
    inc = _include_paths(includes)
    stack: list[tuple[list[bytes], list[Node], int]] = [([], repo.load_tree(snap.tree), 0)]
    while stack:
        prefix, nodes, pos = stack[-1]
        if pos >= len(nodes):
            stack.pop()
            continue
        stack[-1] = (prefix, nodes, pos + 1)
        node = nodes[pos]
        comps = prefix + [node.name]
        take = not inc
        descend = take
        for path in inc:
            n = min(len(path), len(comps))
            if path[:n] != comps[:n]:
                continue
            take = descend = True
        if not take:
            continue
        yield comps, node
        if node.type == NodeType.DIR and node.subtree is not None and descend:
            try:
                children = repo.load_tree(node.subtree)
            except EngineError as exc:
                if on_error is None:
                    raise
                on_error(comps, exc)
                continue
            stack.append((comps, children, 0))


# -------------------------------------------------------------- the target
class _Dir:
    """A directory of the target this restore made or checked.

    Children point to parents (never the reverse), so a finished part of
    the tree is freed as the walk moves on.
    """

    __slots__ = ("parent", "name", "node", "dev", "ino", "fresh")

    def __init__(
        self, parent: _Dir | None, name: bytes, node: Node | None, dev: int, ino: int, fresh: bool
    ) -> None:
        self.parent = parent
        self.name = name
        self.node = node
        self.dev = dev
        self.ino = ino
        self.fresh = fresh  # created by this restore: nothing else is in it

    def path(self, name: bytes = b"") -> bytes:
        """The full path (for messages), with ``name`` appended."""
        parts = [name] if name else []
        d: _Dir | None = self
        while d is not None:
            parts.append(d.name)
            d = d.parent
        return b"/".join(reversed(parts))


class _DirChanged(OSError):
    """A directory is no longer the one the restore made or checked."""


class _DirFds:
    """Open directory descriptors, a bounded number of them (thread-safe).

    A directory not open is reopened from its nearest open ancestor, one
    component at a time with ``O_NOFOLLOW | O_DIRECTORY``, each checked
    against the device and inode recorded when it was made.
    """

    def __init__(self, root: _Dir, root_fd: _Handle, limit: int = _OPEN_DIRS) -> None:
        self.root = root
        self.root_fd = root_fd
        self.by_path = not isinstance(root_fd, int)  # no *at calls here: paths
        self.limit = limit
        self._open: OrderedDict[_Dir, _Handle] = OrderedDict()
        self._busy: dict[_Dir, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def fd(self, d: _Dir) -> Iterator[_Handle]:
        """The descriptor of ``d``, kept open while the block runs."""
        fd = self.acquire(d)
        try:
            yield fd
        finally:
            self.release(d)

    def acquire(self, d: _Dir) -> _Handle:
        """The descriptor of ``d``, kept open until :meth:`release` (the hot path)."""
        if self.by_path:
            return d.path()
        with self._lock:
            fd = self._get(d)
            self._busy[d] = self._busy.get(d, 0) + 1
            return fd

    def release(self, d: _Dir) -> None:
        """``d``'s descriptor may be closed again."""
        if self.by_path:
            return
        with self._lock:
            n = self._busy[d] - 1
            if n:
                self._busy[d] = n
            else:
                del self._busy[d]

    def adopt(self, d: _Dir, fd: _Handle) -> None:
        """Keep the descriptor of a directory just made or checked."""
        if self.by_path:
            return
        with self._lock:
            self._open[d] = fd
            self._trim()

    def forget(self, d: _Dir) -> None:
        """``d`` is done: close its descriptor."""
        with self._lock:
            fd = self._open.pop(d, None)
            if isinstance(fd, int):
                os.close(fd)

    def close(self) -> None:
        """Close every descriptor (the root's too)."""
        with self._lock:
            for fd in self._open.values():
                if isinstance(fd, int):
                    os.close(fd)
            self._open.clear()
            if isinstance(self.root_fd, int):
                os.close(self.root_fd)

    def _get(self, d: _Dir) -> _Handle:
        if d is self.root:
            return self.root_fd
        fd = self._open.get(d)
        if fd is not None:
            self._open.move_to_end(d)
            return fd
        chain = []
        cur: _Dir | None = d
        while cur is not None and cur is not self.root and cur not in self._open:
            chain.append(cur)
            cur = cur.parent
        base = self.root_fd if cur is None or cur is self.root else self._open[cur]
        for link in reversed(chain):
            fd, dev, ino = _open_dir(base, link.name)
            if (dev, ino) != (link.dev, link.ino):
                if isinstance(fd, int):
                    os.close(fd)
                raise _DirChanged(errno.ESTALE, "the directory was replaced during the restore")
            self._open[link] = fd
            base = fd
        self._trim(keep=d)
        return base

    def _trim(self, keep: _Dir | None = None) -> None:
        if len(self._open) <= self.limit:
            return
        for d in list(self._open):
            if len(self._open) <= self.limit:
                break
            if d is keep or d in self._busy:
                continue
            fd = self._open.pop(d)
            if isinstance(fd, int):
                os.close(fd)


# ---------------------------------------------------------------- the work
@dataclass
class _PlannedFile:
    parent: _Dir
    node: Node
    remaining: int = 0  # blob placements still to write
    end: int = 0  # end of the furthest data written
    failed: bool = False
    done: bool = False  # size and metadata set by the write that completed it


@dataclass
class _LinkSource:
    """The first restored path of a hard link group."""

    parent: _Dir
    name: bytes
    file: _PlannedFile | None  # None once its batch is done
    ok: bool = True


@dataclass
class _Batch:
    files: list[_PlannedFile] = field(default_factory=list)
    needs: dict[BlobId, list[tuple[int, int]]] = field(default_factory=dict)
    links: list[tuple[_Dir, Node, _LinkSource]] = field(default_factory=list)
    others: list[tuple[_Dir, Node]] = field(default_factory=list)
    blob_refs: int = 0

    def full(self) -> bool:
        return len(self.files) >= _BATCH_FILES or self.blob_refs >= _BATCH_BLOBS


class _Restorer:
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
        self.bytes_written = 0
        self.files_ok = 0
        self.dirs = 0
        self.hardlinks: dict[tuple[int, int], _LinkSource] = {}
        self.batch = _Batch()
        self.left: list[_Dir] = []  # directories walked, waiting for their metadata
        self.pack_sizes: dict[bytes, int] | None = None
        self._lock = threading.Lock()
        self.fds: _DirFds | None = None
        workers = options.workers or min(8, (os.cpu_count() or 2) * 2)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore")

    def error(self, path: bytes, message: str) -> None:
        with self._lock:
            self.errors_total += 1
            if len(self.errors) < _MAX_ERRORS:
                self.errors.append(f"{os.fsdecode(path)}: {message}")
            self.progress.errors += 1

    # ----------------------------------------------------------- counting
    def count(self, snap: Snapshot) -> int:
        """The first pass: totals for the progress display; returns the entries selected."""
        seen_links: set[tuple[int, int]] = set()
        progress = self.progress

        def entry(_ctx: None, node: _Light) -> None:
            if node.type != NodeType.FILE:
                return
            if node.links > 1 and node.inode:
                key = (node.device_id, node.inode)
                if key in seen_links:
                    progress.add_total(1, 0)
                    return
                if len(seen_links) < _MAX_HARDLINKS:
                    seen_links.add(key)
            progress.add_total(1, node.size if 0 <= node.size < 1 << 63 else 0)

        walk = _Walk(
            lambda t: _light_tree(self.repo, t),
            self.options.includes,
            self.options.max_tree_repeats,
            self.control,
        )
        walk.run(snap.tree, None, lambda _p, _n: True, entry, _nothing, _nothing)
        progress.finish_scan()
        return walk.selected

    # ------------------------------------------------------------ restoring
    def open_target(self) -> None:
        os.makedirs(self.target, mode=0o700, exist_ok=True)
        # the target itself is the user's choice: symlinks in its path are followed
        handle: _Handle = self.target
        if _AT:
            handle = os.open(self.target, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        s = os.stat(handle)
        root = _Dir(None, self.target, None, s.st_dev, s.st_ino, False)
        self.fds = _DirFds(root, handle)

    def run(self, snap: Snapshot) -> None:
        assert self.fds is not None
        walk = _Walk(
            self.repo.load_tree, self.options.includes, self.options.max_tree_repeats, self.control
        )
        walk.run(snap.tree, self.fds.root, self.enter, self.entry, self.leave, self.lost)
        self.flush()

    def lost(self, d: _Dir, message: str) -> None:
        self.error(d.path(), message)

    def leave(self, d: _Dir) -> None:
        if d.parent is None:  # the target itself keeps its metadata
            return
        self.left.append(d)
        if len(self.left) >= _BATCH_DIRS:
            self.flush()

    def enter(self, parent: _Dir, node: Node) -> _Dir | None:
        """Make (or check) the directory ``node`` in ``parent``; None if it cannot be used."""
        assert self.fds is not None
        name = node.name
        try:
            with self.fds.fd(parent) as pfd:
                where, at = _at(pfd, name)
                fresh = True
                try:
                    os.mkdir(where, 0o700, **at)
                except FileExistsError:
                    fresh = False
                try:
                    fd, dev, ino = _open_dir(pfd, name)
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
                    os.unlink(where, **at)  # the link itself, never what it points to
                    os.mkdir(where, 0o700, **at)
                    fresh = True
                    fd, dev, ino = _open_dir(pfd, name)
        except OSError as exc:
            self.error(parent.path(name), f"cannot create directory: {exc.strerror or exc}")
            return None
        d = _Dir(parent, name, node, dev, ino, fresh)
        self.fds.adopt(d, fd)
        self.dirs += 1
        return d

    def entry(self, parent: _Dir, node: Node) -> None:
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
        pf = _PlannedFile(parent, node)
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
        if node.links > 1 and node.inode and len(self.hardlinks) < _MAX_HARDLINKS:
            self.hardlinks[(node.device_id, node.inode)] = _LinkSource(parent, node.name, pf)
        if not pf.remaining:
            self.progress.add_done(files=1)
        if batch.full():
            self.flush()

    def clear_place(self, parent: _Dir, name: bytes, what: str) -> bool:
        """Make room for a new entry ``name``: True when the place is free."""
        if parent.fresh:
            return True
        assert self.fds is not None
        try:
            with self.fds.fd(parent) as pfd:
                where, at = _at(pfd, name)
                try:
                    s = os.stat(where, follow_symlinks=False, **at)
                except FileNotFoundError:
                    return True
                if not self.options.overwrite:
                    self.error(parent.path(name), "exists; not overwritten")
                    return False
                if st.S_ISDIR(s.st_mode):
                    self.error(parent.path(name), f"is a directory; not replaced by a {what}")
                    return False
                os.unlink(where, **at)  # a symlink: the link itself, never its target
                return True
        except OSError as exc:
            self.error(parent.path(name), f"cannot replace: {exc.strerror or exc}")
            return False

    # ------------------------------------------------------------- a batch
    def flush(self) -> None:
        """Write the batch's contents, make its links and special files, set metadata."""
        batch, self.batch = self.batch, _Batch()
        if batch.needs:
            self.restore_contents(batch)
        for i, pf in enumerate(batch.files):
            if i % 256 == 0:
                self.control.checkpoint()
            self.finish_file(pf)
        for parent, node, source in batch.links:
            self.make_link(parent, node, source)
        for parent, node in batch.others:
            self.make_other(parent, node)
        left, self.left = self.left, []
        assert self.fds is not None
        for d in left:  # post-order: every directory after its subdirectories
            self.finish_dir(d)
            self.fds.forget(d)
        for source in self.hardlinks.values():
            if source.file is not None:
                source.ok = not source.file.failed
                source.file = None  # let the batch go

    def restore_contents(self, batch: _Batch) -> None:
        """Fill the batch's files: the needed ranges of each pack, read and written
        by the workers one range at a time (a pack holds thousands of small
        files: ranges, not packs, keep every worker busy)."""
        by_pack: dict[PackId, list[tuple[BlobId, int, int, int]]] = {}
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
        try:
            for fut in futures:
                fut.result()
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

    def ranges(
        self, batch: _Batch, pack: PackId, blobs: list[tuple[BlobId, int, int, int]]
    ) -> list[list[tuple[BlobId, int, int, int]]]:
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
        groups: list[list[tuple[BlobId, int, int, int]]] = []
        for b in good:
            if groups:
                last = groups[-1]
                start, end = last[0][1], last[-1][1] + last[-1][2]
                if b[1] - end <= _MERGE_GAP and b[1] + b[2] - start <= _MAX_RANGE:
                    last.append(b)
                    continue
            groups.append([b])
        return groups

    def restore_range(
        self, batch: _Batch, pack: PackId, group: list[tuple[BlobId, int, int, int]]
    ) -> None:
        """Read one range of a pack and write its blobs out."""
        self.control.checkpoint()
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
                self.blob_failed(batch, blob_id, str(exc))
                continue
            self.write_blob(batch, plain, batch.needs[blob_id])

    def blob_failed(self, batch: _Batch, blob_id: BlobId, message: str) -> None:
        for idx, _off in batch.needs[blob_id]:
            pf = batch.files[idx]
            with self._lock:
                first = not pf.failed
                pf.failed = True
            if first:
                self.error(pf.parent.path(pf.node.name), f"content lost: {message}")

    def write_blob(self, batch: _Batch, plain: bytes, where: list[tuple[int, int]]) -> None:
        """Write one blob to every place that holds it (all-zero blocks stay holes).

        The write that completes a file also sets its size and metadata
        through the descriptor it wrote with: no second open, and the work
        is spread over the workers instead of left to one thread at the end.
        """
        assert self.fds is not None
        fds = self.fds
        zero = len(plain) >= 4096 and plain.count(0) == len(plain)
        for idx, offset in where:
            pf = batch.files[idx]
            if pf.failed:
                continue
            fd = -1
            try:
                if not zero:
                    pfd = fds.acquire(pf.parent)
                    try:
                        fd = _open_file(pfd, pf.node.name)
                    finally:
                        fds.release(pf.parent)
                    view = memoryview(plain)
                    pos = offset
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

    def complete(self, fd: int, pf: _PlannedFile) -> None:
        """Size and metadata of a file whose last blob was just written through ``fd``."""
        node = pf.node
        try:
            if pf.end != node.size:  # sparse, or ending in zeros
                os.ftruncate(fd, node.size)
            if _IS_ROOT:
                os.fchown(fd, node.uid, node.gid)  # before chmod: chown clears setuid bits
            os.fchmod(fd, unix_mode(node.mode))
            os.utime(fd, ns=(node.atime or node.mtime, node.mtime))
        except (OSError, OverflowError) as exc:
            pf.failed = True
            self.error(pf.parent.path(node.name), f"cannot finish file: {_reason(exc)}")
            return
        with self._lock:
            pf.done = True
            self.files_ok += 1

    # ------------------------------------------------------------ metadata
    def finish_file(self, pf: _PlannedFile) -> None:
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
                    fd = _open_file(pfd, node.name)
                    try:
                        if not st.S_ISREG(os.fstat(fd).st_mode):
                            raise OSError(errno.EINVAL, "not a regular file")
                        os.ftruncate(fd, node.size)
                    finally:
                        os.close(fd)
                _set_meta(pfd, node.name, node)
        except (OSError, OverflowError, ValueError) as exc:
            pf.failed = True
            self.error(pf.parent.path(node.name), f"cannot finish file: {_reason(exc)}")
            return
        self.files_ok += 1

    def make_link(self, parent: _Dir, node: Node, source: _LinkSource) -> None:
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
                    os.link(_at(sfd, source.name)[0], _at(pfd, node.name)[0])
        except OSError as exc:
            self.error(path, f"cannot create hard link: {exc.strerror or exc}")
            return
        self.files_ok += 1
        self.progress.add_done(files=1)

    def make_other(self, parent: _Dir, node: Node) -> None:
        """Create a symlink, FIFO or device node, then its metadata."""
        path = parent.path(node.name)
        if node.type in (NodeType.DEV, NodeType.CHARDEV) and not _IS_ROOT:
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
                where, at = _at(pfd, name)
                if node.type == NodeType.SYMLINK:
                    os.symlink(node.linktarget, where, **at)
                elif node.type == NodeType.FIFO:
                    os.mkfifo(where, 0o600, **at)
                else:
                    kind = st.S_IFCHR if node.type == NodeType.CHARDEV else st.S_IFBLK
                    os.mknod(where, kind | 0o600, node.device, **at)
                _set_meta(pfd, name, node, chmod=node.type != NodeType.SYMLINK)
        except (OSError, OverflowError, ValueError) as exc:
            self.error(path, f"cannot create: {_reason(exc)}")

    def finish_dir(self, d: _Dir) -> None:
        """A directory's metadata, through its own descriptor."""
        node = d.node
        if node is None:
            return
        assert self.fds is not None
        try:
            with self.fds.fd(d) as fd:
                _set_dir_meta(fd, node)
        except (OSError, OverflowError) as exc:
            self.error(d.path(), f"cannot set metadata: {_reason(exc)}")

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.fds is not None:
            self.fds.close()


def _nothing(*_args: object) -> None:
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _write_failure(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symlink is in the way; not followed, not overwritten"
    return f"write failed: {exc.strerror or exc}"


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
    try:
        if not r.count(snap) and options.includes:
            raise NotFound(
                "none of the --include paths is in the snapshot: " + ", ".join(options.includes)
            )
        try:
            r.open_target()
            r.run(snap)
        except OSError as exc:
            raise EngineError(f"restore failed: {exc.strerror or exc}") from None
    finally:
        r.close()
    state.report_final()
    return RestoreResult(
        files=r.files_ok,
        dirs=r.dirs,
        bytes_written=r.bytes_written,
        errors=tuple(r.errors),
        errors_total=r.errors_total,
    )
