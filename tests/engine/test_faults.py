"""Faults of the backup destination: disk full, I/O errors, a drive pulled out, torn writes.

Each backup test ends the same way: a clear StorageError naming the problem,
no snapshot, a repository that our check and ``restic check --read-data``
accept, nothing left in ``tmp/``, and a next run (without the fault) whose
snapshot restores to exactly the source.
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest
from support import FAST_KDF, PASSWORD, refuse_listing, signature, write

from desktop_agent.engine import crypto
from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.check import check
from desktop_agent.engine.chunker import Chunker
from desktop_agent.engine.errors import EngineError, NotFound, StorageError, describe_oserror
from desktop_agent.engine.ids import BlobType
from desktop_agent.engine.progress import Progress
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.restore import RestoreOptions, restore
from desktop_agent.engine.storage import FileType, LocalStorage, MemoryStorage, Storage
from desktop_agent.engine.storage.faults import FaultyStorage
from desktop_agent.engine.writer import BlobWriter

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
FULL = "the backup destination is full (no space left) while writing"
GONE = "is the drive still connected?"


@pytest.fixture
def small_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    """512 KiB packs: a few MB of source make a dozen packs, so faults hit mid-backup."""
    monkeypatch.setitem(BlobWriter.__init__.__kwdefaults__, "pack_size", 512 * 1024)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 7 MB: large files (one to two chunks each) and a directory of small ones."""
    root = tmp_path_factory.mktemp("faults") / "src"
    rng = random.Random(7)
    for i in range(6):
        write(root / "big" / f"b{i}.bin", rng.randbytes(1_100_000 + i))
    for i in range(40):
        write(root / "small" / f"s{i:02}.txt", rng.randbytes(2000 + i))
    write(root / "empty", b"")
    return root


def faulty_repo(new_repo) -> tuple[Repository, FaultyStorage]:
    """A new repository opened as a backup would, its storage wrapped."""
    path = new_repo().storage.location
    repo = Repository.open(LocalStorage(path), PASSWORD)
    repo.storage = faulty = FaultyStorage(repo.storage)
    return repo, faulty


def fresh(repo: Repository) -> Repository:
    """The repository opened again on a plain LocalStorage (the drive is fine again)."""
    return Repository.open(LocalStorage(repo.storage.location), PASSWORD)


def leftovers(root: str) -> list[str]:
    """Spool and temporary files: nothing may be left after a failure."""
    found = [os.path.join("tmp", n) for n in os.listdir(os.path.join(root, "tmp"))]
    for dirpath, _dirs, files in os.walk(root):
        found += [os.path.join(dirpath, f) for f in files if "-tmp-" in f]
    return found


def assert_failed_cleanly(repo: Repository, restic, *, locked: bool = False) -> None:
    """No snapshot, both checks pass, no temporary files; the lock is gone unless ``locked``."""
    root = repo.storage.location
    plain = fresh(repo)
    assert list(plain.storage.list(FileType.SNAPSHOT)) == []
    result = check(plain, read_data=True)
    assert result.ok, result.errors
    assert leftovers(root) == []
    if locked:
        # the lock could not be removed from the unplugged drive; it names
        # this (live) process, so restic would wait for it
        restic(root, "--no-lock", "check", "--read-data")
    else:
        assert list(plain.storage.list(FileType.LOCK)) == []
        restic(root, "check", "--read-data")


def assert_next_run_works(repo: Repository, source: Path, tmp_path: Path, restic) -> None:
    """Without faults the next backup completes and restores to exactly the source."""
    plain = fresh(repo)
    result = backup(plain, BackupOptions(sources=[str(source)]))
    target = tmp_path / "restored"
    res = restore(fresh(repo), result.snapshot, RestoreOptions(target=str(target)))
    assert res.errors == ()
    assert signature(target / str(source).lstrip("/")) == signature(source)
    assert check(fresh(repo), read_data=True).ok
    restic(repo.storage.location, "--no-lock", "check", "--read-data")


