"""The REST backend against real servers: ``rclone serve restic`` and a rest-server double.

Every test talks HTTP to a server on 127.0.0.1 that it starts and stops:
rclone (Debian's 1.60, the real thing) and :mod:`restserver` (rest-server's
rules: no overwrite, hash check, quota, append-only). restic 0.14 is the
oracle for interop: it reads what we write through the same URL, and we
read what it writes. Network faults come from :mod:`faultproxy` (resets,
a dead link, refused connections) and from the servers themselves (5xx,
a lost answer, 401, 507).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from remotesupport import data_blobs, many_packs_tree, restored
from restserver import RestServer
from storage_suite import *  # noqa: F403 - the shared suite, run against the fixture below
from storage_suite import name_of
from support import FAST_KDF, PASSWORD, signature, write

from desktop_agent.config.location import parse_location
from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.errors import IntegrityError, NotFound, StorageError
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.restore import RestoreOptions, restore
from desktop_agent.engine.storage import (
    AuthError,
    FileType,
    NetworkError,
    RetryPolicy,
    Storage,
    open_storage,
)
from desktop_agent.engine.storage.rest import RestStorage

RCLONE = shutil.which("rclone")
# a server that is gone for longer than 2 s is reported; tries come quickly
FAST_RETRY = RetryPolicy(give_up_after=2, base_delay=0.05, max_delay=0.2)
SHORT = {"connect_timeout": 1.0, "read_timeout": 0.5, "write_timeout": 0.5, "pool_timeout": 1.0}


# ------------------------------------------------------------------ servers


class Rclone:
    """``rclone serve restic`` over a folder, on a port of its choosing."""

    def __init__(self, root: Path, *args: str) -> None:
        if RCLONE is None:
            if os.environ.get("CI"):
                pytest.fail("rclone is required in CI (make test installs it)")
            pytest.skip("rclone is not installed")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, RCLONE_CONFIG=str(root.parent / "no-rclone.conf"))
        self.proc = subprocess.Popen(
            [RCLONE, "serve", "restic", "--addr", "127.0.0.1:0", *args, str(root)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.log: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(20) or not self.url:
            self.stop()
            raise AssertionError("rclone serve restic did not start:\n" + "".join(self.log))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:  # rclone logs here; keep the pipe empty
            self.log.append(line)
            if not self.url and "Serving restic REST API on " in line:
                self.url = line.split("Serving restic REST API on ", 1)[1].strip().rstrip("/")
                self._ready.set()
        self._ready.set()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="module")
def shared_rclone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rclone]:
    """One rclone for the tests that only need a repository of their own on it."""
    server = Rclone(tmp_path_factory.mktemp("rclone") / "served")
    yield server
    server.stop()


@pytest.fixture
def rclone(tmp_path: Path) -> Iterator[Callable[..., Rclone]]:
    """Start rclone servers of this test only (extra arguments: ``--user``...)."""
    started: list[Rclone] = []

    def start(*args: str) -> Rclone:
        server = Rclone(tmp_path / f"rclone{len(started)}", *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def rest_server(tmp_path: Path) -> Iterator[Callable[..., RestServer]]:
    """Start rest-server doubles of this test only (keyword arguments as RestServer's)."""
    started: list[RestServer] = []

    def start(**kwargs: object) -> RestServer:
        server = RestServer(tmp_path / f"restserver{len(started)}", **kwargs).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def connect(tmp_path: Path) -> Iterator[Callable[..., RestStorage]]:
    """``connect(url, **kwargs)``: a RestStorage on ``url`` (closed after the test)."""
    opened: list[RestStorage] = []

    def make(url: str, **kwargs: object) -> RestStorage:
        kwargs.setdefault("spool_dir", str(tmp_path / "spool"))
        store = RestStorage(parse_location(f"rest:{url}"), **kwargs)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def unique(prefix: str) -> str:
    return f"/{prefix}-{os.urandom(5).hex()}"


# ------------------------------------------------------------------ the shared suite


@pytest.fixture(params=["rclone", "restserver"])
def storage(
    request: pytest.FixtureRequest,
    shared_rclone: Rclone,
    rest_server: Callable[..., RestServer],
    connect: Callable[..., RestStorage],
) -> Iterator[Storage]:
    """The REST backend on each server, a new repository path each time."""
    if request.param == "rclone":
        url = shared_rclone.url + unique("suite")
    else:
        # The suite stores one snapshot under a name that is not its hash
        # (test_save_joins_parts_of_any_buffer_type), which a server that
        # checks every type (rest-server without --no-verify-upload) refuses:
        # this one checks packs only.
        url = rest_server(verify=("data",)).url + "/repo"
    store = connect(url, retry=FAST_RETRY)
    store.create_layout()
    yield store


def test_the_rest_server_double_stores_restics_layout(
    tmp_path: Path, rest_server: Callable[..., RestServer], connect: Callable[..., RestStorage]
) -> None:
    server = rest_server()
    store = connect(server.url + "/nested/repo")
    store.create_layout()
    root = server.root / "nested" / "repo"
    assert sorted(p.name for p in (root / "data").iterdir()) == [f"{i:02x}" for i in range(256)]
    pack = os.urandom(3000)
    store.save(FileType.PACK, name_of(pack), [pack])
    store.save(FileType.KEY, name_of(b"key"), [b"key"])
    store.save(FileType.CONFIG, "", [b"config"])
    assert (root / "data" / name_of(pack)[:2] / name_of(pack)).read_bytes() == pack
    assert (root / "keys" / name_of(b"key")).read_bytes() == b"key"
    assert (root / "config").read_bytes() == b"config"
    assert store.exists()
    store.create_layout()  # harmless on an existing repository
    assert store.load(FileType.CONFIG, "") == b"config"


def test_many_threads_save_and_load_at_once(
    shared_rclone: Rclone, connect: Callable[..., RestStorage], tmp_path: Path
) -> None:
    """The engine uploads from a thread pool and reads from several workers."""
    store = connect(shared_rclone.url + unique("threads"))
    store.create_layout()
    spool = Path(store.spool_dir())
    assert spool.is_dir() and (spool.stat().st_mode & 0o777) == 0o700
    rng = random.Random(3)
    packs = [rng.randbytes(rng.randrange(1, 300_000)) for _ in range(24)]

    def upload(data: bytes) -> None:
        path = spool / f"pack-{name_of(data)}"
        path.write_bytes(data)
        store.save_file(FileType.PACK, name_of(data), str(path))

    def read(data: bytes) -> bool:
        name = name_of(data)
        mid = len(data) // 2
        return (
            store.load(FileType.PACK, name) == data
            and store.load(FileType.PACK, name, mid, len(data) - mid) == data[mid:]
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, packs))
        assert all(pool.map(read, packs))
    assert sorted(store.list(FileType.PACK)) == sorted((name_of(d), len(d)) for d in packs)
    assert list(spool.iterdir()) == []
    assert store.upload_parallelism == 4


