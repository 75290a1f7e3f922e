"""Pack files: ``blob1 || ... || blobN || encrypted header || header length``.

Each blob is encrypted on its own; the header lists, per blob, a type byte
(0 data, 1 tree, 2 compressed data, 3 compressed tree), the encrypted
length, for compressed blobs the plaintext length, and the plaintext SHA-256.
The header length is the encrypted header's length as uint32 little endian.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import tempfile
from collections.abc import Iterable
from typing import NamedTuple

from . import crypto
from .errors import IntegrityError
from .ids import BLOB_TYPES, BlobId, BlobType, PackId

__all__ = [
    "BLOB_ZSTD_LEVEL",
    "SMALL_BLOB_ZSTD_LEVEL",
    "FinishedPack",
    "PackedBlob",
    "PackBuilder",
    "encode_header",
    "parse_header",
    "parse_pack_tail",
]

_PLAIN = struct.Struct("<BI32s")  # 37 bytes
_COMPRESSED = struct.Struct("<BII32s")  # 41 bytes
_LEN = struct.Struct("<I")
MAX_HEADER_SIZE = 16 * 1024 * 1024
# zstd level for blobs: on bench/engine.py's data, level 2 stores within 0.5%
# of level 3's size (and below restic's) with about 20% less CPU.
BLOB_ZSTD_LEVEL = 2
# Whole small files (up to one minimum chunk) are the exception: zstd picks
# its parameters by input size, and for inputs of a few KiB level 3's are
# both faster and tighter (4 KiB files of bench/engine.py: 7.4 against
# 8.6 us a file, 58.6% against 60.1% of the size).
SMALL_BLOB_ZSTD_LEVEL = 3


class PackedBlob(NamedTuple):
    """Where a blob sits in a pack. ``uncompressed_length`` is 0 if stored raw.

    A named tuple, not a frozen dataclass: one is made per blob of every
    pack written or read, and a tuple is made in a third of the time.
    """

    type: BlobType
    id: BlobId
    offset: int
    length: int
    uncompressed_length: int = 0

    @property
    def compressed(self) -> bool:
        """True when the blob is stored zstd-compressed."""
        return self.uncompressed_length != 0

    @property
    def plaintext_length(self) -> int:
        """Length of the blob's plaintext."""
        if self.uncompressed_length:
            return self.uncompressed_length
        return self.length - crypto.OVERHEAD


class FinishedPack(NamedTuple):
    """A sealed pack in its spool file, ready for :meth:`Storage.save_file`."""

    pack_id: PackId
    path: str  # the spool file
    blobs: list[PackedBlob]
    size: int


def encode_header(blobs: Iterable[PackedBlob]) -> bytes:
    """The plaintext header for the blobs, in pack order."""
    out = bytearray()
    for b in blobs:
        if b.uncompressed_length:
            out += _COMPRESSED.pack(2 | int(b.type), b.length, b.uncompressed_length, b.id)
        else:
            out += _PLAIN.pack(int(b.type), b.length, b.id)
    return bytes(out)


def parse_header(plain: bytes) -> list[PackedBlob]:
    """Parse a decrypted header into blobs with their offsets."""
    blobs: list[PackedBlob] = []
    pos = 0
    offset = 0
    end = len(plain)
    while pos < end:
        kind = plain[pos]
        if kind in (0, 1):
            if pos + _PLAIN.size > end:
                raise IntegrityError("pack header is truncated")
            _, length, blob_id = _PLAIN.unpack_from(plain, pos)
            ulen = 0
            pos += _PLAIN.size
        elif kind in (2, 3):
            if pos + _COMPRESSED.size > end:
                raise IntegrityError("pack header is truncated")
            _, length, ulen, blob_id = _COMPRESSED.unpack_from(plain, pos)
            pos += _COMPRESSED.size
        else:
            raise IntegrityError(f"pack header has invalid blob type {kind}")
        if length < crypto.OVERHEAD:
            raise IntegrityError("pack header lists a blob shorter than its encryption overhead")
        blobs.append(PackedBlob(BLOB_TYPES[kind & 1], BlobId(blob_id), offset, length, ulen))
        offset += length
    return blobs


