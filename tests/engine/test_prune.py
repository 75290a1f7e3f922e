"""Prune removes what no snapshot references, and both tools still agree."""

from __future__ import annotations

import os

import pytest
from support import PASSWORD, reopen, signature, write

from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.check import check
from desktop_agent.engine.errors import IntegrityError, RepositoryLocked
from desktop_agent.engine.ids import BlobType
from desktop_agent.engine.lock import Lock
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


# ------------------------------------------------------------- refusing to lose data


def _two_snapshots_sharing_packs(tmp_path, new_repo):
    """Small files in shared packs; the first snapshot forgotten: packs to repack."""
    src = tmp_path / "src"
    for i in range(300):
        write(src / f"f{i}.bin", os.urandom(30_000))
    repo = new_repo()
    first = backup(repo, BackupOptions(sources=[str(src)], helpers=0))
    for i in range(0, 300, 2):
        os.unlink(src / f"f{i}.bin")
    backup(reopen(repo), BackupOptions(sources=[str(src)], helpers=0))
    repo.storage.remove(FileType.SNAPSHOT, first.snapshot.id.hex())
    return repo, src


def _files(repo) -> dict[FileType, set[str]]:
    return {t: {n for n, _ in repo.storage.list(t)} for t in (FileType.PACK, FileType.INDEX)}


def test_a_lost_index_file_stops_prune_before_it_deletes_the_packs_it_listed(
    tmp_path, new_repo, restic
):
    repo, _src = _two_snapshots_sharing_packs(tmp_path, new_repo)
    # the index file that lists the data of the remaining snapshot goes missing
    snap = reopen(repo).find_snapshot("latest")
    r = reopen(repo)
    r.ensure_index()
    tree = r.index.lookup(BlobType.TREE, snap.tree)
    for name, _ in list(repo.storage.list(FileType.INDEX)):
        doc = r.load_json(FileType.INDEX, name)
        if not any(p["id"] == tree.pack.hex() for p in doc["packs"]):
            repo.storage.remove(FileType.INDEX, name)
    before = _files(repo)
    with pytest.raises(IntegrityError, match="not in the index.*prune stops"):
        prune(reopen(repo))
    assert _files(repo) == before  # nothing deleted, nothing written
    assert list(repo.storage.list(FileType.LOCK)) == []
    # once the index is rebuilt, everything is there again
    restic(repo.storage.location, "rebuild-index")
    assert check(reopen(repo), read_data=True).ok


def test_a_damaged_pack_stops_prune_before_it_deletes_anything(tmp_path, new_repo):
    repo, _src = _two_snapshots_sharing_packs(tmp_path, new_repo)
    plan = plan_prune(reopen(repo))
    assert plan.repack
    victim = plan.repack[0].hex()
    # a byte inside a blob the remaining snapshot still needs
    kept = next(b for b in plan.packs[plan.repack[0]] if b.id in plan.used[b.type])
    at = kept.offset + kept.length // 2
    path = os.path.join(repo.storage.location, "data", victim[:2], victim)
    os.chmod(path, 0o600)
    with open(path, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 1]))
    before = _files(repo)
    with pytest.raises(IntegrityError, match=f"pack {victim} cannot be repacked.*before deleting"):
        prune(reopen(repo))
    after = _files(repo)
    assert after[FileType.INDEX] == before[FileType.INDEX]
    assert before[FileType.PACK] <= after[FileType.PACK]  # new packs at most, unindexed
    assert list(repo.storage.list(FileType.LOCK)) == []


def test_prune_waits_for_no_one_but_refuses_while_a_backup_holds_its_lock(tmp_path, new_repo):
    repo, _src = _two_snapshots_sharing_packs(tmp_path, new_repo)
    before = _files(repo)
    with Lock(reopen(repo), exclusive=False, refresh=False):
        with pytest.raises(RepositoryLocked, match="the repository is locked: a lock held by"):
            prune(reopen(repo))
    assert _files(repo) == before
    assert prune(reopen(repo)).packs_repacked >= 1
