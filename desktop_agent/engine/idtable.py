"""Sets of 32-byte ids kept as one buffer of fixed records, grouped by prefix.

The compact master index (:mod:`.index`) and the small-file helpers share
this layout: ids are SHA-256 digests (uniform), stored back to back in one
buffer, grouped by their first two bytes (big-endian, ascending; any order
inside a group). A table of 65,537 record numbers says where each group
starts, so a lookup searches one group of about n/65,536 records with
``bytes.find``, whose hits are checked for alignment. A million ids cost
32 bytes each plus a 256 KiB table, instead of the ~100 bytes of a
``bytes`` object in a set. Standard library only: helper processes import
this module.
"""

from __future__ import annotations

import sys
from array import array
from collections import Counter
from collections.abc import Callable
from itertools import accumulate

__all__ = ["BUCKETS", "ID_SIZE", "IdSet", "bucket_of", "bucket_starts", "find_record"]

ID_SIZE = 32
BUCKETS = 1 << 16


def bucket_of(blob_id: bytes) -> int:
    """The group of an id: its first two bytes, big-endian."""
    return blob_id[0] << 8 | blob_id[1]


def find_record(
    buf: bytes | bytearray, starts: array[int], blob_id: bytes, size: int = ID_SIZE
) -> int:
    """The number of the record that starts with ``blob_id``, or -1.

    ``buf`` holds records of ``size`` bytes (an id first) grouped by
    :func:`bucket_of`; ``blob_id`` must be 32 bytes long. A match of
    ``find`` that does not start on a record boundary is skipped.
    """
    k = blob_id[0] << 8 | blob_id[1]
    end = starts[k + 1] * size
    i = buf.find(blob_id, starts[k] * size, end)
    while i % size:
        if i < 0:
            return -1
        i = buf.find(blob_id, i + 1, end)
    return i // size


def bucket_starts(buf: bytes | bytearray, size: int = ID_SIZE) -> array[int]:
    """The group start table of records of ``size`` bytes grouped by :func:`bucket_of`.

    Counts the two-byte prefixes at C speed (no object per id survives).
    """
    n = len(buf) // size
    counts = [0] * BUCKETS
    if n:
        prefixes = memoryview(buf)[: n * size].cast("H")[:: size // 2]
        swap = sys.byteorder == "little"
        for value, count in Counter(prefixes).items():
            counts[((value & 0xFF) << 8 | value >> 8) if swap else value] = count
    return array("I", accumulate(counts, initial=0))


class IdSet:
    """Membership in a grouped buffer of ids, plus ids added later.

    ``ids`` must be grouped as :func:`bucket_of` says (the master index's
    :meth:`~.index.MasterIndex.id_bytes` is); an id out of its group is
    simply not found, which costs a duplicate blob, never a lost one.
    """

    __slots__ = ("_ids", "_starts", "_added")

    def __init__(self, ids: bytes | bytearray = b"") -> None:
        if len(ids) % ID_SIZE:
            raise ValueError("the id buffer is not a whole number of 32-byte ids")
        self._ids = ids
        self._starts = bucket_starts(ids)
        self._added: set[bytes] = set()

    def __contains__(self, blob_id: object) -> bool:
        if not isinstance(blob_id, bytes) or len(blob_id) != ID_SIZE:
            return False
        if blob_id in self._added:
            return True
        # a first backup's helpers know no ids yet: no group to search
        return bool(self._ids) and find_record(self._ids, self._starts, blob_id) >= 0

    def add(self, blob_id: bytes) -> None:
        """Remember one more id."""
        self._added.add(blob_id)

    def functions(self) -> tuple[Callable[[bytes], bool], Callable[[bytes], None]]:
        """``(contains, add)`` for a loop over 32-byte ids: with no ids given
        at the start (a first backup's helpers), the added ids' set's own
        methods (0.05 instead of 0.5 us a lookup)."""
        if self._ids:
            return self.__contains__, self.add
        return self._added.__contains__, self._added.add

    def __len__(self) -> int:
        return len(self._ids) // ID_SIZE + len(self._added)
