"""Crash-safe writes of small private files (configuration, password file).

Modelled on borg's SaveFile: write a temporary file in the same directory,
flush and fsync it, rename it over the target, then fsync the directory so
the rename itself survives a power cut. A reader sees the old file or the new
one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["make_private_dirs", "write_atomic"]


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


def _fsync_dir(directory: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync there
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        # Some file systems refuse fsync on a directory; the rename happened anyway.
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _create_exclusive(path: Path, data: bytes, mode: int) -> bool:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    return True


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, replace: bool = True) -> bool:
    """Write ``data`` to ``path`` atomically with permission bits ``mode``.

    With ``replace=False`` an existing file is left alone and False is
    returned (someone else created it first); otherwise True. The parent
    directory must exist. Raises ``OSError`` on failure, leaving no
    temporary file behind.
    """
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as stream:
            if os.name != "nt":
                os.fchmod(stream.fileno(), mode)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                # link() fails if the target exists: create-if-absent, still atomic.
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError:
                # No hard links on this file system: exclusive create instead.
                if not _create_exclusive(path, data, mode):
                    return False
            finally:
                tmp.unlink()
        _fsync_dir(directory)
        return True
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
