"""A local cache that lets an unchanged directory skip tree work entirely.

For every directory of the last snapshot a backup wrote, the cache records a
signature of the directory's listing (each entry's name and the ``lstat``
fields that end up in its tree node) and the id of the tree stored for it.
On the next run, a directory whose listing has the same signature and whose
subdirectories are all unchanged has, by construction, the same tree: its
id is reused without loading the parent's tree, building nodes or encoding
JSON. Only the ``lstat`` calls remain, which no backup tool can avoid
(docs/design.md, section 4).

Safety:

* the cache belongs to one snapshot and is used only when that snapshot is
  the parent of the new backup. Every tree of a snapshot that still exists
  is referenced, so prune keeps it and everything it references;
* the file is encrypted and authenticated with the repository key (it
  holds path names; a damaged or foreign file is ignored, never trusted);
* anything unexpected means "no cache": the backup falls back to comparing
  against the parent snapshot's trees, which is always correct.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

import zstandard

from . import crypto
from .errors import IntegrityError
from .ids import BlobId, SnapshotId

__all__ = [
    "DirCache",
    "DirEntrySig",
    "FAILED",
    "VOLATILE",
    "cache_file",
    "identity",
    "signature",
]

_MAGIC = b"DA-DIRCACHE-2\n"
# path length, signature, tree id, identity, files, bytes, directories, flags
_REC = struct.Struct("<I16s32s24sQQII")
_IDENT = struct.Struct("<Qqq")  # inode, mtime, ctime of the directory itself

VOLATILE = 1  # the subtree holds what raises no event: hard links, mount points, network
# something in the directory was left out (unlistable, unreadable, vanished): the
# directory is not remembered, so the next run tries again instead of reusing a
# tree without it (and VOLATILE carries up to its ancestors)
FAILED = 2

# bump when the tree encoding changes, so old signatures stop matching
_ENCODING_VERSION = b"tree-encoding-1"
_ENTRY = struct.Struct("<HIIIQQqqQQ")


@dataclass(frozen=True, slots=True)
class DirEntrySig:
    """What the cache remembers for one directory.

    ``ident``: the directory's own inode, mtime and ctime (:func:`identity`),
    so that a directory replaced by another under the same path is never
    taken for it; ``files``, ``nbytes``, ``dirs``: the regular files, their
    bytes and the directories in its subtree (itself included), for the
    totals of a run that does not list it; ``flags``: :data:`VOLATILE`.
    """

    sig: bytes
    tree_id: BlobId
    ident: bytes = b""
    files: int = 0
    nbytes: int = 0
    dirs: int = 1
    flags: int = 0


def identity(s: os.stat_result) -> bytes:
    """What tells one directory from another that later took its path."""
    return _IDENT.pack(s.st_ino, s.st_mtime_ns, s.st_ctime_ns)


_owner_cache: dict[tuple[int, int], bytes] = {}


def signature(
    listing: list[tuple[bytes, bytes, os.stat_result]],
    user: Callable[[int], str],
    group: Callable[[int], str],
    *,
    partial: bool = False,
) -> bytes:
    """Signature of a directory listing: every field a tree node takes from lstat.

    ``user`` and ``group`` name uids and gids, as the nodes record them.
    ``partial`` marks the listing of a directory above the sources, which
    holds only the entries leading to them.
    """
    parts = [_ENCODING_VERSION, b"partial" if partial else b"full"]
    owners = _owner_cache
    pack = _ENTRY.pack
    for name, _path, s in listing:
        parts.append(name)
        parts.append(
            pack(
                len(name),
                s.st_mode,
                s.st_uid,
                s.st_gid,
                s.st_ino,
                s.st_size,
                s.st_mtime_ns,
                s.st_ctime_ns,
                s.st_nlink,
                s.st_dev if s.st_nlink > 1 else s.st_rdev,
            )
        )
        ids = (s.st_uid, s.st_gid)
        owner = owners.get(ids)
        if owner is None:
            owner = f"{user(ids[0])}\0{group(ids[1])}\0".encode("utf-8", "surrogateescape")
            owners[ids] = owner
        parts.append(owner)
    return hashlib.blake2b(b"".join(parts), digest_size=16).digest()


def cache_file(cache_dir: str, host: str, paths: list[str]) -> str:
    """The cache file for one host and set of backup paths."""
    key = hashlib.sha256(
        "\0".join([host, *sorted(paths)]).encode("utf-8", "surrogateescape")
    ).hexdigest()
    return os.path.join(cache_dir, f"dirs-{key[:24]}")


class DirCache:
    """Directory path -> (signature, tree id) for one snapshot."""

    def __init__(self, snapshot: SnapshotId | None = None) -> None:
        self.snapshot = snapshot
        self.entries: dict[bytes, DirEntrySig] = {}
        self._sorted: list[bytes] | None = None  # the paths in order, for below()

    def get(self, path: bytes) -> DirEntrySig | None:
        """The remembered state of a directory, if any."""
        return self.entries.get(path)

    def put(self, path: bytes, sig: bytes, tree_id: BlobId) -> None:
        """Remember a directory's state for the next run."""
        self.entries[path] = DirEntrySig(sig, tree_id)

    def put_entry(self, path: bytes, entry: DirEntrySig) -> None:
        """Remember a directory's whole state for the next run."""
        self.entries[path] = entry

    def below(self, path: bytes) -> list[tuple[bytes, DirEntrySig]]:
        """The entries of the directories below ``path`` (not ``path`` itself)."""
        keys = self._sorted
        if keys is None:
            keys = self._sorted = sorted(self.entries)
        prefix = path.rstrip(b"/") + b"/"
        # every key that starts with "<path>/" sorts between "<path>/" and "<path>0"
        lo = bisect.bisect_left(keys, prefix)
        hi = bisect.bisect_left(keys, prefix[:-1] + b"0", lo)
        entries = self.entries
        return [(k, entries[k]) for k in keys[lo:hi]]

    def save(self, file: str, key: crypto.Key, snapshot: SnapshotId) -> None:
        """Write the cache atomically, encrypted with the repository key."""
        out = [_MAGIC, snapshot]
        for path, entry in self.entries.items():
            out.append(
                _REC.pack(
                    len(path),
                    entry.sig,
                    entry.tree_id,
                    entry.ident.ljust(_IDENT.size, b"\0"),
                    entry.files,
                    entry.nbytes,
                    entry.dirs,
                    entry.flags,
                )
            )
            out.append(path)
        blob = crypto.encrypt(key, zstandard.ZstdCompressor(level=1).compress(b"".join(out)))
        os.makedirs(os.path.dirname(file), mode=0o700, exist_ok=True)
        tmp = f"{file}.tmp-{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(blob)
        os.replace(tmp, file)

    @classmethod
    def load(cls, file: str, key: crypto.Key, snapshot: SnapshotId) -> DirCache | None:
        """The cache for ``snapshot``, or None when missing, stale or damaged."""
        try:
            with open(file, "rb") as fh:
                blob = fh.read()
            raw = zstandard.ZstdDecompressor().decompressobj().decompress(crypto.decrypt(key, blob))
        except (OSError, IntegrityError, zstandard.ZstdError):
            return None
        if not raw.startswith(_MAGIC):
            return None
        pos = len(_MAGIC)
        if raw[pos : pos + 32] != snapshot:
            return None
        pos += 32
        cache = cls(snapshot)
        size = _REC.size
        end = len(raw)
        try:
            while pos < end:
                plen, sig, tree_id, ident, files, nbytes, dirs, flags = _REC.unpack_from(raw, pos)
                pos += size
                cache.entries[raw[pos : pos + plen]] = DirEntrySig(
                    sig, BlobId(tree_id), ident, files, nbytes, dirs, flags
                )
                pos += plen
        except struct.error:
            return None
        return cache
