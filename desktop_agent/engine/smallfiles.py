"""Reading and sealing small files, in this process or in helper processes.

A small file (up to one minimum chunk) becomes one blob. Per file the work
is a handful of system calls, a hash, a compression and an encryption:
microseconds of C wrapped in Python calls that hold the GIL, so threads
cannot run them in parallel. Trees with tens of thousands of small files
therefore go to helper processes (``spawn``ed, so nothing of the parent's
state is inherited but the key they are handed): each takes batches of
paths, writes the sealed blobs into pack files of its own and returns only
blob ids, sizes and finished packs, which the parent stores and indexes as
usual. A helper that dies is noticed by the caller, which then does the
work itself.
"""

from __future__ import annotations

import errno
import hmac
import os
import socket
import stat as st
import subprocess
import sys
from multiprocessing.connection import Connection, wait
from typing import Any

import zstandard

from . import crypto
from .ids import BlobId, BlobType, PackId
from .pack import BLOB_ZSTD_LEVEL, PackBuilder, PackedBlob
from .storage.local import describe_oserror

__all__ = [
    "read_small",
    "open_for_reading",
    "Helpers",
    "unportable",
    "raise_if_failed",
    "SMALL_FILE",
    "FileResult",
]

SMALL_FILE = 512 * 1024  # = chunker.MIN_SIZE (kept import-light for the helpers)
MAX_PACK_BLOBS = 2048  # a helper finishes its pack after this many blobs

_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
_NOATIME = getattr(os, "O_NOATIME", 0)

# ("ok", data, size_read, changed, mtime_before)
# ("vanished",) or ("error", message)
FileResult = tuple[Any, ...]


def open_for_reading(path: bytes) -> int:
    """Open a file to back it up: no following symlinks, no blocking, no atime."""
    if _NOATIME:
        try:
            return os.open(path, _OPEN_FLAGS | _NOATIME)
        except PermissionError:
            pass  # O_NOATIME needs ownership
    return os.open(path, _OPEN_FLAGS)


def _failure(exc: OSError) -> FileResult:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
        return ("vanished",)  # deleted, or replaced by a symlink, since it was listed
    return ("error", exc.strerror or str(exc))


def read_small(path: bytes) -> FileResult:
    """Read a whole (small) regular file, noticing changes while reading."""
    try:
        fd = open_for_reading(path)
    except OSError as exc:
        return _failure(exc)
    try:
        before = os.fstat(fd)
        if not st.S_ISREG(before.st_mode):
            return ("vanished",)
        # one byte more than the size: EOF in one call when the file did not
        # grow (a large read buffer would cost an mmap per file)
        data = os.read(fd, before.st_size + 1)
        if len(data) > before.st_size:
            parts = [data]
            while block := os.read(fd, 1 << 20):
                parts.append(block)
            data = b"".join(parts)
        after = os.fstat(fd)
    except OSError as exc:
        return _failure(exc)
    finally:
        os.close(fd)
    changed = after.st_mtime_ns != before.st_mtime_ns or after.st_size != len(data)
    return ("ok", data, len(data), changed, before.st_mtime_ns)


# ---------------------------------------------------------------- helpers
def _helper_main(
    conn: Connection,
    key_parts: tuple[bytes, bytes, bytes],
    compression: bool,
    spool_dir: str,
    pack_size: int,
    known: bytes,
) -> None:
    """Body of a helper process: batches of paths in, blob ids and packs out.

    The helper writes its own pack files (in the repository's spool
    directory) so that file contents never travel back to the parent; only
    ids, sizes and finished packs do. ``known`` holds the ids of data blobs
    already in the repository; files routed to this helper by size cannot
    duplicate another helper's, and other duplicates are harmless (restic's
    format allows a blob in two packs; prune drops one).
    """
    key = crypto.Key(*key_parts)
    zstd = zstandard.ZstdCompressor(level=BLOB_ZSTD_LEVEL) if compression else None
    seen = {known[i : i + 32] for i in range(0, len(known), 32)}
    builder = PackBuilder(key, spool_dir)
    try:
        while True:
            msg = conn.recv()
            try:
                if msg[0] == "batch":
                    results, finished = _seal(msg[2], key, zstd, seen, builder, pack_size)
                    conn.send(("done", msg[1], results, finished))
                elif msg[0] == "flush":
                    finished = [_portable(builder.finish())] if len(builder) else []
                    conn.send(("flushed", None, [], finished))
                else:  # "stop"
                    break
            except (BrokenPipeError, ConnectionResetError):
                raise
            except OSError as exc:
                # the spool file could not be written (disk full, I/O error):
                # the parent turns this into the backup's error; we are done
                where = builder.path or spool_dir
                conn.send(("failed", msg[1] if len(msg) > 1 else None, exc.errno, where))
                break
    except (EOFError, KeyboardInterrupt, BrokenPipeError, ConnectionResetError):
        pass
    finally:
        builder.discard()