# ------------------------------------------------------------ the wrapper itself


@pytest.mark.parametrize("inner_kind", ["local", "memory"])
def test_without_faults_it_is_its_backend(tmp_path: Path, inner_kind: str) -> None:
    inner: Storage = LocalStorage(tmp_path / "r") if inner_kind == "local" else MemoryStorage()
    fs = FaultyStorage(inner)
    assert isinstance(fs, Storage)
    fs.create_layout()
    name = crypto.sha256(b"abc").hex()
    fs.save(FileType.INDEX, name, [b"a", bytearray(b"b"), memoryview(b"c")])
    assert fs.load(FileType.INDEX, name) == b"abc"
    assert fs.load(FileType.INDEX, name, 1, 1) == b"b"
    assert list(fs.list(FileType.INDEX)) == [(name, 3)]
    spooled = os.path.join(fs.spool_dir(), "pack-spool")
    Path(spooled).write_bytes(b"pack")
    pack = crypto.sha256(b"pack").hex()
    fs.save_file(FileType.PACK, pack, spooled)
    assert not os.path.exists(spooled) and fs.load(FileType.PACK, pack) == b"pack"
    fs.remove(FileType.INDEX, name)
    assert list(fs.list(FileType.INDEX)) == []
    with pytest.raises(NotFound):
        fs.load(FileType.INDEX, name)
    assert fs.location == inner.location and [c[0] for c in fs.calls][:2] == [
        "create_layout",
        "save",
    ]


def test_errors_read_exactly_as_local_storage_writes_them(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "r")
    local.create_layout()
    fs = FaultyStorage(local)
    name = crypto.sha256(b"x").hex()
    path = local.path(FileType.SNAPSHOT, name)
    for err, needle in [
        (errno.ENOSPC, f"{FULL} {path}"),
        (errno.EDQUOT, f"disk quota exceeded while writing {path}"),
        (errno.EIO, f"I/O error on the backup destination (Input/output error) at {path}; {GONE}"),
    ]:
        fs.fail_save(FileType.SNAPSHOT, err)
        with pytest.raises(StorageError) as info:
            fs.save(FileType.SNAPSHOT, name, [b"x"])
        assert (
            str(info.value) == str(describe_oserror(OSError(err, os.strerror(err)), path)) == needle
        )
    assert not os.listdir(os.path.dirname(path))  # the temp file was removed by LocalStorage
    fs.save(FileType.SNAPSHOT, name, [b"x"])  # each fault fired once
    fs.fail_load(FileType.SNAPSHOT, errno.EIO)
    with pytest.raises(StorageError, match="Input/output error"):
        fs.load(FileType.SNAPSHOT, name)
    fs.fail("remove", FileType.SNAPSHOT, errno.EACCES)
    with pytest.raises(StorageError, match=f"^permission denied: {path}$"):
        fs.remove(FileType.SNAPSHOT, name)
    fs.fail("list", FileType.SNAPSHOT, errno.EIO)
    with pytest.raises(StorageError, match=f"at {os.path.dirname(path)};"):
        list(fs.list(FileType.SNAPSHOT))
    fs.unplug()
    assert not fs.exists() and fs.unplugged
    with pytest.raises(StorageError, match="No such device"):
        list(fs.list(FileType.KEY))
    with pytest.raises(StorageError, match="No such device"):
        fs.spool_dir()
    fs.plug()
    assert fs.exists() is False  # no config in this bare layout, but no error either
    assert list(fs.list(FileType.SNAPSHOT)) == [(name, 1)]


def test_local_spool_dir_errors_are_storage_errors(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "r")
    local.create_layout()
    local.save(FileType.CONFIG, "", [b"config"])
    os.rmdir(tmp_path / "r" / "tmp")
    (tmp_path / "r" / "tmp").write_bytes(b"not a directory")
    with pytest.raises(StorageError, match=f"^{tmp_path}/r/tmp: "):
        local.spool_dir()


