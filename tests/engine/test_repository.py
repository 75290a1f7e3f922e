"""The repository: init and open, unpacked files, blobs through the index, snapshots."""

from __future__ import annotations

import os

import pytest
from support import FAST_KDF, PASSWORD, reopen

from desktop_agent.engine import crypto
from desktop_agent.engine.errors import (
    EngineError,
    IntegrityError,
    NotFound,
    RepositoryExists,
    RepositoryNotFound,
    WrongPassword,
)
from desktop_agent.engine.ids import BlobId, BlobType
from desktop_agent.engine.repository import RepoConfig, Repository
from desktop_agent.engine.snapshot import Snapshot
from desktop_agent.engine.storage import FileType, LocalStorage, MemoryStorage
from desktop_agent.engine.writer import BlobWriter

# ------------------------------------------------------------------ init and open


def test_init_then_open_with_the_password(mem_repo) -> None:
    assert mem_repo.config.version == 2 and mem_repo.compression
    assert len(mem_repo.config.id) == 64
    (key_name,) = [n for n, _ in mem_repo.storage.list(FileType.KEY)]
    assert key_name == mem_repo.key_name
    opened = Repository.open(mem_repo.storage, PASSWORD)
    assert opened.config == mem_repo.config
    assert opened.key.encrypt == mem_repo.key.encrypt and opened.key_name == key_name
    with pytest.raises(WrongPassword):
        Repository.open(mem_repo.storage, "not the password")
    again = Repository.open_with_key(mem_repo.storage, mem_repo.key)
    assert again.config == mem_repo.config


def test_open_where_there_is_no_repository(tmp_path) -> None:
    with pytest.raises(RepositoryNotFound, match="there is no repository at memory:"):
        Repository.open(MemoryStorage(), PASSWORD)
    with pytest.raises(RepositoryNotFound, match=f"there is no repository at {tmp_path}/none"):
        Repository.open(LocalStorage(tmp_path / "none"), PASSWORD)
    with pytest.raises(RepositoryNotFound):
        Repository.open_with_key(MemoryStorage(), crypto.new_random_key())


def test_init_refuses_an_existing_repository_an_empty_password_and_a_full_directory(
    tmp_path, mem_repo
) -> None:
    with pytest.raises(RepositoryExists):
        Repository.init(mem_repo.storage, PASSWORD, kdf_params=FAST_KDF)
    with pytest.raises(EngineError, match="must not be empty"):
        Repository.init(MemoryStorage(), "", kdf_params=FAST_KDF)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "photo.jpg").write_bytes(b"mine")
    with pytest.raises(RepositoryExists, match="not empty"):
        Repository.init(LocalStorage(tmp_path / "full"), PASSWORD, kdf_params=FAST_KDF)
    assert os.listdir(tmp_path / "full") == ["photo.jpg"]


def test_the_remembered_key_no_longer_opens_a_replaced_repository(tmp_path, mem_repo) -> None:
    other = Repository.init(MemoryStorage(), PASSWORD, kdf_params=FAST_KDF)
    with pytest.raises(WrongPassword, match="remembered key"):
        Repository.open_with_key(other.storage, mem_repo.key)


def test_a_version_1_repository_stores_plain_json(tmp_path) -> None:
    v1 = Repository.init(MemoryStorage(str(tmp_path)), PASSWORD, kdf_params=FAST_KDF, version=1)
    assert not v1.compression
    name = v1.save_json(FileType.SNAPSHOT, {"a": 1})
    assert crypto.decrypt(v1.key, v1.storage.load(FileType.SNAPSHOT, name)) == b'{"a":1}'
    assert reopen(v1).config.version == 1


def test_config_bytes_round_trip_and_refuse_unknown_versions() -> None:
    config = RepoConfig(2, "ab" * 32, 0x3DA3358B4DC173)
    assert RepoConfig.from_bytes(config.to_bytes()) == config
    with pytest.raises(EngineError, match="version 3 is not supported"):
        RepoConfig.from_bytes(b'{"version":3,"id":"x","chunker_polynomial":"1"}')
    with pytest.raises(IntegrityError, match="malformed"):
        RepoConfig.from_bytes(b'{"id":"x"}')


# ------------------------------------------------------------------ unpacked files


def test_unpacked_files_are_compressed_encrypted_and_named_by_their_hash(mem_repo) -> None:
    doc = {"paths": ["/home/me"] * 100, "text": "ü"}
    name = mem_repo.save_json(FileType.SNAPSHOT, doc)
    raw = mem_repo.storage.load(FileType.SNAPSHOT, name)
    assert crypto.sha256(raw).hex() == name
    plain = crypto.decrypt(mem_repo.key, raw)
    assert plain[0] == 2 and len(plain) < 200  # zstd, with the v2 encoding byte
    assert reopen(mem_repo).load_json(FileType.SNAPSHOT, name) == doc
    assert mem_repo.decode_unpacked(b'{"plain":1}') == b'{"plain":1}'  # as restic v1 writes
    with pytest.raises(IntegrityError, match="unknown encoding version 7"):
        mem_repo.decode_unpacked(b"\x07junk")


def test_an_unpacked_file_that_does_not_match_its_name_is_refused(mem_repo) -> None:
    name = mem_repo.save_json(FileType.INDEX, {"packs": []})
    other = mem_repo.save_json(FileType.INDEX, {"packs": [], "x": 1})
    mem_repo.storage.save(FileType.INDEX, name, [mem_repo.storage.load(FileType.INDEX, other)])
    with pytest.raises(IntegrityError, match=f"index/{name}: content does not match its name"):
        mem_repo.load_json(FileType.INDEX, name)


