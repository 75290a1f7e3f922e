"""The SFTP backend against a real OpenSSH server of the test's own.

Every test talks SSH to an ``sshd`` on 127.0.0.1 that it starts and stops
(:mod:`sshserver`: its own host key, client key and known_hosts; the
user's own ``~/.ssh`` is never used: the tests of the defaults get a HOME
of their own). Because the server is local, the tests
look at the files it wrote directly. restic 0.14 is the oracle for
interop: it reads what we write through the same server (with OpenSSH's
``ssh`` as its transport), and we read what it writes. Network faults come
from :mod:`faultproxy` (resets, a dead link) and from the server being
killed.
"""

from __future__ import annotations

import gc
import json
import os
import pwd
import random
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from remotesupport import data_blobs, restored
from sshserver import SshServer
from storage_suite import *  # noqa: F403 - the shared suite, run against the fixture below
from storage_suite import A, B, name_of
from support import FAST_KDF, PASSWORD, signature, write, write_config

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
    is_storage_id,
    open_storage,
)
from desktop_agent.engine.storage import sftp as sftp_backend
from desktop_agent.engine.storage.sftp import HostKeyError, SftpStorage

# a server that is gone for longer than 2 s is reported; tries come quickly
FAST_RETRY = RetryPolicy(give_up_after=2, base_delay=0.05, max_delay=0.2)
SHORT = {"connect_timeout": 1.0, "io_timeout": 0.5}

Connect = Callable[..., SftpStorage]


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """One sshd for the tests that only need a repository folder of their own on it."""
    with SshServer(tmp_path_factory.mktemp("sshd")) as sshd:
        yield sshd


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[SshServer]:
    """An sshd of this test only (it may be killed)."""
    with SshServer(tmp_path / "sshd") as sshd:
        yield sshd


@pytest.fixture
def connect(tmp_path: Path) -> Iterator[Connect]:
    """``connect(sshd, path, port=None, **kwargs)``: an SftpStorage on ``path`` of
    ``sshd`` (through ``port``, a proxy, when given), closed after the test."""
    opened: list[SftpStorage] = []

    def make(sshd: SshServer, path: str | os.PathLike[str], **kwargs: object) -> SftpStorage:
        port = kwargs.pop("port", None)
        kwargs.setdefault("spool_dir", str(tmp_path / "spool"))
        kwargs.setdefault("known_hosts", str(sshd.known_hosts))
        kwargs.setdefault("client_keys", [str(sshd.client_key)])
        location = parse_location(sshd.location(path, port))  # type: ignore[arg-type]
        store = SftpStorage(location, **kwargs)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def storage(server: SshServer, connect: Connect, tmp_path: Path) -> Iterator[Storage]:
    """The SFTP backend, a new repository folder each time."""
    store = connect(server, tmp_path / "repo", retry=FAST_RETRY)
    store.create_layout()
    yield store


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if "-tmp-" in p.name]


# ------------------------------------------------------------------ the layout on the server