def test_nth_and_every_save_after(tmp_path: Path) -> None:
    fs = FaultyStorage(MemoryStorage())
    once = fs.fail_save(FileType.INDEX, errno.EIO, nth=2)
    names = [crypto.sha256(bytes([i])).hex() for i in range(6)]
    outcomes = []
    for n in names[:3]:
        try:
            fs.save(FileType.INDEX, n, [b"i"])
            outcomes.append("ok")
        except StorageError:
            outcomes.append("fail")
    assert outcomes == ["ok", "fail", "ok"] and once.fired == 1
    fs.save(FileType.SNAPSHOT, names[0], [b"s"])  # other types are not counted
    every = fs.fail_save(FileType.PACK, errno.ENOSPC, nth=2, count=None)
    outcomes = []
    for n in names:
        try:
            fs.save(FileType.PACK, n, [b"p"])
            outcomes.append("ok")
        except StorageError as exc:
            assert "memory:/data/" in str(exc)  # a backend without paths: named by location
            outcomes.append("fail")
    assert outcomes == ["ok"] + ["fail"] * 5 and every.fired == 5
    with pytest.raises(ValueError):
        fs.fail_save(nth=0)


def test_truncated_save_reaches_the_backend_only_as_a_temp_file(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "r")
    local.create_layout()
    fs = FaultyStorage(local)
    data = os.urandom(10_000)
    name = crypto.sha256(data).hex()
    fs.truncate_save(FileType.PACK, 0.5, errno.EIO)
    with pytest.raises(StorageError, match="Input/output error"):
        fs.save(FileType.PACK, name, [data])
    assert list(local.list(FileType.PACK)) == [] and leftovers(local.root) == []
    # torn: a backend that does not write atomically leaves the half file in place
    fs.truncate_save(FileType.PACK, 4096, errno.EIO, torn=True)
    with pytest.raises(StorageError):
        fs.save(FileType.PACK, name, [data])
    assert list(local.list(FileType.PACK)) == [(name, 4096)]


# ---------------------------------------------------------------- backups that fail


def test_disk_full_on_a_pack_mid_backup(tmp_path, new_repo, restic, source, small_packs):
    repo, faulty = faulty_repo(new_repo)
    fault = faulty.fail_save(FileType.PACK, errno.ENOSPC, nth=4, count=None)
    with pytest.raises(StorageError) as info:
        backup(repo, BackupOptions(sources=[str(source)]))
    assert str(info.value).startswith(FULL) and "/data/" in str(info.value)
    # the 4th pack fails; the packs still queued are not tried after it
    assert fault.fired >= 1 and len(faulty.names("save", FileType.PACK)) >= 4
    assert_failed_cleanly(repo, restic)
    assert_next_run_works(repo, source, tmp_path, restic)


@pytest.mark.parametrize("count", [1, None], ids=["first-index-save", "every-index-save"])
def test_io_error_on_an_index_save(tmp_path, new_repo, restic, source, small_packs, count):
    repo, faulty = faulty_repo(new_repo)
    faulty.fail_save(FileType.INDEX, errno.EIO, count=count)
    with pytest.raises(StorageError) as info:
        backup(repo, BackupOptions(sources=[str(source)]))
    msg = str(info.value)
    assert "I/O error on the backup destination (Input/output error)" in msg
    assert "/index/" in msg and GONE in msg
    assert_failed_cleanly(repo, restic)
    assert_next_run_works(repo, source, tmp_path, restic)


def test_disk_full_on_the_snapshot_after_the_index(tmp_path, new_repo, restic, source):
    repo, faulty = faulty_repo(new_repo)
    faulty.fail_save(FileType.SNAPSHOT, errno.ENOSPC)
    with pytest.raises(StorageError) as info:
        backup(repo, BackupOptions(sources=[str(source)]))
    assert str(info.value).startswith(FULL) and "/snapshots/" in str(info.value)
    saves = [(op, t) for op, t, _n in faulty.calls if op == "save"]
    assert saves.index(("save", FileType.SNAPSHOT)) > saves.index(("save", FileType.INDEX))
    assert_failed_cleanly(repo, restic)
    # everything but the snapshot was stored and indexed: the next run adds nothing
    assert not check(fresh(repo)).warnings
    again = backup(fresh(repo), BackupOptions(sources=[str(source)]))
    # no data again; a tree may be new: the directories above the source (/tmp)
    # change whenever any other process creates a file there
    assert again.summary.data_blobs == 0
    assert_next_run_works(repo, source, tmp_path, restic)


