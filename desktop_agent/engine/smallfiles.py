"""Reading and sealing small files, in this process or in helper processes.

See docs/design.md, section 5. A small file (up to one minimum chunk)
becomes one blob. Per file the work is a handful of system calls, a hash, a
compression and an encryption: microseconds of C wrapped in Python calls
that hold the GIL, so threads cannot run them in parallel. Trees with tens
of thousands of small files therefore go to helper processes (started
fresh, so nothing of the parent's state is inherited but the key they are
handed): each takes batches of paths, writes the sealed blobs into pack
files of its own and returns only blob ids, sizes and finished packs, which
the parent stores and indexes as usual. A helper that dies is noticed by
the caller, which then does the work itself.

This module is both sides of that: :func:`read_small`, the helper's body
(:func:`helper_entry`, run by ``python -S -c`` with the parent's module
path, or as ``python -m desktop_agent.engine.smallfiles``), and
:class:`Helpers`, the parent's handle on the processes and their sockets.
The messages are in :mod:`.helpermsg`; what the backup does with the
answers is :mod:`.helperpool`.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import hmac
import os
import socket
import stat as st
import subprocess
import sys
import threading
from multiprocessing.connection import Connection, wait

import zstandard

from . import crypto
from .helpermsg import (
    VANISHED,
    BatchDone,
    Failed,
    FileRead,
    FileResult,
    Flush,
    Flushed,
    FromHelper,
    HelperResult,
    Init,
    ReadFailed,
    SealBatch,
    SealedPack,
    Stop,
    ToHelper,
)
from .ids import BlobId, BlobType
from .idtable import IdSet
from .memory import FEWER_GC_PASSES
from .pack import SMALL_BLOB_ZSTD_LEVEL, FinishedPack, PackBuilder

__all__ = [
    "read_small",
    "open_for_reading",
    "Helpers",
    "helper_entry",
    "spawn_helper",
    "send_room",
    "SOCKET_BUFFER",
    "reap",
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
        return VANISHED  # deleted, or replaced by a symlink, since it was listed
    return ReadFailed(exc.strerror or str(exc))


def read_small(path: bytes, size: int, mtime: int) -> FileResult:
    """Read a whole (small) regular file, noticing changes since it was listed.

    ``size`` and ``mtime`` (ns) are what the listing's lstat said. One fstat
    after reading tells whether the file changed since then (or while it was
    read): its size or mtime differ, or it is no longer a regular file. A
    regular file that is replaced between the lstat and the open is a
    change too; O_NOFOLLOW and O_NONBLOCK keep a symlink or a FIFO put in
    its place from being followed or waited for.
    """
    try:
        fd = open_for_reading(path)
    except OSError as exc:
        return _failure(exc)
    try:
        try:
            # one byte more than the size: EOF in one call when the file did
            # not grow (a large read buffer would cost an mmap per file)
            data = os.read(fd, size + 1)
            if len(data) > size:
                parts = [data]
                while block := os.read(fd, 1 << 20):
                    parts.append(block)
                data = b"".join(parts)
        except OSError as exc:
            # a directory or a FIFO put in its place: gone, as a file
            return VANISHED if _not_regular(fd) else _failure(exc)
        after = os.fstat(fd)
    except OSError as exc:
        return _failure(exc)
    finally:
        os.close(fd)
    if not st.S_ISREG(after.st_mode):
        return VANISHED
    changed = len(data) != size or after.st_size != size or after.st_mtime_ns != mtime
    return FileRead(data, changed)


def _not_regular(fd: int) -> bool:
    try:
        return not st.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


# ------------------------------------------------------- the helper's side
def _helper_main(conn: Connection, init: Init) -> None:
    """Body of a helper process: batches of paths in, blob ids and packs out.

    The helper writes its own pack files (in the repository's spool
    directory) so that file contents never travel back to the parent; only
    ids, sizes and finished packs do. ``init.known`` holds the ids of data
    blobs already in the repository; files routed to this helper by size
    cannot duplicate another helper's, and other duplicates are harmless (the
    format allows a blob in two packs; prune drops one).
    """
    gc.set_threshold(*FEWER_GC_PASSES)  # a process of its own: see engine.memory
    key = crypto.Key(*init.key_parts)
    zstd = zstandard.ZstdCompressor(level=SMALL_BLOB_ZSTD_LEVEL) if init.compression else None
    # a million known ids cost 32 MB here, not the ~100 MB of a set of bytes
    seen = IdSet(init.known)
    builder = PackBuilder(key, init.spool_dir)
    try:
        while True:
            msg: ToHelper = conn.recv()
            batch_id = msg.batch_id if isinstance(msg, SealBatch) else None
            try:
                if isinstance(msg, SealBatch):
                    results, finished = _seal(msg, key, zstd, seen, builder, init.pack_size)
                    conn.send(BatchDone(msg.batch_id, results, finished))
                elif isinstance(msg, Flush):
                    finished = [SealedPack.of(builder.finish())] if len(builder) else []
                    conn.send(Flushed(finished))
                else:  # Stop (or anything else: nothing more to do)
                    break
            except (BrokenPipeError, ConnectionResetError):
                raise
            except OSError as exc:
                # the spool file could not be written (disk full, I/O error):
                # the parent turns this into the backup's error; we are done
                conn.send(Failed(batch_id, exc.errno, builder.path or init.spool_dir))
                break
    except (EOFError, KeyboardInterrupt, BrokenPipeError, ConnectionResetError):
        pass
    finally:
        builder.discard()


def _seal(
    batch: SealBatch,
    key: crypto.Key,
    zstd: zstandard.ZstdCompressor | None,
    seen: IdSet,
    builder: PackBuilder,
    pack_size: int,
) -> tuple[list[HelperResult], list[SealedPack]]:
    results: list[HelperResult] = []
    payloads: list[bytes] = []
    known, remember = seen.functions()
    sha256 = hashlib.sha256
    # result index, blob id, ulen, size, changed of each blob to seal
    new: list[tuple[int, bytes, int, int, bool]] = []
    for path, size, mtime in zip(batch.paths, batch.sizes, batch.mtimes, strict=True):
        res = read_small(path, size, mtime)
        if type(res) is not FileRead or len(res.data) > SMALL_FILE:
            results.append(res)  # failures, and files that grew: the parent handles them
            continue
        data, changed = res
        if not data:
            results.append((None, 0, changed, 0))  # a Stored, as sent
            continue
        blob_id = sha256(data).digest()
        if known(blob_id):
            results.append((blob_id, len(data), changed, 0))
            continue
        remember(blob_id)
        payload, ulen = data, 0
        if zstd is not None:
            packed = zstd.compress(data)
            if len(packed) < len(data):
                payload, ulen = packed, len(data)
        payloads.append(payload)
        new.append((len(results), blob_id, ulen, len(data), changed))
        results.append(VANISHED)  # a place holder: its Stored follows once sealed
    finished: list[SealedPack] = []
    if payloads:
        sealed = crypto.encrypt_many(key, payloads)
        builder.add_many(
            [(BlobType.DATA, BlobId(n[1]), blob, n[2]) for n, blob in zip(new, sealed, strict=True)]
        )
        for (i, blob_id, _ulen, size, changed), blob in zip(new, sealed, strict=True):
            results[i] = (blob_id, size, changed, len(blob))
        # small packs are fine: the parent keeps every file of an unfinished
        # pack in memory until the pack is done, so bound it by blob count too
        if builder.size >= pack_size or len(builder) >= MAX_PACK_BLOBS:
            finished.append(SealedPack.of(builder.finish()))
    return results, finished


# ------------------------------------------------------- the parent's side
class Helpers:
    """A few helper processes, each fed batches of paths through a socket.

    Helpers are plain ``python -m desktop_agent.engine.smallfiles``
    processes (they import only what they need, about 25 MB each), talking
    over a socket pair they inherit by descriptor (POSIX), or over a
    loopback connection they open back to us with a one-time token (where
    descriptors cannot be passed: Windows). The key travels over that
    socket, never through the command line or the environment. Not
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
        self.outstanding = [0] * count  # messages sent and not yet answered, per helper
        self.room: list[int] = []  # per helper: bytes that can wait in its socket (send_room)
        init = Init((key.encrypt, key.mac_k, key.mac_r), compression, spool_dir, pack_size, known)
        try:
            for _ in range(count):
                conn, proc = spawn_helper()
                self.conns.append(conn)
                self.procs.append(proc)
                self.room.append(send_room(conn))
                conn.send(init)
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self.conns)

    def send(
        self, helper: int, batch_id: int, paths: list[bytes], sizes: list[int], mtimes: list[int]
    ) -> None:
        """Hand a batch to a helper: paths, with the size and mtime their listing
        showed (raises OSError/EOFError if it died)."""
        self.conns[helper].send(SealBatch(batch_id, paths, sizes, mtimes))
        self.outstanding[helper] += 1

    def receive(self, timeout: float | None = 0.0) -> list[tuple[int, FromHelper]]:
        """Answers that arrived (waits up to ``timeout``; None = until one does).

        Raises EOFError or OSError when a helper died.
        """
        busy = [c for c, n in zip(self.conns, self.outstanding, strict=True) if n > 0]
        if not busy:
            return []
        out = []
        for conn in wait(busy, timeout):
            assert isinstance(conn, Connection)
            i = self.conns.index(conn)
            msg: FromHelper = conn.recv()  # EOFError if the helper died
            self.outstanding[i] -= 1
            out.append((i, msg))
        return out

    def flush(self) -> list[FinishedPack]:
        """Finish every helper's open pack; returns the packs.

        Raises the StorageError a helper reported, and RuntimeError when one
        answers something else (a batch still outstanding).
        """
        packs: list[FinishedPack] = []
        for i, conn in enumerate(self.conns):
            conn.send(Flush())
            self.outstanding[i] += 1
        while any(self.outstanding):
            for _i, msg in self.receive(None):
                if isinstance(msg, Failed):
                    raise msg.error()
                if not isinstance(msg, Flushed):
                    raise RuntimeError("helper answered out of order")
                packs.extend(p.finished() for p in msg.packs)
        return packs

    def close(self, *, wait: bool = True) -> None:
        """Stop the helpers (and kill any that do not stop within 5 s).

        ``wait=False``: do not wait for them to exit (an interpreter's exit
        takes a few tens of milliseconds); a thread of ours reaps them.
        """
        for conn in self.conns:
            try:
                conn.send(Stop())
            except (OSError, EOFError, ValueError):
                pass
            conn.close()  # the Stop is in the socket: the helper reads it, then EOF
        procs, self.procs, self.conns = self.procs, [], []
        if wait:
            reap(procs)
        elif procs:
            threading.Thread(target=reap, args=(procs,), name="helper-reaper", daemon=True).start()


