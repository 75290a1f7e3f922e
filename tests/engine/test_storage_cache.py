"""The local cache of a remote repository's index, snapshot and key files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from storage_suite import *  # noqa: F403 - the shared suite, run against the fixture below
from support import FAST_KDF, PASSWORD, write

from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import CachingStorage, FileType, MemoryStorage, Storage


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    backend = CachingStorage(MemoryStorage(), str(tmp_path / "cache"))
    backend.create_layout()
    yield backend


class CountingStorage(MemoryStorage):
    """A memory backend that counts whole-file loads by type (what a server would send)."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: dict[FileType, int] = {}

    def load(self, ftype, name, offset=0, length=None, *, max_size=None):  # type: ignore[no-untyped-def]
        self.loads[ftype] = self.loads.get(ftype, 0) + 1
        return super().load(ftype, name, offset, length, max_size=max_size)


def test_a_second_open_reads_index_snapshots_and_keys_from_the_cache(tmp_path: Path) -> None:
    server = CountingStorage()
    cache = str(tmp_path / "cache")
    repo = Repository.init(CachingStorage(server, cache), PASSWORD, kdf_params=FAST_KDF)
    write(tmp_path / "src" / "a.txt", b"a" * 1000)
    backup(repo, BackupOptions(sources=[str(tmp_path / "src")], helpers=0))

    server.loads.clear()
    again = CachingStorage(server, cache)
    reopened = Repository.open(again, PASSWORD)
    assert reopened.list_snapshots()
    # written through the cache: nothing of these types comes from the server again
    for ftype in (FileType.INDEX, FileType.SNAPSHOT, FileType.KEY):
        assert server.loads.get(ftype, 0) == 0, ftype
    assert again.hits > 0 and again.misses == 0


def test_a_damaged_cache_file_is_dropped_and_fetched_again(tmp_path: Path) -> None:
    server = MemoryStorage()
    server.create_layout()
    data = b"an index file"
    name = hashlib.sha256(data).hexdigest()
    server.save(FileType.INDEX, name, [data])
    cached = CachingStorage(server, str(tmp_path / "cache"))
    assert cached.load(FileType.INDEX, name) == data  # fetched and kept
    path = tmp_path / "cache" / "index" / name
    path.write_bytes(b"rot")
    assert cached.load(FileType.INDEX, name) == data
    assert path.read_bytes() == data and cached.misses == 2


def test_files_gone_from_the_server_leave_the_cache_and_liars_never_enter(tmp_path: Path) -> None:
    server = MemoryStorage()
    server.create_layout()
    good, bad = b"kept", b"not what the name says"
    server.save(FileType.SNAPSHOT, hashlib.sha256(good).hexdigest(), [good])
    server.save(FileType.SNAPSHOT, "ab" * 32, [bad])
    cached = CachingStorage(server, str(tmp_path / "cache"))
    for name, _ in cached.list(FileType.SNAPSHOT):
        cached.load(FileType.SNAPSHOT, name)
    assert os.listdir(tmp_path / "cache" / "snapshots") == [hashlib.sha256(good).hexdigest()]
    server.remove(FileType.SNAPSHOT, hashlib.sha256(good).hexdigest())
    assert [n for n, _ in cached.list(FileType.SNAPSHOT)] == ["ab" * 32]
    assert os.listdir(tmp_path / "cache" / "snapshots") == []
