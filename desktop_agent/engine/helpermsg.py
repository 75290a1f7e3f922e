"""What reading a small file yields, and the messages to and from helper processes.

See docs/design.md, section 5. Every message crosses a socket pickled (by
:mod:`multiprocessing.connection`), so each is a NamedTuple of plain values:
cheap to pickle, and unpacked by name on both sides. They are defined here,
in a module both sides import by its real name: a helper started as
``python -m desktop_agent.engine.smallfiles`` runs that module as
``__main__``, and a class defined there would be pickled as
``__main__.X``, which the backup could not load. Import-light: a
helper imports this, :mod:`.smallfiles` and what they need, nothing of the
backup pipeline.

The backup sends :class:`Init` once, then :class:`SealBatch`, :class:`Flush`
and finally :class:`Stop`. A helper answers each batch with
:class:`BatchDone` and a flush with :class:`Flushed`, or, when it cannot
write its spool file, with :class:`Failed` and stops.

Reading one file yields a :data:`FileResult`: :class:`FileRead`,
:class:`Vanished` or :class:`ReadFailed`. In a :class:`BatchDone`, a file the
helper sealed is a :class:`Stored`; the others (failures, and files that grew
beyond a small file since they were listed) come back as read, for the
backup to handle.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from .errors import StorageError, describe_oserror
from .ids import BLOB_TYPES, BlobId, PackId
from .pack import FinishedPack, PackedBlob

__all__ = [
    "FileRead",
    "Vanished",
    "VANISHED",
    "ReadFailed",
    "FileResult",
    "Stored",
    "StoredTuple",
    "HelperResult",
    "SealedPack",
    "Init",
    "SealBatch",
    "BATCH_BYTES_PER_FILE",
    "Flush",
    "Stop",
    "BatchDone",
    "Flushed",
    "Failed",
    "ToHelper",
    "FromHelper",
]


# ------------------------------------------------------------ file results
class FileRead(NamedTuple):
    """A regular file read whole."""

    data: bytes
    changed: bool  # its size or mtime changed since it was listed


class Vanished(NamedTuple):
    """Deleted, or replaced by something other than a regular file, since it was listed."""


VANISHED = Vanished()


class ReadFailed(NamedTuple):
    """The file could not be read (the reason, for the skipped list)."""

    message: str


FileResult = FileRead | Vanished | ReadFailed


class Stored(NamedTuple):
    """A small file a helper sealed: its blob is in the helper's open pack.

    These fields travel as a plain tuple (:data:`StoredTuple`), in this
    order: it is the answer for nearly every file, and a plain tuple
    pickles and unpickles in 0.23 us, this class in 1.1 us (and takes 0.2 us
    more to make). The backup tells it from the other results by its type,
    ``tuple``.
    """

    blob_id: bytes | None  # None: the file is empty
    size: int
    changed: bool
    stored: int  # encrypted bytes the blob added to the pack (0: a duplicate)


StoredTuple = tuple[bytes | None, int, bool, int]  # a Stored's fields, as sent
HelperResult = StoredTuple | FileRead | Vanished | ReadFailed


class SealedPack(NamedTuple):
    """A pack a helper finished, as plain values (enums and dataclasses pickle slowly)."""

    pack_id: bytes
    path: str  # the spool file
    # (blob type, id, offset, length, uncompressed length) per blob
    blobs: list[tuple[int, bytes, int, int, int]]
    size: int

    @classmethod
    def of(cls, pack: FinishedPack) -> SealedPack:
        """The portable form of a finished pack."""
        return cls(
            pack.pack_id,
            pack.path,
            [(int(b.type), b.id, b.offset, b.length, b.uncompressed_length) for b in pack.blobs],
            pack.size,
        )

    def finished(self) -> FinishedPack:
        """Back into engine types."""
        return FinishedPack(
            PackId(self.pack_id),
            self.path,
            [PackedBlob(BLOB_TYPES[t], BlobId(i), o, n, u) for t, i, o, n, u in self.blobs],
            self.size,
        )


# ----------------------------------------------------- backup -> helper
class Init(NamedTuple):
    """The first message: the key (never on the command line) and the settings."""

    key_parts: tuple[bytes, bytes, bytes]  # encryption key, MAC k, MAC r
    compression: bool
    spool_dir: str
    pack_size: int
    known: bytes  # ids of the data blobs already in the repository, 32 bytes each


class SealBatch(NamedTuple):
    """Read, seal and pack these files (their size and mtime as listed, in the
    same order: a helper compares them with one fstat after reading)."""

    batch_id: int
    paths: list[bytes]
    sizes: list[int]
    mtimes: list[int]


# What a file adds to a pickled SealBatch beyond its path, at most: the path's
# framing (7 bytes), its size (5 for a small file) and its mtime (10 for any
# date a 64-bit time_t in ns holds, 14 for one in seconds times 10^9). The
# walker counts what it has queued for a helper with it (see helperpool).
BATCH_BYTES_PER_FILE = 32


class Flush(NamedTuple):
    """Finish the open pack."""


class Stop(NamedTuple):
    """Exit (the open pack, if any, is dropped)."""


ToHelper = Init | SealBatch | Flush | Stop


# ----------------------------------------------------- helper -> backup
class BatchDone(NamedTuple):
    """A batch's results, in the order of its paths, and the packs it finished."""

    batch_id: int
    results: list[HelperResult]
    packs: list[SealedPack]


class Flushed(NamedTuple):
    """The answer to :class:`Flush`."""

    packs: list[SealedPack]


class Failed(NamedTuple):
    """The helper could not write its spool file (disk full, I/O error); it stops."""

    batch_id: int | None  # the batch it was working on (None: a flush)
    errno: int | None
    where: str  # the spool file or directory

    def error(self) -> StorageError:
        """The error the backup raises, as if it had written the file itself."""
        code = self.errno
        return describe_oserror(OSError(code, os.strerror(code) if code else "error"), self.where)


FromHelper = BatchDone | Flushed | Failed