@pytest.mark.parametrize("err", [errno.ENODEV, errno.EIO])
def test_destination_unplugged_mid_backup(tmp_path, new_repo, restic, source, small_packs, err):
    repo, faulty = faulty_repo(new_repo)
    faulty.unplug(err, after_saves=3, ftype=FileType.PACK)
    with pytest.raises(StorageError) as info:
        backup(repo, BackupOptions(sources=[str(source)]))
    assert faulty.unplugged
    # the backup's own error, not the lock file that could not be removed afterwards
    assert "is gone (was the drive unplugged or unmounted?)" in str(info.value)
    assert repo.storage.location in str(info.value)
    stored = [n for n, _ in LocalStorage(repo.storage.location).list(FileType.PACK)]
    assert len(stored) == 3  # nothing reached the drive after it went away
    # while it is gone, the next run fails at once with the same message
    with pytest.raises(StorageError, match="is the drive still connected"):
        backup(repo, BackupOptions(sources=[str(source)]))
    faulty.plug()  # plugged back in
    assert_failed_cleanly(repo, restic, locked=True)
    assert_next_run_works(repo, source, tmp_path, restic)


@pytest.mark.parametrize("torn", [False, True], ids=["atomic-backend", "torn-write"])
def test_truncated_pack_save(tmp_path, new_repo, restic, source, small_packs, torn):
    repo, faulty = faulty_repo(new_repo)
    fault = faulty.truncate_save(FileType.PACK, 0.5, errno.EIO, nth=2, torn=torn)
    with pytest.raises(StorageError, match="Input/output error"):
        backup(repo, BackupOptions(sources=[str(source)]))
    assert fault.fired == 1
    if torn:
        # the half pack is under its final name, but no index lists it: harmless
        warnings = check(fresh(repo)).warnings
        assert any("not referenced by any index" in w for w in warnings), warnings
    assert_failed_cleanly(repo, restic)
    assert_next_run_works(repo, source, tmp_path, restic)


def test_restore_while_packs_cannot_be_read(tmp_path, new_repo, source):
    repo, faulty = faulty_repo(new_repo)
    backup(repo, BackupOptions(sources=[str(source)]))
    repo.ensure_index()
    data_packs = {
        repo.index.lookup(BlobType.DATA, b).pack.hex() for b in repo.index.blob_ids(BlobType.DATA)
    }
    faulty.fail_load(FileType.PACK, errno.EIO, names=data_packs)
    snap = repo.find_snapshot("latest")
    res = restore(repo, snap, RestoreOptions(target=str(tmp_path / "bad")))
    lost = {e.split(": content lost")[0].rsplit("/", 1)[-1] for e in res.errors}
    assert lost == {f"b{i}.bin" for i in range(6)} | {f"s{i:02}.txt" for i in range(40)}
    assert all("Input/output error" in e and GONE in e for e in res.errors)
    faulty.clear()
    res = restore(repo, snap, RestoreOptions(target=str(tmp_path / "good")))
    assert res.errors == ()
    assert signature(tmp_path / "good" / str(source).lstrip("/")) == signature(source)


