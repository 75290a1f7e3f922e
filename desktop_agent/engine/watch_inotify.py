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
import ctypes.util
import errno
import os
import select
import struct
import sys
import threading

from .journal import ChangeJournal

__all__ = ["InotifyWatcher", "LOCAL_FS", "available", "start"]

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

# Local file systems, where every change goes through this kernel and raises
# its events. Anything else (network, cluster, FUSE, a VM's shared folder, an
# overlay whose lower layer may change) is always listed: an allowlist, so an
# unknown kind costs speed, never a missed change.
LOCAL_FS = frozenset(
    {
        "ext2",
        "ext3",
        "ext4",
        "xfs",
        "btrfs",
        "f2fs",
        "tmpfs",
        "ramfs",
        "vfat",
        "msdos",
        "exfat",
        "ntfs3",
        "zfs",
        "bcachefs",
        "jfs",
        "reiserfs",
        "nilfs2",
        "hfsplus",
    }
)
# statfs(2) magic numbers of the same, for devices the mount table does not
# name (a btrfs subvolume has a device number of its own)
_LOCAL_MAGIC = frozenset(
    {
        0xEF53,  # ext2/3/4
        0x58465342,  # xfs
        0x9123683E,  # btrfs
        0xF2F52010,  # f2fs
        0x01021994,  # tmpfs
        0x858458F6,  # ramfs
        0x4D44,  # vfat/msdos
        0x2011BAB0,  # exfat
        0x7366746E,  # ntfs3
        0x2FC12FC1,  # zfs
        0xCA451A4E,  # bcachefs
        0x3153464A,  # jfs
        0x52654973,  # reiserfs
        0x3434,  # nilfs2
        0x482B,  # hfsplus
    }
)


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112)]


_NEW_NAME = IN_CREATE | IN_MOVED_TO
_EVENT = struct.Struct("iIII")


def _more_links(path: bytes) -> bool:
    try:
        return os.lstat(path).st_nlink > 1
    except OSError:
        return False


_GATHER_MS = 50


def available() -> bool:
    """inotify exists here (Linux)."""
    return sys.platform.startswith("linux") and _libc() is not None


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL | None:
    global _LIBC
    if _LIBC is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            lib.inotify_init1.argtypes = [ctypes.c_int]
            lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
            lib.statfs.argtypes = [ctypes.c_char_p, ctypes.POINTER(_StatFs)]
        except (OSError, AttributeError):
            return None
        _LIBC = lib
    return _LIBC


def _watch_limit() -> int:
    try:
        with open("/proc/sys/fs/inotify/max_user_watches", "rb") as fh:
            return int(fh.read().strip() or 8192)
    except (OSError, ValueError):
        return 8192


def _mounts() -> tuple[bytes, dict[int, str]]:
    """The mount table (as read, for its identity) and each device's file system type."""
    try:
        with open("/proc/self/mountinfo", "rb") as fh:
            raw = fh.read()
    except OSError:
        return b"", {}
    types: dict[int, str] = {}
    for line in raw.splitlines():
        fields = line.split()
        try:
            sep = fields.index(b"-")
            major, minor = fields[2].split(b":")
            fstype = fields[sep + 1].decode("ascii", "replace")
        except (ValueError, IndexError):
            continue
        types[os.makedev(int(major), int(minor))] = fstype
    # the identity leaves out mount ids and options that change without a new mount
    ident = b"\n".join(
        b" ".join(f[2:5]) for f in (ln.split() for ln in raw.splitlines()) if len(f) > 5
    )
    return ident, types