def test_a_v1_listing_gets_its_sizes_by_head(
    rest_server: Callable[..., RestServer], connect: Callable[..., RestStorage]
) -> None:
    server = rest_server(v1_only=True)
    store = connect(server.url)
    store.create_layout()
    datas = [b"one", b"two!", b""]
    for d in datas:
        store.save(FileType.INDEX, name_of(d), [d])
    (server.root / "index" / "README").write_text("not a repository file")
    assert sorted(store.list(FileType.INDEX)) == sorted((name_of(d), len(d)) for d in datas)
    assert server.count("HEAD", "/index/") == 3


def test_range_reads_and_size_limits(
    rest_server: Callable[..., RestServer], connect: Callable[..., RestStorage]
) -> None:
    server = rest_server()
    store = connect(server.url)
    store.create_layout()
    data = os.urandom(50_000)
    store.save(FileType.PACK, name_of(data), [data])
    name = name_of(data)
    assert server.count("GET") == 0
    assert store.load(FileType.PACK, name, 49_990, 10) == data[-10:]
    assert server.count("GET") == 1 and server.requests[-1][2] == 206
    with pytest.raises(StorageError, match="beyond end"):
        store.load(FileType.PACK, name, 50_000, 1)  # 416 from the server
    with pytest.raises(StorageError, match="shorter than expected"):
        store.load(FileType.PACK, name, 49_999, 2)
    assert store.load(FileType.PACK, name, max_size=50_000) == data
    with pytest.raises(IntegrityError, match="more than the 49999"):
        store.load(FileType.PACK, name, max_size=49_999)
    with pytest.raises(NotFound):
        store.load(FileType.PACK, "00" * 32, 5, 0)
    assert store.retrier.retries == 0


