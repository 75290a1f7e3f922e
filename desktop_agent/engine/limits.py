"""Bounds on what a repository may make us allocate, and decoders that keep them.

A repository on a server is one that someone else may have written. Every
size read from it (a zstd frame header, an index entry, a file's length) is
checked against what a genuine repository can hold *before* memory is
allocated for it, so a hostile repository costs at most a few MiB more
than a legitimate one. The bounds are generous multiples of what restic
writes:

* data blobs: restic's chunker cuts at most 8 MiB;
* tree blobs: a directory of about a million entries;
* unpacked files (index, snapshot, lock): restic starts a new index file
  after 50,000 blobs (about 8 MiB of JSON);
* key files: a few hundred bytes;
* pack files: restic writes at most 128 MiB (``--pack-size``), plus a
  single blob larger than that in a pack of its own.
"""

from __future__ import annotations

import json
from typing import Any

import zstandard

from .errors import IntegrityError, invalid_json
from .ids import BlobType

__all__ = [
    "MAX_BLOB_PLAINTEXT",
    "MAX_UNPACKED",
    "MAX_KEY_FILE",
    "MAX_PACK_FILE",
    "MAX_BLOB_STORED",
    "MAX_PACK_OFFSET",
    "DEFAULT_MAX_TREE_REPEATS",
    "decompress_bounded",
    "decode_unpacked",
    "loads_json",
]

MiB = 1 << 20

MAX_BLOB_PLAINTEXT = {BlobType.DATA: 32 * MiB, BlobType.TREE: 256 * MiB}
# a stored (encrypted, maybe compressed) blob is never larger than its plaintext + 32
MAX_BLOB_STORED = 256 * MiB + 64
MAX_UNPACKED = 64 * MiB  # decompressed index, snapshot and lock files
# a non-empty tree reached this many times in one restore is an error where it
# is reached once more (see restorewalk; here for the command line's parser)
DEFAULT_MAX_TREE_REPEATS = 1_000
MAX_KEY_FILE = 64 * 1024
MAX_PACK_FILE = 512 * MiB
# offsets in index entries: packs are far smaller, and pread must not overflow
MAX_PACK_OFFSET = 1 << 40


def decompress_bounded(dctx: zstandard.ZstdDecompressor, data: Any, limit: int, what: str) -> bytes:
    """Decompress one zstd frame into at most ``limit`` bytes.

    python-zstandard allocates the output buffer from the size the frame
    header claims, so a 98 KB frame claiming 3 GiB would take 3 GiB before
    any length check could run: the claim is checked first. A frame without
    a size gets a buffer of ``limit`` bytes (only the pages written are ever
    touched) and fails when its output would not fit.
    """
    try:
        claimed = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{what}: cannot decompress: {exc}") from None
    if claimed > limit:
        raise IntegrityError(
            f"{what}: its compressed data claims {claimed} bytes, more than the "
            f"{limit} it can hold; refused"
        )
    try:
        if claimed >= 0:
            return dctx.decompress(data)
        return dctx.decompress(data, max_output_size=max(limit, 1))
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{what}: cannot decompress: {exc}") from None
    except MemoryError:
        raise IntegrityError(f"{what}: not enough memory to decompress {limit} bytes") from None


def decode_unpacked(plain: bytes, dctx: zstandard.ZstdDecompressor) -> bytes:
    """An unpacked file's document: strip the v2 encoding byte; decompress when it says zstd."""
    if not plain:
        raise IntegrityError("file is empty")
    first = plain[0]
    if first in (0x7B, 0x5B):  # '{' or '[': plain JSON (format v1)
        return plain
    if first == 2:
        return decompress_bounded(dctx, memoryview(plain)[1:], MAX_UNPACKED, "file")
    raise IntegrityError(f"unknown encoding version {first}")


def loads_json(data: bytes | str, what: str) -> Any:
    """``json.loads`` whose every failure is an :class:`IntegrityError`.

    Deeply nested documents make the parser raise ``RecursionError``; a
    repository must not be able to crash a reader with one.
    """
    try:
        return json.loads(data)
    except (ValueError, RecursionError, MemoryError) as exc:
        raise invalid_json(what, exc) from None
