"""A local cache of a remote repository's index, snapshot and key files.

Every run opens the repository: it reads the keys, lists and reads every
snapshot and every index file. Over a network that is most of an unchanged
re-run, so, like restic's cache, :class:`CachingStorage` keeps those files
on the local disk. They are immutable and named by the SHA-256 of their
content: a cached copy is checked against its name when it is read (a
damaged or foreign file is dropped and fetched again), and nothing can go
stale except by being deleted, which a listing of the server shows (files
gone from it are dropped from the cache). Packs are not cached.

The cache holds only encrypted files; it is safe to delete at any time.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence

from desktop_agent.config.atomicfile import write_durable

from .base import Buffer, FileType, Storage, is_storage_id

__all__ = ["CachingStorage", "CACHED_TYPES"]

log = logging.getLogger(__name__)

CACHED_TYPES = (FileType.INDEX, FileType.SNAPSHOT, FileType.KEY)


class CachingStorage:
    """``backend`` with its index, snapshot and key files cached in ``cache_dir``."""

    def __init__(self, backend: Storage, cache_dir: str) -> None:
        self.backend = backend
        self.cache_dir = cache_dir
        self.upload_parallelism: int = int(getattr(backend, "upload_parallelism", 1))
        self.hits = 0
        self.misses = 0

    # ------------------------------------------------------------ passed on
    @property
    def location(self) -> str:
        return self.backend.location

    def exists(self) -> bool:
        return self.backend.exists()

    def create_layout(self) -> None:
        self.backend.create_layout()

    def spool_dir(self) -> str:
        return self.backend.spool_dir()

    def save_file(self, ftype: FileType, name: str, path: str) -> None:
        self.backend.save_file(ftype, name, path)

    def close(self) -> None:
        """Close the backend's connections, if it holds any."""
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    # ------------------------------------------------------------ cached
    def _path(self, ftype: FileType, name: str) -> str:
        return os.path.join(self.cache_dir, ftype.value, name)

    def _keep(self, ftype: FileType, name: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != name:
            return  # not what its name says: never cached
        path = self._path(ftype, name)
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            write_durable(path, [data], mode=0o600, temp=f"{path}-tmp-{os.urandom(6).hex()}")
        except OSError as exc:  # a full or read-only cache only costs speed
            log.info("cannot cache %s/%s: %s", ftype.value, name[:12], exc.strerror or exc)

    def _cached(self, ftype: FileType, name: str) -> bytes | None:
        path = self._path(ftype, name)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != name:
            log.info("dropping a damaged cache file %s/%s", ftype.value, name[:12])
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        return data

    def save(self, ftype: FileType, name: str, parts: Sequence[Buffer]) -> None:
        self.backend.save(ftype, name, parts)
        if ftype in CACHED_TYPES and is_storage_id(name):
            self._keep(ftype, name, b"".join(bytes(p) for p in parts))

    def load(
        self,
        ftype: FileType,
        name: str,
        offset: int = 0,
        length: int | None = None,
        *,
        max_size: int | None = None,
    ) -> bytes:
        whole = offset == 0 and length is None
        if ftype not in CACHED_TYPES or not whole or not is_storage_id(name):
            return self.backend.load(ftype, name, offset, length, max_size=max_size)
        data = self._cached(ftype, name)
        if data is not None and (max_size is None or len(data) <= max_size):
            self.hits += 1
            return data
        self.misses += 1
        data = self.backend.load(ftype, name, max_size=max_size)
        self._keep(ftype, name, data)
        return data

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        listed = list(self.backend.list(ftype))
        if ftype in CACHED_TYPES:
            self._drop_unlisted(ftype, {name for name, _ in listed})
        return iter(listed)

    def remove(self, ftype: FileType, name: str) -> None:
        self.backend.remove(ftype, name)
        if ftype in CACHED_TYPES:
            with contextlib.suppress(OSError):
                os.unlink(self._path(ftype, name))

    def _drop_unlisted(self, ftype: FileType, present: set[str]) -> None:
        folder = os.path.join(self.cache_dir, ftype.value)
        try:
            names = os.listdir(folder)
        except OSError:
            return
        for name in names:
            if name not in present:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
