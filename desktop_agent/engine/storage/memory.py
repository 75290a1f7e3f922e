"""An in-memory backend: fast engine tests, and the reference semantics."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator, Sequence

from ..errors import NotFound, StorageError
from .base import Buffer, FileType, is_storage_id, too_large

__all__ = ["MemoryStorage"]


class MemoryStorage:
    """Keeps every file in a dict; thread-safe."""

    def __init__(self, spool_dir: str | None = None) -> None:
        self._files: dict[tuple[FileType, str], bytes] = {}
        self._spool = spool_dir
        self._lock = threading.Lock()
        self._created = False

    @property
    def location(self) -> str:
        """A label for messages."""
        return "memory:"

    def exists(self) -> bool:
        """True once a config was saved."""
        with self._lock:
            return (FileType.CONFIG, "") in self._files

    def create_layout(self) -> None:
        """Nothing to create in memory."""
        self._created = True

    def _key(self, ftype: FileType, name: str) -> tuple[FileType, str]:
        if ftype is FileType.CONFIG:
            return (ftype, "")
        if not is_storage_id(name):
            raise StorageError(f"invalid file name {name!r}")
        return (ftype, name)

    def save(self, ftype: FileType, name: str, parts: Sequence[Buffer]) -> None:
        """Store the joined parts."""
        data = b"".join(parts)
        with self._lock:
            self._files[self._key(ftype, name)] = data

    def save_file(self, ftype: FileType, name: str, path: str) -> None:
        """Read the spooled file into memory and delete it."""
        with open(path, "rb") as fh:
            data = fh.read()
        os.unlink(path)
        self.save(ftype, name, [data])

    def spool_dir(self) -> str:
        """Where packs are assembled: the directory given, or the system's temporary one."""
        return self._spool or tempfile.gettempdir()

    def load(
        self,
        ftype: FileType,
        name: str,
        offset: int = 0,
        length: int | None = None,
        *,
        max_size: int | None = None,
    ) -> bytes:
        """Return stored bytes or raise NotFound."""
        with self._lock:
            data = self._files.get(self._key(ftype, name))
        if data is None:
            raise NotFound(f"{ftype.value}/{name} does not exist")
        if length is None and max_size is not None and len(data) > max_size:
            raise too_large(f"{ftype.value}/{name}", len(data), max_size)
        end = len(data) if length is None else offset + length
        if offset < 0 or end > len(data):
            raise StorageError(f"{ftype.value}/{name}: read beyond end of file")
        return data[offset:end]

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        """Snapshot of the names of one type."""
        with self._lock:
            items = [(k[1], len(v)) for k, v in self._files.items() if k[0] is ftype]
        yield from items

    def remove(self, ftype: FileType, name: str) -> None:
        """Forget a file."""
        with self._lock:
            self._files.pop(self._key(ftype, name), None)

    # test helpers -------------------------------------------------------
    def raw(self) -> dict[tuple[FileType, str], bytes]:
        """Direct access to the stored files (tests flip bytes here)."""
        return self._files
