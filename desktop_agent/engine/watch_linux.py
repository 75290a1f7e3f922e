"""What the Linux watchers of the change journal share.

See docs/design.md, section 4a. Two adapters mark directories for the
journal: :mod:`.watch_inotify` (one watch per directory, unprivileged) and
:mod:`.watch_fanotify` (one mark per file system, for an agent with
``CAP_SYS_ADMIN``). Both read their events on a thread of their own as they
come, under one lock that :meth:`LinuxWatcher.sync` also takes, so a backup
that starts sees every event made before it. What this module holds is the
same for both: which file systems are trusted to raise events (local ones),
the mounts at, above and below the sources as the journal's identity, and
the folders of files mapped shared and writable, whose writes raise no
event at all.
"""

from __future__ import annotations

import ctypes
import os
import re
import select
import threading
from collections.abc import Sequence
from typing import Generic, TypeVar

from .journal import ChangeJournal

__all__ = ["LOCAL_FS", "LinuxWatcher", "libc", "more_links"]

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


class StatFs(ctypes.Structure):
    """struct statfs (x86-64 and aarch64 layout): the type, the file system id."""

    _fields_ = [
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("counts", ctypes.c_ulong * 5),  # blocks, bfree, bavail, files, ffree
        ("f_fsid", ctypes.c_byte * 8),
        ("rest", ctypes.c_byte * 72),
    ]


def more_links(path: bytes) -> bool:
    """The file at ``path`` has other names (a write through one raises events
    only in the folder of the name written through)."""
    try:
        return os.lstat(path).st_nlink > 1
    except OSError:
        return False


_GATHER_MS = 50

_LIBC: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL | None:
    """The C library with errno, or None where there is none to load."""
    global _LIBC
    if _LIBC is None:
        try:
            # the process's own symbols, libc's among them (find_library runs ldconfig)
            lib = ctypes.CDLL(None, use_errno=True)
            lib.statfs.argtypes = [ctypes.c_char_p, ctypes.POINTER(StatFs)]
        except (OSError, AttributeError):
            return None
        _LIBC = lib
    return _LIBC


# a mount: device, root within its file system, mount point (as mountinfo escapes it)
Mount = tuple[bytes, bytes, bytes]


def _mounts() -> tuple[list[Mount], dict[int, str]]:
    """The mount table and each device's file system type."""
    try:
        with open("/proc/self/mountinfo", "rb") as fh:
            raw = fh.read()
    except OSError:
        return [], {}
    mounts: list[Mount] = []
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
        # mount ids and options are left out: they change without a new mount
        mounts.append((fields[2], fields[3], fields[4]))
    return mounts, types


_OCTAL = re.compile(rb"\\([0-7]{3})")


def _unescape(field: bytes) -> bytes:
    """A mountinfo path as the file system names it (``\\040`` is a space)."""
    return _OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field)


def mount_identity(mounts: list[Mount], roots: Sequence[bytes]) -> bytes:
    """The mounts that can change what is at or below ``roots``: those at a
    root, above one (the file systems a root lies on) or below one. A mount
    elsewhere (a container's, a USB stick's, a desktop's FUSE folder) does
    not concern the sources; with no roots, every mount counts."""
    prefixes = [r.rstrip(b"/") + b"/" for r in roots]
    kept = []
    for mount in mounts:
        point = _unescape(mount[2]).rstrip(b"/") + b"/"
        if not prefixes or any(r.startswith(point) or point.startswith(r) for r in prefixes):
            kept.append(b" ".join(mount))
    return b"\n".join(kept)


_Key = TypeVar("_Key", int, bytes)


class LinuxWatcher(Generic[_Key]):
    """The common half of a Linux watcher: the reader thread, trust, identity,
    and which watched directory each key of the kernel's (an inotify watch
    descriptor, a fanotify file handle) stands for.

    A subclass opens its event descriptor (non-blocking) and hands it to
    :meth:`_start_reading`; it implements ``watch`` and ``_handle`` (which
    marks what a buffer of events says, called with the lock held).
    """

    def __init__(self, journal: ChangeJournal, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self._journal = journal
        self._lock = threading.Lock()
        self._fd = -1
        self._fstypes = _mounts()[1]
        self._stop_r, self._stop_w = os.pipe()
        self.events = 0
        self._thread: threading.Thread | None = None
        self._paths: dict[_Key, bytes] = {}  # the kernel's key -> the directory's path
        self._keys: dict[bytes, _Key] = {}  # and back

    @property
    def watches(self) -> int:
        """How many directories are watched."""
        return len(self._paths)

    def _known_as(self, key: _Key, path: bytes) -> None:
        """``key`` stands for directory ``path`` now (the caller holds the lock)."""
        old = self._paths.get(key)
        if old is not None and old != path:
            # the same directory under a new path (moved): its old path is gone
            self._keys.pop(old, None)
            self._journal.replaced(old)
        self._paths[key] = path
        self._keys[path] = key

    def _unwatched(self, key: _Key, path: bytes) -> None:
        """``key`` (for ``path``) is gone: its directory was deleted (lock held)."""
        del self._paths[key]
        if self._keys.get(path) == key:
            del self._keys[path]

    def _start_reading(self, fd: int) -> None:
        self._fd = fd
        self._thread = threading.Thread(target=self._read_loop, name="journal", daemon=True)
        self._thread.start()

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

    def _handle(self, data: bytes) -> None:
        raise NotImplementedError

    def identity(self, roots: Sequence[bytes]) -> bytes:
        """The mounts at, above or below ``roots`` now (a change means a full scan)."""
        mounts, types = _mounts()
        self._fstypes = types
        return mount_identity(mounts, roots)

    def trusted(self, device: int, path: bytes) -> bool:
        """Changes on ``device`` (where ``path`` lies) raise events: local
        file systems only."""
        fstype = self._fstypes.get(device)
        if fstype is not None:
            return fstype in LOCAL_FS
        buf = StatFs()
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
            stop_r, stop_w = self._stop_r, self._stop_w
            self._stop_r = self._stop_w = -1  # closed once: a second close closes nothing
        if stop_w < 0:
            return
        if fd >= 0:
            try:
                os.write(stop_w, b"x")
            except OSError:
                pass
            thread = self._thread
            if thread is not None and threading.current_thread() is not thread:
                thread.join(5)
            os.close(fd)
        os.close(stop_r)
        os.close(stop_w)
        self._forget()

    def _forget(self) -> None:
        """Drop what is known of the watches (after close)."""
        self._paths.clear()
        self._keys.clear()

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
