"""The one durable-write recipe of desktop-agent: configuration, password file, repository.

Modelled on borg's SaveFile and restic's local backend: write a temporary
file in the same directory, flush and fsync it, rename it over the target,
then fsync the directory so the rename itself survives a power cut. A reader
sees the old file or the new one, never half of one; on failure the
temporary file is removed.

Platform details live here and nowhere else:

- macOS: ``fsync`` only reaches the drive's cache; ``F_FULLFSYNC`` asks for
  the platter (with a plain ``fsync`` where the file system refuses it).
- Windows: a virus scanner or indexer that holds the file for a moment makes
  the rename fail with ``PermissionError``; it is retried with a short
  backoff. Directories cannot be opened there, so they are not fsynced.

This module sits in ``config`` because ``config`` imports nothing of ours
and everyone may import it; ``engine.storage.local`` writes repository files
with :func:`write_durable` and maps its ``OSError`` to its own errors.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = [
    "Buffer",
    "fsync_dir",
    "fsync_fd",
    "make_private_dirs",
    "replace_file",
    "resolve_link",
    "write_atomic",
    "write_durable",
]

Buffer = bytes | bytearray | memoryview

# Read at call time, so that tests can play the other platforms' paths.
_WINDOWS = sys.platform == "win32"
_MACOS = sys.platform == "darwin"

# Windows renames: 20 attempts, 50 ms more each time: about 9.5 s in all at
# worst, enough for a scanner to finish with a 16 MiB pack file.
_RENAME_ATTEMPTS = 20
_RENAME_BACKOFF = 0.05
_sleep: Callable[[float], None] = time.sleep

_O_BINARY: int = getattr(os, "O_BINARY", 0)


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents with mode 0700.

    Directories that already exist keep their mode. (``os.makedirs`` would
    give the parents it creates the default mode instead.)
    """
    missing: list[Path] = []
    current = Path(os.path.abspath(directory))
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)


def fsync_fd(fd: int) -> None:
    """Flush the open file ``fd`` to stable storage.

    On macOS this is ``F_FULLFSYNC``, falling back to ``fsync`` where the
    file system does not support it (network and FAT volumes). File systems
    that cannot fsync at all (``EINVAL``/``ENOTSUP``) are let be; any other
    error is raised.
    """
    if _MACOS and fcntl is not None:
        full_fsync = getattr(fcntl, "F_FULLFSYNC", None)
        if full_fsync is not None:
            try:
                fcntl.fcntl(fd, full_fsync)
                return
            except OSError:
                pass  # not supported here: a plain fsync is the best there is
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename or a new file in ``directory`` durable (nothing to do on Windows)."""
    if _WINDOWS:  # directories cannot be opened for fsync there
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fsync_fd(fd)
    finally:
        os.close(fd)


def replace_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename ``src`` over ``dst`` atomically (``os.replace``).

    On Windows a ``PermissionError`` is retried for a few seconds with a
    growing pause: virus scanners and indexers hold freshly written files
    open for a moment, and the rename succeeds once they let go.
    """
    if not _WINDOWS:
        os.replace(src, dst)
        return
    for attempt in range(_RENAME_ATTEMPTS):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if attempt == _RENAME_ATTEMPTS - 1:
                raise
            _sleep(_RENAME_BACKOFF * (attempt + 1))


def _write_all(fd: int, parts: Sequence[Buffer]) -> None:
    for part in parts:
        view = memoryview(part)
        while view:
            written = os.write(fd, view)
            view = view[written:]


def _create_exclusive(path: str, parts: Sequence[Buffer], mode: int) -> bool:
    """Create ``path`` with ``parts`` unless it exists; False when it does."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, mode)
    except FileExistsError:
        return False
    try:
        _write_all(fd, parts)
        fsync_fd(fd)
    finally:
        os.close(fd)
    return True


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def write_durable(
    final: str | os.PathLike[str],
    parts: Sequence[Buffer],
    *,
    mode: int = 0o600,
    temp: str | None = None,
    replace: bool = True,
) -> bool:
    """Write ``parts`` to the file ``final`` durably and atomically, with permission bits ``mode``.

    The recipe: create ``temp`` (default: a hidden random name next to
    ``final``; it must be in the same directory), write, fsync, close,
    rename over ``final``, fsync the directory. The mode is set exactly,
    whatever the umask. ``final`` is written as named: a symbolic link there
    is replaced (see :func:`write_atomic` for following it).

    With ``replace=False`` an existing ``final`` is left alone and False is
    returned (someone else created it first); otherwise True. The directory
    must exist. Raises ``OSError`` on failure, leaving no temporary file behind.
    """
    final = os.fspath(final)
    directory = os.path.dirname(final) or os.curdir
    if temp is None:
        temp = os.path.join(directory, f".{os.path.basename(final)}.{os.urandom(6).hex()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, mode)
    try:
        try:
            if not _WINDOWS:
                os.fchmod(fd, mode)  # the umask must not loosen or tighten it
            _write_all(fd, parts)
            fsync_fd(fd)
        finally:
            os.close(fd)
        if replace:
            replace_file(temp, final)
        else:
            try:
                # link() fails if the target exists: create-if-absent, still atomic.
                os.link(temp, final)
            except FileExistsError:
                return False
            except OSError:
                # No hard links on this file system: exclusive create instead.
                if not _create_exclusive(final, parts, mode):
                    return False
            finally:
                _unlink_quietly(temp)
    except BaseException:
        _unlink_quietly(temp)
        raise
    fsync_dir(directory)
    return True


def resolve_link(path: Path) -> Path:
    """The file that writing to ``path`` should replace: ``path`` with every symbolic link resolved.

    Chains and relative links are followed; a link whose target does not
    exist yet resolves to where the target would be.
    """
    return Path(os.path.realpath(path))


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, replace: bool = True) -> bool:
    """Write ``data`` to ``path`` atomically with permission bits ``mode``.

    A symbolic link at ``path`` stays a link: the file it points to (through
    any chain of links) is the one replaced, with the temporary file next to
    it, so a configuration kept in a dotfiles repository and linked into
    place gets the new content. With ``replace=False`` an existing file is
    left alone and False is returned (someone else created it first);
    otherwise True. The target's directory must exist. Raises ``OSError`` on
    failure, leaving no temporary file behind.
    """
    return write_durable(resolve_link(path), [data], mode=mode, replace=replace)
