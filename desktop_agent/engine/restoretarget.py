"""The restore's target: directories reached through descriptors, never through a symlink.

See docs/design.md, section 6. Where the ``*at`` system calls exist, every
operation goes by name relative to a directory descriptor opened with
``O_NOFOLLOW | O_DIRECTORY``; where they do not (Windows), by path, with
the checks a path allows (``lstat``: symlinks and junctions refused). A
handle is a descriptor (int) or a directory's path (bytes).

:class:`Dir` is a directory this restore made or checked (its device and
inode recorded); :class:`DirFds` keeps a bounded number of them open and
reopens one from its nearest open ancestor, component by component, each
checked to be the same directory as before. The target directory the user
gave is the one exception: symlinks in its own path are followed
(:func:`open_target`).
"""

from __future__ import annotations

import errno
import os
import stat as st
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .tree import Node, unix_mode

__all__ = [
    "AT",
    "IS_ROOT",
    "Dir",
    "DirChanged",
    "DirFds",
    "Handle",
    "at",
    "open_dir",
    "open_file",
    "open_target",
    "set_dir_meta",
    "set_meta",
]

_OPEN_DIRS = 64  # directory descriptors kept open

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_DIR_FLAGS = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
# O_NONBLOCK: a FIFO put where a file goes must fail the open, not hang it
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | _O_NOFOLLOW | _O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)


# Where the *at system calls exist (not on Windows), every operation goes by
# name relative to a directory descriptor; elsewhere by path, with the checks
# a path allows. A handle is a descriptor (int) or a directory's path (bytes).
AT = os.open in os.supports_dir_fd and os.mkdir in os.supports_dir_fd
Handle = int | bytes


def at(h: Handle, name: bytes) -> tuple[bytes, dict[str, Any]]:
    """``(name, {"dir_fd": h})`` for a descriptor, ``(h/name, {})`` for a path."""
    if isinstance(h, int):
        return name, {"dir_fd": h}
    return os.path.join(h, name), {}


def open_dir(h: Handle, name: bytes) -> tuple[Handle, int, int]:
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


def open_file(h: Handle, name: bytes) -> int:
    """Open (create) a file to write, never through a symlink."""
    if isinstance(h, int):  # the hot path: once per restored file
        return os.open(name, _FILE_FLAGS, 0o600, dir_fd=h)
    where, kw = at(h, name)
    if not kw and os.path.islink(where):
        raise OSError(errno.ELOOP, "a symlink is in the way", where)
    return os.open(where, _FILE_FLAGS, 0o600, **kw)


def set_meta(h: Handle, name: bytes, node: Node, *, chmod: bool = True) -> None:
    """Owner, mode and times of ``name``, never through a symlink (``chmod=False``
    for a symlink itself)."""
    where, kw = at(h, name)
    if IS_ROOT:  # before chmod: chown clears setuid bits
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


def set_dir_meta(h: Handle, node: Node) -> None:
    """A directory's metadata through its own handle."""
    if isinstance(h, int):
        if IS_ROOT:
            os.fchown(h, node.uid, node.gid)  # before chmod: chown clears setuid bits
        os.fchmod(h, unix_mode(node.mode))
        os.utime(h, ns=(node.atime or node.mtime, node.mtime))
        return
    os.chmod(h, unix_mode(node.mode))
    os.utime(h, ns=(node.atime or node.mtime, node.mtime))


class Dir:
    """A directory of the target this restore made or checked.

    Children point to parents (never the reverse), so a finished part of
    the tree is freed as the walk moves on.
    """

    __slots__ = ("parent", "name", "node", "dev", "ino", "fresh")

    def __init__(
        self, parent: Dir | None, name: bytes, node: Node | None, dev: int, ino: int, fresh: bool
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
        d: Dir | None = self
        while d is not None:
            parts.append(d.name)
            d = d.parent
        return b"/".join(reversed(parts))


class DirChanged(OSError):
    """A directory is no longer the one the restore made or checked."""


class DirFds:
    """Open directory descriptors, a bounded number of them (thread-safe).

    A directory not open is reopened from its nearest open ancestor, one
    component at a time with ``O_NOFOLLOW | O_DIRECTORY``, each checked
    against the device and inode recorded when it was made.
    """

    def __init__(self, root: Dir, root_fd: Handle, limit: int = _OPEN_DIRS) -> None:
        self.root = root
        self.root_fd = root_fd
        self.by_path = not isinstance(root_fd, int)  # no *at calls here: paths
        self.limit = limit
        self._open: OrderedDict[Dir, Handle] = OrderedDict()
        self._busy: dict[Dir, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def fd(self, d: Dir) -> Iterator[Handle]:
        """The descriptor of ``d``, kept open while the block runs."""
        fd = self.acquire(d)
        try:
            yield fd
        finally:
            self.release(d)

    def acquire(self, d: Dir) -> Handle:
        """The descriptor of ``d``, kept open until :meth:`release` (the hot path)."""
        if self.by_path:
            return d.path()
        with self._lock:
            fd = self._get(d)
            self._busy[d] = self._busy.get(d, 0) + 1
            return fd

    def release(self, d: Dir) -> None:
        """``d``'s descriptor may be closed again."""
        if self.by_path:
            return
        with self._lock:
            n = self._busy[d] - 1
            if n:
                self._busy[d] = n
            else:
                del self._busy[d]

    def adopt(self, d: Dir, fd: Handle) -> None:
        """Keep the descriptor of a directory just made or checked."""
        if self.by_path:
            return
        with self._lock:
            self._open[d] = fd
            self._trim()

    def forget(self, d: Dir) -> None:
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

    def _get(self, d: Dir) -> Handle:
        if d is self.root:
            return self.root_fd
        fd = self._open.get(d)
        if fd is not None:
            self._open.move_to_end(d)
            return fd
        chain = []
        cur: Dir | None = d
        while cur is not None and cur is not self.root and cur not in self._open:
            chain.append(cur)
            cur = cur.parent
        base = self.root_fd if cur is None or cur is self.root else self._open[cur]
        for link in reversed(chain):
            fd, dev, ino = open_dir(base, link.name)
            if (dev, ino) != (link.dev, link.ino):
                if isinstance(fd, int):
                    os.close(fd)
                raise DirChanged(errno.ESTALE, "the directory was replaced during the restore")
            self._open[link] = fd
            base = fd
        self._trim(keep=d)
        return base

    def _trim(self, keep: Dir | None = None) -> None:
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


def open_target(target: bytes) -> DirFds:
    """Make (if need be) and open the target directory: the root of the restore."""
    os.makedirs(target, mode=0o700, exist_ok=True)
    # the target itself is the user's choice: symlinks in its path are followed
    handle: Handle = target
    if AT:
        handle = os.open(target, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    s = os.stat(handle)
    return DirFds(Dir(None, target, None, s.st_dev, s.st_ino, False), handle)
