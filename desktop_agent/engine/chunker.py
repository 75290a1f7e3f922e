"""Content-defined chunking with FastCDC (pyfastcdc, C code, GIL released).

Sizes mirror restic's chunker (min 512 KiB, about 1 MiB average beyond the
minimum, max 8 MiB) so deduplication and per-blob overhead are comparable.
The gear table is seeded per repository (see :func:`crypto.chunker_seed`):
chunk boundaries of one repository reveal nothing about those of another.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import BinaryIO

from pyfastcdc import FastCDC

__all__ = ["Chunker", "MIN_SIZE", "AVG_SIZE", "MAX_SIZE"]

MIN_SIZE = 512 * 1024
AVG_SIZE = 1024 * 1024
MAX_SIZE = 8 * 1024 * 1024


class Chunker:
    """Splits streams and buffers into content-defined chunks."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._local = threading.local()

    def _cdc(self) -> FastCDC:
        # pyfastcdc objects must not be shared between threads.
        cdc: FastCDC | None = getattr(self._local, "cdc", None)
        if cdc is None:
            cdc = FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, seed=self.seed)
            self._local.cdc = cdc
        return cdc

    def stream(self, fh: BinaryIO) -> Iterator[memoryview]:
        """Chunks of a file object; each view is valid until the next one."""
        for chunk in self._cdc().cut_stream(fh):
            yield chunk.data

    def buffer(self, data: bytes | bytearray | memoryview) -> Iterator[memoryview]:
        """Chunks of an in-memory buffer (views into it)."""
        for chunk in self._cdc().cut_buf(data):
            yield chunk.data