# ------------------------------------------------------------------ answers that say no


def test_an_upload_that_does_not_match_its_name_is_refused_once(
    rest_server: Callable[..., RestServer], connect: Callable[..., RestStorage]
) -> None:
    server = rest_server()
    store = connect(server.url, retry=FAST_RETRY)
    store.create_layout()
    with pytest.raises(StorageError) as err:
        store.save(FileType.SNAPSHOT, name_of(b"right"), [b"wrong"])
    message = str(err.value)
    assert "rejected the request (400 Bad Request: file content does not match hash)" in message
    assert "\n" not in message
    assert store.retrier.retries == 0 and server.count("POST", "/snapshots/") == 1
    assert list(store.list(FileType.SNAPSHOT)) == []


@pytest.mark.parametrize("server_kind", ["rclone", "restserver"])
def test_a_wrong_password_is_said_in_one_line_and_not_retried(
    server_kind: str,
    rclone: Callable[..., Rclone],
    rest_server: Callable[..., RestServer],
    connect: Callable[..., RestStorage],
) -> None:
    if server_kind == "rclone":
        url = rclone("--user", "alice", "--pass", "s3cret-right").url
    else:
        url = rest_server(user="alice", password="s3cret-right").url
    good = connect(url, user="alice", password="s3cret-right", retry=FAST_RETRY)
    good.create_layout()
    good.save(FileType.CONFIG, "", [b"config"])
    assert good.exists()

    bad = connect(url, user="alice", password="s3cret-wrong", retry=FAST_RETRY)
    started = time.monotonic()
    with pytest.raises(AuthError) as err:
        bad.exists()
    assert time.monotonic() - started < 1
    message = str(err.value)
    assert message == (
        f"the REST server at rest:{url} refused the user name or password (401 Unauthorized); "
        "check the REST user and password of this repository"
    )
    assert bad.retrier.retries == 0
    for op in (
        lambda: bad.load(FileType.CONFIG, ""),
        lambda: bad.save(FileType.KEY, name_of(b"k"), [b"k"]),
        lambda: list(bad.list(FileType.SNAPSHOT)),
    ):
        with pytest.raises(AuthError, match="refused the user name or password"):
            op()
    anonymous = connect(url, retry=FAST_RETRY)
    with pytest.raises(AuthError, match="wants a user name and password .* none was given"):
        anonymous.load(FileType.CONFIG, "")
    assert bad.retrier.retries == anonymous.retrier.retries == 0