def test_a_directory_becomes_unreadable_during_the_backup(tmp_path, new_repo, restic, monkeypatch):
    """Source side: the directory is skipped with a reason; the snapshot holds the rest."""
    src = tmp_path / "src"
    for d in ("a", "b", "c"):
        for i in range(3):
            write(src / d / f"f{i}.txt", f"{d}{i}\n".encode())
    victim = src / "b"
    if IS_ROOT:
        # chmod does not stop root: refuse the listing as the kernel would
        blocked: set[bytes] = set()
        refuse_listing(monkeypatch, blocked)

        def make_unreadable() -> None:
            blocked.add(os.fsencode(victim))

        def make_readable() -> None:
            blocked.clear()
    else:

        def make_unreadable() -> None:
            os.chmod(victim, 0)

        def make_readable() -> None:
            os.chmod(victim, 0o755)

    def on_progress(p: Progress) -> None:
        if p.current_file and "/a/" in p.current_file:
            make_unreadable()

    repo = new_repo()
    try:
        result = backup(
            repo,
            BackupOptions(sources=[str(src)], scan=False),
            progress=on_progress,
            progress_interval=0,
        )
    finally:
        make_readable()
    assert [(s.path, s.reason) for s in result.skipped] == [
        (str(victim), "cannot list directory: Permission denied")
    ]
    out = tmp_path / "out"
    assert restore(fresh(repo), result.snapshot, RestoreOptions(target=str(out))).errors == ()
    partial = signature(out / str(src).lstrip("/"), dir_times=False)
    expected = {k: v for k, v in signature(src, dir_times=False).items() if not k.startswith(b"b/")}
    assert partial == expected  # b is there, empty
    restic(repo.storage.location, "check", "--read-data")
    assert_next_run_works(repo, src, tmp_path, restic)


