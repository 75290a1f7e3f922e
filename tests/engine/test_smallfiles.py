"""Small files: reading them, the helper processes, and the messages between us and them."""

from __future__ import annotations

import errno
import os
import pickle
import socket
import sys
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from support import write

from desktop_agent.engine import crypto, smallfiles
from desktop_agent.engine.errors import StorageError
from desktop_agent.engine.helpermsg import (
    BATCH_BYTES_PER_FILE,
    VANISHED,
    BatchDone,
    Failed,
    FileRead,
    Flush,
    Flushed,
    Init,
    ReadFailed,
    SealBatch,
    SealedPack,
    Stop,
    Stored,
    Vanished,
)
from desktop_agent.engine.ids import BlobId, BlobType, PackId
from desktop_agent.engine.pack import FinishedPack, PackedBlob, parse_pack_tail
from desktop_agent.engine.smallfiles import SMALL_FILE, Helpers, read_small

# ------------------------------------------------------------------ reading


def listed(*paths: Path) -> tuple[list[bytes], list[int], list[int]]:
    """Paths with the size and mtime their lstat shows now, as the walker sends them."""
    out: tuple[list[bytes], list[int], list[int]] = ([], [], [])
    for p in paths:
        try:
            s = os.lstat(p)
            size, mtime = s.st_size, s.st_mtime_ns
        except FileNotFoundError:
            size, mtime = 0, 0
        out[0].append(os.fsencode(p))
        out[1].append(size)
        out[2].append(mtime)
    return out


def read_listed(path: Path) -> object:
    (p,), (size,), (mtime,) = listed(path)
    return read_small(p, size, mtime)


def test_read_small_reads_a_whole_file(tmp_path: Path) -> None:
    f = write(tmp_path / "f.txt", b"hello\n" * 100, 1_600_000_000_000_000_000)
    assert read_listed(f) == FileRead(b"hello\n" * 100, False)
    empty = write(tmp_path / "empty", b"")
    assert read_listed(empty) == FileRead(b"", False)


def test_a_file_that_differs_from_its_listing_is_marked_changed(tmp_path: Path) -> None:
    """One fstat after reading, against the size and mtime the listing showed:
    a file written between the listing and the read is a change."""
    f = write(tmp_path / "f.txt", b"hello\n", 1_600_000_000_000_000_000)
    (p,), (size,), (mtime,) = listed(f)
    assert read_small(p, size, mtime) == FileRead(b"hello\n", False)
    assert read_small(p, size, mtime + 1) == FileRead(b"hello\n", True)  # touched since
    write(f, b"hullo\n", 1_600_000_000_000_000_000)  # same size and mtime: nothing to see
    assert read_small(p, size, mtime) == FileRead(b"hullo\n", False)
    write(f, b"hi\n", 1_600_000_000_000_000_000)  # shorter, mtime put back
    assert read_small(p, size, mtime) == FileRead(b"hi\n", True)


def test_what_is_no_longer_a_regular_file_has_vanished(tmp_path: Path) -> None:
    write(tmp_path / "target", b"x")
    os.symlink("target", tmp_path / "link")  # never followed
    os.mkfifo(tmp_path / "fifo")  # not opened for long: O_NONBLOCK
    (tmp_path / "dir").mkdir()
    for name in ("gone", "link", "fifo", "dir", "target/below"):
        # as if each had been a regular file of 10 bytes when it was listed
        assert read_small(os.fsencode(tmp_path / name), 10, 1) is VANISHED, name


def test_an_unreadable_file_is_a_failure_with_the_reason(tmp_path, monkeypatch) -> None:
    f = write(tmp_path / "secret", b"x")
    real_open = os.open

    def refuse(path, flags, *args, **kw):  # type: ignore[no-untyped-def]
        if os.fsencode(path) == os.fsencode(f):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", refuse)
    assert read_listed(f) == ReadFailed("Permission denied")


def test_a_file_that_grows_while_it_is_read_is_read_whole_and_marked(tmp_path, monkeypatch):
    f = write(tmp_path / "grows.log", b"first line\n", 1_600_000_000_000_000_000)
    real_read = os.read
    grown = []

    def read(fd: int, n: int) -> bytes:
        if not grown:  # another program appends between the listing and our read
            grown.append(True)
            with open(f, "ab") as fh:
                fh.write(b"second line\n" * 1000)
        return real_read(fd, n)

    (p,), (size,), (mtime,) = listed(f)
    monkeypatch.setattr(os, "read", read)
    res = read_small(p, size, mtime)
    assert res == FileRead(b"first line\n" + b"second line\n" * 1000, True)


# ------------------------------------------------------------------ messages

PACK = FinishedPack(
    PackId(b"\x01" * 32),
    "/spool/pack-x",
    [
        PackedBlob(BlobType.DATA, BlobId(b"\x02" * 32), 0, 100, 0),
        PackedBlob(BlobType.DATA, BlobId(b"\x03" * 32), 100, 60, 500),
    ],
    1234,
)