def test_open_storage_takes_the_password_from_the_url_and_never_shows_it(
    rclone: Callable[..., Rclone], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = rclone("--user", "bob", "--pass", "pw-in-url")
    host = server.url.removeprefix("http://")
    monkeypatch.delenv("RESTIC_REST_USERNAME", raising=False)
    monkeypatch.delenv("RESTIC_REST_PASSWORD", raising=False)

    def rest_backend(text: str) -> RestStorage:
        store = open_storage(text, cache_root=str(tmp_path / "cache"))
        backend = getattr(store, "backend", store)  # under the index cache
        assert isinstance(backend, RestStorage)
        opened.append(backend)
        return backend

    opened: list[RestStorage] = []
    try:
        store = rest_backend(f"rest:http://bob:pw-in-url@{host}/repo")
        store.create_layout()
        assert not store.exists()
        assert store.location == f"rest:http://bob:***@{host}/repo"
        wrong = rest_backend(f"rest:http://bob:nope@{host}/repo")
        with pytest.raises(AuthError) as err:
            wrong.exists()
        assert "nope" not in str(err.value) and "bob:***@" in str(err.value)
        monkeypatch.setenv("RESTIC_REST_USERNAME", "bob")
        monkeypatch.setenv("RESTIC_REST_PASSWORD", "pw-in-url")
        assert not rest_backend(f"rest:{server.url}/repo").exists()
    finally:
        for s in opened:
            s.close()


def test_a_full_server_is_said_at_once(
    rest_server: Callable[..., RestServer], connect: Callable[..., RestStorage]
) -> None:
    server = rest_server(quota=100_000)
    store = connect(server.url, retry=FAST_RETRY)
    store.create_layout()
    small = os.urandom(60_000)
    store.save(FileType.PACK, name_of(small), [small])
    big = os.urandom(60_000)
    with pytest.raises(StorageError) as err:
        store.save(FileType.PACK, name_of(big), [big])
    assert str(err.value) == (
        f"the REST server at rest:{server.url} is out of space (507 Insufficient Storage) "
        f"while saving data/{name_of(big)}; free space or raise the quota on the server"
    )
    assert store.retrier.retries == 0
    assert server.count("POST", "/data/") == 2
    assert list(store.list(FileType.PACK)) == [(name_of(small), len(small))]


def test_an_append_only_server_refuses_deletes_but_of_locks(
    rest_server: Callable[..., RestServer], connect: Callable[..., RestStorage]
) -> None:
    server = rest_server(append_only=True)
    store = connect(server.url, retry=FAST_RETRY)
    store.create_layout()
    store.save(FileType.SNAPSHOT, name_of(b"s"), [b"s"])
    store.save(FileType.LOCK, name_of(b"l"), [b"l"])
    with pytest.raises(
        AuthError, match=r"refused permission while deleting snapshots/.*append-only"
    ):
        store.remove(FileType.SNAPSHOT, name_of(b"s"))
    store.remove(FileType.LOCK, name_of(b"l"))
    assert list(store.list(FileType.LOCK)) == []
    assert list(store.list(FileType.SNAPSHOT)) == [(name_of(b"s"), 1)]


def test_a_file_of_another_size_under_the_same_name_is_not_taken_for_ours(
    rest_server: Callable[..., RestServer], connect: Callable[..., RestStorage]
) -> None:
    server = rest_server()
    store = connect(server.url, retry=FAST_RETRY)
    store.create_layout()
    data = os.urandom(1000)
    torn = server.root / "data" / name_of(data)[:2] / name_of(data)
    torn.write_bytes(data[:10])  # a torn file another tool left behind
    with pytest.raises(StorageError, match="holds data/.* with 10 bytes instead of 1000"):
        store.save(FileType.PACK, name_of(data), [data])
    assert store.retrier.retries == 0


# ------------------------------------------------------------------ network faults


def test_5xx_answers_are_retried(
    rest_server: Callable[..., RestServer], connect: Callable[..., RestStorage]
) -> None:
    server = rest_server()
    store = connect(server.url, retry=FAST_RETRY)
    store.create_layout()
    data = os.urandom(10_000)
    server.fail_next(2, 503)
    store.save(FileType.PACK, name_of(data), [data])
    assert store.retrier.retries == 2
    assert server.count("POST", "/data/", 503) == 2 and server.count("POST", "/data/", 200) == 1
    server.fail_next(1, 500)
    assert store.load(FileType.PACK, name_of(data)) == data
    server.fail_next(1, 429)
    assert list(store.list(FileType.PACK)) == [(name_of(data), len(data))]
    assert store.retrier.retries == 4


def test_a_503_from_the_network_is_retried(
    rest_server: Callable[..., RestServer], connect: Callable[..., RestStorage]
) -> None:
    """The same through the fault proxy (a load balancer answering for a restarting server)."""
    server = rest_server()
    with FaultProxy("127.0.0.1", server.port) as proxy:
        store = connect(f"http://127.0.0.1:{proxy.port}", retry=FAST_RETRY)
        store.create_layout()
        proxy.fail_next(2, 503)
        store.save(FileType.INDEX, name_of(b"i"), [b"i"])
        assert proxy.failed_requests == 2 and store.retrier.retries == 2
    assert server.count("POST", "/index/") == 1


def test_an_upload_whose_answer_was_lost_is_accepted_once_stored(
    rest_server: Callable[..., RestServer], connect: Callable[..., RestStorage]
) -> None:
    server = rest_server()
    store = connect(server.url, retry=FAST_RETRY)
    store.create_layout()
    data = os.urandom(200_000)
    spooled = Path(store.spool_dir()) / "pack-lost-answer"
    spooled.write_bytes(data)
    server.drop_after_store(1)
    store.save_file(FileType.PACK, name_of(data), str(spooled))
    path = f"/data/{name_of(data)}"
    # stored but unanswered, refused as existing on the retry, found by HEAD
    assert [(m, s) for m, p, s in server.requests if p == path] == [
        ("POST", 0),
        ("POST", 403),
        ("HEAD", 200),
    ]
    assert store.retrier.retries == 1
    assert not spooled.exists()
    assert store.load(FileType.PACK, name_of(data)) == data
    # the same for a small file, and saving an existing file again is harmless
    server.drop_after_store(1)
    store.save(FileType.KEY, name_of(b"key"), [b"key"])
    store.save(FileType.KEY, name_of(b"key"), [b"key"])
    assert list(store.list(FileType.KEY)) == [(name_of(b"key"), 3)]


def test_a_server_that_is_gone_gives_a_network_error_in_bounded_time(
    rclone: Callable[..., Rclone], connect: Callable[..., RestStorage]
) -> None:
    server = rclone()
    store = connect(server.url + "/repo", retry=FAST_RETRY, **SHORT)
    store.create_layout()
    store.save(FileType.CONFIG, "", [b"config"])
    server.stop()
    started = time.monotonic()
    with pytest.raises(NetworkError) as err:
        store.load(FileType.CONFIG, "")
    took = time.monotonic() - started
    assert 2 <= took < 5, took
    message = str(err.value)
    assert message.startswith(f"network: rest:{server.url}/repo could not be reached for 2 s")
    assert "cannot connect" in message and "while reading config" in message
    assert "\n" not in message
    assert store.retrier.retries >= 3


def test_a_dead_link_is_abandoned_after_the_timeout(
    rest_server: Callable[..., RestServer], connect: Callable[..., RestStorage]
) -> None:
    server = rest_server()
    with FaultProxy("127.0.0.1", server.port) as proxy:
        store = connect(f"http://127.0.0.1:{proxy.port}", retry=FAST_RETRY, **SHORT)
        store.create_layout()
        data = os.urandom(100_000)
        store.save(FileType.PACK, name_of(data), [data])
        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(
            NetworkError, match=r"^network: .* \(no answer within the read timeout\)"
        ):
            store.load(FileType.PACK, name_of(data))
        took = time.monotonic() - started
        assert 2 <= took < 5, took
        # uploads too: the request is stuck while sending or waiting for the answer
        with pytest.raises(NetworkError, match="^network: .* while saving data/"):
            store.save(FileType.PACK, name_of(data[:-1]), [data[:-1]])
        proxy.pass_through()
        assert store.load(FileType.PACK, name_of(data)) == data


def test_an_untrusted_certificate_is_refused_at_once(
    tmp_path: Path,
    rclone: Callable[..., Rclone],
    rest_server: Callable[..., RestServer],
    connect: Callable[..., RestStorage],
) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    server = rclone("--cert", str(cert), "--key", str(key))
    url = server.url
    assert url.startswith("https://")
    strict = connect(url + "/repo", retry=FAST_RETRY)
    with pytest.raises(
        StorageError, match=r"TLS certificate of the REST server at .* is not trusted"
    ):
        strict.exists()
    assert strict.retrier.retries == 0
    trusting = connect(url + "/repo", retry=FAST_RETRY, verify=str(cert))
    trusting.create_layout()
    assert not trusting.exists()
    plain = connect(url.replace("https://", "http://") + "/repo", retry=FAST_RETRY)
    with pytest.raises(StorageError, match=r"rejected the request \(400 Bad Request: Client sent"):
        plain.load(FileType.CONFIG, "")
    not_tls = connect(rest_server().url.replace("http://", "https://"), retry=FAST_RETRY)
    with pytest.raises(StorageError, match=r"could not talk TLS .* does it serve https"):
        not_tls.exists()
    assert plain.retrier.retries == not_tls.retrier.retries == 0


# ------------------------------------------------------------------ restic interop


def small_tree(root: Path, seed: int = 1) -> Path:
    """A few MB of files: large and small, nested, a symlink, an awkward name."""
    rng = random.Random(seed)
    write(root / "big.bin", rng.randbytes(2_500_000))
    write(root / "text.txt", b"hello REST\n" * 5000)
    for i in range(20):
        write(root / "many" / f"f{i:02}", rng.randbytes(1000 + i))
    write(root / "dir" / "Grüße.txt", b"unicode\n")
    write(root / "empty", b"")
    os.symlink("text.txt", root / "link")
    return root


def test_restic_reads_what_we_write(
    tmp_path: Path, shared_rclone: Rclone, connect: Callable[..., RestStorage], restic
) -> None:
    url = shared_rclone.url + unique("ours")
    src = small_tree(tmp_path / "src")
    repo = Repository.init(connect(url), PASSWORD, kdf_params=FAST_KDF)
    result = backup(repo, BackupOptions(sources=[str(src)]))
    assert result.skipped == ()

    location = f"rest:{url}"
    restic(location, "check", "--read-data")
    snaps = json.loads(restic(location, "snapshots", "--json").stdout)
    assert [s["id"] for s in snaps] == [result.snapshot.id.hex()]
    target = tmp_path / "restic-restore"
    restic(location, "restore", "latest", "--target", str(target))
    assert signature(restored(target, src)) == signature(src)


def test_we_read_and_extend_what_restic_writes(
    tmp_path: Path, shared_rclone: Rclone, connect: Callable[..., RestStorage], restic
) -> None:
    url = shared_rclone.url + unique("restics")
    location = f"rest:{url}"
    src = small_tree(tmp_path / "src", seed=2)
    restic(location, "init")
    restic(location, "backup", str(src))

    repo = Repository.open(connect(url), PASSWORD)
    snaps = repo.list_snapshots()
    assert len(snaps) == 1 and list(snaps[0].paths) == [str(src)]
    target = tmp_path / "ours"
    res = restore(repo, snaps[0], RestoreOptions(target=str(target)))
    assert res.errors == ()
    assert signature(restored(target, src)) == signature(src)

    write(src / "new.bin", os.urandom(300_000))
    (src / "text.txt").write_bytes(b"changed\n")
    second = backup(Repository.open(connect(url), PASSWORD), BackupOptions(sources=[str(src)]))
    assert second.summary.files_unmodified > 0
    restic(location, "check", "--read-data")
    listed = json.loads(restic(location, "snapshots", "--json").stdout)
    assert second.snapshot.id.hex() in {s["id"] for s in listed} and len(listed) == 2
    again = tmp_path / "restic-restore"
    restic(location, "restore", second.snapshot.id.hex(), "--target", str(again))
    assert signature(restored(again, src)) == signature(src)


# ------------------------------------------------------------------ a whole backup under faults


def test_a_backup_through_resetting_connections_completes(
    tmp_path: Path,
    shared_rclone: Rclone,
    connect: Callable[..., RestStorage],
    restic,
    small_packs: None,
) -> None:
    path = unique("resets")
    url = shared_rclone.url + path
    Repository.init(connect(url), PASSWORD, kdf_params=FAST_KDF)
    src = many_packs_tree(tmp_path / "src", seed=3, count=8)
    with FaultProxy("127.0.0.1", shared_rclone.port) as proxy:
        store = connect(
            f"http://127.0.0.1:{proxy.port}{path}",
            retry=RetryPolicy(give_up_after=30, base_delay=0.05, max_delay=0.2),
        )
        # the first three connections that carry 600 kB die, in the middle of a
        # pack's upload (about 1.2 MB each) whichever connection the client
        # sends it on; then the link holds and the backup must complete
        proxy.reset_after(600_000, times=3)
        result = backup(Repository.open(store, PASSWORD), BackupOptions(sources=[str(src)]))
    assert proxy.resets == 3
    assert store.retrier.retries >= 3
    restic(f"rest:{url}", "check", "--read-data")
    target = tmp_path / "restic-restore"
    restic(f"rest:{url}", "restore", result.snapshot.id.hex(), "--target", str(target))
    assert signature(restored(target, src)) == signature(src)


def test_a_backup_that_loses_the_server_fails_cleanly_and_the_next_stores_the_rest(
    tmp_path: Path,
    rest_server: Callable[..., RestServer],
    connect: Callable[..., RestStorage],
    restic,
    small_packs: None,
) -> None:
    server = rest_server()
    url = server.url + "/repo"
    Repository.init(connect(url), PASSWORD, kdf_params=FAST_KDF)
    src = many_packs_tree(tmp_path / "src", seed=4, count=12)

    with FaultProxy("127.0.0.1", server.port) as proxy:
        # every request after the cut waits out the bound: keep it short
        quick = RetryPolicy(give_up_after=1, base_delay=0.05, max_delay=0.2)
        store = connect(f"http://127.0.0.1:{proxy.port}/repo", retry=quick, **SHORT)

        def cut(path: str) -> None:
            # the network goes away as the first index checkpoint is stored
            # (its answer is lost too), with most packs still to come
            if "/index/" in path:
                proxy.refuse()

        server.on_store = cut
        with pytest.raises(StorageError) as err:
            backup(Repository.open(store, PASSWORD), BackupOptions(sources=[str(src)]))
        server.on_store = None
    message = str(err.value)
    assert "\n" not in message and message.startswith("network: "), message
    assert re.search(r"could not be reached for [12] s \(", message), message

    location = f"rest:{url}"
    plain = connect(url)
    assert list(plain.list(FileType.SNAPSHOT)) == []
    # our lock could not be removed while the server was unreachable
    assert len(list(plain.list(FileType.LOCK))) == 1
    restic(location, "--no-lock", "check", "--read-data")
    before = data_blobs(connect(url))
    assert before  # the checkpointed packs are indexed

    second = backup(Repository.open(plain, PASSWORD), BackupOptions(sources=[str(src)]))
    after = data_blobs(connect(url))
    # what the index listed was not stored again; only the rest was (and the trees)
    missing = after.keys() - before.keys()
    assert second.summary.data_blobs == len(missing) > 0
    stored = sum(after[b] for b in missing)
    assert stored <= second.summary.data_added < stored + 100_000
    assert sum(before.values()) > 1_000_000  # at least one large file was kept
    restic(location, "--no-lock", "check", "--read-data")
    target = tmp_path / "restic-restore"
    restic(location, "--no-lock", "restore", second.snapshot.id.hex(), "--target", str(target))
    assert signature(restored(target, src)) == signature(src)
