"""The in-memory master index and index files (``index/<id>``).

An index file is JSON: ``{"supersedes": [...], "packs": [{"id": ..., "blobs":
[{"id", "type", "offset", "length", "uncompressed_length"?}]}]}``. The
master index merges every index file: blob -> (pack, offset, lengths).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .crypto import OVERHEAD
from .errors import IntegrityError
from .ids import BlobId, BlobType, PackId, parse_id
from .limits import MAX_PACK_OFFSET
from .pack import PackedBlob

__all__ = [
    "IndexEntry",
    "MasterIndex",
    "encode_index",
    "index_bytes",
    "decode_index",
    "MAX_BLOBS_PER_FILE",
]

# restic starts a new index file after this many blobs; keeps files < 8 MiB.
MAX_BLOBS_PER_FILE = 50_000


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """Location of one blob."""

    pack: PackId
    offset: int
    length: int
    uncompressed_length: int
    type: BlobType

    @property
    def plaintext_length(self) -> int:
        """Length of the blob's plaintext."""
        if self.uncompressed_length:
            return self.uncompressed_length
        return self.length - 32


def encode_index(
    packs: Iterable[tuple[PackId, list[PackedBlob]]], supersedes: Iterable[bytes] = ()
) -> dict[str, Any]:
    """Build the JSON document of an index file."""
    out_packs = []
    for pack_id, blobs in packs:
        out_blobs = []
        for b in blobs:
            entry: dict[str, Any] = {
                "id": b.id.hex(),
                "type": b.type.label,
                "offset": b.offset,
                "length": b.length,
            }
            if b.uncompressed_length:
                entry["uncompressed_length"] = b.uncompressed_length
            out_blobs.append(entry)
        out_packs.append({"id": pack_id.hex(), "blobs": out_blobs})
    doc: dict[str, Any] = {}
    sup = [s.hex() for s in supersedes]
    if sup:
        doc["supersedes"] = sup
    doc["packs"] = out_packs
    return doc


def index_bytes(
    packs: Iterable[tuple[PackId, list[PackedBlob]]], supersedes: Iterable[bytes] = ()
) -> bytes:
    """The index document as compact JSON, built directly as text.

    Equal to ``json.dumps(encode_index(...))`` but without building a dict per
    blob: an index of 50,000 blobs costs a few MB less at its peak.
    """
    parts = ["{"]
    sup = [s.hex() for s in supersedes]
    if sup:
        parts.append('"supersedes":["' + '","'.join(sup) + '"],')
    parts.append('"packs":[')
    first_pack = True
    for pack_id, blobs in packs:
        if not first_pack:
            parts.append(",")
        first_pack = False
        items = []
        for b in blobs:
            ulen = (
                f',"uncompressed_length":{b.uncompressed_length}' if b.uncompressed_length else ""
            )
            items.append(
                f'{{"id":"{b.id.hex()}","type":"{b.type.label}","offset":{b.offset},"length":{b.length}{ulen}}}'
            )
        parts.append(f'{{"id":"{pack_id.hex()}","blobs":[' + ",".join(items) + "]}")
    parts.append("]}")
    return "".join(parts).encode()


def decode_index(doc: Any) -> tuple[list[bytes], list[tuple[PackId, list[PackedBlob]]]]:
    """Parse an index document into (supersedes, packs)."""
    packs_in: Any
    supersedes_in: Any
    try:
        if isinstance(doc, list):  # the pre-0.8 legacy format is a bare list of packs
            packs_in, supersedes_in = doc, []
        else:
            packs_in = doc.get("packs") or []
            supersedes_in = doc.get("supersedes") or []
        supersedes = [parse_id(s) for s in supersedes_in]
        packs: list[tuple[PackId, list[PackedBlob]]] = []
        for p in packs_in:
            pack_id = PackId(parse_id(p["id"]))
            blobs = []
            for b in p.get("blobs") or []:
                kind = b["type"]
                if kind == "data":
                    blob_type = BlobType.DATA
                elif kind == "tree":
                    blob_type = BlobType.TREE
                else:
                    raise ValueError(f"unknown blob type {kind!r}")
                offset, length = int(b["offset"]), int(b["length"])
                ulen = int(b.get("uncompressed_length") or 0)
                # restic stores uints; a pack header holds lengths as uint32
                if not 0 <= offset < MAX_PACK_OFFSET:
                    raise ValueError(f"offset {offset} is out of range")
                if not OVERHEAD <= length < 1 << 32 or not 0 <= ulen < 1 << 32:
                    raise ValueError(f"length {length} or {ulen} is out of range")
                blobs.append(PackedBlob(blob_type, BlobId(parse_id(b["id"])), offset, length, ulen))
            packs.append((pack_id, blobs))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise IntegrityError(f"index is malformed: {type(exc).__name__}: {exc}") from None
    return supersedes, packs


class MasterIndex:
    """Every known blob, merged from all index files (thread-safe adds)."""

    def __init__(self) -> None:
        self._data: dict[bytes, IndexEntry] = {}
        self._tree: dict[bytes, IndexEntry] = {}
        self._packs: dict[PackId, int] = {}  # pack -> number of blobs
        self._lock = threading.Lock()
        self.files: set[bytes] = set()  # index files loaded

    def _table(self, blob_type: BlobType) -> dict[bytes, IndexEntry]:
        return self._data if blob_type is BlobType.DATA else self._tree

    def add_pack(self, pack_id: PackId, blobs: Iterable[PackedBlob]) -> None:
        """Register the blobs of a pack (first location of a blob wins)."""
        with self._lock:
            count = 0
            for b in blobs:
                table = self._data if b.type is BlobType.DATA else self._tree
                if b.id not in table:
                    table[b.id] = IndexEntry(
                        pack_id, b.offset, b.length, b.uncompressed_length, b.type
                    )
                count += 1
            self._packs[pack_id] = self._packs.get(pack_id, 0) + count

    def lookup(self, blob_type: BlobType, blob_id: bytes) -> IndexEntry | None:
        """Where a blob is stored, or None."""
        return self._table(blob_type).get(blob_id)

    def has(self, blob_type: BlobType, blob_id: bytes) -> bool:
        """True when the blob is indexed."""
        return blob_id in self._table(blob_type)

    def blob_ids(self, blob_type: BlobType) -> set[bytes]:
        """A copy of the ids of one type (a dedup set for a backup)."""
        with self._lock:
            return set(self._table(blob_type))

    def packs(self) -> set[PackId]:
        """All packs referenced by the index."""
        with self._lock:
            return set(self._packs)

    def entries(self) -> Iterator[tuple[BlobId, IndexEntry]]:
        """Every (blob id, entry) pair."""
        with self._lock:
            items = list(self._data.items()) + list(self._tree.items())
        for blob_id, entry in items:
            yield BlobId(blob_id), entry

    def __len__(self) -> int:
        return len(self._data) + len(self._tree)