def reap(procs: list[subprocess.Popen[bytes]]) -> None:
    """Wait for helpers to exit; kill any that do not within 5 s."""
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# Where a child can inherit a socket by descriptor (POSIX), each helper gets one
# end of a socketpair; elsewhere (Windows: subprocess cannot pass descriptors)
# it connects back to a loopback port and proves it is the child we started
# with a one-time token handed over on its stdin.
PASS_FDS = os.name == "posix"
_CONNECT_TIMEOUT = 30.0


def spawn_helper() -> tuple[Connection, subprocess.Popen[bytes]]:
    """Start a helper process; its first message (:class:`~.helpermsg.Init`
    or :class:`~.indexparse.IndexInit`) says which work it does."""
    return _spawn_by_fd() if PASS_FDS else _spawn_over_loopback()


def _spawn_by_fd() -> tuple[Connection, subprocess.Popen[bytes]]:
    ours, theirs = socket.socketpair()
    _widen(ours)
    _widen(theirs)
    with theirs:
        proc = subprocess.Popen(
            [*_helper_command(), str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            env=_helper_env(),
        )
    return Connection(ours.detach()), proc


def _spawn_over_loopback() -> tuple[Connection, subprocess.Popen[bytes]]:
    token = os.urandom(32)
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(_CONNECT_TIMEOUT)
        host, port = server.getsockname()[:2]
        proc = subprocess.Popen(
            [*_helper_command(), "connect"], stdin=subprocess.PIPE, env=_helper_env()
        )
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
                    _widen(sock)
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
    _widen(sock)
    return Connection(sock.detach())


# What each end of a helper's socket asks the system to buffer. The walker
# may queue a helper as many bytes of work as the system granted (see
# send_room): more batches waiting means a helper runs dry less often while
# the walker stores a burst of directories.
SOCKET_BUFFER = 1 << 20


def _widen(sock: socket.socket) -> None:
    """Ask for :data:`SOCKET_BUFFER` both ways where the buffer is smaller
    (the system may grant less; a TCP buffer it already grows is left alone)."""
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            if sock.getsockopt(socket.SOL_SOCKET, option) < SOCKET_BUFFER:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        except OSError:
            pass  # the default stays: send_room tells the walker


def send_room(conn: Connection) -> int:
    """Bytes that can be sent on ``conn`` while its reader is busy, without blocking.

    Half the send buffer the system reports: Linux reports twice what it
    grants for data (the rest is its bookkeeping), others report the
    bytes; half is safe on both.
    """
    sock = socket.socket(fileno=conn.fileno())
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2
    finally:
        sock.detach()


# The package's own root, first on the helper's path: the helper runs the
# code its parent runs (an editable install finds it through a hook of site).
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_HELPER_MAIN = (
    "import sys; from desktop_agent.engine.smallfiles import helper_entry; "
    "helper_entry(sys.argv[1])"
)


def _helper_command() -> list[str]:
    if getattr(sys, "frozen", False):  # a packaged binary runs its own entry point
        return [sys.executable, "--engine-helper"]
    # -S: without site, whose .pth files (an editable install's import hook)
    # cost each helper 10-15 ms of start; the parent's module path instead
    return [sys.executable, "-S", "-c", _HELPER_MAIN]


def _helper_env() -> dict[str, str] | None:
    """The helper's environment: the parent's, with the parent's module path."""
    if getattr(sys, "frozen", False):
        return None
    paths = [_PACKAGE_ROOT, *(p for p in sys.path if p and p != _PACKAGE_ROOT)]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths))


# A helper's niceness above its parent's. The walker feeds the helpers: with
# the same priority, three busy processes on two cores share them evenly and
# the one that feeds the others falls behind (the helpers waited for work
# 22-28% of their time); with this the walker wins the CPU whenever it has
# work (50,000 small files on 2 cores: 1.68 -> 1.57 s). On a busy machine the
# helpers also give way to the user's programs.
HELPER_NICENESS = 5


def helper_entry(fd: int | str) -> None:
    """Entry point of a helper process: serve the parent on socket ``fd``
    (``"connect"``: connect back to the parent, see :func:`_spawn_over_loopback`)."""
    if hasattr(os, "nice"):
        try:
            os.nice(HELPER_NICENESS)
        except OSError:
            pass  # a policy may refuse it; the helper works as it is
    conn = _connect_back() if fd == "connect" else Connection(int(fd))
    try:
        msg = conn.recv()
    except EOFError:
        return
    if isinstance(msg, Init):
        _helper_main(conn, msg)
    else:
        from .indexparse import IndexInit, index_helper_main  # only this kind of helper needs it

        if isinstance(msg, IndexInit):
            index_helper_main(conn, msg)


if __name__ == "__main__":
    helper_entry(sys.argv[1])
