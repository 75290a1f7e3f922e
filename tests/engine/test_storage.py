"""storage: one shared suite that every backend passes, plus LocalStorage's on-disk details."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from storage_suite import *  # noqa: F403 - the shared suite, run against the fixture below
from storage_suite import A, B, C, name_of

from desktop_agent.engine.errors import NotFound, StorageError
from desktop_agent.engine.storage import (
    FileType,
    LocalStorage,
    MemoryStorage,
    Storage,
    is_storage_id,
)


@pytest.fixture(params=["local", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """Each backend, with its layout created."""
    backend: Storage
    if request.param == "local":
        backend = LocalStorage(tmp_path / "repo")
    else:
        backend = MemoryStorage()
    backend.create_layout()
    yield backend


def test_is_storage_id() -> None:
    assert is_storage_id("0123456789abcdef" * 4)
    assert not is_storage_id("0123456789ABCDEF" * 4)
    assert not is_storage_id("0123456789abcdef" * 4 + "\n")
    assert not is_storage_id("ab" * 32 + "-tmp-abcdef")


# ------------------------------------------------------ LocalStorage on disk


def test_local_layout_matches_restic(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "repo")
    local.create_layout()
    root = tmp_path / "repo"
    assert {p.name for p in root.iterdir()} >= {"data", "index", "keys", "locks", "snapshots"}
    assert sorted(p.name for p in (root / "data").iterdir()) == [f"{i:02x}" for i in range(256)]
    local.save(FileType.PACK, "ab" + "0" * 62, [b"x"])
    assert (root / "data" / "ab" / ("ab" + "0" * 62)).read_bytes() == b"x"
    local.save(FileType.KEY, "cd" * 32, [b"k"])
    assert (root / "keys" / ("cd" * 32)).read_bytes() == b"k"
    local.save(FileType.CONFIG, "", [b"c"])
    assert (root / "config").read_bytes() == b"c"
    local.create_layout()  # idempotent
    assert os.fspath(local) == str(root)


def test_local_files_are_read_only(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "repo")
    local.create_layout()
    local.save(FileType.SNAPSHOT, name_of(A), [A])
    local.save(FileType.CONFIG, "", [b"c"])
    spooled = Path(local.spool_dir()) / "spooled"
    spooled.write_bytes(B)
    local.save_file(FileType.PACK, name_of(B), str(spooled))
    for path in (
        local.path(FileType.SNAPSHOT, name_of(A)),
        local.path(FileType.CONFIG, ""),
        local.path(FileType.PACK, name_of(B)),
    ):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o400, path
    # locks are rewritten in place on refresh, so they stay writable
    local.save(FileType.LOCK, name_of(C), [C])
    assert stat.S_IMODE(os.stat(local.path(FileType.LOCK, name_of(C))).st_mode) == 0o600


def test_local_save_leaves_no_temp_file(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "repo")
    local.create_layout()
    for data in (A, B, C):
        local.save(FileType.INDEX, name_of(data), [data])
    assert sorted(os.listdir(tmp_path / "repo" / "index")) == sorted(name_of(d) for d in (A, B, C))
    local.save(FileType.PACK, name_of(A), [A])
    assert os.listdir(tmp_path / "repo" / "data" / name_of(A)[:2]) == [name_of(A)]


def test_local_list_skips_temp_and_foreign_files(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "repo")
    local.create_layout()
    good = name_of(A)
    local.save(FileType.KEY, good, [A])
    keys = tmp_path / "repo" / "keys"
    (keys / f"{good}-tmp-0a1b2c").write_bytes(b"half written")
    (keys / "README").write_bytes(b"hello")
    (keys / good.upper()).write_bytes(b"upper")
    (keys / ("ef" * 32)).mkdir()  # a directory with an id for a name
    os.symlink(keys / good, keys / ("12" * 32))
    assert list(local.list(FileType.KEY)) == [(good, len(A))]

    local.save(FileType.PACK, good, [A])
    data = tmp_path / "repo" / "data"
    (data / good[:2] / f"{good}-tmp-xyz").write_bytes(b"partial")
    (data / "stray-file").write_bytes(b"not a directory of packs")
    assert list(local.list(FileType.PACK)) == [(good, len(A))]


def test_local_missing_directories(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "nothing-here")
    assert not local.exists()
    assert list(local.list(FileType.SNAPSHOT)) == []
    assert list(local.list(FileType.PACK)) == []
    with pytest.raises(NotFound):
        local.load(FileType.SNAPSHOT, "ab" * 32)
    # save creates a missing data/xx directory on its own, in a repository
    local2 = LocalStorage(tmp_path / "partial")
    local2.create_layout()
    local2.save(FileType.CONFIG, "", [b"config"])
    os.rmdir(tmp_path / "partial" / "data" / "ff")
    local2.save(FileType.PACK, "ff" * 32, [b"x"])
    assert local2.load(FileType.PACK, "ff" * 32) == b"x"
    # but not where there is no repository (any more): an unplugged drive's
    # mount point must not fill up with what was meant for the drive
    gone = LocalStorage(tmp_path / "gone")
    with pytest.raises(StorageError, match="is gone \\(was the drive unplugged"):
        gone.save(FileType.PACK, "ff" * 32, [b"x"])
    with pytest.raises(StorageError, match="is gone"):
        gone.spool_dir()
    assert not (tmp_path / "gone").exists()


def test_local_remove_of_a_read_only_file(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "repo")
    local.create_layout()
    local.save(FileType.SNAPSHOT, name_of(A), [A])
    local.remove(FileType.SNAPSHOT, name_of(A))
    assert list(local.list(FileType.SNAPSHOT)) == []
