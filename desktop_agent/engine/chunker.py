"""Content-defined chunking with FastCDC (pyfastcdc, C code, GIL released).

Sizes mirror restic's chunker (min 512 KiB, about 1 MiB average beyond the
minimum, max 8 MiB) so deduplication and per-blob overhead are comparable.
The gear table is seeded per repository (see :func:`crypto.chunker_seed`):
chunk boundaries of one repository reveal nothing about those of another.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from pyfastcdc import FastCDC

__all__ = ["Chunker", "MIN_SIZE", "AVG_SIZE", "MAX_SIZE"]

MIN_SIZE = 512 * 1024
AVG_SIZE = 1024 * 1024
MAX_SIZE = 8 * 1024 * 1024
BLOCK = MAX_SIZE  # read size of :meth:`Chunker.blocks`


class Readable(Protocol):
    """Anything with ``readinto`` (raw files, BytesIO)."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...


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

    def blocks(self, fh: Readable, block: int = BLOCK) -> Iterator[memoryview]:
        """Chunks of a file, read in blocks; each view stays valid.

        Every block is a fresh buffer and the chunks are views into it, so
        no chunk is copied; only the unfinished tail of a block (less than
        one chunk) is carried into the next. Boundaries do not depend on the
        block size: a cut search restarts at each chunk's start.
        """
        cdc = self._cdc()
        carry = b""
        while True:
            buf = bytearray(block + len(carry))
            view = memoryview(buf)
            view[: len(carry)] = carry
            filled = len(carry)
            eof = False
            while filled < len(buf):
                n = fh.readinto(view[filled:])
                if not n:
                    eof = True
                    break
                filled += n
            if not filled:
                return
            chunks = [c.data for c in cdc.cut_buf(view[:filled])]
            if eof:
                yield from chunks
                return
            carry = bytes(chunks.pop())  # may end mid-chunk: cut it again with what follows
            yield from chunks

    def stream(self, fh: BinaryIO) -> Iterator[memoryview]:
        """Chunks of a file object; each view is valid until the next one."""
        for chunk in self._cdc().cut_stream(fh):
            yield chunk.data

    def buffer(self, data: bytes | bytearray | memoryview) -> Iterator[memoryview]:
        """Chunks of an in-memory buffer (views into it)."""
        for chunk in self._cdc().cut_buf(data):
            yield chunk.data
