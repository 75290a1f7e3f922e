"""The directory cache: unchanged directories are skipped, changes are never missed."""

from __future__ import annotations

import os

from support import above, reopen, signature, subtree_at, write

from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.check import check
from desktop_agent.engine.dircache import DirCache, cache_file
from desktop_agent.engine.restore import RestoreOptions, restore


def _tree(root):
    for d in range(4):
        for f in range(5):
            write(root / f"d{d}" / f"sub{f % 2}" / f"f{f}.txt", f"{d}-{f}".encode() * 100)
    write(root / "top.txt", b"top")


def _opts(src, cache_dir, **kw):
    # created up front: a new directory next to src would change src's parent
    cache_dir.mkdir(exist_ok=True)
    return BackupOptions(sources=[str(src)], cache_dir=str(cache_dir), **kw)


def _restored_equals(repo, tmp_path, src, snap=None, name="out"):
    r = reopen(repo)
    snap = snap or r.find_snapshot("latest")
    target = tmp_path / name
    assert restore(r, snap, RestoreOptions(target=str(target))).errors == ()
    assert signature(target / str(src).lstrip("/")) == signature(src)


def test_unchanged_run_reuses_every_directory(tmp_path, mem_repo):
    src = tmp_path / "src"
    _tree(src)
    repo = mem_repo
    cache_dir = tmp_path / "cache"
    first = backup(repo, _opts(src, cache_dir))
    assert os.path.exists(cache_file(str(cache_dir), first.snapshot.hostname, [str(src)]))
    times_above = above(src)
    second = backup(reopen(repo), _opts(src, cache_dir))
    s = second.summary
    assert s.files_unmodified == 21 and s.data_blobs == 0
    assert s.dirs_new == 0 and s.dirs_changed + s.dirs_unmodified == 1 + 4 * 3 + len(src.parts) - 1
    if above(src) == times_above:
        # every directory (the source, its parents and below) came from the cache
        assert second.snapshot.tree == first.snapshot.tree
        assert s.tree_blobs == 0 and s.dirs_changed == 0 and s.data_added == 0
    else:  # another process changed a folder above the source (/tmp): only those are new
        r = reopen(repo)
        assert subtree_at(r, second.snapshot.tree, src) == subtree_at(r, first.snapshot.tree, src)
        assert s.dirs_changed <= len(src.parts) - 1


def test_a_deep_change_invalidates_exactly_its_ancestors(tmp_path, new_repo, restic):
    src = tmp_path / "src"
    _tree(src)
    repo = new_repo()
    cache_dir = tmp_path / "cache"
    backup(repo, _opts(src, cache_dir))
    write(src / "d2" / "sub1" / "f3.txt", b"edited")
    res = backup(reopen(repo), _opts(src, cache_dir))
    assert res.summary.files_changed == 1 and res.summary.files_unmodified == 20
    # d2/sub1, d2, src and the directories above src changed; the rest did not
    depth_above = len(src.parts) - 1
    assert res.summary.dirs_changed == 3 + depth_above
    _restored_equals(repo, tmp_path, src)
    restic(repo.storage.location, "check", "--read-data")


def test_metadata_only_changes_are_seen(tmp_path, mem_repo):
    src = tmp_path / "src"
    _tree(src)
    repo = mem_repo
    cache_dir = tmp_path / "cache"
    backup(repo, _opts(src, cache_dir))
    os.chmod(src / "d1" / "sub0" / "f0.txt", 0o600)  # mode
    os.utime(src / "d3", ns=(1_000_000_000, 1_000_000_000))  # a directory's times
    os.symlink("top.txt", src / "d0" / "new-link")  # a new entry
    os.unlink(src / "d1" / "sub1" / "f1.txt")  # a removed entry
    res = backup(reopen(repo), _opts(src, cache_dir))
    assert res.summary.dirs_changed >= 4
    _restored_equals(repo, tmp_path, src)


def test_changed_excludes_change_the_tree(tmp_path, mem_repo):
    src = tmp_path / "src"
    _tree(src)
    repo = mem_repo
    cache_dir = tmp_path / "cache"
    first = backup(repo, _opts(src, cache_dir))
    second = backup(reopen(repo), _opts(src, cache_dir, excludes=["sub1"]))
    assert second.snapshot.tree != first.snapshot.tree
    out = tmp_path / "out"
    restore(reopen(repo), reopen(repo).find_snapshot("latest"), RestoreOptions(target=str(out)))
    assert not list((out / str(src).lstrip("/")).rglob("sub1"))


def test_cache_of_another_snapshot_or_damaged_is_ignored(tmp_path, mem_repo):
    src = tmp_path / "src"
    _tree(src)
    repo = mem_repo
    cache_dir = tmp_path / "cache"
    first = backup(repo, _opts(src, cache_dir))
    path = cache_file(str(cache_dir), first.snapshot.hostname, [str(src)])
    saved = open(path, "rb").read()

    # a cache that belongs to a different snapshot is not used
    write(src / "d0" / "sub0" / "f0.txt", b"changed once")
    second = backup(reopen(repo), _opts(src, cache_dir))
    with open(path, "wb") as fh:
        fh.write(saved)  # roll the cache back to the first snapshot
    write(src / "d0" / "sub0" / "f0.txt", b"changed twice")
    third = backup(reopen(repo), _opts(src, cache_dir))
    assert third.snapshot.parent == second.snapshot.id
    assert DirCache.load(path, repo.key, third.snapshot.id) is not None
    _restored_equals(repo, tmp_path, src, name="third")

    # flipped bytes: ignored, the backup is still right
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    with open(path, "wb") as fh:
        fh.write(data)
    write(src / "d1" / "new.txt", b"new")
    fourth = backup(reopen(repo), _opts(src, cache_dir))
    assert fourth.summary.files_new == 1
    _restored_equals(repo, tmp_path, src, name="fourth")
    assert check(reopen(repo), read_data=True).ok


def test_restic_parent_then_cache(tmp_path, restic, odd_tree):
    from support import PASSWORD

    from desktop_agent.engine.repository import Repository
    from desktop_agent.engine.storage import LocalStorage

    src = odd_tree(tmp_path / "src")
    restic(tmp_path / "repo", "init")
    restic(tmp_path / "repo", "backup", str(src))
    repo = Repository.open(LocalStorage(tmp_path / "repo"), PASSWORD)
    cache_dir = tmp_path / "repo-cache-dir-made-before"
    cache_dir.mkdir()
    ours = backup(repo, _opts(src, cache_dir))  # parent from restic, no cache yet
    assert ours.summary.files_new == 0
    again = backup(reopen(repo), _opts(src, cache_dir))  # now from the cache
    # the directories above src (/tmp...) change whenever another process
    # creates a file there: compare src's own tree
    assert _subtree(repo, again.snapshot, src) == _subtree(repo, ours.snapshot, src)
    assert again.summary.dirs_changed <= len(src.parts) - 1  # only those above src
    restic(tmp_path / "repo", "check", "--read-data")


def _subtree(repo, snap, path):
    tree = snap.tree
    for name in os.fsencode(path).strip(b"/").split(b"/"):
        (node,) = [n for n in reopen(repo).load_tree(tree) if n.name == name]
        tree = node.subtree
    return tree