class InotifyWatcher:
    """Watches directories for a :class:`ChangeJournal` with inotify."""

    def __init__(self, journal: ChangeJournal, *, max_watches: int | None = None) -> None:
        lib = _libc()
        if lib is None:
            raise OSError(errno.ENOSYS, "inotify is not available")
        self._lib = lib
        fd = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self._fd = fd
        self._journal = journal
        self._lock = threading.Lock()
        self._paths: dict[int, bytes] = {}  # watch descriptor -> path
        self._wds: dict[bytes, int] = {}
        self._max = max_watches if max_watches is not None else _watch_limit() // 2
        ident, types = _mounts()
        self._identity = ident
        self._fstypes = types
        self._stop_r, self._stop_w = os.pipe()
        self.events = 0
        self._thread = threading.Thread(target=self._read_loop, name="journal", daemon=True)
        self._thread.start()

    @property
    def watches(self) -> int:
        """How many directories are watched."""
        return len(self._paths)

    def watch(self, path: bytes) -> str | None:
        """Watch ``path`` (before it is listed): None when watched, "" when this
        folder cannot be (gone, refused), an error text when no folder can be."""
        with self._lock:
            if self._fd < 0:
                return "closed"
            if len(self._paths) >= self._max and path not in self._wds:
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
            old = self._paths.get(wd)
            if old is not None and old != path:
                # the same directory under a new path (moved): its old path is gone
                self._wds.pop(old, None)
                self._journal.replaced(old)
            self._paths[wd] = path
            self._wds[path] = wd
        return None

    def sync(self) -> None:
        """Take in every event queued so far (a backup starts: nothing before it is missed).

        The reader thread reads and handles under the same lock, so no event
        can be read but not yet handled while this runs.
        """
        with self._lock:
            if self._fd < 0:
                return
            while True:
                try:
                    data = os.read(self._fd, 1 << 16)
                except BlockingIOError:
                    return
                except OSError as exc:
                    self._journal.invalidate(f"reading its events failed ({exc.strerror})")
                    return
                self._handle(data)

    def identity(self) -> bytes:
        """The mount table now (a change means a full scan)."""
        ident, types = _mounts()
        self._fstypes = types
        return ident

    def trusted(self, device: int, path: bytes) -> bool:
        """Changes on ``device`` (where ``path`` lies) raise inotify events: local
        file systems only."""
        fstype = self._fstypes.get(device)
        if fstype is not None:
            return fstype in LOCAL_FS
        buf = _StatFs()
        if self._lib.statfs(path, ctypes.byref(buf)) != 0:
            return False
        return (buf.f_type & 0xFFFFFFFF) in _LOCAL_MAGIC

    def mapped_for_writing(self, roots: list[bytes]) -> set[bytes]:
        """Folders below ``roots`` holding files mapped shared and writable now.

        A write through such a mapping raises no event (nor does anything
        after its descriptor was closed); its folder is listed while the
        mapping lasts. Only this user's processes can be read, which are the
        ones that can write the user's files.
        """
        prefixes = tuple(r.rstrip(b"/") + b"/" for r in roots)
        found: set[bytes] = set()
        try:
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
        except OSError:
            return found
        for pid in pids:
            try:
                with open(f"/proc/{pid}/maps", "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            if b" rw-s " not in data:
                continue
            for line in data.splitlines():
                fields = line.split(None, 5)
                if len(fields) == 6 and fields[1] == b"rw-s" and fields[5].startswith(prefixes):
                    path = fields[5].removesuffix(b" (deleted)")
                    found.add(path[: path.rfind(b"/")] or b"/")
        return found

    def close(self) -> None:
        """Stop the reader and free every watch (closing the descriptor does)."""
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd < 0:
            return
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join(5)
        os.close(fd)
        os.close(self._stop_r)
        os.close(self._stop_w)
        self._paths.clear()
        self._wds.clear()

    # ------------------------------------------------------------ reader thread
    def _read_loop(self) -> None:
        fd = self._fd
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        stop_only = select.poll()
        stop_only.register(self._stop_r, select.POLLIN)
        while True:
            ready = poller.poll()
            if any(r[0] == self._stop_r for r in ready):
                return
            # let a burst gather (the kernel merges repeats): one wakeup, not one
            # per event; a backup that starts meanwhile takes them in itself (sync)
            if stop_only.poll(_GATHER_MS):
                return
            self.sync()

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
                    del paths[wd]
                    if self._wds.get(path) == wd:
                        del self._wds[path]
                continue
            if name and mask & _NEW_NAME:
                child = path.rstrip(b"/") + b"/" + name
                if mask & IN_ISDIR:
                    journal.replaced(child)
                elif _more_links(child):
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