MESSAGES = [
    Init((b"e" * 32, b"k" * 16, b"r" * 16), True, "/spool", 1 << 24, b"\x05" * 64),
    SealBatch(7, [b"/a", b"/b\xff"], [10, 524_288], [1_700_000_000_123_456_789, -1]),
    Flush(),
    Stop(),
    BatchDone(
        7,
        [
            (b"\x02" * 32, 100, False, 132),  # a Stored, as sent: a plain tuple
            (None, 0, True, 0),
            VANISHED,
            ReadFailed("Permission denied"),
            FileRead(b"grew" * 100, True),
        ],
        [SealedPack.of(PACK)],
    ),
    Flushed([]),
    Failed(None, errno.ENOSPC, "/spool"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=[type(m).__name__ for m in MESSAGES])
def test_messages_cross_a_socket_as_themselves(msg: object) -> None:
    a, b = socket.socketpair()
    with Connection(a.detach()) as ours, Connection(b.detach()) as theirs:
        ours.send(msg)
        got = theirs.recv()
    assert type(got) is type(msg) and got == msg
    if isinstance(msg, BatchDone):
        assert [type(r) for r in got.results] == [type(r) for r in msg.results]
        assert got.results[2] is not None and isinstance(got.results[2], Vanished)


def test_messages_are_pickled_by_their_real_module_name() -> None:
    """A helper runs smallfiles as __main__; the messages must not live there."""
    for msg in MESSAGES:
        assert type(msg).__module__ == "desktop_agent.engine.helpermsg"
        assert b"__main__" not in pickle.dumps(msg)


def test_a_sealed_pack_round_trips_into_engine_types() -> None:
    sealed = SealedPack.of(PACK)
    assert sealed.blobs[1] == (int(BlobType.DATA), b"\x03" * 32, 100, 60, 500)
    assert sealed.finished() == PACK


def test_a_reported_failure_reads_as_the_storage_error_we_would_raise() -> None:
    err = Failed(3, errno.ENOSPC, "/repo/tmp/pack-x").error()
    assert isinstance(err, StorageError)
    assert (
        str(err) == "the backup destination is full (no space left) while writing /repo/tmp/pack-x"
    )
    assert "error" in str(Failed(None, None, "/x").error())


# ------------------------------------------------------------------ helper processes


@pytest.fixture(params=[True, False], ids=["socketpair", "loopback"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Helpers get their socket by descriptor (POSIX) or connect back over loopback
    with a one-time token (where descriptors cannot be passed): both run here."""
    monkeypatch.setattr(smallfiles, "PASS_FDS", request.param)
    return bool(request.param)


def _unseal(key: crypto.Key, pack: FinishedPack) -> dict[bytes, bytes]:
    raw = Path(pack.path).read_bytes()
    assert len(raw) == pack.size
    out = {}
    for b in parse_pack_tail(key, raw, len(raw)):
        plain = crypto.decrypt(key, raw[b.offset : b.offset + b.length])
        if b.uncompressed_length:
            import zstandard

            plain = zstandard.ZstdDecompressor().decompress(plain, b.uncompressed_length)
        assert crypto.sha256(plain) == b.id
        out[b.id] = plain
    return out


def test_a_helper_seals_a_batch_into_a_pack_of_its_own(tmp_path, transport) -> None:
    src = tmp_path / "src"
    known = b"already in the repository\n"
    files = {
        "a.txt": b"alpha\n" * 50,
        "b.txt": b"bravo\n",
        "same-as-a.txt": b"alpha\n" * 50,
        "known.txt": known,
        "empty": b"",
        "large.bin": b"small when it was listed\n",
    }
    for name, data in files.items():
        write(src / name, data)
    batch = listed(*(src / n for n in files), src / "missing")
    files["large.bin"] = write(src / "large.bin", os.urandom(SMALL_FILE + 1)).read_bytes()
    spool = tmp_path / "spool"
    spool.mkdir()
    key = crypto.new_random_key()
    helpers = Helpers(1, key, True, str(spool), 1 << 24, crypto.sha256(known))
    try:
        helpers.send(0, 1, *batch)
        ((i, done),) = helpers.receive(None)
        assert i == 0 and type(done) is BatchDone and done.batch_id == 1 and done.packs == []
        *sealed, large, missing = done.results
        assert all(type(r) is tuple for r in sealed)  # Stored fields, sent as plain tuples
        a, b, same, k, empty = (Stored(*r) for r in sealed)
        assert a.blob_id == crypto.sha256(files["a.txt"]) and a.stored > 0
        assert b.size == 6 and b.stored > 0
        assert same.blob_id == a.blob_id
        assert same.stored == 0  # the duplicate is sealed once
        assert k.stored == 0  # known to the repository
        assert empty == Stored(None, 0, False, 0)
        assert large == FileRead(files["large.bin"], True)  # it grew: for the parent
        assert isinstance(missing, Vanished)
        (pack,) = helpers.flush()
    finally:
        helpers.close()
    assert helpers.procs == []
    blobs = _unseal(key, pack)
    assert blobs == {crypto.sha256(d): d for d in (files["a.txt"], files["b.txt"])}
    assert {b.id for b in pack.blobs} == set(blobs)


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="POSIX priorities")
def test_helpers_run_below_the_walker_s_priority(tmp_path, transport) -> None:
    """The walker that feeds them wins the CPU when both want it."""
    from desktop_agent.engine.smallfiles import HELPER_NICENESS

    write(tmp_path / "f.txt", b"data\n")
    helpers = Helpers(2, crypto.new_random_key(), True, str(tmp_path), 1 << 24, b"")
    try:
        for i in range(2):
            helpers.send(i, i + 1, *listed(tmp_path / "f.txt"))
        answers = 0
        while answers < 2:  # both have started (and set their priority first)
            answers += len(helpers.receive(None))
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        for proc in helpers.procs:
            assert os.getpriority(os.PRIO_PROCESS, proc.pid) == min(19, ours + HELPER_NICENESS)
    finally:
        helpers.close()


def _socket_pair(kind: str) -> tuple[socket.socket, socket.socket]:
    if kind == "socketpair":
        return socket.socketpair()
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname()[:2])
        accepted, _ = server.accept()
    return accepted, client


@pytest.mark.parametrize("kind", ["socketpair", "loopback"])
def test_the_room_of_a_helper_s_socket_takes_that_many_bytes_of_batches_unread(kind) -> None:
    """The walker queues a helper at most ``send_room`` bytes of batches (as the
    pool counts them: a path's length and BATCH_BYTES_PER_FILE): all of it must fit
    while the helper reads nothing, or the walker could block in send while
    the helper blocks sending an answer. Widening never makes it smaller;
    on Linux a socket pair gets the buffer asked for, as far as the system's
    limit allows."""
    plain, peer = _socket_pair(kind)
    default = smallfiles.send_room(Connection(plain.detach()))
    ours, theirs = _socket_pair(kind)
    smallfiles._widen(ours)
    smallfiles._widen(theirs)
    conn = Connection(ours.detach())
    try:
        room = smallfiles.send_room(conn)
        assert room >= default
        limit = Path("/proc/sys/net/core/wmem_max")
        if kind == "socketpair" and limit.exists():
            assert room == min(smallfiles.SOCKET_BUFFER, int(limit.read_text()))
        os.set_blocking(conn.fileno(), False)  # a full socket raises instead of waiting
        paths = [b"/home/someone/" + b"x" * 86 for _ in range(128)]
        sizes = [SMALL_FILE] * 128
        mtimes = [-(1 << 63) * 10**9] * 128  # the longest a time_t in seconds can give
        nbytes = sum(len(p) for p in paths) + BATCH_BYTES_PER_FILE * len(paths)
        assert len(pickle.dumps(SealBatch(0, paths, sizes, mtimes), protocol=5)) <= nbytes
        for batch in range(room // nbytes):
            conn.send(SealBatch(batch, paths, sizes, mtimes))
    finally:
        conn.close()
        theirs.close()
        peer.close()


def test_a_helper_that_cannot_write_its_spool_reports_the_error(tmp_path, transport) -> None:
    write(tmp_path / "f.txt", b"data\n")
    helpers = Helpers(1, crypto.new_random_key(), True, str(tmp_path / "no-such-dir"), 1 << 24, b"")
    try:
        helpers.send(0, 1, *listed(tmp_path / "f.txt"))
        ((_i, msg),) = helpers.receive(None)
        assert type(msg) is Failed and msg.batch_id == 1 and msg.errno == errno.ENOENT
        assert str(tmp_path / "no-such-dir") in str(msg.error())
        with pytest.raises((EOFError, OSError)):  # and then it is gone
            helpers.flush()
    finally:
        helpers.close()


def test_a_helper_connecting_back_must_bring_its_token(tmp_path, monkeypatch):
    """Over loopback, whoever connects first does not get the helper's place (and
    with it the key): only the connection that sends the one-time token does."""
    script = tmp_path / "impostor_then_helper.py"
    script.write_text(
        "import socket, sys\n"
        "from multiprocessing.connection import Connection\n"
        "host, port, token = sys.stdin.readline().split()\n"
        "rogue = socket.create_connection((host, int(port)))\n"
        "rogue.sendall(b'x' * 32)\n"
        "assert rogue.recv(1) == b''  # refused: closed without a word\n"
        "sock = socket.create_connection((host, int(port)))\n"
        "sock.sendall(bytes.fromhex(token))\n"
        "conn = Connection(sock.detach())\n"
        "conn.send(('echo', conn.recv()))\n"
    )
    monkeypatch.setattr(smallfiles, "_helper_command", lambda: [sys.executable, str(script)])
    conn, proc = smallfiles._spawn_over_loopback()
    try:
        conn.send("hello")
        assert conn.recv() == ("echo", "hello")
    finally:
        conn.close()
        assert proc.wait(timeout=30) == 0