# ------------------------------------------------------------------ blobs


def _stored(repo: Repository, *datas: bytes, pack_size: int = 1 << 24) -> list[bytes]:
    w = BlobWriter(repo, pack_size=pack_size)
    ids = [w.save(BlobType.DATA, d).id for d in datas]
    w.flush()
    w.write_index()
    w.close()
    return ids


def test_blobs_load_through_the_index(mem_repo) -> None:
    datas = [os.urandom(3000), b"text " * 1000, b""]
    ids = _stored(mem_repo, *datas, pack_size=4096)
    fresh = reopen(mem_repo)
    assert [fresh.load_blob(BlobType.DATA, i) for i in ids] == datas
    with pytest.raises(NotFound, match="is not in the index"):
        fresh.load_blob(BlobType.DATA, crypto.sha256(b"never stored"))
    with pytest.raises(NotFound):
        fresh.load_blob(BlobType.TREE, ids[0])  # a data blob is no tree


def test_the_index_is_loaded_once_from_every_index_file(mem_repo) -> None:
    first = _stored(mem_repo, b"one")
    second = _stored(reopen(mem_repo), b"two")
    fresh = reopen(mem_repo)
    names, live = fresh.load_index()
    assert len(names) == 2 and len(live) == 2
    assert fresh.index.has(BlobType.DATA, first[0]) and fresh.index.has(BlobType.DATA, second[0])
    assert fresh.index.files == {bytes.fromhex(n) for n in names}


def test_decode_blob_checks_lengths_and_the_id(mem_repo) -> None:
    data = os.urandom(1000)
    sealed = crypto.encrypt(mem_repo.key, data)
    blob_id = crypto.sha256(data)
    assert mem_repo.decode_blob(BlobType.DATA, blob_id, sealed, 0) == data
    wrong = crypto.sha256(b"something else")
    with pytest.raises(IntegrityError, match="content does not match its id"):
        mem_repo.decode_blob(BlobType.DATA, wrong, sealed, 0)
    assert mem_repo.decode_blob(BlobType.DATA, wrong, sealed, 0, verify=False) == data
    with pytest.raises(IntegrityError, match="beyond any genuine blob"):
        mem_repo.decode_blob(BlobType.DATA, blob_id, sealed, 1 << 40)
    flipped = bytearray(sealed)
    flipped[20] ^= 1
    with pytest.raises(IntegrityError):
        mem_repo.decode_blob(BlobType.DATA, blob_id, bytes(flipped), 0)


def test_a_tree_loads_as_nodes(mem_repo) -> None:
    w = BlobWriter(mem_repo)
    tree = b'{"nodes":[{"name":"a","type":"file","content":[]}]}\n'
    tree_id = w.save(BlobType.TREE, tree).id
    w.flush()
    w.write_index()
    w.close()
    (node,) = reopen(mem_repo).load_tree(tree_id)
    assert (node.name, node.type, node.content) == (b"a", "file", [])


# ------------------------------------------------------------------ snapshots


def _snap(repo: Repository, time: str, tree: bytes = b"\0" * 32) -> Snapshot:
    snap = Snapshot(time=time, tree=BlobId(tree), paths=("/home/me",), hostname="laptop")
    return Snapshot.from_json(snap.to_json(), repo.save_snapshot(snap))


def test_snapshots_are_listed_oldest_first_and_found_by_prefix(mem_repo) -> None:
    with pytest.raises(NotFound, match="no snapshots yet"):
        mem_repo.find_snapshot("latest")
    b = _snap(mem_repo, "2024-02-01T10:00:00Z")
    a = _snap(mem_repo, "2024-01-01T10:00:00Z")
    assert a.id is not None and b.id is not None
    assert [s.id for s in mem_repo.list_snapshots()] == [a.id, b.id]
    assert mem_repo.find_snapshot("latest").id == b.id
    assert mem_repo.find_snapshot(a.id.hex()[:8].upper()).id == a.id
    with pytest.raises(NotFound, match="not a snapshot id"):
        mem_repo.find_snapshot("xyz")
    absent = next(p for p in ("0" * 9, "f" * 9) if not a.id.hex().startswith(p))
    with pytest.raises(NotFound, match="no snapshot matches"):
        mem_repo.find_snapshot(absent)


def test_an_ambiguous_prefix_asks_for_more_digits(mem_repo) -> None:
    ids = [_snap(mem_repo, f"2024-01-{d:02d}T10:00:00Z").id for d in range(1, 18)]
    firsts = [i.hex()[0] for i in ids if i is not None]
    digit = next(c for c in firsts if firsts.count(c) > 1)  # 17 ids, 16 hex digits
    with pytest.raises(NotFound, match="snapshots; give more digits"):
        mem_repo.find_snapshot(digit)


def test_a_damaged_snapshot_is_named_and_skipped_where_asked(mem_repo) -> None:
    good = _snap(mem_repo, "2024-01-01T10:00:00Z")
    bad_name = mem_repo.save_json(FileType.SNAPSHOT, {"not": "a snapshot"})
    with pytest.raises(IntegrityError, match=f"snapshot {bad_name} cannot be read"):
        mem_repo.list_snapshots()
    assert [s.id for s in mem_repo.list_snapshots(skip_damaged=True)] == [good.id]
    assert [n for n, _ in mem_repo.damaged_snapshots] == [bad_name]
    assert mem_repo.find_snapshot("latest").id == good.id
