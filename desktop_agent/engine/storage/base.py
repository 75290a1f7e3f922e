"""The storage interface every backend implements.

A backend moves opaque bytes; it knows nothing of encryption or formats. It
must make every :meth:`Storage.save` atomic and durable (a reader never sees
half a file, and a file that was reported saved survives a power cut), which
is what the repository's write ordering relies on.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from ..errors import IntegrityError

__all__ = ["FileType", "Storage", "Buffer", "is_storage_id", "too_large"]

Buffer = bytes | bytearray | memoryview


class FileType(enum.Enum):
    """The kinds of files in a repository, valued by their directory name."""

    CONFIG = "config"
    KEY = "keys"
    SNAPSHOT = "snapshots"
    INDEX = "index"
    LOCK = "locks"
    PACK = "data"


_ID_RE = re.compile(r"[0-9a-f]{64}")


def is_storage_id(name: str) -> bool:
    """True for a lower-case hex SHA-256 name, the only names a repository lists."""
    return _ID_RE.fullmatch(name) is not None


def too_large(what: str, size: int, limit: int) -> IntegrityError:
    """The error for a file larger than any genuine file of its kind."""
    return IntegrityError(
        f"{what} is {size} bytes, more than the {limit} a genuine file of its kind can be; not read"
    )


@runtime_checkable
class Storage(Protocol):
    """A place that stores repository files by type and name.

    ``name`` is ignored for :attr:`FileType.CONFIG` (there is one config).
    Errors are :class:`~desktop_agent.engine.errors.StorageError`, or
    :class:`~desktop_agent.engine.errors.NotFound` for a missing file.
    """

    @property
    def location(self) -> str:
        """Human-readable location, used in messages."""
        ...

    def exists(self) -> bool:
        """True when a repository config is present."""
        ...

    def create_layout(self) -> None:
        """Create the empty directory structure of a new repository."""
        ...

    def save(self, ftype: FileType, name: str, parts: Sequence[Buffer]) -> None:
        """Atomically and durably store the concatenation of ``parts``.

        Names are content hashes, so saving an existing name again is harmless.
        """
        ...

    def save_file(self, ftype: FileType, name: str, path: str) -> None:
        """Atomically and durably store the file at ``path``, consuming it.

        ``path`` was created in :meth:`spool_dir`; a local backend renames it
        into place instead of copying.
        """
        ...

    def spool_dir(self) -> str:
        """A directory for files being assembled before :meth:`save_file`."""
        ...

    def load(
        self,
        ftype: FileType,
        name: str,
        offset: int = 0,
        length: int | None = None,
        *,
        max_size: int | None = None,
    ) -> bytes:
        """Read a whole file, or ``length`` bytes from ``offset``.

        With ``max_size``, a whole file larger than that is refused with an
        :class:`~desktop_agent.engine.errors.IntegrityError` before it is
        read: a file of a hostile repository must not fill the memory.
        """
        ...

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        """Yield ``(name, size)`` of every file of a type (valid ids only)."""
        ...

    def remove(self, ftype: FileType, name: str) -> None:
        """Delete a file; deleting a missing file is not an error."""
        ...