def test_disk_full_for_a_moment_while_a_pack_is_assembled(
    tmp_path, new_repo, restic, source, monkeypatch
):
    """ENOSPC in the middle of writing a blob to the spool file, then space again
    (another file was deleted, a quota grace period...): the spool is local, so no
    storage wrapper sees it; the write itself fails halfway."""
    real_write = os.write
    writes = [0]

    def write(fd: int, data) -> int:  # type: ignore[no-untyped-def]
        # the third write to a spool file writes half its bytes, then the disk is full
        if "/tmp/pack-" in os.readlink(f"/proc/self/fd/{fd}"):
            writes[0] += 1
            if writes[0] == 3:
                view = memoryview(data)
                real_write(fd, view[: len(view) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to tell spool files from others")
    monkeypatch.setattr(os, "write", write)
    monkeypatch.setitem(BlobWriter.__init__.__kwdefaults__, "pack_size", 4 << 20)
    repo = new_repo()
    with pytest.raises(StorageError) as info:
        backup(repo, BackupOptions(sources=[str(source)], helpers=0))
    monkeypatch.setattr(os, "write", real_write)
    assert writes[0] >= 3
    assert str(info.value).startswith(FULL) and "/tmp/pack-" in str(info.value)
    # the packs the abort stored hold only whole blobs: both checks pass
    assert_failed_cleanly(repo, restic)
    assert list(fresh(repo).storage.list(FileType.INDEX)), "the stored packs were not indexed"
    assert_next_run_works(repo, source, tmp_path, restic)


# ------------------------------------------------------------ a real full filesystem


def _fully_stored(repo: Repository, path: Path) -> bool:
    """Every chunk of the file is in the repository's index."""
    repo.ensure_index()
    chunker = Chunker(crypto.chunker_seed(repo.key, repo.config.id))
    return all(
        repo.index.has(BlobType.DATA, crypto.sha256(c)) for c in chunker.buffer(path.read_bytes())
    )


def _back_up_expecting_full(repo: Repository, source: Path, capfd) -> None:
    """Run a backup that must fail for lack of space, in one clear line."""
    with pytest.raises(StorageError) as info:
        backup(repo, BackupOptions(sources=[str(source)]))
    assert str(info.value).startswith(FULL), str(info.value)
    # helper processes report the error to us; none prints a traceback
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("kind", ["large-files", "small-files"])
def test_a_really_full_filesystem(tmp_path, tmpfs, new_repo, restic, kind, capfd):
    """100 MB of data into a 40 MB filesystem: large files (chunked in this
    process) or 2,500 small ones (sealed by helper processes)."""
    big = tmp_path / "big"
    if kind == "large-files":
        for i in range(10):
            write(big / f"r{i}.bin", os.urandom(10 * 1024 * 1024))
    else:
        for i in range(2500):
            write(big / f"d{i % 10}" / f"s{i:04}.bin", os.urandom(40_000))
    repo = new_repo(tmpfs / "repo")
    _back_up_expecting_full(repo, big, capfd)
    assert_failed_cleanly(repo, restic)

    # Nothing has to be deleted, and the space is not wasted: a smaller source
    # whose data the failed run already stored, plus a little new data, fits
    # if there is room for that little (the failed run may have used it all).
    plain = fresh(repo)
    files = sorted(p for p in big.rglob("*") if p.is_file())
    kept = [p for p in files if _fully_stored(plain, p)]
    assert kept, "the failed run kept none of its work (no index for its packs?)"
    small = tmp_path / "small"
    write(small / "again.bin", kept[0].read_bytes())
    write(small / "new.bin", os.urandom(4096))
    try:
        result = backup(plain, BackupOptions(sources=[str(small)]))
    except StorageError as exc:
        # the failed run may have used up the last few KB: then it fails as cleanly
        assert str(exc).startswith(FULL), str(exc)
        assert os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize < 256 * 1024
        assert_failed_cleanly(repo, restic)
        return
    assert result.summary.data_added < 64 * 1024
    out = tmp_path / "out"
    assert restore(fresh(repo), result.snapshot, RestoreOptions(target=str(out))).errors == ()
    assert signature(out / str(small).lstrip("/")) == signature(small)
    restic(repo.storage.location, "check", "--read-data")


# ------------------------------------------------------------ a real drive, unplugged


def test_a_drive_unplugged_mid_backup(tmp_path, usb_drive, restic, source, small_packs):
    """A loop-mounted ext4 is lazily unmounted while the backup writes to it:
    the backup fails saying the repository is gone, writes nothing onto the
    disk under the mount point, and once the drive is back everything is
    valid and the next backup completes."""
    repo_dir = usb_drive.path / "repo"
    Repository.init(LocalStorage(repo_dir), PASSWORD, kdf_params=FAST_KDF)
    unplugged = []

    class YankedAfterThreePacks(LocalStorage):
        """The real drive; the cable is pulled right after the third pack is stored."""

        def save_file(self, ftype: FileType, name: str, path: str) -> None:
            super().save_file(ftype, name, path)
            if ftype is FileType.PACK and len(unplugged) < 3:
                unplugged.append(name)
                if len(unplugged) == 3:
                    usb_drive.unplug()

    repo = Repository.open(YankedAfterThreePacks(repo_dir), PASSWORD)
    with pytest.raises(StorageError) as info:
        backup(repo, BackupOptions(sources=[str(source)], helpers=0))
    assert len(unplugged) == 3
    assert str(info.value) == (
        f"the repository at {repo_dir} is gone (was the drive unplugged or unmounted?); "
        "nothing more was written to it: plug it back in and run the backup again"
    )
    # nothing landed on the disk underneath the mount point
    assert list(usb_drive.path.iterdir()) == []
    # while it is away, a backup says so at once
    with pytest.raises(EngineError, match="there is no repository at"):
        Repository.open(LocalStorage(repo_dir), PASSWORD)
    usb_drive.plug()
    plain = Repository.open(LocalStorage(repo_dir), PASSWORD)
    assert list(plain.storage.list(FileType.SNAPSHOT)) == []
    assert check(plain, read_data=True).ok
    # the lock the unplugged run could not remove names this live process:
    # restic 0.14's check (exclusive) would wait for it
    restic(repo_dir, "--no-lock", "check", "--read-data")
    assert len(list(plain.storage.list(FileType.LOCK))) == 1
    # the next run of this process removes the lock the unplugged run left behind
    assert_next_run_works(plain, source, tmp_path, restic)
    assert list(LocalStorage(repo_dir).list(FileType.LOCK)) == []
