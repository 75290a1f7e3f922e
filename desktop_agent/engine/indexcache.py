"""A local cache of the master index's tables, so that loading skips the JSON.

Parsing a million blobs' index files takes seconds; reading the same tables
back from one local file takes a fraction of that. The file lives in the
repository's cache directory (``<user cache>/repositories/<repo id>``) and
is sealed with the repository key, in chunks of 4 MiB (little memory in
flight): each chunk is encrypted and authenticated on its own and carries
the file's random nonce, its number and whether it is the last one, so a
chunk cannot be swapped in from another file, reordered or cut off. A file
that fails any check is ignored (and later replaced): a wrong "this blob
exists" answer would lose data, so nothing unauthenticated is trusted.

The file says which index files it covers (and which ones those
supersede); :meth:`~.repository.Repository.ensure_index` uses it only while
every covered index file still exists.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
import tempfile
from array import array
from typing import BinaryIO

from . import crypto
from .errors import IntegrityError
from .idtable import BUCKETS, ID_SIZE
from .index import REC, IndexState

__all__ = ["CACHE_NAME", "load_cache", "save_cache"]

CACHE_NAME = "index-tables"
_MAGIC = b"DAIDX\x00\x01" + (b"l" if sys.byteorder == "little" else b"b")
_CHUNK = 4 * 1024 * 1024
_CHUNK_HEAD = struct.Struct("<16sIB")  # file nonce, chunk number, last chunk
_SEALED_LEN = struct.Struct("<I")
_HEAD = struct.Struct("<8s32s7Q")
_FAR = struct.Struct("<32sQ")
_STARTS = 4 * (BUCKETS + 1)


def _repo_tag(repo_id: str) -> bytes:
    return hashlib.sha256(repo_id.encode()).digest()


class _Writer:
    """Plaintext in, sealed chunks out."""

    def __init__(self, out: BinaryIO, key: crypto.Key) -> None:
        self.out, self.key = out, key
        self.nonce = os.urandom(16)
        self.number = 0
        self.buf = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            take = _CHUNK - len(self.buf)
            self.buf += view[:take]
            view = view[take:]
            if len(self.buf) >= _CHUNK:
                self._seal(last=False)

    def _seal(self, *, last: bool) -> None:
        plain = _CHUNK_HEAD.pack(self.nonce, self.number, last) + self.buf
        sealed = crypto.encrypt(self.key, plain)
        self.out.write(_SEALED_LEN.pack(len(sealed)))
        self.out.write(sealed)
        self.number += 1
        self.buf = bytearray()

    def close(self) -> None:
        self._seal(last=True)


class _Reader:
    """Sealed chunks in, verified plaintext out; IntegrityError on any mismatch."""

    def __init__(self, src: BinaryIO, key: crypto.Key) -> None:
        self.src, self.key = src, key
        self.nonce: bytes | None = None
        self.number = 0
        self.last = False
        self.data = memoryview(b"")

    def _next(self) -> None:
        if self.last:
            raise IntegrityError("index cache: data after the last chunk")
        raw = self.src.read(_SEALED_LEN.size)
        if len(raw) != _SEALED_LEN.size:
            raise IntegrityError("index cache: cut off")
        (size,) = _SEALED_LEN.unpack(raw)
        if size > _CHUNK + _CHUNK_HEAD.size + crypto.OVERHEAD:
            raise IntegrityError("index cache: chunk too large")
        sealed = self.src.read(size)
        if len(sealed) != size:
            raise IntegrityError("index cache: cut off")
        plain = crypto.decrypt(self.key, sealed)
        if len(plain) < _CHUNK_HEAD.size:
            raise IntegrityError("index cache: chunk too short")
        nonce, number, last = _CHUNK_HEAD.unpack_from(plain)
        if self.nonce is None:
            self.nonce = nonce
        if nonce != self.nonce or number != self.number:
            raise IntegrityError("index cache: chunk out of place")
        self.number += 1
        self.last = bool(last)
        self.data = memoryview(plain)[_CHUNK_HEAD.size :]

    def readinto(self, target: memoryview) -> None:
        pos = 0
        while pos < len(target):
            if not len(self.data):
                self._next()
            take = min(len(self.data), len(target) - pos)
            target[pos : pos + take] = self.data[:take]
            self.data = self.data[take:]
            pos += take

    def read(self, n: int) -> bytearray:
        out = bytearray(n)
        self.readinto(memoryview(out))
        return out

    def end(self) -> None:
        """The stream must end exactly here (the last chunk, nothing after)."""
        if len(self.data) or not self.last or self.src.read(1):
            raise IntegrityError("index cache: unexpected data at the end")


def save_cache(path: str, key: crypto.Key, repo_id: str, state: IndexState) -> None:
    """Write the cache atomically (a temporary file renamed over the old one)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".index-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            w = _Writer(out, key)
            (data_recs, _, data_far), (tree_recs, _, tree_far) = state.tables
            w.write(
                _HEAD.pack(
                    _MAGIC,
                    _repo_tag(repo_id),
                    len(state.files),
                    len(state.superseded),
                    len(state.packs) // ID_SIZE,
                    len(data_recs) // REC,
                    len(data_far),
                    len(tree_recs) // REC,
                    len(tree_far),
                )
            )
            w.write(b"".join(sorted(state.files)))
            w.write(b"".join(sorted(state.superseded)))
            w.write(state.packs)
            for recs, starts, far in state.tables:
                w.write(starts.tobytes())
                w.write(recs)
                w.write(b"".join(_FAR.pack(k, v) for k, v in far.items()))
            w.close()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_cache(path: str, key: crypto.Key, repo_id: str) -> IndexState | None:
    """The cached tables, or None when there is no cache or it fails a check."""
    try:
        src = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError:
        return None
    try:
        with src:
            return _read(src, key, repo_id, os.fstat(src.fileno()).st_size)
    except (IntegrityError, OSError, ValueError, struct.error, MemoryError):
        return None