def _portable(done: tuple[Any, str, list[PackedBlob], int]) -> tuple[Any, ...]:
    pack_id, path, blobs, size = done
    return (
        pack_id,
        path,
        [(int(b.type), b.id, b.offset, b.length, b.uncompressed_length) for b in blobs],
        size,
    )


def unportable(packed: tuple[Any, ...]) -> tuple[PackId, str, list[PackedBlob], int]:
    """A finished pack as sent by a helper, back into engine types."""
    pack_id, path, blobs, size = packed
    return (
        PackId(pack_id),
        path,
        [PackedBlob(BlobType(t), BlobId(i), o, n, u) for t, i, o, n, u in blobs],
        size,
    )


def _seal(
    paths: list[bytes],
    key: crypto.Key,
    zstd: zstandard.ZstdCompressor | None,
    seen: set[bytes],
    builder: PackBuilder,
    pack_size: int,
) -> tuple[list[FileResult], list[tuple[Any, ...]]]:
    results: list[FileResult] = []
    payloads: list[bytes] = []
    new: list[tuple[int, bytes, int]] = []  # result index, blob id, ulen
    for path in paths:
        res = read_small(path)
        if res[0] != "ok" or len(res[1]) > SMALL_FILE:
            results.append(res)  # failures, and files that grew: the parent handles them
            continue
        _, data, size, changed, mtime = res
        if not data:
            results.append(("stored", None, 0, changed, mtime, 0))
            continue
        blob_id = crypto.sha256(data)
        if blob_id not in seen:
            seen.add(blob_id)
            payload, ulen = data, 0
            if zstd is not None:
                packed = zstd.compress(data)
                if len(packed) < len(data):
                    payload, ulen = packed, len(data)
            payloads.append(payload)
            new.append((len(results), blob_id, ulen))
        results.append(("stored", blob_id, size, changed, mtime, 0))
    finished: list[tuple[Any, ...]] = []
    if payloads:
        sealed = crypto.encrypt_many(key, payloads)
        builder.add_many(
            [
                (BlobType.DATA, BlobId(b), blob, u)
                for (_, b, u), blob in zip(new, sealed, strict=True)
            ]
        )
        for (i, _b, _u), blob in zip(new, sealed, strict=True):
            r = results[i]
            results[i] = (r[0], r[1], r[2], r[3], r[4], len(blob))
        # small packs are fine: the parent keeps every file of an unfinished
        # pack in memory until the pack is done, so bound it by blob count too
        if builder.size >= pack_size or len(builder) >= MAX_PACK_BLOBS:
            finished.append(_portable(builder.finish()))
    return results, finished


