"""The shared storage suite: every backend passes these.

A backend's test module imports them (``from storage_suite import *``) and
defines a ``storage`` fixture that yields an instance with its layout
created; pytest then runs the whole suite against it.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from desktop_agent.engine.errors import NotFound, StorageError
from desktop_agent.engine.storage import FileType, Storage

__all__ = [
    "A",
    "B",
    "C",
    "NAMED_TYPES",
    "name_of",
    "test_backend_implements_the_protocol",
    "test_new_layout_is_empty",
    "test_save_load_list_remove",
    "test_save_joins_parts_of_any_buffer_type",
    "test_saving_the_same_name_again_is_harmless",
    "test_range_load",
    "test_config_has_no_name",
    "test_missing_file_raises_not_found",
    "test_missing_config_raises_not_found",
    "test_invalid_names_are_refused",
    "test_save_file_consumes_the_spooled_file",
]


def name_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


A, B, C = b"first file", b"second file" * 100, b""
NAMED_TYPES = [t for t in FileType if t is not FileType.CONFIG]


def test_backend_implements_the_protocol(storage: Storage) -> None:
    assert isinstance(storage, Storage)
    assert storage.location


def test_new_layout_is_empty(storage: Storage) -> None:
    assert not storage.exists()
    for ftype in FileType:
        assert list(storage.list(ftype)) == []


@pytest.mark.parametrize("ftype", NAMED_TYPES)
def test_save_load_list_remove(storage: Storage, ftype: FileType) -> None:
    for data in (A, B, C):
        storage.save(ftype, name_of(data), [data])
    assert storage.load(ftype, name_of(A)) == A
    assert storage.load(ftype, name_of(B)) == B
    assert storage.load(ftype, name_of(C)) == C
    assert sorted(storage.list(ftype)) == sorted((name_of(d), len(d)) for d in (A, B, C))
    for other in NAMED_TYPES:
        if other is not ftype:
            assert list(storage.list(other)) == []

    storage.remove(ftype, name_of(B))
    with pytest.raises(NotFound):
        storage.load(ftype, name_of(B))
    assert sorted(storage.list(ftype)) == sorted((name_of(d), len(d)) for d in (A, C))
    storage.remove(ftype, name_of(B))  # removing a missing file is fine


def test_save_joins_parts_of_any_buffer_type(storage: Storage) -> None:
    parts = [b"abc", bytearray(b"def"), memoryview(b"--ghi--")[2:5], b""]
    name = name_of(b"abcdefghi")  # servers may check that a name is its content's hash
    storage.save(FileType.SNAPSHOT, name, parts)
    assert storage.load(FileType.SNAPSHOT, name) == b"abcdefghi"


def test_saving_the_same_name_again_is_harmless(storage: Storage) -> None:
    storage.save(FileType.INDEX, name_of(A), [A])
    storage.save(FileType.INDEX, name_of(A), [A])
    assert list(storage.list(FileType.INDEX)) == [(name_of(A), len(A))]


def test_range_load(storage: Storage) -> None:
    data = bytes(range(256)) * 4
    storage.save(FileType.PACK, name_of(data), [data])
    name = name_of(data)
    assert storage.load(FileType.PACK, name, 0, 10) == data[:10]
    assert storage.load(FileType.PACK, name, 100, 50) == data[100:150]
    assert storage.load(FileType.PACK, name, len(data) - 4, 4) == data[-4:]
    assert storage.load(FileType.PACK, name, 1000) == data[1000:]
    assert storage.load(FileType.PACK, name, 5, 0) == b""
    with pytest.raises(StorageError):
        storage.load(FileType.PACK, name, len(data) - 4, 5)  # beyond the end: truncated file


def test_config_has_no_name(storage: Storage) -> None:
    storage.save(FileType.CONFIG, "", [b"config bytes"])
    assert storage.exists()
    assert storage.load(FileType.CONFIG, "") == b"config bytes"
    assert storage.load(FileType.CONFIG, "ignored") == b"config bytes"
    assert list(storage.list(FileType.CONFIG)) == [("", len(b"config bytes"))]


@pytest.mark.parametrize("ftype", NAMED_TYPES)
def test_missing_file_raises_not_found(storage: Storage, ftype: FileType) -> None:
    with pytest.raises(NotFound):
        storage.load(ftype, "00" * 32)
    with pytest.raises(NotFound):
        storage.load(ftype, "00" * 32, 0, 1)


def test_missing_config_raises_not_found(storage: Storage) -> None:
    with pytest.raises(NotFound):
        storage.load(FileType.CONFIG, "")


@pytest.mark.parametrize(
    "name", ["", "config", "AB" * 32, "ab" * 31, "../" + "ab" * 31, "ab" * 32 + "-tmp-1"]
)
def test_invalid_names_are_refused(storage: Storage, name: str) -> None:
    with pytest.raises(StorageError):
        storage.save(FileType.KEY, name, [b"x"])
    with pytest.raises(StorageError):
        storage.load(FileType.KEY, name)
    assert list(storage.list(FileType.KEY)) == []


def test_save_file_consumes_the_spooled_file(storage: Storage) -> None:
    data = os.urandom(100_000)
    spool = storage.spool_dir()
    assert os.path.isdir(spool)
    path = os.path.join(spool, f"pack-test-{os.getpid()}-{os.urandom(4).hex()}")
    with open(path, "wb") as fh:
        fh.write(data)
    storage.save_file(FileType.PACK, name_of(data), path)
    assert not os.path.exists(path)
    assert storage.load(FileType.PACK, name_of(data)) == data
    assert list(storage.list(FileType.PACK)) == [(name_of(data), len(data))]