def _read(src: BinaryIO, key: crypto.Key, repo_id: str, file_size: int) -> IndexState:
    r = _Reader(src, key)
    magic, tag, n_files, n_sup, n_packs, n_data, far_data, n_tree, far_tree = _HEAD.unpack(
        r.read(_HEAD.size)
    )
    if magic != _MAGIC or tag != _repo_tag(repo_id):
        raise IntegrityError("index cache: another format or repository")
    # the sizes are authenticated; still, nothing larger than the file is allocated
    claimed = (n_files + n_sup + n_packs) * ID_SIZE + (n_data + n_tree) * REC
    if claimed > file_size:
        raise IntegrityError("index cache: sizes beyond the file")
    files = r.read(n_files * ID_SIZE)
    superseded = r.read(n_sup * ID_SIZE)
    packs = r.read(n_packs * ID_SIZE)
    tables = []
    for n, n_far in ((n_data, far_data), (n_tree, far_tree)):
        starts = array("I")
        starts.frombytes(r.read(_STARTS))
        if starts[0] != 0 or starts[BUCKETS] != n:
            raise IntegrityError("index cache: group table does not match")
        recs = r.read(n * REC)
        if n_far * _FAR.size > file_size:
            raise IntegrityError("index cache: sizes beyond the file")
        far_raw = r.read(n_far * _FAR.size)
        far = {bytes(k): v for k, v in _FAR.iter_unpack(far_raw)}
        tables.append((recs, starts, far))
    r.end()
    return IndexState(
        packs,
        tables,
        {bytes(files[i : i + ID_SIZE]) for i in range(0, len(files), ID_SIZE)},
        {bytes(superseded[i : i + ID_SIZE]) for i in range(0, len(superseded), ID_SIZE)},
    )
