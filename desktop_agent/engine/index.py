"""The in-memory master index and index files (``index/<id>``).

An index file is JSON: ``{"supersedes": [...], "packs": [{"id": ..., "blobs":
[{"id", "type", "offset", "length", "uncompressed_length"?}]}]}``. The
master index merges every index file: blob -> (pack, offset, lengths), kept
as fixed-size records in one grouped buffer per blob type (about 48 bytes a
blob; see docs/design.md, "The master index in memory").
"""

from __future__ import annotations

import operator
import re
import struct
import threading
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate, compress, repeat
from typing import Any, NamedTuple

from .errors import malformed
from .ids import BlobId, BlobType, PackId, parse_id
from .idtable import BUCKETS, ID_SIZE, bucket_of, find_record
from .pack import PackedBlob

__all__ = [
    "IndexEntry",
    "IndexLoader",
    "ParsedPacks",
    "parse_index",
    "IndexState",
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


def decode_index(
    doc: Any, what: str = "index"
) -> tuple[list[bytes], list[tuple[PackId, list[PackedBlob]]]]:
    """Parse an index document (its JSON bytes, or parsed) into (supersedes, packs).

    An object per blob: for callers that need them (check, prune). Loading
    the master index goes through :func:`parse_index` instead.
    """
    from .indexdoc import read_index  # msgspec: imported by the first index file read

    supersedes_in, packs_in = read_index(doc, what)
    try:
        supersedes = [parse_id(s) for s in supersedes_in]
        packs: list[tuple[PackId, list[PackedBlob]]] = []
        for p in packs_in:
            blobs = [
                PackedBlob(
                    BlobType.TREE if b.type == "tree" else BlobType.DATA,
                    BlobId(parse_id(b.id)),
                    b.offset,
                    b.length,
                    b.uncompressed_length or 0,
                )
                for b in p.blobs or ()
            ]
            packs.append((PackId(parse_id(p.id)), blobs))
    except ValueError as exc:  # an id that is not 32 bytes of hex
        raise malformed(what, exc) from None
    return supersedes, packs


def parse_index(doc: Any, what: str = "index") -> tuple[list[bytes], ParsedPacks]:
    """An index document (its JSON bytes, or parsed) as its supersedes list and records.

    Checked as :func:`decode_index` checks it, without an object per blob
    that outlives the call. Raises :class:`IntegrityError` when malformed.
    """
    from .indexdoc import read_index

    supersedes_in, packs_in = read_index(doc, what)
    try:
        return [parse_id(s) for s in supersedes_in], _parse_packs(packs_in)
    except ValueError as exc:  # an id that is not 32 bytes of hex
        raise malformed(what, exc) from None


# ------------------------------------------------------------- the tables
# A record: the 32-byte blob id, then pack number (into the index's pack
# table), offset, length and uncompressed length as native uint32. Offsets
# from _FAR up live in a side dict (packs are far smaller than 4 GiB).
_VAL = struct.Struct("=IIII")
REC = ID_SIZE + _VAL.size  # 48 bytes
# one record: findall cuts a buffer into records at C speed (about half the
# time of slicing it record by record)
_RECORD = re.compile(b".{%d}" % REC, re.DOTALL)
_FAR = 0xFFFFFFFF
_NO_STARTS = array("I", bytes(4 * (BUCKETS + 1)))
# blobs added at runtime wait in a dict until it holds this many (or 1/16
# of the table); then they are merged into the table (O(n))
_OVERLAY_MIN = 32768  # a few MB at most; a merge costs about 2 µs per group
_Value = tuple[int, int, int, int]  # pack number, offset, length, uncompressed length


class _Table:
    """One blob type's entries: an immutable grouped table plus an overlay.

    ``recs``: 48-byte records grouped by :func:`~.idtable.bucket_of` (in the
    order they were added inside a group); ``starts``: where each group
    starts (record numbers); ``far``: offsets of 2^32 - 1 and more (their
    records say ``_FAR``); ``overlay``: blobs added since the table was
    built. Readers take a table without a lock: everything but the overlay
    is never changed once published, and the overlay only grows (under the
    index's lock) until a merge publishes a new table with an empty one.
    """

    __slots__ = ("recs", "starts", "far", "overlay")

    def __init__(
        self,
        recs: bytearray,
        starts: array[int],
        far: dict[bytes, int],
        overlay: dict[bytes, _Value],
    ) -> None:
        self.recs = recs
        self.starts = starts
        self.far = far
        self.overlay = overlay

    @classmethod
    def empty(cls) -> _Table:
        return cls(bytearray(), _NO_STARTS, {}, {})

    def __len__(self) -> int:
        return len(self.recs) // REC + len(self.overlay)

    def value(self, i: int, blob_id: bytes) -> _Value:
        pack_no, offset, length, ulen = _VAL.unpack_from(self.recs, i * REC + ID_SIZE)
        if offset == _FAR:
            offset = self.far[bytes(blob_id)]
        return pack_no, offset, length, ulen

    def find(self, blob_id: bytes) -> _Value | None:
        """(pack number, offset, length, uncompressed length), or None."""
        i = find_record(self.recs, self.starts, blob_id, REC)
        if i >= 0:
            return self.value(i, blob_id)
        return self.overlay.get(blob_id)

    def has(self, blob_id: bytes) -> bool:
        # the overlay first, and no search of a table still empty (a first backup)
        return blob_id in self.overlay or (
            bool(self.recs) and find_record(self.recs, self.starts, blob_id, REC) >= 0
        )


def _records(idb: bytes, pack_nos: array[int], offs: Any, lens: Any, ulens: Any) -> bytes:
    """Records from columns (ids back to back, and uint32 value columns), at C speed."""
    n = len(pack_nos)
    vals = array("I", bytes(16 * n))
    vals[0::4] = pack_nos
    vals[1::4] = array("I", offs)
    vals[2::4] = array("I", lens)
    vals[3::4] = array("I", ulens)
    words = array("Q", bytes(REC * n))
    ids_q = array("Q")
    ids_q.frombytes(idb)
    vals_q = array("Q")
    vals_q.frombytes(vals.tobytes())
    for w in range(4):
        words[w::6] = ids_q[w::4]
    words[4::6] = vals_q[0::2]
    words[5::6] = vals_q[1::2]
    return words.tobytes()


class _Grouper:
    """Records gathered into 256 parts by their first byte, then grouped.

    Grouping sorts lists of record slices by one key byte (stable, at C
    speed): by the first byte as records arrive, by the second byte per part
    at the end. Only one batch's or one part's slices exist at a time.
    """

    def __init__(self) -> None:
        self.parts: list[list[bytes]] = [[] for _ in range(256)]
        self.count = 0

    def add(self, recs: bytes) -> None:
        """Add records in any order."""
        self.add_by_first(*_by_first(recs))

    def add_by_first(self, recs: bytes, firsts: list[int]) -> None:
        """Add records ordered by their first byte, ``firsts[b]`` of them starting with ``b``."""
        if len(recs) != sum(firsts) * REC:
            raise ValueError("the records do not match their counts")
        self.count += len(recs) // REC
        pos = 0
        for first, count in enumerate(firsts):
            if count:
                self.parts[first].append(recs[pos : pos + count * REC])
                pos += count * REC

    def finish(self) -> tuple[bytearray, array[int]]:
        """One grouped buffer and its group starts; duplicate ids keep their first record."""
        out = bytearray(self.count * REC)
        view = memoryview(out)
        counts = [0] * BUCKETS
        pos = 0
        for first in range(256):
            pieces = self.parts[first]
            if not pieces:
                continue
            self.parts[first] = []
            part = b"".join(pieces)
            del pieces
            n = len(part) // REC
            rows = _rows(part)
            rows.sort(key=operator.itemgetter(1))  # stable: the first location stays first
            part = b"".join(rows)
            # duplicate ids are rare (a blob stored twice): spot them by one 8-byte word
            if len(set(memoryview(part).cast("Q")[1::6])) < n:
                rows = _first_of_each(rows)
                n = len(rows)
                part = b"".join(rows)
            del rows
            for second, count in Counter(part[1::REC]).items():
                counts[first << 8 | second] = count
            view[pos : pos + n * REC] = part
            pos += n * REC
            del part
        del view
        del out[pos:]
        return out, array("I", accumulate(counts, initial=0))


def _rows(buf: bytes) -> list[bytes]:
    """The whole records of ``buf`` as separate objects."""
    return _RECORD.findall(buf)


def _first_of_each(rows: list[bytes]) -> list[bytes]:
    seen: set[bytes] = set()
    out = []
    for row in rows:
        blob_id = row[:ID_SIZE]
        if blob_id not in seen:
            seen.add(blob_id)
            out.append(row)
    return out


def _merge(old: _Table, recs: bytearray, starts: array[int], far: dict[bytes, int]) -> _Table:
    """A new table: ``old``'s records and the grouped ``recs`` (none of them in ``old``).

    O(n): whole runs of old groups are copied between the groups that gain
    records. The overlay of ``old`` is kept.
    """
    if not old.recs:
        return _Table(recs, starts, {**old.far, **far}, old.overlay)
    old_n, add_n = len(old.recs) // REC, len(recs) // REC
    out = bytearray((old_n + add_n) * REC)
    view, src_old, src_new = memoryview(out), memoryview(old.recs), memoryview(recs)
    old_starts = old.starts
    src = dst = 0  # record numbers in the old and the new table
    # only the groups that gain records (found at C speed): a merge of a few
    # thousand records into a small table does not walk all 65,536 groups
    gaining = compress(range(BUCKETS), map(operator.ne, starts[:-1], starts[1:]))
    for k in gaining:
        a, b = starts[k], starts[k + 1]
        end = old_starts[k + 1]
        view[dst * REC : (dst + end - src) * REC] = src_old[src * REC : end * REC]
        dst += end - src
        src = end
        view[dst * REC : (dst + b - a) * REC] = src_new[a * REC : b * REC]
        dst += b - a
    view[dst * REC :] = src_old[src * REC :]
    del view, src_old, src_new
    new_starts = array("I", map(operator.add, old_starts, starts))
    return _Table(out, new_starts, {**old.far, **far}, old.overlay)


# ----------------------------------------------------------- master index
@dataclass
class IndexState:
    """The tables of a :class:`MasterIndex`, as the local index cache stores them.

    ``packs``: 32-byte pack ids by pack number; per blob type (DATA, TREE):
    ``recs``, ``starts`` and ``far`` as :class:`_Table` keeps them.
    """

    packs: bytearray
    tables: list[tuple[bytearray, array[int], dict[bytes, int]]]
    files: set[bytes]
    superseded: set[bytes]


class MasterIndex:
    """Every known blob, merged from all index files (thread-safe adds).

    Per blob type one grouped table of fixed 48-byte records (32-byte id,
    16-byte value) instead of an object per blob; blobs added while a backup
    runs wait in a small overlay that is merged in once it grows. See
    docs/design.md, "The master index in memory".
    """

    def __init__(self) -> None:
        self._tables = [_Table.empty(), _Table.empty()]  # by BlobType value
        self._packs = bytearray()  # 32-byte pack ids by pack number
        self._lock = threading.Lock()
        self.files: set[bytes] = set()  # index files loaded
        self.superseded: set[bytes] = set()  # index files the loaded ones supersede

    # ------------------------------------------------------------ adding
    def add_pack(self, pack_id: PackId, blobs: Iterable[PackedBlob]) -> None:
        """Register the blobs of a pack (first location of a blob wins)."""
        if len(pack_id) != ID_SIZE:
            raise ValueError("a pack id is 32 bytes")
        with self._lock:
            pack_no = len(self._packs) // ID_SIZE
            self._packs += pack_id
            tables = self._tables
            for b in blobs:
                table = tables[b.type]
                if len(b.id) == ID_SIZE and not table.has(b.id):
                    table.overlay[b.id] = (pack_no, b.offset, b.length, b.uncompressed_length)
            for blob_type in BlobType:
                table = self._tables[blob_type]
                if len(table.overlay) > max(_OVERLAY_MIN, len(table.recs) // REC >> 4):
                    self._merge_overlay(blob_type)

    def _merge_overlay(self, blob_type: BlobType) -> None:
        """Move the overlay into the grouped table (with the lock held)."""
        table = self._tables[blob_type]
        if not table.overlay:
            return
        grouper = _Grouper()
        far: dict[bytes, int] = {}
        parts = []
        for blob_id, (pack_no, offset, length, ulen) in table.overlay.items():
            if offset >= _FAR:
                far[bytes(blob_id)] = offset
                offset = _FAR
            parts.append(bytes(blob_id) + _VAL.pack(pack_no, offset, length, ulen))
        grouper.add(b"".join(parts))
        del parts
        recs, starts = grouper.finish()
        base = _Table(table.recs, table.starts, table.far, {})
        self._tables[blob_type] = _merge(base, recs, starts, far)

    def loader(self) -> IndexLoader:
        """A bulk loader: many packs added at once (see :class:`IndexLoader`)."""
        return IndexLoader(self)

    # ----------------------------------------------------------- reading
    def _entry(self, blob_type: BlobType, found: _Value) -> IndexEntry:
        pack_no, offset, length, ulen = found
        pack = PackId(bytes(self._packs[pack_no * ID_SIZE : (pack_no + 1) * ID_SIZE]))
        return IndexEntry(pack, offset, length, ulen, blob_type)

    def lookup(self, blob_type: BlobType, blob_id: bytes) -> IndexEntry | None:
        """Where a blob is stored, or None."""
        if len(blob_id) != ID_SIZE:
            return None
        found = self._tables[blob_type].find(blob_id)
        return None if found is None else self._entry(blob_type, found)

    def has(self, blob_type: BlobType, blob_id: bytes) -> bool:
        """True when the blob is indexed."""
        return len(blob_id) == ID_SIZE and self._tables[blob_type].has(blob_id)

    def blob_ids(self, blob_type: BlobType) -> set[bytes]:
        """A copy of the ids of one type (a set: an object per blob, for small uses)."""
        table = self._tables[blob_type]
        with self._lock:
            extra = list(table.overlay)
        view = memoryview(table.recs)
        out = {view[i : i + ID_SIZE].tobytes() for i in range(0, len(view), REC)}
        out.update(bytes(b) for b in extra)
        return out

    def id_bytes(self, blob_type: BlobType) -> bytes:
        """The ids of one type, 32 bytes each, grouped for :class:`~.idtable.IdSet`."""
        with self._lock:
            self._merge_overlay(blob_type)
            recs = self._tables[blob_type].recs
        n = len(recs) // REC
        words = array("Q")
        words.frombytes(recs)
        ids = array("Q", bytes(ID_SIZE * n))
        for w in range(4):
            ids[w::4] = words[w::6]
        del words
        return ids.tobytes()

    def packs(self) -> set[PackId]:
        """All packs referenced by the index."""
        view = memoryview(bytes(self._packs))
        return {PackId(view[i : i + ID_SIZE].tobytes()) for i in range(0, len(view), ID_SIZE)}

    def entries(self) -> Iterator[tuple[BlobId, IndexEntry]]:
        """Every (blob id, entry) pair (of the index as it was when called)."""
        with self._lock:
            snapshot = [(t, list(t.overlay.items())) for t in self._tables]
        for blob_type, (table, overlay) in zip(BlobType, snapshot, strict=True):
            recs = table.recs
            for i in range(len(recs) // REC):
                blob_id = bytes(recs[i * REC : i * REC + ID_SIZE])
                yield BlobId(blob_id), self._entry(blob_type, table.value(i, blob_id))
            for blob_id, found in overlay:
                yield BlobId(bytes(blob_id)), self._entry(blob_type, found)

    def __len__(self) -> int:
        return sum(len(t) for t in self._tables)

    def memory(self) -> int:
        """Bytes held by the tables (not counting the overlay's objects)."""
        total = len(self._packs)
        for t in self._tables:
            total += len(t.recs) + len(t.starts) * t.starts.itemsize
        return total

    # ----------------------------------------------------- the local cache
    def merge_overlays(self) -> None:
        """Merge the overlays that hold a sixteenth of their table or more into
        the tables now (while other work goes on), so that a later
        :meth:`export_state` has little left. A smaller overlay waits: a merge
        copies the whole table, and a few blobs added to a large index (a
        tiny backup) are cheaper where they are."""
        with self._lock:
            for blob_type in BlobType:
                table = self._tables[blob_type]
                if len(table.overlay) * 16 >= len(table.recs) // REC:
                    self._merge_overlay(blob_type)

    def export_state(self) -> IndexState:
        """The tables (overlays merged first), for the local index cache."""
        with self._lock:
            for blob_type in BlobType:
                self._merge_overlay(blob_type)
            return IndexState(
                self._packs[:],
                [(t.recs, t.starts, dict(t.far)) for t in self._tables],
                set(self.files),
                set(self.superseded),
            )

    @classmethod
    def from_state(cls, state: IndexState) -> MasterIndex:
        """An index with the tables of a (verified) local cache."""
        index = cls()
        index._packs = state.packs
        index._tables = [_Table(r, s, f, {}) for r, s, f in state.tables]
        index.files = set(state.files)
        index.superseded = set(state.superseded)
        return index


class ParsedPacks(NamedTuple):
    """The packs of one index document as records (see :func:`parse_index`).

    Plain values only: a helper process sends it back pickled. Per blob
    type (DATA, TREE): ``recs``, 48-byte records ordered by their first
    byte, whose pack numbers count from 0 in ``packs``; ``firsts``, how many
    records start with each byte value; ``far``, offsets of 2^32 - 1 and up.
    """

    packs: bytes  # 32-byte pack ids
    recs: tuple[bytes, bytes]
    firsts: tuple[list[int], list[int]]
    far: tuple[dict[bytes, int], dict[bytes, int]]


def _parse_packs(packs_in: list[Any]) -> ParsedPacks:
    """Records from packs decoded by :func:`.indexdoc.read_index` (types and
    ranges already checked), column by column at C speed."""
    ids: list[str] = []
    types: list[str] = []
    offs: list[int] = []
    lens: list[int] = []
    ulens: list[int | None] = []
    pack_ids = bytearray()
    pack_nos = array("I")
    far: tuple[dict[bytes, int], dict[bytes, int]] = ({}, {})
    get_id, get_type = operator.attrgetter("id"), operator.attrgetter("type")
    get_off, get_len = operator.attrgetter("offset"), operator.attrgetter("length")
    get_ulen = operator.attrgetter("uncompressed_length")
    for pack_no, p in enumerate(packs_in):
        pack_ids += parse_id(p.id)
        blobs = p.blobs or ()
        ids += map(get_id, blobs)
        types += map(get_type, blobs)
        offs += map(get_off, blobs)
        lens += map(get_len, blobs)
        ulens += map(get_ulen, blobs)
        pack_nos += array("I", [pack_no]) * len(blobs)
    n = len(ids)
    if not n:
        return ParsedPacks(bytes(pack_ids), (b"", b""), ([], []), far)
    try:  # lengths first: a short id and a long one would join into aligned hex
        idb = bytes.fromhex("".join(ids)) if set(map(len, ids)) == {2 * ID_SIZE} else b""
    except ValueError:
        idb = b""
    if len(idb) != ID_SIZE * n:  # a length other than 64, not hex, or spaces: which id?
        for i, blob_id in enumerate(ids):
            try:
                parse_id(blob_id)
            except ValueError:
                raise ValueError(f"invalid id {blob_id!r} (blob {i} of the file)") from None
    del ids
    trees = types.count("tree")
    offsets = array("q", offs)
    ulengths = array("q", [u or 0 for u in ulens])
    del offs, ulens
    if max(offsets) >= _FAR:
        for i, offset in enumerate(offsets):
            if offset >= _FAR:
                # a blob stored twice keeps its first location, far offset included
                far[types[i] == "tree"].setdefault(idb[i * ID_SIZE : (i + 1) * ID_SIZE], offset)
                offsets[i] = _FAR
    recs = _records(idb, pack_nos, offsets, lens, ulengths)
    del idb, offsets, lens, ulengths, pack_nos
    by_type = [b"", b""]
    if not trees:
        by_type[BlobType.DATA] = recs
    elif trees == n:
        by_type[BlobType.TREE] = recs
    else:
        split: list[list[bytes]] = [[], []]
        for i, kind in enumerate(types):
            split[kind == "tree"].append(recs[i * REC : (i + 1) * REC])
        by_type = [b"".join(part) for part in split]
    sorted_recs, firsts = zip(*map(_by_first, by_type), strict=True)
    return ParsedPacks(bytes(pack_ids), sorted_recs, firsts, far)


def _by_first(recs: bytes) -> tuple[bytes, list[int]]:
    """Records ordered by their first byte (stable), and how many start with each byte."""
    if not recs:
        return b"", []
    rows = _rows(recs)
    rows.sort(key=operator.itemgetter(0))
    joined = b"".join(rows)
    del rows
    counts = [0] * 256
    for first, count in Counter(joined[::REC]).items():
        counts[first] = count
    return joined, counts


def _shift_packs(recs: bytes, shift: int) -> bytes:
    """Records with ``shift`` added to every pack number (at C speed)."""
    words = array("I")
    words.frombytes(recs)
    pack_word = ID_SIZE // words.itemsize
    step = REC // words.itemsize
    words[pack_word::step] = array("I", map(operator.add, words[pack_word::step], repeat(shift)))
    return words.tobytes()


class IndexLoader:
    """Many packs added to a :class:`MasterIndex` at once, without an object per blob.

    An index document's blobs are read column by column and turned into
    records at C speed, gathered by first byte (:class:`_Grouper`) and
    merged into the index by :meth:`finish` in one O(n) pass; blobs the
    index already has are dropped there (the first location of a blob
    wins). Nothing is visible in the index before that: a loader that is
    dropped (a malformed file) leaves the index as it was.
    """

    def __init__(self, index: MasterIndex) -> None:
        self._index = index
        self._groupers = [_Grouper(), _Grouper()]
        self._far: list[dict[bytes, int]] = [{}, {}]
        self._packs = bytearray()  # the new pack ids
        self._first = len(index._packs) // ID_SIZE  # noqa: SLF001 - the first new pack's number

    def _pack(self, pack_id: bytes) -> int:
        if len(pack_id) != ID_SIZE:
            raise ValueError("a pack id is 32 bytes")
        number = self._first + len(self._packs) // ID_SIZE
        self._packs += pack_id
        return number

    def add_pack(self, pack_id: PackId, blobs: Iterable[PackedBlob]) -> None:
        """Add the blobs of one pack (already parsed)."""
        pack_no = self._pack(pack_id)
        rows: list[list[bytes]] = [[], []]
        for b in blobs:
            offset = b.offset
            if offset >= _FAR:
                self._far[b.type].setdefault(bytes(b.id), offset)
                offset = _FAR
            if len(b.id) == ID_SIZE:
                rows[b.type].append(
                    b.id + _VAL.pack(pack_no, offset, b.length, b.uncompressed_length)
                )
        for blob_type in BlobType:
            if rows[blob_type]:
                self._groupers[blob_type].add(b"".join(rows[blob_type]))

    def add_parsed(self, parsed: ParsedPacks) -> None:
        """Add packs parsed by :func:`parse_index` (here or in a helper process)."""
        shift = self._first + len(self._packs) // ID_SIZE
        if len(parsed.packs) % ID_SIZE:
            raise ValueError("a pack id is 32 bytes")
        self._packs += parsed.packs
        for blob_type in BlobType:
            recs = parsed.recs[blob_type]
            if not recs:
                continue
            if shift:
                recs = _shift_packs(recs, shift)
            self._groupers[blob_type].add_by_first(recs, parsed.firsts[blob_type])
            far = self._far[blob_type]
            for blob_id, offset in parsed.far[blob_type].items():
                far.setdefault(blob_id, offset)  # the first location of a blob wins

    def finish(self) -> None:
        """Merge everything added into the index."""
        index = self._index
        grouped = []
        for blob_type in BlobType:
            grouped.append(self._groupers[blob_type].finish())
        self._groupers = [_Grouper(), _Grouper()]
        with index._lock:  # noqa: SLF001
            shift = len(index._packs) // ID_SIZE - self._first  # noqa: SLF001 - added meanwhile
            index._packs += self._packs  # noqa: SLF001
            for blob_type in BlobType:
                recs, starts = grouped[blob_type]
                if not recs:
                    continue
                table = index._tables[blob_type]  # noqa: SLF001
                if len(table) or shift:
                    recs, starts = _drop_known(table, recs, starts, shift)
                room = max(_OVERLAY_MIN, len(table.recs) // REC >> 4) - len(table.overlay)
                if table.recs and len(recs) // REC <= room:
                    # a few on top of a large table (new index files over the
                    # cache): the overlay takes them without copying the table
                    _to_overlay(table, recs, self._far[blob_type])
                    continue
                index._tables[blob_type] = _merge(  # noqa: SLF001
                    table, recs, starts, self._far[blob_type]
                )


def _to_overlay(table: _Table, recs: bytearray, far: dict[bytes, int]) -> None:
    """Add grouped records to a table's overlay (with the index's lock held)."""
    for i in range(len(recs) // REC):
        blob_id = bytes(recs[i * REC : i * REC + ID_SIZE])
        pack_no, offset, length, ulen = _VAL.unpack_from(recs, i * REC + ID_SIZE)
        if offset == _FAR:
            offset = far[blob_id]
        table.overlay[blob_id] = (pack_no, offset, length, ulen)


def _drop_known(
    table: _Table, recs: bytearray, starts: array[int], shift: int
) -> tuple[bytearray, array[int]]:
    """Leave out what ``table`` already has; shift pack numbers by ``shift``."""
    out = bytearray()
    counts = [0] * BUCKETS
    view = memoryview(recs)
    for i in range(len(recs) // REC):
        row = view[i * REC : (i + 1) * REC]
        blob_id = row[:ID_SIZE].tobytes()
        if table.has(blob_id):
            continue
        if shift:
            pack_no, offset, length, ulen = _VAL.unpack_from(row, ID_SIZE)
            out += blob_id + _VAL.pack(pack_no + shift, offset, length, ulen)
        else:
            out += row
        counts[bucket_of(blob_id)] += 1
    del view
    return out, array("I", accumulate(counts, initial=0))
