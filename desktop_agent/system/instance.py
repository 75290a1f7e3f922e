"""One agent per configuration: a lock file, and the request a second tray start forwards.

Two agents on one configuration would share a repository password, a /ws
port and a scheduler: the second would fail to bind, or both would back up
at the same time. So every agent (headless or tray) takes
:class:`InstanceLock` before it binds anything. The lock is an OS lock on a
file (``fcntl.flock``; ``msvcrt.locking`` on Windows) that the kernel drops
when the process ends, however it ends: a ``kill -9`` leaves no stale lock,
and nothing ever has to guess from a pid whether the holder is alive. The
file keeps the holder's pid and mode (``tray`` or ``headless``) so that a
second start can say who runs, and a second tray start knows it can hand
its request over (see :mod:`desktop_agent.ui.instance`).

The lock lives in the user's runtime directory (``$XDG_RUNTIME_DIR``; the
state directory where there is none), named after a hash of the resolved
configuration path: two configurations run side by side, and a symbolic
link to a configuration is the same configuration.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import platformdirs

from desktop_agent.config.atomicfile import make_private_dirs
from desktop_agent.config.paths import APP_NAME
from desktop_agent.system.errors import AlreadyRunning, IntegrationError

fcntl: ModuleType | None
msvcrt: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None

__all__ = [
    "MODES",
    "InstanceLock",
    "TrayRequest",
    "bind_failure",
    "instance_key",
    "runtime_dir",
    "server_name",
]

log = logging.getLogger(__name__)

MODES = ("tray", "headless")

# Windows locks are mandatory: a locked byte cannot be read by anyone else.
# The lock is taken on one byte far past the pid and mode, which stay readable
# (LockFile allows locking beyond the end of the file).
_WINDOWS_LOCK_OFFSET = 1 << 20
_O_BINARY: int = getattr(os, "O_BINARY", 0)
# The holder writes its pid right after it took the lock: a reader that comes
# in between sees an empty file for a few microseconds; it looks again.
_HOLDER_READ_TRIES = 40
_HOLDER_READ_PAUSE = 0.025
# AF_UNIX socket paths are limited to 108 bytes (104 on macOS).
_MAX_SOCKET_PATH = 100


def runtime_dir() -> Path:
    """The private per-user directory for the lock and the tray's socket (created, 0700).

    ``$XDG_RUNTIME_DIR/desktop-agent`` where the session provides one (a
    tmpfs only this user can enter, emptied at logout); otherwise the
    platform's state directory (``~/.local/state``, ``~/Library/Application
    Support``, ``%LOCALAPPDATA%``).
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
        base = Path(xdg) / APP_NAME
    else:
        base = Path(platformdirs.user_state_dir(APP_NAME)) / "run"
    try:
        make_private_dirs(base)
    except OSError as exc:
        raise IntegrationError(f"cannot create {base}: {exc.strerror or exc}") from None
    return base


def instance_key(config_path: Path) -> str:
    """A short name for a configuration file: the same for every path that reaches it."""
    resolved = os.path.normcase(os.path.realpath(config_path))
    return hashlib.sha256(os.fsencode(resolved)).hexdigest()[:16]


def server_name(config_path: Path) -> str:
    """The name of the tray's local socket (``QLocalServer``) for this configuration.

    Derived from the configuration and the user, so that two users, or two
    configurations of one user, never meet. On POSIX it is a path in the
    private runtime directory when that is short enough for a socket;
    otherwise (and on Windows, where it names a pipe) a name with the user in it.
    """
    key = instance_key(config_path)
    if os.name == "posix":
        path = runtime_dir() / f"tray-{key}.sock"
        if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
            return str(path)
        return f"{APP_NAME}-{os.getuid()}-{key}"
    user = os.environ.get("USERNAME", "") or "user"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in user)
    return f"{APP_NAME}-{safe}-{key}"


def bind_failure(exc: OSError, config_path: Path) -> str | None:
    """A start that failed to bind the /ws address, in one line with what to do; else None."""
    if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
        return None
    why = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        hint = "another program (or desktop-agent with another configuration) uses it"
    else:
        hint = "this user cannot listen there"
    return f"could not start: {why}; {hint}: change [agent] listen in {config_path}"


