"""Identifier types of the repository format.

Ids are raw 32-byte SHA-256 digests in memory (compact dictionary keys) and
lower-case hex on the wire and in file names.
"""

from __future__ import annotations

import enum
from typing import NewType

__all__ = [
    "BlobId",
    "PackId",
    "SnapshotId",
    "StorageId",
    "BlobType",
    "BLOB_TYPES",
    "hex_id",
    "parse_id",
]

BlobId = NewType("BlobId", bytes)
"""SHA-256 of a blob's plaintext (before compression and encryption)."""

PackId = NewType("PackId", bytes)
"""SHA-256 of a whole pack file; its file name in ``data/``."""

SnapshotId = NewType("SnapshotId", bytes)
"""SHA-256 of an encrypted snapshot file; its file name."""

StorageId = NewType("StorageId", bytes)
"""SHA-256 of any other stored file (index, lock, key)."""


class BlobType(enum.IntEnum):
    """The two blob types; the value is the pack header's type bit."""

    DATA = 0
    TREE = 1

    @property
    def label(self) -> str:
        """Name used in index JSON ("data" / "tree")."""
        return "data" if self is BlobType.DATA else "tree"


BLOB_TYPES = (BlobType.DATA, BlobType.TREE)
"""The blob types by value: ``BLOB_TYPES[bit]`` is ``BlobType(bit)`` without
the enum call (about 0.6 us, once per blob of every pack header read)."""


def hex_id(raw: bytes) -> str:
    """Lower-case hex of an id."""
    return raw.hex()


def parse_id(text: object) -> bytes:
    """Parse a 64-digit hex id; ``ValueError`` otherwise."""
    if not isinstance(text, str) or len(text) != 64:
        raise ValueError(f"invalid id {text!r}")
    raw = bytes.fromhex(text)
    if len(raw) != 32:  # fromhex skips spaces
        raise ValueError(f"invalid id {text!r}")
    return raw
