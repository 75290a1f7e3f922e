"""restic 0.14 is the oracle: repositories must cross between the tools both ways."""

from __future__ import annotations

import json
import os
from pathlib import Path

from support import PASSWORD, reopen, signature

from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.check import check
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.restore import RestoreOptions, restore
from desktop_agent.engine.storage import LocalStorage


def _restored(target: Path, source: Path) -> Path:
    """Where a source directory lands under a restore target (full path)."""
    return target / str(source).lstrip("/")


def _as_restic_restores(sig: dict[bytes, tuple], restic) -> dict[bytes, tuple]:
    """restic < 0.16 ignores ``linktarget_raw``: it restores a symlink target
    that is not UTF-8 with U+FFFD in place of the bad bytes (its own backups
    lose those bytes the same way). desktop-agent restores them exactly."""
    version = restic(".", "version").stdout.split()[1]
    if tuple(int(x) for x in version.split(".")[:2]) >= (0, 16):
        return sig
    fixed = {}
    for key, entry in sig.items():
        if entry[0] == "symlink":
            target = entry[1].decode("utf-8", "replace").encode("utf-8")
            entry = (entry[0], target, *entry[2:])
        fixed[key] = entry
    return fixed


def test_our_repository_passes_restic_check_and_restores_identically(
    tmp_path, new_repo, odd_tree, restic
):
    src = odd_tree(tmp_path / "src")
    repo = new_repo()
    result = backup(repo, BackupOptions(sources=[str(src)]))
    assert result.skipped == ()

    restic(repo.storage.location, "check", "--read-data")
    snaps = json.loads(restic(repo.storage.location, "snapshots", "--json").stdout)
    assert [s["id"] for s in snaps] == [result.snapshot.id.hex()]
    assert snaps[0]["paths"] == [str(src)]

    target = tmp_path / "restic-restore"
    restic(repo.storage.location, "restore", "latest", "--target", str(target))
    assert signature(_restored(target, src)) == _as_restic_restores(signature(src), restic)

    ours = tmp_path / "our-restore"
    assert (
        restore(
            reopen(repo), reopen(repo).find_snapshot("latest"), RestoreOptions(target=str(ours))
        ).errors
        == ()
    )
    assert signature(_restored(ours, src)) == signature(src)


def test_incremental_snapshots_stay_valid_for_restic(tmp_path, new_repo, odd_tree, restic):
    src = odd_tree(tmp_path / "src")
    repo = new_repo()
    backup(repo, BackupOptions(sources=[str(src)]))
    (src / "small.txt").write_bytes(b"changed\n")
    (src / "new-file").write_bytes(os.urandom(700_000))
    os.unlink(src / "big-text.txt")
    second = backup(reopen(repo), BackupOptions(sources=[str(src)]))
    assert second.summary.files_unmodified > 0
    assert second.snapshot.parent is not None

    restic(repo.storage.location, "check", "--read-data")
    target = tmp_path / "out"
    restic(repo.storage.location, "restore", second.snapshot.id.hex(), "--target", str(target))
    assert signature(_restored(target, src)) == _as_restic_restores(signature(src), restic)


def test_restic_repository_is_listed_restored_and_extended(tmp_path, odd_tree, restic):
    src = odd_tree(tmp_path / "src")
    repo_dir = tmp_path / "restic-repo"
    restic(repo_dir, "init")
    restic(repo_dir, "backup", str(src))
    before = signature(src)

    repo = Repository.open(LocalStorage(repo_dir), PASSWORD)
    snaps = repo.list_snapshots()
    assert len(snaps) == 1 and snaps[0].paths == (str(src),)

    ours = tmp_path / "ours"
    res = restore(repo, snaps[0], RestoreOptions(target=str(ours)))
    assert res.errors == ()
    # restic 0.14 itself stored the bad symlink target with U+FFFD
    assert signature(_restored(ours, src)) == _as_restic_restores(before, restic)

    # add a snapshot with desktop-agent, using restic's as parent
    (src / "added-later.bin").write_bytes(os.urandom(2_000_000))
    result = backup(repo, BackupOptions(sources=[str(src)]))
    assert result.snapshot.parent == snaps[0].id
    assert result.summary.files_unmodified >= 10  # restic's content lists were reused
    assert check(reopen(repo), read_data=True).ok

    restic(repo_dir, "check", "--read-data")
    out = tmp_path / "restic-out"
    restic(repo_dir, "restore", result.snapshot.id.hex(), "--target", str(out))
    assert signature(_restored(out, src)) == _as_restic_restores(signature(src), restic)


def test_partial_restore_with_include_matches_restic(tmp_path, new_repo, odd_tree, restic):
    src = odd_tree(tmp_path / "src")
    repo = new_repo()
    backup(repo, BackupOptions(sources=[str(src)]))
    ours = tmp_path / "ours"
    include = str(src / "dir")
    res = restore(
        reopen(repo),
        reopen(repo).find_snapshot("latest"),
        RestoreOptions(target=str(ours), includes=[include]),
    )
    assert res.errors == ()
    theirs = tmp_path / "theirs"
    restic(
        repo.storage.location, "restore", "latest", "--target", str(theirs), "--include", include
    )
    assert signature(_restored(ours, src) / "dir") == signature(_restored(theirs, src) / "dir")
    assert not (_restored(ours, src) / "small.txt").exists()


def test_multiple_sources_share_one_tree(tmp_path, new_repo, restic):
    a = tmp_path / "home" / "me" / "Documents"
    b = tmp_path / "home" / "me" / "Pictures"
    (a / "x").mkdir(parents=True)
    (b).mkdir(parents=True)
    (a / "x" / "doc.txt").write_bytes(b"doc")
    (b / "pic.raw").write_bytes(os.urandom(1000))
    repo = new_repo()
    backup(repo, BackupOptions(sources=[str(a), str(b)]))
    restic(repo.storage.location, "check", "--read-data")
    listing = restic(repo.storage.location, "ls", "latest").stdout.splitlines()
    assert str(a / "x" / "doc.txt") in listing
    assert str(b / "pic.raw") in listing