class Helpers:
    """A few helper processes, each fed batches of paths through a socket.

    Helpers are plain ``python -m desktop_agent.engine.smallfiles``
    processes (they import only what they need, about 25 MB each), talking
    over an inherited socket pair; the key travels over that socket, never
    through the command line or the environment. Files are routed by size,
    so identical files meet in the same helper and are stored once. Not
    thread-safe: one thread (the walker) drives it.
    """

    def __init__(
        self,
        count: int,
        key: crypto.Key,
        compression: bool,
        spool_dir: str,
        pack_size: int,
        known: bytes,
    ) -> None:
        self.conns: list[Connection] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.outstanding = [0] * count
        try:
            for _ in range(count):
                conn, proc = _spawn_by_fd() if PASS_FDS else _spawn_over_loopback()
                self.conns.append(conn)
                self.procs.append(proc)
                conn.send(
                    (
                        "init",
                        (key.encrypt, key.mac_k, key.mac_r),
                        compression,
                        spool_dir,
                        pack_size,
                        known,
                    )
                )
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self.conns)

    def send(self, helper: int, batch_id: int, paths: list[bytes]) -> None:
        """Hand a batch to a helper (raises OSError/EOFError if it died)."""
        self.conns[helper].send(("batch", batch_id, paths))
        self.outstanding[helper] += 1

    def receive(self, timeout: float | None = 0.0) -> list[tuple[int, tuple[Any, ...]]]:
        """Messages that arrived (waits up to ``timeout``; None = until one does)."""
        busy = [c for c, n in zip(self.conns, self.outstanding, strict=True) if n > 0]
        if not busy:
            return []
        out = []
        for conn in wait(busy, timeout):
            assert isinstance(conn, Connection)
            i = self.conns.index(conn)
            msg = conn.recv()  # EOFError if the helper died
            self.outstanding[i] -= 1
            out.append((i, msg))
        return out

    def flush(self) -> list[tuple[PackId, str, list[PackedBlob], int]]:
        """Finish every helper's open pack; returns the packs."""
        packs: list[tuple[PackId, str, list[PackedBlob], int]] = []
        for i, conn in enumerate(self.conns):
            conn.send(("flush",))
            self.outstanding[i] += 1
        while any(self.outstanding):
            for _i, msg in self.receive(None):
                raise_if_failed(msg)
                if msg[0] != "flushed":
                    raise RuntimeError("helper answered out of order")
                packs.extend(unportable(p) for p in msg[3])
        return packs

    def close(self) -> None:
        """Stop the helpers (and kill any that do not stop)."""
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except (OSError, EOFError, ValueError):
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for conn in self.conns:
            conn.close()
        self.conns = []
        self.procs = []


def raise_if_failed(msg: tuple[Any, ...]) -> None:
    """Raise the StorageError a helper reported instead of an answer."""
    if msg[0] == "failed":
        code, where = msg[2], msg[3]
        raise describe_oserror(OSError(code, os.strerror(code) if code else "error"), where)


# Where a child can inherit a socket by descriptor (POSIX), each helper gets one
# end of a socketpair; elsewhere (Windows: subprocess cannot pass descriptors)
# it connects back to a loopback port and proves it is the child we started
# with a one-time token handed over on its stdin.
PASS_FDS = os.name == "posix"
_CONNECT_TIMEOUT = 30.0


def _spawn_by_fd() -> tuple[Connection, subprocess.Popen[bytes]]:
    ours, theirs = socket.socketpair()
    with theirs:
        proc = subprocess.Popen(
            [*_helper_command(), str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
        )
    return Connection(ours.detach()), proc


def _spawn_over_loopback() -> tuple[Connection, subprocess.Popen[bytes]]:
    token = os.urandom(32)
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(_CONNECT_TIMEOUT)
        host, port = server.getsockname()[:2]
        proc = subprocess.Popen([*_helper_command(), "connect"], stdin=subprocess.PIPE)
        assert proc.stdin is not None
        try:
            proc.stdin.write(f"{host} {port} {token.hex()}\n".encode())
            proc.stdin.close()
            while True:  # anyone else on this machine may knock first: only the token counts
                sock, _addr = server.accept()
                sock.settimeout(_CONNECT_TIMEOUT)
                try:
                    offered = _recv_exactly(sock, len(token))
                except OSError:
                    sock.close()
                    continue
                if hmac.compare_digest(offered, token):
                    sock.settimeout(None)
                    return Connection(sock.detach()), proc
                sock.close()
        except BaseException:
            proc.kill()
            proc.wait()
            raise


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            raise ConnectionResetError("closed before the token")
        data += part
    return data


def _connect_back() -> Connection:
    """In a helper started by :func:`_spawn_over_loopback`: dial the parent."""
    host, port, token = sys.stdin.readline().split()
    sock = socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT)
    sock.sendall(bytes.fromhex(token))
    sock.settimeout(None)
    return Connection(sock.detach())


def _helper_command() -> list[str]:
    if getattr(sys, "frozen", False):  # a packaged binary runs its own entry point
        return [sys.executable, "--engine-helper"]
    return [sys.executable, "-m", "desktop_agent.engine.smallfiles"]


def helper_entry(fd: int | str) -> None:
    """Entry point of a helper process: serve the parent on socket ``fd``
    (``"connect"``: connect back to the parent, see :func:`_spawn_over_loopback`)."""
    conn = _connect_back() if fd == "connect" else Connection(int(fd))
    try:
        msg = conn.recv()
    except EOFError:
        return
    if msg[0] != "init":
        return
    _, key_parts, compression, spool_dir, pack_size, known = msg
    _helper_main(conn, key_parts, compression, spool_dir, pack_size, known)


if __name__ == "__main__":
    helper_entry(sys.argv[1])