def parse_pack_tail(key: crypto.Key, tail: bytes, pack_size: int) -> list[PackedBlob]:
    """Parse the header from the last ``len(tail)`` bytes of a pack.

    Checks that the header accounts for every byte of the pack.
    """
    if pack_size < _LEN.size + crypto.OVERHEAD or len(tail) < _LEN.size:
        raise IntegrityError("pack is too short to hold a header")
    (hlen,) = _LEN.unpack_from(tail, len(tail) - _LEN.size)
    if hlen > MAX_HEADER_SIZE or hlen + _LEN.size > pack_size:
        raise IntegrityError(f"pack header length {hlen} is invalid")
    if hlen + _LEN.size > len(tail):
        raise IntegrityError("not enough of the pack was read to hold its header")
    enc = tail[len(tail) - _LEN.size - hlen : len(tail) - _LEN.size]
    blobs = parse_header(crypto.decrypt(key, enc))
    data_end = blobs[-1].offset + blobs[-1].length if blobs else 0
    if data_end + hlen + _LEN.size != pack_size:
        raise IntegrityError(
            f"pack size {pack_size} does not match its header ({data_end + hlen + _LEN.size})"
        )
    return blobs


def _spool_prefix() -> str:
    # pack-<host>-<pid>-<random>: a later run on this host can tell an
    # unfinished pack of a dead process (writer.remove_stale_spool)
    return f"pack-{socket.gethostname().replace('/', '_')}-{os.getpid()}-"


class PackBuilder:
    """Accumulates encrypted blobs of one type into a pack file.

    Blobs go straight to a spool file in ``spool_dir`` (not memory), so a
    16 MiB pack costs no RAM; :meth:`finish` appends the header and returns
    the file for :meth:`Storage.save_file`. Not thread-safe: one owner (or a
    lock held by the caller) appends and finishes.
    """

    def __init__(self, key: crypto.Key, spool_dir: str) -> None:
        self._key = key
        self._dir = spool_dir
        self._fd = -1
        self._path = ""
        self._blobs: list[PackedBlob] = []
        self._hash = hashlib.sha256()
        self.size = 0

    def __len__(self) -> int:
        return len(self._blobs)

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            self._roll_back(exc)
            raise

    def _roll_back(self, exc: OSError) -> None:
        """After a failed write (disk full, I/O error) cut the spool file back
        to its last complete blob, so that the blobs already in it stay where
        the header will say they are. If even that fails, the whole pack is
        dropped: a pack with a torn blob in it must never be sealed."""
        try:
            os.ftruncate(self._fd, self.size)
            os.lseek(self._fd, self.size, os.SEEK_SET)
        except OSError:
            self.discard()
            raise exc from None

    def _open(self) -> None:
        if self._fd < 0:
            fd, self._path = tempfile.mkstemp(prefix=_spool_prefix(), dir=self._dir)
            self._fd = fd

    @property
    def path(self) -> str:
        """The spool file being filled ('' when none is open)."""
        return self._path

    def add(
        self, blob_type: BlobType, blob_id: BlobId, sealed: bytes | memoryview, uncompressed: int
    ) -> None:
        """Append an already encrypted blob (``uncompressed`` 0: not compressed).

        Raises ``OSError`` when the spool file cannot take it; the pack then
        holds exactly the blobs added before (or none, see :meth:`_roll_back`).
        """
        self._open()
        self._write(sealed)
        self._blobs.append(PackedBlob(blob_type, blob_id, self.size, len(sealed), uncompressed))
        self._hash.update(sealed)
        self.size += len(sealed)

    def add_many(self, blobs: list[tuple[BlobType, BlobId, bytes, int]]) -> None:
        """Append several encrypted blobs with one write (all or none of them)."""
        if not blobs:
            return
        self._open()
        data = b"".join(b[2] for b in blobs)
        self._write(data)
        self._hash.update(data)
        offset = self.size
        for blob_type, blob_id, sealed, uncompressed in blobs:
            self._blobs.append(PackedBlob(blob_type, blob_id, offset, len(sealed), uncompressed))
            offset += len(sealed)
        self.size = offset

    def finish(self) -> FinishedPack:
        """Seal the header; returns pack id, spool file path, blobs and size."""
        if not self._blobs:
            raise ValueError("cannot finish an empty pack")
        header = crypto.encrypt(self._key, encode_header(self._blobs))
        tail = header + _LEN.pack(len(header))
        self._write(tail)  # on failure the pack stays open, unsealed, for a retry
        self._hash.update(tail)
        try:
            os.close(self._fd)
        except OSError as exc:  # NFS and friends report write errors at close
            self._fd = -1
            self.discard()
            raise exc from None
        result = FinishedPack(
            PackId(self._hash.digest()), self._path, self._blobs, self.size + len(tail)
        )
        self._fd, self._path = -1, ""
        self._blobs = []
        self._hash = hashlib.sha256()
        self.size = 0
        return result

    def discard(self) -> None:
        """Drop an unfinished pack and its spool file."""
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass  # the file goes anyway
        if self._path:
            try:
                os.unlink(self._path)
            except OSError:
                pass
        self._fd, self._path = -1, ""
        self._blobs = []
        self._hash = hashlib.sha256()
        self.size = 0
