"""A repository in a local directory, laid out exactly as restic's local backend.

Writes follow the borg/restic recipe: write a temporary file next to the
final one, flush, fsync, rename, fsync the directory. A crash leaves at worst
a ``*-tmp-*`` file that nobody lists. The recipe itself, with its macOS and
Windows details, is the one the configuration uses
(:mod:`desktop_agent.config.atomicfile`); here its ``OSError`` becomes a
:class:`StorageError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from desktop_agent.config.atomicfile import fsync_dir, fsync_fd, replace_file, write_durable

from ..errors import NotFound, StorageError, describe_oserror
from .base import Buffer, FileType, is_storage_id, too_large

__all__ = ["LocalStorage", "durable_write", "gone_message"]

_DIRS = [t.value for t in FileType if t is not FileType.CONFIG] + ["tmp"]


def gone_message(location: str) -> str:
    """What to say when the whole repository disappeared in the middle of work."""
    return (
        f"the repository at {location} is gone (was the drive unplugged or unmounted?); "
        "nothing more was written to it: plug it back in and run the backup again"
    )


def durable_write(final: str, parts: Sequence[Buffer], mode: int = 0o600) -> None:
    """Write ``parts`` to ``final`` atomically: temp, fsync, rename, fsync dir.

    The temporary file is ``<final>-tmp-<random>``, a name that listing
    skips. Raises ``OSError``; the callers map it to a :class:`StorageError`.
    """
    write_durable(final, parts, mode=mode, temp=f"{final}-tmp-{os.urandom(6).hex()}")


class LocalStorage:
    """Files under a directory: ``config``, ``keys/``, ``data/xx/``, ``index/``..."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))

    @property
    def location(self) -> str:
        """The directory path."""
        return self.root

    def path(self, ftype: FileType, name: str) -> str:
        """Filesystem path of a repository file."""
        if ftype is FileType.CONFIG:
            return os.path.join(self.root, "config")
        if not is_storage_id(name):
            raise StorageError(f"invalid file name {name!r}")
        if ftype is FileType.PACK:
            return os.path.join(self.root, "data", name[:2], name)
        return os.path.join(self.root, ftype.value, name)

    def exists(self) -> bool:
        """True when ``config`` exists."""
        return os.path.isfile(os.path.join(self.root, "config"))

    def create_layout(self) -> None:
        """Create the directories restic's local backend creates."""
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            for d in _DIRS:
                os.makedirs(os.path.join(self.root, d), mode=0o700, exist_ok=True)
            for i in range(256):
                os.makedirs(os.path.join(self.root, "data", f"{i:02x}"), mode=0o700, exist_ok=True)
        except OSError as exc:
            raise describe_oserror(exc, f"creating {self.root}") from None

    def _make_parent(self, final: str) -> None:
        """Create the missing directory of ``final`` (a ``data/xx`` that another
        tool removed, say), but only inside a repository that is still there.

        When the whole repository is gone, its drive was most likely unplugged
        or unmounted: recreating the path would write the backup onto the
        disk underneath the mount point, where nobody would ever find it.
        """
        if not self.exists():
            raise StorageError(gone_message(self.root))
        parent = os.path.dirname(final)
        try:
            os.mkdir(parent, 0o700)
        except FileExistsError:
            if not os.path.isdir(parent):
                raise

    def save(self, ftype: FileType, name: str, parts: Sequence[Buffer]) -> None:
        """Durably store a file (read-only afterwards, as restic does)."""
        final = self.path(ftype, name)
        try:
            try:
                durable_write(final, parts, 0o400 if ftype is not FileType.LOCK else 0o600)
            except FileNotFoundError:
                self._make_parent(final)
                durable_write(final, parts, 0o400 if ftype is not FileType.LOCK else 0o600)
        except OSError as exc:
            raise describe_oserror(exc, final) from None

    def save_file(self, ftype: FileType, name: str, path: str) -> None:
        """fsync the spooled file, rename it into place, fsync the directory."""
        final = self.path(ftype, name)
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                fsync_fd(fd)
            finally:
                os.close(fd)
            os.chmod(path, 0o400)
            try:
                replace_file(path, final)
            except FileNotFoundError:
                if not os.path.exists(path):
                    raise
                self._make_parent(final)
                replace_file(path, final)
            fsync_dir(os.path.dirname(final))
        except OSError as exc:
            raise describe_oserror(exc, final) from None

    def spool_dir(self) -> str:
        """``tmp/`` inside the repository: same filesystem, so rename works."""
        d = os.path.join(self.root, "tmp")
        if os.path.isdir(d):
            return d
        try:
            self._make_parent(os.path.join(d, "x"))
        except OSError as exc:
            raise describe_oserror(exc, d) from None
        return d

    def load(
        self,
        ftype: FileType,
        name: str,
        offset: int = 0,
        length: int | None = None,
        *,
        max_size: int | None = None,
    ) -> bytes:
        """Read a file or a range of it."""
        p = self.path(ftype, name)
        try:
            with open(p, "rb", buffering=0) as fh:
                if length is None and max_size is not None:
                    size = os.fstat(fh.fileno()).st_size
                    if size > max_size:
                        raise too_large(p, size, max_size)
                if offset:
                    fh.seek(offset)
                data = fh.read() if length is None else fh.read(length)
        except FileNotFoundError:
            raise NotFound(f"{p} does not exist") from None
        except OSError as exc:
            raise describe_oserror(exc, p) from None
        if length is not None and len(data) != length:
            raise StorageError(f"{p}: file is shorter than expected (truncated?)")
        return data

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        """Yield valid ids with sizes; temporary and foreign files are skipped."""
        if ftype is FileType.CONFIG:
            if self.exists():
                yield ("", os.path.getsize(os.path.join(self.root, "config")))
            return
        base = os.path.join(self.root, ftype.value)
        try:
            if ftype is FileType.PACK:
                dirs = [e.path for e in os.scandir(base) if e.is_dir()]
            else:
                dirs = [base]
            for d in sorted(dirs):
                with os.scandir(d) as it:
                    for entry in it:
                        if is_storage_id(entry.name) and entry.is_file(follow_symlinks=False):
                            yield (entry.name, entry.stat(follow_symlinks=False).st_size)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise describe_oserror(exc, base) from None

    def remove(self, ftype: FileType, name: str) -> None:
        """Delete a file if present."""
        p = self.path(ftype, name)
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
        except PermissionError:
            # read-only files in a read-only directory on some platforms
            try:
                os.chmod(p, 0o600)
                os.unlink(p)
            except OSError as exc:
                raise describe_oserror(exc, p) from None
        except OSError as exc:
            raise describe_oserror(exc, p) from None

    def __repr__(self) -> str:
        return f"LocalStorage({self.root!r})"

    def __fspath__(self) -> str:
        return self.root