def test_the_layout_and_file_modes_are_restics(
    server: SshServer, connect: Connect, tmp_path: Path
) -> None:
    root = tmp_path / "nested" / "repo"
    store = connect(server, root)
    assert not store.exists()
    store.create_layout()
    assert sorted(p.name for p in root.iterdir()) == [
        "data",
        "index",
        "keys",
        "locks",
        "snapshots",
    ]
    assert sorted(p.name for p in (root / "data").iterdir()) == [f"{i:02x}" for i in range(256)]
    pack = os.urandom(700_000)
    store.save(FileType.PACK, name_of(pack), [pack])
    store.save(FileType.KEY, name_of(b"key"), [b"key"])
    store.save(FileType.LOCK, name_of(b"lock"), [b"lock"])
    store.save(FileType.CONFIG, "", [b"config"])
    packed = root / "data" / name_of(pack)[:2] / name_of(pack)
    assert packed.read_bytes() == pack
    assert (root / "keys" / name_of(b"key")).read_bytes() == b"key"
    assert (root / "config").read_bytes() == b"config"
    for path in (packed, root / "keys" / name_of(b"key"), root / "config"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o400, path
    # locks stay writable, as LocalStorage keeps them
    assert stat.S_IMODE((root / "locks" / name_of(b"lock")).stat().st_mode) == 0o600
    assert no_temp_files(root)
    assert store.exists()
    store.create_layout()  # harmless on an existing repository
    assert store.load(FileType.CONFIG, "") == b"config"
    assert store.location == server.location(root)


def test_listing_skips_temporary_and_foreign_files(storage: SftpStorage, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    good = name_of(A)
    storage.save(FileType.KEY, good, [A])
    keys = root / "keys"
    (keys / f"{good}-tmp-0a1b2c").write_bytes(b"half written")
    (keys / "README").write_bytes(b"hello")
    (keys / good.upper()).write_bytes(b"upper")
    (keys / ("ef" * 32)).mkdir()  # a directory with an id for a name
    os.symlink(keys / good, keys / ("12" * 32))
    with open(os.fsencode(keys) + b"/not-utf8-\xff", "wb") as fh:
        fh.write(b"foreign")
    assert list(storage.list(FileType.KEY)) == [(good, len(A))]

    storage.save(FileType.PACK, good, [A])
    data = root / "data"
    (data / good[:2] / f"{good}-tmp-xyz").write_bytes(b"partial")
    (data / "stray-file").write_bytes(b"not a folder of packs")
    assert list(storage.list(FileType.PACK)) == [(good, len(A))]


def test_a_relative_path_is_inside_the_login_folder(
    server: SshServer, connect: Connect, tmp_path: Path
) -> None:
    home = pwd.getpwnam(server.user).pw_dir
    relative = os.path.relpath(tmp_path / "relative-repo", home)
    assert not relative.startswith("/")
    store = connect(server, relative)  # sftp://user@host:port/<relative>
    store.create_layout()
    store.save(FileType.CONFIG, "", [b"config"])
    assert (tmp_path / "relative-repo" / "config").read_bytes() == b"config"
    assert store.exists()


def test_a_missing_pack_folder_is_made_again_but_not_a_missing_repository(
    storage: SftpStorage, server: SshServer, connect: Connect, tmp_path: Path
) -> None:
    storage.save(FileType.CONFIG, "", [b"config"])
    os.rmdir(tmp_path / "repo" / "data" / "ff")
    storage.save(FileType.PACK, "ff" * 32, [b"x"])
    assert storage.load(FileType.PACK, "ff" * 32) == b"x"

    gone = connect(server, tmp_path / "gone")
    with pytest.raises(StorageError, match=r"is gone from the server .*nothing more was written"):
        gone.save(FileType.PACK, "ff" * 32, [b"x"])
    assert not (tmp_path / "gone").exists()
    assert gone.retrier.retries == 0


def test_sizes_ranges_and_limits(storage: SftpStorage) -> None:
    data = os.urandom(1_500_000)  # several SFTP requests, read in parallel
    storage.save(FileType.PACK, name_of(data), [data])
    name = name_of(data)
    assert storage.load(FileType.PACK, name) == data
    assert storage.load(FileType.PACK, name, 1_000_000, 400_000) == data[1_000_000:1_400_000]
    assert storage.load(FileType.PACK, name, 1_400_000) == data[1_400_000:]
    assert storage.load(FileType.PACK, name, max_size=len(data)) == data
    with pytest.raises(IntegrityError, match="more than the 1000"):
        storage.load(FileType.PACK, name, max_size=1000)
    with pytest.raises(StorageError, match="shorter than expected"):
        storage.load(FileType.PACK, name, len(data) - 10, 20)
    with pytest.raises(NotFound):
        storage.load(FileType.INDEX, name)


def test_many_threads_save_and_load_at_once(storage: SftpStorage) -> None:
    """The engine uploads from a thread pool and reads from several workers."""
    spool = Path(storage.spool_dir())
    assert spool.is_dir() and (spool.stat().st_mode & 0o777) == 0o700
    rng = random.Random(3)
    packs = [rng.randbytes(rng.randrange(1, 600_000)) for _ in range(24)]

    def upload(data: bytes) -> None:
        path = spool / f"pack-{name_of(data)}"
        path.write_bytes(data)
        storage.save_file(FileType.PACK, name_of(data), str(path))

    def read(data: bytes) -> bool:
        name = name_of(data)
        mid = len(data) // 2
        return (
            storage.load(FileType.PACK, name) == data
            and storage.load(FileType.PACK, name, mid, len(data) - mid) == data[mid:]
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, packs))
        assert all(pool.map(read, packs))
    assert sorted(storage.list(FileType.PACK)) == sorted((name_of(d), len(d)) for d in packs)
    assert list(spool.iterdir()) == []
    assert storage.upload_parallelism == 4


def test_a_server_without_posix_rename_keeps_what_is_there(
    storage: SftpStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain SFTP rename does not replace a file: a second upload of the same
    content (a retry whose first try had landed) is accepted, a different file
    under the same name is not."""

    async def unsupported(self: object, oldpath: bytes, newpath: bytes) -> None:
        raise sftp_backend.asyncssh.SFTPOpUnsupported("POSIX rename not supported")

    handler = sftp_backend.asyncssh.sftp.SFTPClientHandler
    monkeypatch.setattr(handler, "posix_rename", unsupported)
    storage.save(FileType.INDEX, name_of(B), [B])
    storage.save(FileType.INDEX, name_of(B), [B])
    assert list(storage.list(FileType.INDEX)) == [(name_of(B), len(B))]
    with pytest.raises(StorageError, match="the SFTP server failed at"):
        storage.save(FileType.INDEX, name_of(B), [B + b"other"])
    assert storage.load(FileType.INDEX, name_of(B)) == B
    assert no_temp_files(tmp_path / "repo")


def test_a_closed_storage_reconnects_and_a_dropped_one_ends_its_thread(
    server: SshServer, tmp_path: Path
) -> None:
    def loop_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("sftp ")}

    before = loop_threads()
    store = SftpStorage(
        parse_location(server.location(tmp_path / "repo")),
        spool_dir=str(tmp_path / "spool"),
        known_hosts=str(server.known_hosts),
        client_keys=[str(server.client_key)],
    )
    assert loop_threads() == before  # started on first use only
    store.create_layout()
    first = loop_threads() - before
    assert len(first) == 1
    store.close()
    assert not any(t.is_alive() for t in first)
    assert not store.exists()  # a new loop, a new connection
    second = loop_threads() - before
    assert len(second) == 1 and second != first
    del store
    gc.collect()
    for thread in second:
        thread.join(5)
        assert not thread.is_alive()


def test_permission_denied_is_said_at_once(storage: SftpStorage, tmp_path: Path) -> None:
    keys = tmp_path / "repo" / "keys"
    # the server runs as root here, which no mode bit stops: an immutable folder does
    if subprocess.run(["chattr", "+i", str(keys)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a folder immutable here (chattr)")
    try:
        with pytest.raises(StorageError) as err:
            storage.save(FileType.KEY, name_of(A), [A])
    finally:
        subprocess.run(["chattr", "-i", str(keys)], check=True)
    assert str(err.value) == (
        f"permission denied on the SFTP server: {storage.location}/keys/{name_of(A)}"
    )
    assert storage.retrier.retries == 0


# ------------------------------------------------------------------ who is trusted


def test_an_unknown_host_key_is_refused_with_how_to_accept_it(
    server: SshServer, connect: Connect, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    store = connect(server, tmp_path / "repo", known_hosts=str(empty), retry=FAST_RETRY)
    with pytest.raises(HostKeyError) as err:
        store.create_layout()
    message = str(err.value)
    assert message == (
        f"the host key of [127.0.0.1]:{server.port} is not known: connect once with "
        f"`ssh -p {server.port} {server.user}@127.0.0.1` and accept it, or add it to {empty}"
    )
    assert store.retrier.retries == 0
    assert not (tmp_path / "repo").exists()
    # no known_hosts file at all: the same
    missing = connect(server, tmp_path / "repo", known_hosts=str(tmp_path / "nothing"))
    with pytest.raises(HostKeyError, match="is not known"):
        missing.save(FileType.CONFIG, "", [b"config"])
    assert not (tmp_path / "repo").exists()


def test_a_changed_host_key_is_refused_with_a_warning(
    server: SshServer, connect: Connect, tmp_path: Path
) -> None:
    other = tmp_path / "other_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
        check=True,
        capture_output=True,
    )
    known = tmp_path / "known_hosts"
    pub = (tmp_path / "other_key.pub").read_text().split()
    known.write_text(f"[127.0.0.1]:{server.port} {pub[0]} {pub[1]}\n")
    store = connect(server, tmp_path / "repo", known_hosts=str(known), retry=FAST_RETRY)
    with pytest.raises(HostKeyError) as err:
        store.create_layout()
    message = str(err.value)
    assert message.startswith(
        f"WARNING: the host key of [127.0.0.1]:{server.port} has changed since it was "
        f"recorded in {known}: someone may be intercepting the connection"
    )
    assert f"ssh-keygen -R '[127.0.0.1]:{server.port}' -f {known}" in message
    assert "\n" not in message
    assert store.retrier.retries == 0
    assert not (tmp_path / "repo").exists()


def test_a_wrong_key_is_said_in_one_line_and_not_retried(
    server: SshServer, connect: Connect, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
        check=True,
        capture_output=True,
    )
    store = connect(server, tmp_path / "repo", client_keys=[str(stranger)], retry=FAST_RETRY)
    started = time.monotonic()
    with pytest.raises(AuthError) as err:
        store.exists()
    assert time.monotonic() - started < 1.5
    assert str(err.value) == (
        f"the SSH server 127.0.0.1 refused the login as {server.user}@127.0.0.1: "
        "check your SSH key / agent (passwords are not used)"
    )
    assert store.retrier.retries == 0


def test_open_storage_uses_the_users_ssh_folder(
    server: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without explicit keys: ~/.ssh/known_hosts and ~/.ssh/id_* (as ssh would)."""
    home = tmp_path / "home"
    dot_ssh = home / ".ssh"
    dot_ssh.mkdir(parents=True)
    (dot_ssh / "known_hosts").write_text(server.known_hosts.read_text())
    (dot_ssh / "id_ed25519").write_bytes(server.client_key.read_bytes())
    os.chmod(dot_ssh / "id_ed25519", 0o600)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    store = open_storage(server.location(tmp_path / "repo"), cache_root=str(tmp_path / "cache"))
    backend = getattr(store, "backend", store)  # under the local cache of index files
    assert isinstance(backend, SftpStorage)
    try:
        store.create_layout()
        assert not store.exists()
        store.save(FileType.CONFIG, "", [b"config"])
        assert (tmp_path / "repo" / "config").read_bytes() == b"config"
        assert Path(store.spool_dir()).is_relative_to(tmp_path / "cache")
    finally:
        backend.close()


def test_the_cli_backs_up_to_an_sftp_location(
    server: SshServer, tmp_path: Path, cli, restic
) -> None:
    """The user's ~/.ssh, as ssh uses it; an error is one line on stderr."""
    dot_ssh = tmp_path / "home" / ".ssh"  # the cli fixture's HOME
    dot_ssh.mkdir(parents=True)
    (dot_ssh / "known_hosts").write_text(server.known_hosts.read_text())
    (dot_ssh / "id_ed25519").write_bytes(server.client_key.read_bytes())
    os.chmod(dot_ssh / "id_ed25519", 0o600)
    src = small_tree(tmp_path / "src")
    password = tmp_path / "password"
    password.write_text(PASSWORD + "\n")
    os.chmod(password, 0o600)
    root = tmp_path / "repo"
    location = server.location(root)
    config = write_config(
        tmp_path / "config.toml", repo=location, sources=[src], password_file=password
    )
    for command in ("init", "backup", "check"):
        done = cli("--config", str(config), command)
        assert done.returncode == 0, done.stderr
    assert (root / "config").is_file()
    ssh = f"sftp.command={server.sftp_command()}"
    restic(server.restic_location(root), "-o", ssh, "check", "--read-data")

    (dot_ssh / "known_hosts").unlink()
    done = cli("--config", str(config), "snapshots")
    assert done.returncode != 0
    assert done.stderr == (
        f"desktop-agent: error: the host key of [127.0.0.1]:{server.port} is not known: "
        f"connect once with `ssh -p {server.port} {server.user}@127.0.0.1` and accept it, "
        f"or add it to {dot_ssh / 'known_hosts'}\n"
    )


# ------------------------------------------------------------------ network faults


def test_a_server_that_is_gone_gives_a_network_error_in_bounded_time(
    own_server: SshServer, connect: Connect, tmp_path: Path
) -> None:
    store = connect(own_server, tmp_path / "repo", retry=FAST_RETRY, **SHORT)
    store.create_layout()
    store.save(FileType.CONFIG, "", [b"config"])
    own_server.kill()
    started = time.monotonic()
    with pytest.raises(NetworkError) as err:
        store.load(FileType.CONFIG, "")
    took = time.monotonic() - started
    assert 2 <= took < 4, took
    message = str(err.value)
    assert message.startswith(f"network: {store.location} could not be reached for 2 s")
    assert "while loading config" in message and "\n" not in message
    assert store.retrier.retries >= 3
    own_server.start()  # back: the next request connects again
    assert store.load(FileType.CONFIG, "") == b"config"


def test_a_dead_link_is_abandoned_after_the_timeout(
    server: SshServer, connect: Connect, tmp_path: Path
) -> None:
    with FaultProxy("127.0.0.1", server.port) as proxy:
        server.trust(proxy.port)
        store = connect(server, tmp_path / "repo", port=proxy.port, retry=FAST_RETRY, **SHORT)
        store.create_layout()
        data = os.urandom(300_000)
        store.save(FileType.PACK, name_of(data), [data])
        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(NetworkError, match=r"^network: .* while loading data/"):
            store.load(FileType.PACK, name_of(data))
        took = time.monotonic() - started
        assert 2 <= took < 4.5, took
        # uploads too: the request is stuck while sending or waiting for the answer
        started = time.monotonic()
        with pytest.raises(NetworkError, match=r"^network: .* while saving data/"):
            store.save(FileType.PACK, name_of(data[:-1]), [data[:-1]])
        assert time.monotonic() - started < 4.5
        proxy.pass_through()
        assert store.load(FileType.PACK, name_of(data)) == data


def test_closing_ends_a_call_that_is_stuck(
    server: SshServer, connect: Connect, tmp_path: Path
) -> None:
    with FaultProxy("127.0.0.1", server.port) as proxy:
        server.trust(proxy.port)
        store = connect(server, tmp_path / "repo", port=proxy.port, io_timeout=30)
        store.create_layout()
        proxy.blackhole()
        failures: list[BaseException] = []

        def stuck() -> None:
            try:
                store.exists()
            except BaseException as exc:
                failures.append(exc)

        caller = threading.Thread(target=stuck)
        caller.start()
        caller.join(0.3)
        assert caller.is_alive()  # waiting for an answer that does not come
        started = time.monotonic()
        store.close()
        caller.join(5)
        assert not caller.is_alive() and time.monotonic() - started < 5
    assert [str(e) for e in failures] == [
        f"the connection to {store.location} was closed while looking for the repository"
    ]


def test_a_full_server_is_said_at_once(
    server: SshServer, connect: Connect, tmp_path: Path, tmpfs: Path
) -> None:
    store = connect(server, tmpfs / "repo", retry=FAST_RETRY)
    store.create_layout()
    spool = Path(store.spool_dir())
    big = spool / "pack-big"
    with open(big, "wb") as fh:
        fh.write(os.urandom(42 * 1024 * 1024))  # more than the 40 MB filesystem
    with pytest.raises(StorageError) as err:
        store.save_file(FileType.PACK, "ab" * 32, str(big))
    message = str(err.value)
    assert message.startswith("the SFTP server is full"), message
    assert f"data/ab/{'ab' * 32}" in message
    assert store.retrier.retries == 0
    assert no_temp_files(tmpfs / "repo")
    assert big.exists()  # not consumed: the engine may try again later
    store.save(FileType.KEY, name_of(A), [A])  # the space was given back
    assert store.load(FileType.KEY, name_of(A)) == A


# ------------------------------------------------------------------ restic interop


def small_tree(root: Path, seed: int = 1) -> Path:
    """A few MB of files: large and small, nested, a symlink, an awkward name."""
    rng = random.Random(seed)
    write(root / "big.bin", rng.randbytes(2_500_000))
    write(root / "text.txt", b"hello SFTP\n" * 5000)
    for i in range(20):
        write(root / "many" / f"f{i:02}", rng.randbytes(1000 + i))
    write(root / "dir" / "Grüße.txt", b"unicode\n")
    write(root / "empty", b"")
    os.symlink("text.txt", root / "link")
    return root


def test_restic_reads_what_we_write(
    server: SshServer, connect: Connect, tmp_path: Path, restic
) -> None:
    src = small_tree(tmp_path / "src")
    root = tmp_path / "ours"
    repo = Repository.init(connect(server, root), PASSWORD, kdf_params=FAST_KDF)
    result = backup(repo, BackupOptions(sources=[str(src)]))
    assert result.skipped == ()

    location, ssh = server.restic_location(root), f"sftp.command={server.sftp_command()}"
    restic(location, "-o", ssh, "check", "--read-data")
    snaps = json.loads(restic(location, "-o", ssh, "snapshots", "--json").stdout)
    assert [s["id"] for s in snaps] == [result.snapshot.id.hex()]
    target = tmp_path / "restic-restore"
    restic(location, "-o", ssh, "restore", "latest", "--target", str(target))
    assert signature(restored(target, src)) == signature(src)


def test_we_read_and_extend_what_restic_writes(
    server: SshServer, connect: Connect, tmp_path: Path, restic
) -> None:
    root = tmp_path / "restics"
    location, ssh = server.restic_location(root), f"sftp.command={server.sftp_command()}"
    src = small_tree(tmp_path / "src", seed=2)
    restic(location, "-o", ssh, "init")
    restic(location, "-o", ssh, "backup", str(src))

    repo = Repository.open(connect(server, root), PASSWORD)
    snaps = repo.list_snapshots()
    assert len(snaps) == 1 and list(snaps[0].paths) == [str(src)]
    target = tmp_path / "ours"
    res = restore(repo, snaps[0], RestoreOptions(target=str(target)))
    assert res.errors == ()
    assert signature(restored(target, src)) == signature(src)

    write(src / "new.bin", os.urandom(300_000))
    (src / "text.txt").write_bytes(b"changed\n")
    second = backup(Repository.open(connect(server, root), PASSWORD), BackupOptions([str(src)]))
    assert second.summary.files_unmodified > 0
    restic(location, "-o", ssh, "check", "--read-data")
    again = tmp_path / "restic-restore"
    restic(location, "-o", ssh, "restore", second.snapshot.id.hex(), "--target", str(again))
    assert signature(restored(again, src)) == signature(src)


# ------------------------------------------------------------------ a whole backup under faults


def test_a_backup_through_resetting_connections_completes(
    server: SshServer, connect: Connect, tmp_path: Path, restic, small_packs: None
) -> None:
    root = tmp_path / "resets"
    Repository.init(connect(server, root), PASSWORD, kdf_params=FAST_KDF)
    src = small_tree(tmp_path / "src", seed=3)
    for i in range(4):
        write(src / f"more{i}.bin", os.urandom(1_000_000))
    with FaultProxy("127.0.0.1", server.port) as proxy:
        server.trust(proxy.port)
        store = connect(
            server,
            root,
            port=proxy.port,
            retry=RetryPolicy(give_up_after=10, base_delay=0.05, max_delay=0.2),
        )
        proxy.reset_after(1_000_000)  # every connection dies in the middle of an upload
        healed = threading.Event()

        def heal_after_two_resets() -> None:
            # all uploads share one connection: when the link keeps dying before
            # the largest of them is through, no backup can ever finish
            while proxy.connections < 3 and not healed.wait(0.002):
                pass
            proxy.pass_through()

        healer = threading.Thread(target=heal_after_two_resets, daemon=True)
        healer.start()
        try:
            result = backup(Repository.open(store, PASSWORD), BackupOptions(sources=[str(src)]))
        finally:
            healed.set()
            healer.join(5)
        connections = proxy.connections
    assert store.retrier.retries > 0 and connections >= 3
    location, ssh = server.restic_location(root), f"sftp.command={server.sftp_command()}"
    restic(location, "-o", ssh, "check", "--read-data")
    target = tmp_path / "restic-restore"
    restic(location, "-o", ssh, "restore", result.snapshot.id.hex(), "--target", str(target))
    assert signature(restored(target, src)) == signature(src)


@pytest.mark.parametrize("fault", ["server killed", "dead link"])
def test_a_backup_that_loses_the_server_fails_cleanly_and_the_next_stores_the_rest(
    own_server: SshServer,
    connect: Connect,
    tmp_path: Path,
    restic,
    small_packs: None,
    fault: str,
) -> None:
    root = tmp_path / "lost"
    Repository.init(connect(own_server, root), PASSWORD, kdf_params=FAST_KDF)
    src = small_tree(tmp_path / "src", seed=4)
    for i in range(8):
        write(src / f"more{i}.bin", os.urandom(1_000_000))
    index_dir = root / "index"

    with FaultProxy("127.0.0.1", own_server.port) as proxy:
        own_server.trust(proxy.port)
        port = proxy.port if fault == "dead link" else None
        store = connect(own_server, root, port=port, retry=FAST_RETRY, **SHORT)
        cut = threading.Event()

        def cut_after_first_checkpoint() -> None:
            # the server goes away once an index checkpoint reached it
            while not cut.is_set():
                if index_dir.is_dir() and any(is_storage_id(p.name) for p in index_dir.iterdir()):
                    if fault == "dead link":
                        proxy.blackhole()
                    else:
                        own_server.kill()
                    cut.set()
                    return
                cut.wait(0.005)

        watcher = threading.Thread(target=cut_after_first_checkpoint, daemon=True)
        watcher.start()
        started = time.monotonic()
        try:
            with pytest.raises(StorageError) as err:
                backup(Repository.open(store, PASSWORD), BackupOptions(sources=[str(src)]))
        finally:
            cut.set()
            watcher.join(5)
        took = time.monotonic() - started
    message = str(err.value)
    assert "\n" not in message and message.startswith("network: "), message
    assert took < 20, took
    if fault == "server killed":
        own_server.start()

    plain = connect(own_server, root)
    assert list(plain.list(FileType.SNAPSHOT)) == []
    location, ssh = own_server.restic_location(root), f"sftp.command={own_server.sftp_command()}"
    # our lock could not be removed while the server was unreachable
    restic(location, "-o", ssh, "--no-lock", "check", "--read-data")
    before = data_blobs(plain)
    assert before  # the checkpointed packs are indexed

    second = backup(Repository.open(plain, PASSWORD), BackupOptions(sources=[str(src)]))
    after = data_blobs(plain)
    assert second.summary.data_blobs == len(after.keys() - before.keys()) > 0
    total = sum(f.stat().st_size for f in src.rglob("*") if f.is_file() and not f.is_symlink())
    assert second.summary.data_added < total
    restic(location, "-o", ssh, "--no-lock", "check", "--read-data")
    target = tmp_path / "restore"
    again = Repository.open(plain, PASSWORD)
    snap = again.find_snapshot(second.snapshot.id.hex())
    assert restore(again, snap, RestoreOptions(target=str(target))).errors == ()
    assert signature(restored(target, src)) == signature(src)