def _try_lock(fd: int) -> bool:
    """Take the OS lock on ``fd`` without waiting; False when another process holds it."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    assert msvcrt is not None
    os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # EACCES / EDEADLOCK: someone holds it
        return False
    return True


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return
    assert msvcrt is not None
    os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
    msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (assumed on Windows, which has no signal 0)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _parse_holder(text: str) -> tuple[int | None, str | None]:
    parts = text.split()
    if len(parts) != 2 or not parts[0].isdigit() or parts[1] not in MODES:
        return None, None
    return int(parts[0]), parts[1]


class InstanceLock:
    """The lock that allows one agent per configuration; hold it for the process's life.

    ``with InstanceLock(config.path).held("headless"): ...`` or
    :meth:`acquire` / :meth:`release`. The file is never deleted: another
    start could be about to lock the very file a deletion would orphan.
    """

    def __init__(self, config_path: Path, directory: Path | None = None) -> None:
        self.path = (directory or runtime_dir()) / f"agent-{instance_key(config_path)}.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self, mode: str) -> None:
        """Take the lock as ``mode`` (``tray``, ``headless``) or raise :class:`AlreadyRunning`."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _O_BINARY, 0o600)
        except OSError as exc:
            raise IntegrationError(
                f"cannot open the lock file {self.path}: {exc.strerror or exc}"
            ) from None
        try:
            locked = _try_lock(fd)
        except OSError as exc:  # a file system without locks (some network mounts)
            os.close(fd)
            raise IntegrationError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
        if not locked:
            os.close(fd)
            pid, holder_mode = self.holder()
            raise AlreadyRunning(pid, holder_mode)
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()} {mode}\n".encode("ascii"))
        except OSError as exc:
            # the lock is ours all the same; only the message of a later start suffers
            log.warning("cannot write the pid to %s: %s", self.path, exc)
        self._fd = fd

    def release(self) -> None:
        """Let another start run (also done by the OS when this process ends)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            _unlock(fd)
        os.close(fd)

    def holder(self) -> tuple[int | None, str | None]:
        """The pid and mode written by the process that holds the lock (None, None if unknown)."""
        for attempt in range(_HOLDER_READ_TRIES):
            try:
                with open(self.path, encoding="ascii", errors="replace") as fh:
                    pid, mode = _parse_holder(fh.read(64))
            except OSError:
                pid, mode = None, None
            # content left by an earlier holder, before the new one rewrote it: look again
            if pid is not None and _alive(pid):
                return pid, mode
            if attempt + 1 < _HOLDER_READ_TRIES:
                time.sleep(_HOLDER_READ_PAUSE)
        return None, None

    @contextlib.contextmanager
    def holding(self, mode: str) -> Iterator[InstanceLock]:
        """Hold the lock for a ``with`` block."""
        self.acquire(mode)
        try:
            yield self
        finally:
            self.release()


@dataclass(frozen=True)
class TrayRequest:
    """What a second tray start asks the running one: a window to show, or its default.

    ``show`` is a window name (``--show``) or None for "the main window";
    ``autostart`` marks a start from the login entry, which shows nothing.
    Sent as one line of JSON over the local socket.
    """

    MAX_SIZE: ClassVar[int] = 4096

    show: str | None = None
    autostart: bool = False

    def encode(self) -> bytes:
        """The request as one line of JSON."""
        return json.dumps({"show": self.show, "autostart": self.autostart}).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> TrayRequest:
        """Parse :meth:`encode`'s line; ValueError when it is not one."""
        if len(data) > cls.MAX_SIZE:
            raise ValueError("request too long")
        doc = json.loads(data.decode("utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        show = doc.get("show")
        autostart = doc.get("autostart", False)
        if show is not None and not (isinstance(show, str) and show.isidentifier()):
            raise ValueError("show: not a window name")
        if not isinstance(autostart, bool):
            raise ValueError("autostart: not a boolean")
        return cls(show=show, autostart=autostart)
