"""check: restic's --read-data-subset rule, and errors that name what a damaged pack takes."""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
from pathlib import Path

import pytest
from support import FAST_KDF, PASSWORD, write, write_config

from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.check import MAX_PATHS, check, packs_in_subset, parse_subset
from desktop_agent.engine.crypto import sha256
from desktop_agent.engine.ids import BlobType, PackId
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import FileType, LocalStorage
from desktop_agent.engine.storage.faults import FaultyStorage
from desktop_agent.engine.writer import BlobWriter

ENV = {"DESKTOP_AGENT_PASSWORD": PASSWORD}


def open_repo(path: str | os.PathLike[str]) -> Repository:
    return Repository.open(LocalStorage(path), PASSWORD)


@pytest.fixture(scope="module")
def many_packs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository of about 25 packs (256 KiB each)."""
    base = tmp_path_factory.mktemp("subset")
    rng = random.Random(3)
    src = base / "src"
    for i in range(24):  # over 512 KiB: chunked, and every chunk fills a pack
        write(src / f"f{i:02}.bin", rng.randbytes(530_000 + i))
    path = base / "repo"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(BlobWriter.__init__.__kwdefaults__, "pack_size", 256 * 1024)
        repo = Repository.init(LocalStorage(path), PASSWORD, kdf_params=FAST_KDF)
        backup(repo, BackupOptions(sources=[str(src)]))
    return path


def packs_read(path: Path, **kwargs) -> tuple[set[str], int]:  # type: ignore[no-untyped-def]
    """Which packs a check reads whole (loads after it announced the data phase)."""
    repo = open_repo(path)
    repo.storage = faulty = FaultyStorage(repo.storage)
    mark: list[int] = []
    result = check(repo, log=lambda m: mark.append(len(faulty.calls)), **kwargs)
    assert result.ok, result.errors
    read = {n for op, t, n in faulty.calls[mark[-1] :] if op == "load" and t is FileType.PACK}
    assert len(read) == result.packs_read
    return read, result.packs


def flip_in_a_data_pack(path: Path) -> str:
    repo = open_repo(path)
    repo.ensure_index()
    blob = sorted(repo.index.blob_ids(BlobType.DATA))[0]
    entry = repo.index.lookup(BlobType.DATA, blob)
    assert entry is not None
    victim = Path(repo.storage.path(FileType.PACK, entry.pack.hex()))
    os.chmod(victim, 0o600)
    data = bytearray(victim.read_bytes())
    data[entry.offset + 10] ^= 0x01
    victim.write_bytes(bytes(data))
    return entry.pack.hex()


# ----------------------------------------------------------------- the subset rule


def test_subset_groups_partition_the_packs_by_first_byte() -> None:
    packs = [PackId(bytes([b]) + os.urandom(31)) for b in range(256)] * 2
    for t in (1, 2, 3, 7, 256):
        groups = [packs_in_subset(packs, n, t) for n in range(1, t + 1)]
        assert sorted(p for g in groups for p in g) == sorted(packs)
        for n, group in enumerate(groups, 1):
            assert all(p[0] % t == n - 1 for p in group)
    with pytest.raises(ValueError):
        packs_in_subset(packs, 0, 3)
    with pytest.raises(ValueError):
        packs_in_subset(packs, 1, 257)


@pytest.mark.parametrize(
    ("text", "want"),
    [("1/3", (1, 3)), (" 3/3 ", (3, 3)), ("256/256", (256, 256)), ("10%", 10.0), ("2.5%", 2.5)],
)
def test_parse_subset(text: str, want: object) -> None:
    assert parse_subset(text) == want


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/257", "1/0", "a/b", "1/2/3", "0%", "101%", "x%"])
def test_parse_subset_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_subset(text)


def test_we_read_the_packs_restic_reads(many_packs, tmp_path, restic) -> None:
    t = 3
    seen: set[str] = set()
    stored = [p for p, _ in open_repo(many_packs).storage.list(FileType.PACK)]
    for n in range(1, t + 1):
        read, total = packs_read(many_packs, read_data_subset=(n, t))
        assert read == {p for p in stored if int(p[:2], 16) % t == n - 1}
        assert not read & seen
        seen |= read
        out = restic(many_packs, "check", "--read-data-subset", f"{n}/{t}").stdout
        m = re.search(r"read group #(\d+) of (\d+) data packs \(out of total (\d+) packs", out)
        assert m is not None, out
        assert (int(m[1]), int(m[2]), int(m[3])) == (n, len(read), total)
    assert len(seen) == total > 20


def test_a_damaged_pack_fails_the_same_group_in_both_tools(many_packs, tmp_path, restic) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(many_packs, copy)
    pack = flip_in_a_data_pack(copy)
    bad_group = int(pack[:2], 16) % 3 + 1
    for n in (1, 2, 3):
        ours = check(open_repo(copy), read_data_subset=(n, 3))
        theirs = restic(copy, "check", "--read-data-subset", f"{n}/3", check=False)
        assert ours.ok == (theirs.returncode == 0) == (n != bad_group), (n, ours.errors)
        if n == bad_group:
            assert ours.errors[0].startswith(f"pack {pack}: ")


def test_percent_reads_a_random_share_of_at_least_one_pack(many_packs) -> None:
    one, total = packs_read(many_packs, read_data_percent=0.1)
    assert len(one) == 1
    ten, _ = packs_read(many_packs, read_data_percent=10.0)
    assert len(ten) == int(total * 0.1)
    everything, _ = packs_read(many_packs, read_data_percent=100.0)
    assert len(everything) == total
    with pytest.raises(ValueError):
        check(open_repo(many_packs), read_data=True, read_data_subset=(1, 2))


def test_cli_read_data_subset(many_packs, tmp_path, cli) -> None:
    cfg = write_config(tmp_path / "c.toml", repo=many_packs, sources=[tmp_path])
    ok = cli("--config", str(cfg), "check", "--read-data-subset", "2/5", env=ENV)
    assert ok.returncode == 0, ok.stderr
    assert "read group 2/5: " in ok.stdout and "no errors were found" in ok.stdout
    pct = cli("--config", str(cfg), "check", "--read-data-subset", "5%", env=ENV)
    assert pct.returncode == 0 and "read 5.0% of the packs (1 of" in pct.stdout
    for bad in (["--read-data-subset", "0/5"], ["--read-data", "--read-data-subset", "1/2"]):
        proc = cli("--config", str(cfg), "check", *bad, env=ENV)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "n <= t" in cli("--config", str(cfg), "check", "--read-data-subset", "3/2").stderr


# ------------------------------------------------------- naming what is affected


@pytest.fixture
def two_snapshots(tmp_path, new_repo) -> tuple[Path, Repository, list[str]]:
    """Snapshot 1: 30 small files (one data pack); snapshot 2 adds late.txt (a new pack)."""
    src = tmp_path / "src"
    for i in range(30):
        write(src / "many" / f"f{i:02}.txt", f"file {i}\n".encode() * (i + 1))
    repo = new_repo()
    first = backup(repo, BackupOptions(sources=[str(src)]))
    write(src / "late.txt", b"added later\n")
    second = backup(open_repo(repo.storage.location), BackupOptions(sources=[str(src)]))
    sids = [first.snapshot.short_id, second.snapshot.short_id]
    return src, open_repo(repo.storage.location), sids


def data_pack_of(repo: Repository, path: Path) -> str:
    repo.ensure_index()
    entry = repo.index.lookup(BlobType.DATA, sha256(path.read_bytes()))
    assert entry is not None
    return entry.pack.hex()


def test_a_missing_pack_names_snapshots_and_paths(two_snapshots) -> None:
    src, repo, (s1, s2) = two_snapshots
    pack = data_pack_of(repo, src / "many" / "f00.txt")
    os.unlink(repo.storage.path(FileType.PACK, pack))  # type: ignore[attr-defined]
    result = check(open_repo(repo.storage.location))
    (error,) = result.errors
    head = f"pack {pack}: listed in the index but missing from the repository; "
    assert error.startswith(head)
    assert f"affects snapshot {s1} (30 paths), snapshot {s2} (30 paths): " in error
    (affected,) = result.affected
    assert affected.paths == tuple(f"{src}/many/f{i:02}.txt" for i in range(MAX_PATHS))
    assert affected.more and error.endswith(f"{src}/many/f{MAX_PATHS - 1:02}.txt, …")
    assert "late.txt" not in error


def test_an_unreadable_pack_names_only_what_it_holds(two_snapshots) -> None:
    src, repo, (_s1, s2) = two_snapshots
    pack = data_pack_of(repo, src / "late.txt")
    repo.storage = faulty = FaultyStorage(repo.storage)
    faulty.fail_load(FileType.PACK, errno.EIO, names=[pack])
    assert check(repo).ok  # the structure check does not read data packs
    repo = open_repo(repo.storage.location)
    repo.storage = faulty = FaultyStorage(repo.storage)
    faulty.fail_load(FileType.PACK, errno.EIO, names=[pack])
    (error,) = check(repo, read_data=True).errors
    assert error.startswith(f"pack {pack}: cannot be read: I/O error on the backup destination")
    assert error.endswith(f"; affects snapshot {s2} (1 path): {src}/late.txt")
