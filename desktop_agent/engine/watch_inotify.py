"""The Linux watcher of the change journal: one inotify watch per directory.

See docs/design.md, section 4a. Unprivileged: each directory the walker
lists is watched first (``inotify_add_watch`` on a watched directory is
cheap and returns the same watch), so a change after its listing is never
lost. A thread reads the events as they come (the kernel's queue of 16,384
events would overflow between hourly backups on a busy machine) and marks:

* an event naming an entry of a watched directory: that directory changed;
* a watched directory moved or deleted (``IN_MOVE_SELF``, ``IN_DELETE_SELF``,
  ``IN_IGNORED``), or a subdirectory moved away or deleted: nothing at or
  below its old path is vouched for any more;
* a queue overflow or an unmount: the journal is invalid, the next run
  lists everything.

The watches count against the per-user limit that every program of the
user shares (``fs.inotify.max_user_watches``): the watcher takes at most
half of it and gives up (full scans from then on) rather than starve the
others. Paths are bytes, as the walker has them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys

from . import watch_linux
from .journal import ChangeJournal
from .watch_linux import LinuxWatcher, more_links

__all__ = ["InotifyWatcher", "available", "start"]

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# every change to a directory's entries or to their metadata; a write through
# a shared mapping raises nothing itself, but the close of its descriptor does
MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
)
_SELF_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED
# a subdirectory moved away or deleted, or one moved in (it may carry a
# subtree whose old paths the cache still knows): nothing below is vouched for
_CHILD_REPLACED = IN_MOVED_FROM | IN_DELETE | IN_MOVED_TO

_NEW_NAME = IN_CREATE | IN_MOVED_TO
_EVENT = struct.Struct("iIII")


def available() -> bool:
    """inotify exists here (Linux)."""
    return sys.platform.startswith("linux") and _libc() is not None


def _libc() -> ctypes.CDLL | None:
    lib = watch_linux.libc()
    if lib is None:
        return None
    try:
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except AttributeError:
        return None
    return lib


def _watch_limit() -> int:
    try:
        with open("/proc/sys/fs/inotify/max_user_watches", "rb") as fh:
            return int(fh.read().strip() or 8192)
    except (OSError, ValueError):
        return 8192


class InotifyWatcher(LinuxWatcher[int]):
    """Watches directories for a :class:`ChangeJournal` with inotify."""

    def __init__(self, journal: ChangeJournal, *, max_watches: int | None = None) -> None:
        lib = _libc()
        if lib is None:
            raise OSError(errno.ENOSYS, "inotify is not available")
        super().__init__(journal, lib)
        self._max = max_watches if max_watches is not None else _watch_limit() // 2
        fd = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            self.close()
            raise OSError(err, os.strerror(err))
        self._start_reading(fd)

    def watch(self, path: bytes) -> str | None:
        """Watch ``path`` (before it is listed): None when watched, "" when this
        folder cannot be (gone, refused), an error text when no folder can be."""
        with self._lock:
            if self._fd < 0:
                return "closed"
            if len(self._paths) >= self._max and path not in self._keys:
                return f"more than {self._max} folders (half the system's inotify watch limit)"
            wd = self._lib.inotify_add_watch(self._fd, path, MASK)
            if wd < 0:
                err = ctypes.get_errno()
                if err in (errno.ENOENT, errno.ENOTDIR):
                    return ""  # gone before its listing: the listing sees that
                if err in (errno.EACCES, errno.EPERM):
                    # refused (unreadable, or a policy that forbids watching):
                    # this folder is listed every time, the journal goes on
                    return ""
                if err == errno.ENOSPC:
                    return "the system's inotify watch limit is reached"
                return os.strerror(err)
            self._known_as(wd, path)
        return None

    def _handle(self, data: bytes) -> None:
        """Mark what the events say (the caller holds the lock)."""
        journal = self._journal
        size = _EVENT.size
        pos = 0
        end = len(data)
        paths = self._paths
        changed: set[bytes] = set()  # marked once per read: a burst costs one lock
        unpack = _EVENT.unpack_from
        while pos + size <= end:
            wd, mask, _cookie, length = unpack(data, pos)
            pos += size
            name = data[pos : pos + length].rstrip(b"\0") if length else b""
            pos += length
            self.events += 1
            if mask & IN_Q_OVERFLOW:
                journal.invalidate("its event queue overflowed")
                continue
            path = paths.get(wd)
            if path is None:
                continue  # a watch already dropped
            if mask & IN_UNMOUNT:
                journal.invalidate("a watched file system was unmounted")
            if mask & _SELF_GONE:
                journal.replaced(path)
                if mask & IN_IGNORED:
                    self._unwatched(wd, path)
                continue
            if name and mask & _NEW_NAME:
                child = path.rstrip(b"/") + b"/" + name
                if mask & IN_ISDIR:
                    journal.replaced(child)
                elif more_links(child):
                    # a new name of a file that has others: a write through it
                    # changes a file in folders the journal cannot name
                    journal.invalidate(f"a hard link was made ({child!r})")
            if name and mask & IN_ISDIR and mask & _CHILD_REPLACED:
                journal.replaced(path.rstrip(b"/") + b"/" + name)
            changed.add(path)
        if changed:
            journal.changed_many(changed)


def start(journal: ChangeJournal) -> InotifyWatcher | None:
    """The watcher for this system, or None where inotify does not exist."""
    if not available():
        return None
    return InotifyWatcher(journal)
