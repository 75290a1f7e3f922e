"""The privileged Linux watcher of the change journal: one fanotify mark per file system.

See docs/design.md, section 4a. An agent with ``CAP_SYS_ADMIN`` (a
system-wide service backing up several users' folders) marks each file
system its sources lie on once (``FAN_MARK_FILESYSTEM``) instead of adding
an inotify watch per directory: no per-user watch limit, nothing to add for
a new directory, and events made through every mount and namespace. Events
come with ``FAN_REPORT_DFID_NAME``: the file handle of the directory an
entry changed in, and the entry's name (``.`` for an event on the directory
itself). The walker's ``watch`` records each listed directory's handle;
events for handles it never recorded (folders outside the sources, or new
ones whose parent's event already marked the parent) are dropped. The rules
are inotify's (:mod:`.watch_inotify`):

* an entry of a known directory changed: that directory changed;
* a known directory moved or deleted, or a subdirectory moved away, in or
  deleted: nothing at or below its old path is vouched for;
* a new name of a file that has others: the next run is a full scan;
* a queue overflow, or an event that names no directory: a full scan;
* a file system unmounted (its mark goes without an event; the marks are
  read back from ``/proc/self/fdinfo`` at every read and before any new
  mark): a full scan, after which it is marked again.

Folders on a file system that cannot be marked (a btrfs subvolume, no file
handles) get inotify watches from the same watcher. The queue keeps the
kernel's default bound (``fs.fanotify.max_queued_events``): the reader takes
events in as they come, and an overflow costs one full scan rather than
unbounded kernel memory.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys

from . import watch_inotify, watch_linux
from .journal import ChangeJournal
from .watch_linux import LinuxWatcher, StatFs, more_links

__all__ = ["FanotifyWatcher", "available", "start"]

FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_REPORT_DIR_FID = 0x400
FAN_REPORT_NAME = 0x800
FAN_REPORT_DFID_NAME = FAN_REPORT_DIR_FID | FAN_REPORT_NAME

FAN_MARK_ADD = 0x1
FAN_MARK_REMOVE = 0x2
FAN_MARK_FILESYSTEM = 0x100

FAN_MODIFY = 0x2
FAN_ATTRIB = 0x4
FAN_CLOSE_WRITE = 0x8
FAN_MOVED_FROM = 0x40
FAN_MOVED_TO = 0x80
FAN_CREATE = 0x100
FAN_DELETE = 0x200
FAN_DELETE_SELF = 0x400
FAN_MOVE_SELF = 0x800
FAN_Q_OVERFLOW = 0x4000
FAN_ONDIR = 0x40000000

FAN_EVENT_INFO_TYPE_FID = 1
FAN_EVENT_INFO_TYPE_DFID_NAME = 2
FAN_EVENT_INFO_TYPE_DFID = 3

AT_FDCWD = -100
MAX_HANDLE_SZ = 128

# the same changes inotify's MASK asks for, on directories too
MASK = (
    FAN_MODIFY
    | FAN_ATTRIB
    | FAN_CLOSE_WRITE
    | FAN_MOVED_FROM
    | FAN_MOVED_TO
    | FAN_CREATE
    | FAN_DELETE
    | FAN_DELETE_SELF
    | FAN_MOVE_SELF
    | FAN_ONDIR
)
_NEW_NAME = FAN_CREATE | FAN_MOVED_TO
_SELF_GONE = FAN_DELETE_SELF | FAN_MOVE_SELF
_CHILD_REPLACED = FAN_MOVED_FROM | FAN_DELETE | FAN_MOVED_TO
_WITH_HANDLE = (FAN_EVENT_INFO_TYPE_FID, FAN_EVENT_INFO_TYPE_DFID_NAME, FAN_EVENT_INFO_TYPE_DFID)

# struct fanotify_event_metadata, struct fanotify_event_info_header (the
# machine's byte order, as the kernel writes them)
_META = struct.Struct("=IBBHQii")
_INFO = struct.Struct("=BBH")
_UINT = struct.Struct("=I")
_INT = struct.Struct("=i")
FANOTIFY_METADATA_VERSION = 3

# a file system whose directories have no handles, or that cannot be marked:
# its folders are listed every time
_NOT_HERE = (errno.EOPNOTSUPP, errno.EXDEV, errno.ENODEV, errno.EOVERFLOW, errno.ESTALE)


class _FileHandle(ctypes.Structure):
    _fields_ = [
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ),
    ]


def _libc() -> ctypes.CDLL | None:
    lib = watch_linux.libc()
    if lib is None:
        return None
    try:
        lib.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        lib.fanotify_mark.argtypes = [
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint64,
            ctypes.c_int,
            ctypes.c_char_p,
        ]
        lib.name_to_handle_at.argtypes = [
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.POINTER(_FileHandle),
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_int,
        ]
    except AttributeError:
        return None
    return lib


def available() -> bool:
    """fanotify exists here (Linux); whether it may be used says :class:`FanotifyWatcher`."""
    return sys.platform.startswith("linux") and _libc() is not None


def _error() -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err))


class FanotifyWatcher(LinuxWatcher[bytes]):
    """Watches the file systems of the sources for a :class:`ChangeJournal`.

    Raises ``OSError`` (``EPERM``) when this process may not mark a whole
    file system: the caller falls back to inotify.
    """

    def __init__(self, journal: ChangeJournal) -> None:
        lib = _libc()
        if lib is None:
            raise OSError(errno.ENOSYS, "fanotify is not available")
        super().__init__(journal, lib)
        self._fsids: dict[int, bytes] = {}  # mount id -> file system id (b"": not marked)
        self._sdevs: dict[bytes, str] = {}  # file system id -> its mark's device (fdinfo)
        self._inotify: watch_inotify.InotifyWatcher | None = None  # where no mark can be
        fd = lib.fanotify_init(
            FAN_REPORT_DFID_NAME | FAN_CLOEXEC | FAN_NONBLOCK, os.O_RDONLY | os.O_CLOEXEC
        )
        if fd < 0:
            exc = _error()
            self.close()
            raise exc
        # marking a whole file system needs CAP_SYS_ADMIN; find out now, while
        # the caller can still choose inotify
        flags = FAN_MARK_ADD | FAN_MARK_FILESYSTEM
        if lib.fanotify_mark(fd, flags, MASK, AT_FDCWD, b"/") != 0:
            exc = _error()
            if exc.errno in (errno.EPERM, errno.EACCES, errno.EINVAL, errno.ENOSYS):
                os.close(fd)
                self.close()
                raise exc
        else:
            lib.fanotify_mark(fd, FAN_MARK_REMOVE | FAN_MARK_FILESYSTEM, MASK, AT_FDCWD, b"/")
        self._start_reading(fd)

    @property
    def marks(self) -> int:
        """How many file systems are marked."""
        return sum(1 for fsid in set(self._fsids.values()) if fsid)

    def watch(self, path: bytes) -> str | None:
        """Know ``path`` by its handle (before it is listed), marking its file
        system first if it is new: None when watched, "" when this folder
        cannot be, an error text when no folder can be. A folder on a file
        system that cannot be marked (no file handles, a btrfs subvolume)
        gets an inotify watch instead."""
        handle = _FileHandle()
        handle.handle_bytes = MAX_HANDLE_SZ
        mount = ctypes.c_int()
        with self._lock:
            if self._fd < 0:
                return "closed"
            lib = self._lib
            if lib.name_to_handle_at(AT_FDCWD, path, ctypes.byref(handle), ctypes.byref(mount), 0):
                err = ctypes.get_errno()
                if err in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM):
                    return ""  # gone or refused: listed every time
                if err in _NOT_HERE:
                    fsid = b""  # no handles on this file system
                else:
                    return os.strerror(err)
            else:
                found = self._fsids.get(mount.value)
                if found is None:
                    marked = self._mark(path)
                    if marked is None:
                        return ""  # gone meanwhile: the listing sees that
                    if isinstance(marked, str):
                        return marked
                    found = self._fsids[mount.value] = marked
                fsid = found
            if fsid:
                raw = bytes(handle.f_handle)[: handle.handle_bytes]
                # keys: file system id + handle type + handle
                self._known_as(fsid + _INT.pack(handle.handle_type) + raw, path)
                return None
            inner = self._inotify
            if inner is None:
                inner = self._inotify = watch_inotify.InotifyWatcher(self._journal)
        return inner.watch(path)

    def _mark(self, path: bytes) -> bytes | str | None:
        """Mark the file system of ``path``: its id, b"" when it cannot be
        marked, None when ``path`` is gone, an error text when nothing can be."""
        self._check_marks()  # a mark that vanished must be seen before a new one hides it
        lib = self._lib
        if lib.fanotify_mark(self._fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, MASK, AT_FDCWD, path):
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ENOTDIR):
                return None
            if err in _NOT_HERE or err in (errno.EACCES, errno.EPERM):
                return b""
            if err == errno.ENOSPC:
                return "the system's fanotify mark limit is reached"
            return os.strerror(err)
        buf = StatFs()
        if lib.statfs(path, ctypes.byref(buf)) != 0:
            return None
        fsid = bytes(buf.f_fsid)
        if fsid not in self._sdevs:
            # which of the marks listed in fdinfo is this one: the new device
            new = (self._marked_devices() or set()) - set(self._sdevs.values())
            if len(new) != 1:
                # its mark cannot be told apart, so its loss could not be seen:
                # inotify watches the folders of this file system instead
                lib.fanotify_mark(
                    self._fd, FAN_MARK_REMOVE | FAN_MARK_FILESYSTEM, MASK, AT_FDCWD, path
                )
                return b""
            self._sdevs[fsid] = new.pop()
        return fsid

    def _marked_devices(self) -> set[str] | None:
        """The devices of the file systems marked now, as the kernel lists them."""
        try:
            with open(f"/proc/self/fdinfo/{self._fd}", "rb") as fh:
                text = fh.read().decode("ascii", "replace")
        except OSError:
            return None
        return {
            word[5:]
            for line in text.splitlines()
            if line.startswith("fanotify ")
            for word in line.split()
            if word.startswith("sdev:")
        }

    def _check_marks(self) -> None:
        """Unmounting a file system drops its mark without an event: a mark
        that is gone means lost events (with the lock held)."""
        if not self._sdevs:
            return
        now = self._marked_devices()
        for fsid, device in list(self._sdevs.items()):
            if now is not None and device in now:
                continue
            self._journal.invalidate("a watched file system was unmounted")
            del self._sdevs[fsid]
            for mount in [m for m, f in self._fsids.items() if f == fsid]:
                del self._fsids[mount]
            for key in [k for k in self._paths if k.startswith(fsid)]:
                self._keys.pop(self._paths.pop(key), None)

    def sync(self) -> None:
        """Take in every event so far, and notice a file system unmounted
        since (its mark went with it, silently)."""
        super().sync()
        with self._lock:
            if self._fd >= 0:
                self._check_marks()
            inner = self._inotify
        if inner is not None:
            inner.sync()

    def close(self) -> None:
        """Stop reading and drop every mark (and the inotify watches, if any)."""
        inner, self._inotify = self._inotify, None
        if inner is not None:
            inner.close()
        super().close()

    def _forget(self) -> None:
        super()._forget()
        self._fsids.clear()
        self._sdevs.clear()

    def _handle(self, data: bytes) -> None:
        """Mark what the events say (the caller holds the lock)."""
        journal = self._journal
        paths = self._paths
        changed: set[bytes] = set()  # marked once per read: a burst costs one lock
        meta = _META.unpack_from
        info = _INFO.unpack_from
        uint = _UINT.unpack_from
        pos = 0
        end = len(data)
        while pos + _META.size <= end:
            length, version, _reserved, meta_len, mask, _fd, _pid = meta(data, pos)
            if (
                version != FANOTIFY_METADATA_VERSION
                or length < meta_len
                or meta_len < _META.size
                or pos + length > end
            ):
                # another layout, or a cut event: nothing after it can be placed
                journal.invalidate("an event it could not read")
                return
            stop = pos + length
            p = pos + meta_len
            pos = stop
            self.events += 1
            if mask & FAN_Q_OVERFLOW:
                journal.invalidate("its event queue overflowed")
                continue
            named = False
            while p + _INFO.size <= stop:
                kind, _pad, size = info(data, p)
                if size < _INFO.size:
                    break
                if kind in _WITH_HANDLE:
                    # header, fsid, handle size and type, then the handle
                    hbytes = uint(data, p + 12)[0] if size >= 20 and p + 16 <= stop else 0
                    if 20 + hbytes > size:
                        break  # a record that does not hold its handle names nothing
                    named = hbytes > 0
                    key = data[p + 4 : p + 12] + data[p + 16 : p + 20 + hbytes]
                    path = paths.get(key)
                    if path is not None:
                        name = b""
                        if kind == FAN_EVENT_INFO_TYPE_DFID_NAME:
                            name = data[p + 20 + hbytes : p + size].split(b"\0", 1)[0]
                        self._event(path, key, mask, name, changed)
                p += size
            if not named:
                # the kernel could not encode the directory's handle: where
                # the change was cannot be known
                journal.invalidate("an event without a file handle")
        if changed:
            journal.changed_many(changed)

    def _event(self, path: bytes, key: bytes, mask: int, name: bytes, changed: set[bytes]) -> None:
        journal = self._journal
        if not name or name == b".":
            # on the directory itself (its attributes, or itself moved or deleted)
            if mask & _SELF_GONE:
                journal.replaced(path)
                if mask & FAN_DELETE_SELF:
                    self._unwatched(key, path)
                return
            changed.add(path)  # (its parent is listed with it, as every ancestor is)
            return
        if mask & _NEW_NAME:
            child = path.rstrip(b"/") + b"/" + name
            if mask & FAN_ONDIR:
                journal.replaced(child)
            elif more_links(child):
                # a new name of a file that has others: a write through it
                # changes a file in folders the journal cannot name
                journal.invalidate(f"a hard link was made ({child!r})")
        if mask & FAN_ONDIR and mask & _CHILD_REPLACED:
            journal.replaced(path.rstrip(b"/") + b"/" + name)
        changed.add(path)


def start(journal: ChangeJournal) -> FanotifyWatcher | None:
    """The fanotify watcher, or None where fanotify does not exist."""
    if not available():
        return None
    return FanotifyWatcher(journal)
