"""Prune removes what no snapshot references, and both tools still agree."""

from __future__ import annotations

import os

from support import PASSWORD, reopen, signature, write

from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.check import check
from desktop_agent.engine.prune import plan_prune, prune
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.restore import RestoreOptions, restore
from desktop_agent.engine.storage import FileType, LocalStorage


def _bytes(repo) -> int:
    return sum(size for _, size in repo.storage.list(FileType.PACK))


def _restored_equals(repo, snap, tmp_path, src, name):
    out = tmp_path / name
    assert restore(reopen(repo), snap, RestoreOptions(target=str(out))).errors == ()
    return signature(out / str(src).lstrip("/"))


def test_prune_after_forgetting_frees_space_and_keeps_the_rest(tmp_path, new_repo, restic):
    src = tmp_path / "src"
    write(src / "keep.bin", os.urandom(3 * 1024 * 1024))
    write(src / "gone.bin", os.urandom(20 * 1024 * 1024))
    for i in range(200):
        write(src / "small" / f"f{i}.txt", os.urandom(2000))
    repo = new_repo()
    first = backup(repo, BackupOptions(sources=[str(src)]))
    os.unlink(src / "gone.bin")
    for i in range(0, 200, 2):
        os.unlink(src / "small" / f"f{i}.txt")
    expected = signature(src)
    second = backup(reopen(repo), BackupOptions(sources=[str(src)]))
    before = _bytes(repo)
    repo.storage.remove(FileType.SNAPSHOT, first.snapshot.id.hex())  # forget

    plan = plan_prune(reopen(repo))
    assert plan.delete or plan.repack
    result = prune(reopen(repo))
    assert result.unused_blobs >= 101  # gone.bin's chunks and 100 small files
    assert _bytes(repo) < before - 15 * 1024 * 1024
    assert result.bytes_after == _bytes(repo)
    assert list(repo.storage.list(FileType.LOCK)) == []

    assert check(reopen(repo), read_data=True).ok
    restic(repo.storage.location, "check", "--read-data")
    assert (
        _restored_equals(
            repo, reopen(repo).find_snapshot(second.snapshot.id.hex()), tmp_path, src, "out"
        )
        == expected
    )
    # pruning again finds nothing to do
    again = prune(reopen(repo))
    assert again.packs_deleted == again.packs_repacked == 0


def test_repacking_partly_used_packs(tmp_path, new_repo, restic):
    """Small files share packs: forgetting half of them leaves packs half used."""
    src = tmp_path / "src"
    for i in range(400):
        write(src / f"f{i}.bin", os.urandom(40_000))
    repo = new_repo()
    first = backup(repo, BackupOptions(sources=[str(src)]))
    for i in range(0, 400, 2):
        os.unlink(src / f"f{i}.bin")
    expected = signature(src)
    backup(reopen(repo), BackupOptions(sources=[str(src)]))
    repo.storage.remove(FileType.SNAPSHOT, first.snapshot.id.hex())
    result = prune(reopen(repo))
    assert result.packs_repacked >= 1 and result.packs_written >= 1
    assert check(reopen(repo), read_data=True).ok
    restic(repo.storage.location, "check", "--read-data")
    snap = reopen(repo).find_snapshot("latest")
    assert _restored_equals(repo, snap, tmp_path, src, "out") == expected


def test_orphan_packs_from_an_interrupted_run_are_removed(tmp_path, new_repo, restic):
    src = tmp_path / "src"
    write(src / "a.bin", os.urandom(2 * 1024 * 1024))
    repo = new_repo()
    backup(repo, BackupOptions(sources=[str(src)]))
    # a pack that no index lists, as a killed backup leaves behind
    orphan_src = tmp_path / "orphan"
    write(orphan_src / "b.bin", os.urandom(2 * 1024 * 1024))
    other = new_repo(tmp_path / "other")
    backup(other, BackupOptions(sources=[str(orphan_src)]))
    name, _ = next(iter(other.storage.list(FileType.PACK)))
    data = other.storage.load(FileType.PACK, name)
    repo.storage.save(FileType.PACK, name, [data])
    assert any("not referenced by any index" in w for w in check(reopen(repo)).warnings)
    result = prune(reopen(repo))
    assert result.packs_deleted >= 1
    assert not check(reopen(repo)).warnings
    restic(repo.storage.location, "check", "--read-data")


def test_our_check_accepts_restic_prune_and_restic_accepts_ours(tmp_path, restic, odd_tree):
    src = odd_tree(tmp_path / "src")
    repo_dir = tmp_path / "repo"
    restic(repo_dir, "init")
    restic(repo_dir, "backup", str(src))
    write(src / "extra.bin", os.urandom(5 * 1024 * 1024))
    repo = Repository.open(LocalStorage(repo_dir), PASSWORD)
    backup(repo, BackupOptions(sources=[str(src)]))
    restic(repo_dir, "backup", str(src))
    ids = sorted(reopen(repo).list_snapshots(), key=lambda s: s.time_ns)
    # restic forgets its first snapshot and prunes
    restic(repo_dir, "forget", ids[0].id.hex(), "--prune")
    assert check(reopen(repo), read_data=True).ok
    # we forget ours and prune
    repo.storage.remove(FileType.SNAPSHOT, ids[1].id.hex())
    prune(reopen(repo))
    restic(repo_dir, "check", "--read-data")
    assert check(reopen(repo), read_data=True).ok
