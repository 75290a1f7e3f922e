"""The walker's pure parts: when a file may keep its content, the sources' trie, nodes,
listing a directory."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest
from support import write

from desktop_agent.engine.filter import ExcludeFilter
from desktop_agent.engine.pipeline import Notices
from desktop_agent.engine.progress import ProgressState
from desktop_agent.engine.tree import Node, NodeType
from desktop_agent.engine.walker import Walker, file_unchanged, node_from_stat, source_trie

OLD = Node(
    name=b"f",
    type=NodeType.FILE,
    mode=0o644,
    mtime=1_700_000_000_000_000_001,
    ctime=1_700_000_000_000_000_002,
    inode=42,
    size=1000,
    content=[b"\x01" * 32],
)


def test_a_file_with_the_same_size_times_and_inode_is_unchanged() -> None:
    assert file_unchanged(OLD, dataclasses.replace(OLD, content=None))


@pytest.mark.parametrize(
    "change",
    [
        {"size": 1001},
        {"mtime": OLD.mtime + 1},
        {"ctime": OLD.ctime + 1},  # a chmod, a rename over it, a restored mtime
        {"inode": 43},  # replaced by another file with the same metadata
        {"type": NodeType.SYMLINK},
    ],
    ids=["size", "mtime", "ctime", "inode", "type"],
)
def test_any_difference_means_the_file_is_read_again(change: dict[str, object]) -> None:
    new = dataclasses.replace(OLD, **change)  # type: ignore[arg-type]
    assert not file_unchanged(OLD, new)
    assert not file_unchanged(new, OLD)


def test_what_does_not_reach_the_content_does_not_matter() -> None:
    """Owner, mode, name and the content list itself are not part of the comparison
    (the caller checks that the old content's blobs are still in the index)."""
    new = dataclasses.replace(OLD, name=b"g", mode=0o600, uid=7, user="x", content=None)
    assert file_unchanged(OLD, new)


def test_source_trie_marks_sources_and_drops_nested_ones() -> None:
    trie = source_trie([b"/home/me/docs", b"/home/me", b"/etc/hosts", b"/home/me/docs/x"])
    assert trie == {b"home": {b"me": None}, b"etc": {b"hosts": None}}
    assert source_trie([b"/"]) == {}


def test_node_from_stat_types_and_fields(tmp_path: Path) -> None:
    f = write(tmp_path / "f", b"hello")
    os.link(f, tmp_path / "hard")
    os.symlink("f", tmp_path / "l")
    os.mkfifo(tmp_path / "p")
    (tmp_path / "d").mkdir()
    nodes = {
        n: node_from_stat(os.fsencode(n), os.lstat(tmp_path / n)) for n in ("f", "l", "p", "d")
    }
    assert {n: nodes[n].type for n in nodes} == {
        "f": NodeType.FILE,
        "l": NodeType.SYMLINK,
        "p": NodeType.FIFO,
        "d": NodeType.DIR,
    }
    s = os.lstat(f)
    node = nodes["f"]
    assert (node.name, node.size, node.inode, node.links) == (b"f", 5, s.st_ino, 2)
    assert node.mtime == node.atime == s.st_mtime_ns  # atime is not recorded
    assert node.device_id == s.st_dev  # kept for a hard link
    assert stat.S_IMODE(s.st_mode) == node.mode & 0o777
    assert nodes["d"].size == 0 and nodes["d"].links == 0 and nodes["d"].device_id == 0


def _lister(excludes: list[str]) -> Walker:
    """A walker with only what listing needs (the excludes and the notices)."""
    walker = Walker.__new__(Walker)
    walker.filter = ExcludeFilter(excludes)
    walker.notices = Notices(ProgressState(None))
    walker._incomplete = False
    return walker


@pytest.mark.parametrize("by_descriptor", [True, False], ids=["descriptor", "scandir"])
def test_a_listing_holds_every_entry_with_its_lstat_in_byte_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by_descriptor: bool
) -> None:
    """Through the directory's descriptor (POSIX) or by scandir (where
    descriptors cannot list: Windows), the same listing."""
    from desktop_agent.engine import walker

    monkeypatch.setattr(walker, "_LIST_BY_FD", by_descriptor)
    names = [b"b", b"a\xff", b"A", b"\xc3\xa9t\xc3\xa9", b".hidden", b"sub", b"link", b"skip.tmp"]
    for name in names:
        if name == b"sub":
            os.mkdir(os.path.join(os.fsencode(tmp_path), name))
        elif name == b"link":
            os.symlink(b"sub", os.path.join(os.fsencode(tmp_path), name))
        else:
            write(Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), name))), name)
    lister = _lister(["*.tmp"])
    root = os.fsencode(tmp_path)
    listing = lister.list_dir(root)
    assert [n for n, _, _ in listing] == sorted(n for n in names if n != b"skip.tmp")
    for name, path, s in listing:
        assert path == root + b"/" + name
        assert s == os.lstat(path)  # not followed: the link is a link
    assert not lister.notices.skipped and not lister._incomplete


def test_a_symlink_in_place_of_a_directory_is_not_listed_through(tmp_path: Path) -> None:
    """Its parent's listing said "directory"; a symlink that took its place since
    is not followed into another tree: the directory is reported as not listable."""
    write(tmp_path / "elsewhere" / "secret.txt", b"not part of this backup\n")
    os.symlink(tmp_path / "elsewhere", tmp_path / "was-a-dir")
    lister = _lister([])
    assert lister.list_dir(os.fsencode(tmp_path / "was-a-dir")) == []
    ((path, reason),) = [(k.path, k.reason) for k in lister.notices.skipped]
    assert path == str(tmp_path / "was-a-dir") and reason.startswith("cannot list directory")
    assert lister._incomplete
