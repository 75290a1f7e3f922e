"""The compact master index: grouped records, overlay merges, bulk loads, the local cache."""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

import pytest
from support import reopen, write

from desktop_agent.engine import index as index_mod
from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.errors import IntegrityError
from desktop_agent.engine.forget import KeepPolicy, forget
from desktop_agent.engine.ids import BlobId, BlobType, PackId
from desktop_agent.engine.idtable import IdSet
from desktop_agent.engine.index import (
    IndexEntry,
    MasterIndex,
    decode_index,
    encode_index,
    parse_index,
)
from desktop_agent.engine.indexcache import CACHE_NAME
from desktop_agent.engine.pack import PackedBlob
from desktop_agent.engine.prune import prune
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import FileType


def _rand_blob(rng: random.Random, blob_type: BlobType | None = None) -> PackedBlob:
    return PackedBlob(
        blob_type if blob_type is not None else rng.choice(list(BlobType)),
        BlobId(rng.randbytes(32)),
        rng.randrange(0, 1 << 40) if rng.random() < 0.02 else rng.randrange(0, 1 << 27),
        rng.randrange(32, 1 << 32),
        rng.choice([0, rng.randrange(1, 1 << 32)]),
    )


def _oracle_add(oracle: dict, pack_id: bytes, blobs: list[PackedBlob]) -> None:
    for b in blobs:
        key = (b.type, b.id)
        if key not in oracle:
            oracle[key] = IndexEntry(
                PackId(pack_id), b.offset, b.length, b.uncompressed_length, b.type
            )


def _same(index: MasterIndex, oracle: dict, rng: random.Random) -> None:
    assert len(index) == len(oracle)
    for (blob_type, blob_id), entry in oracle.items():
        assert index.lookup(blob_type, blob_id) == entry
        assert index.has(blob_type, blob_id)
    for _ in range(200):
        missing = rng.randbytes(32)
        assert not index.has(BlobType.DATA, missing)
        assert index.lookup(BlobType.TREE, missing) is None
    assert {(e.type, bid): e for bid, e in index.entries()} == oracle


def test_random_adds_match_a_dict_across_overlay_merges(monkeypatch):
    monkeypatch.setattr(index_mod, "_OVERLAY_MIN", 50)  # many merges
    rng = random.Random(7)
    index, oracle = MasterIndex(), {}
    earlier: list[PackedBlob] = []
    for _p in range(120):
        blobs = [_rand_blob(rng) for _ in range(rng.randrange(0, 30))]
        # some blobs again, in another pack: the first location must win
        blobs += rng.sample(earlier, min(len(earlier), 3))
        # ids that share a group (same first two bytes) and that overlap records
        if earlier:
            near = earlier[-1].id[:2] + rng.randbytes(30)
            blobs.append(PackedBlob(BlobType.DATA, BlobId(near), 5, 100))
        pack_id = rng.randbytes(32)
        index.add_pack(PackId(pack_id), blobs)
        _oracle_add(oracle, pack_id, blobs)
        earlier += blobs
    assert len(index._tables[BlobType.DATA].recs) > 0  # noqa: SLF001 - merges did happen
    _same(index, oracle, rng)
    assert index.blob_ids(BlobType.DATA) == {k[1] for k in oracle if k[0] is BlobType.DATA}


def test_merge_overlays_merges_large_overlays_and_leaves_small_ones(monkeypatch):
    """A backup merges the blobs indexed during its walk while its helpers
    finish; a tiny backup into a large index copies no table for it."""
    monkeypatch.setattr(index_mod, "_OVERLAY_MIN", 1 << 30)  # no merges on add
    rng = random.Random(11)
    index, oracle = MasterIndex(), {}

    def add(count: int) -> None:
        blobs = [_rand_blob(rng, BlobType.DATA) for _ in range(count)]
        pack_id = rng.randbytes(32)
        index.add_pack(PackId(pack_id), blobs)
        _oracle_add(oracle, pack_id, blobs)

    add(3200)
    index.merge_overlays()  # everything is overlay: merged
    table = index._tables[BlobType.DATA]  # noqa: SLF001
    assert len(table.recs) == 3200 * index_mod.REC and not table.overlay
    add(50)  # under a sixteenth of the table: it waits
    index.merge_overlays()
    assert index._tables[BlobType.DATA] is table and len(table.overlay) == 50  # noqa: SLF001
    add(200)  # 250 of 3,200 (over a sixteenth): merged
    index.merge_overlays()
    assert not index._tables[BlobType.DATA].overlay  # noqa: SLF001
    _same(index, oracle, rng)


def test_an_id_inside_another_record_is_not_found():
    index = MasterIndex()
    a = bytes(range(32))
    index.add_pack(PackId(b"\x01" * 32), [PackedBlob(BlobType.DATA, BlobId(a), 0, 100)])
    index.id_bytes(BlobType.DATA)  # merged into the table
    # the bytes of a record shifted by one: find() matches across records, never aligned
    shifted = a[1:] + b"\x01"
    assert not index.has(BlobType.DATA, shifted)
    assert not index.has(BlobType.DATA, a[:31])
    assert index.has(BlobType.DATA, a)


def test_bulk_load_matches_decode_index_and_drops_duplicates():
    rng = random.Random(3)
    index, oracle = MasterIndex(), {}
    docs = []
    seen: list[PackedBlob] = []
    for f in range(4):
        packs = []
        for _p in range(rng.randrange(1, 8)):
            kind = rng.choice([BlobType.DATA, BlobType.TREE, None])  # None: a mixed pack
            blobs = [_rand_blob(rng, kind) for _ in range(rng.randrange(0, 400))]
            blobs += rng.sample(seen, min(len(seen), 5))
            packs.append((PackId(rng.randbytes(32)), blobs))
            seen += blobs
        text = json.dumps(encode_index(packs) if f % 2 else packs_legacy(packs))
        # the JSON as stored, or parsed into Python objects first: checked alike
        docs.append(text.encode() if f < 2 else json.loads(text))
    # the first location of a blob wins, in load order
    for doc in docs:
        for pack_id, blobs in decode_index(doc)[1]:
            _oracle_add(oracle, pack_id, blobs)
    loader = index.loader()
    for doc in docs:
        loader.add_parsed(parse_index(doc)[1])
    assert len(index) == 0  # nothing visible before finish
    loader.finish()
    _same(index, oracle, rng)
    # on top of a loaded index: only what it lacks
    more = [(PackId(rng.randbytes(32)), [_rand_blob(rng) for _ in range(50)] + seen[:10])]
    loader = index.loader()
    loader.add_parsed(parse_index(encode_index(more))[1])
    loader.finish()
    _oracle_add(oracle, more[0][0], more[0][1])
    _same(index, oracle, rng)


def packs_legacy(packs):
    return encode_index(packs)["packs"]  # the pre-0.8 format: a bare list


@pytest.mark.parametrize(
    "blob",
    [
        {"type": "blob"},
        {"id": "zz" * 32},
        {"id": "ab " * 21 + "a"},
        {"offset": -1},
        {"offset": 1 << 40},
        {"length": 31},
        {"length": 1 << 32},
        {"uncompressed_length": -3},
        {"offset": "x"},
        {"offset": float("nan")},
    ],
)
def test_a_malformed_blob_fails_the_bulk_load_and_leaves_the_index_alone(blob):
    entry = {"id": "bb" * 32, "type": "data", "offset": 0, "length": 40, **blob}
    good = {"id": "cc" * 32, "type": "tree", "offset": 0, "length": 40}
    doc = {"packs": [{"id": "aa" * 32, "blobs": [good, entry]}]}
    with pytest.raises(IntegrityError):
        decode_index(doc)
    index = MasterIndex()
    loader = index.loader()
    with pytest.raises(IntegrityError):
        loader.add_parsed(parse_index(doc)[1])
    assert len(index) == 0


def test_concurrent_adds_while_others_ask(monkeypatch):
    monkeypatch.setattr(index_mod, "_OVERLAY_MIN", 64)
    index = MasterIndex()
    added: list[list[bytes]] = [[] for _ in range(4)]
    wrong: list[bytes] = []
    done = threading.Event()

    def add(t: int) -> None:
        rng = random.Random(t)
        for _p in range(60):
            blobs = [_rand_blob(rng, BlobType.DATA) for _ in range(20)]
            index.add_pack(PackId(rng.randbytes(32)), blobs)
            added[t] += [b.id for b in blobs]

    def ask() -> None:
        rng = random.Random(99)
        while not done.is_set():
            for ids in added:
                for blob_id in ids[-50:]:  # added before we look: must be found
                    if not index.has(BlobType.DATA, blob_id):
                        wrong.append(blob_id)
            if index.has(BlobType.DATA, rng.randbytes(32)):
                wrong.append(b"never added")

    asker = threading.Thread(target=ask)
    asker.start()
    adders = [threading.Thread(target=add, args=(t,)) for t in range(4)]
    for th in adders:
        th.start()
    for th in adders:
        th.join()
    done.set()
    asker.join()
    assert wrong == []
    assert len(index) == 4 * 60 * 20
    assert len(index.packs()) == 4 * 60
    assert all(index.has(BlobType.DATA, b) for ids in added for b in ids)


def test_id_bytes_feed_an_id_set():
    rng = random.Random(5)
    index = MasterIndex()
    blobs = [_rand_blob(rng, BlobType.DATA) for _ in range(3000)]
    index.add_pack(PackId(rng.randbytes(32)), blobs)
    known = IdSet(index.id_bytes(BlobType.DATA))
    assert len(known) == 3000
    assert all(b.id in known for b in blobs)
    fresh = rng.randbytes(32)
    assert fresh not in known
    known.add(fresh)
    assert fresh in known
    assert b"\x00" * 32 not in IdSet(b"")
    # the functions for a loop answer as the set does, with or without ids
    for ids in (known, IdSet(b"")):
        contains, add = ids.functions()
        other = rng.randbytes(32)
        assert not contains(other)
        add(other)
        assert contains(other) and other in ids
    contains, _add = known.functions()
    assert all(contains(b.id) for b in blobs)


# ------------------------------------------------------------ repositories
def _backed_up(tmp_path: Path, new_repo, files: int = 30) -> tuple[Repository, Path]:
    src = tmp_path / "src"
    for i in range(files):
        write(src / f"f{i}.bin", os.urandom(3000 + i))
    write(src / "big.bin", os.urandom(3 * 1024 * 1024))
    repo = new_repo()
    backup(repo, BackupOptions(sources=[str(src)], helpers=0))
    return repo, src


def _entries(repo: Repository) -> dict:
    return {(e.type, bid): e for bid, e in repo.index.entries()}


def _full(repo: Repository) -> dict:
    fresh = reopen(repo)
    fresh.ensure_index()
    return _entries(fresh)


class _Counting:
    """Counts the index files a repository reads."""

    def __init__(self, repo: Repository, monkeypatch) -> None:
        self.names: list[str] = []
        real = repo.load_stored  # every index file read passes here

        def load(ftype, name):
            if ftype is FileType.INDEX:
                self.names.append(name)
            return real(ftype, name)

        monkeypatch.setattr(repo, "load_stored", load)


def _cached(repo: Repository, cache: Path, monkeypatch) -> tuple[Repository, _Counting]:
    other = reopen(repo)
    other.index_cache_dir = str(cache)
    counting = _Counting(other, monkeypatch)
    other.ensure_index()
    return other, counting


def test_cache_round_trip_reads_no_index_file(tmp_path, new_repo, monkeypatch):
    repo, _src = _backed_up(tmp_path, new_repo)
    cache = tmp_path / "cache"
    first, counting = _cached(repo, cache, monkeypatch)
    assert counting.names  # nothing cached yet: parsed, then written
    assert (cache / CACHE_NAME).exists()
    second, counting = _cached(repo, cache, monkeypatch)
    assert counting.names == []
    assert _entries(second) == _entries(first) == _full(repo)
    assert second.index.files == first.index.files
    assert second.load_blob(BlobType.TREE, repo.find_snapshot("latest").tree)


@pytest.mark.parametrize("damage", ["flip", "truncate", "append", "other key", "swap"])
def test_a_damaged_or_foreign_cache_is_ignored(tmp_path, new_repo, monkeypatch, damage):
    repo, _src = _backed_up(tmp_path, new_repo)
    cache = tmp_path / "cache"
    _cached(repo, cache, monkeypatch)
    path = cache / CACHE_NAME
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x01
    elif damage == "truncate":
        raw = raw[: len(raw) - 100]
    elif damage == "append":
        raw += raw[-200:]
    elif damage == "other key":
        other = new_repo()  # another repository's key, same layout
        other.index_cache_dir = str(tmp_path / "other-cache")
        other.ensure_index()
        o_repo, _ = _backed_up(tmp_path / "o", new_repo)
        o_cache = tmp_path / "o-cache"
        _cached(o_repo, o_cache, monkeypatch)
        raw = bytearray((o_cache / CACHE_NAME).read_bytes())
    else:  # an older cache of the same repository with fewer chunks' worth: swap halves
        half = len(raw) // 2
        raw = raw[half:] + raw[:half]
    path.write_bytes(bytes(raw))
    again, counting = _cached(repo, cache, monkeypatch)
    assert counting.names  # the cache was not trusted: index files were read
    assert _entries(again) == _full(repo)


def test_cache_covering_a_vanished_index_file_is_not_used(tmp_path, new_repo, restic, monkeypatch):
    repo, src = _backed_up(tmp_path, new_repo)
    os.unlink(src / "big.bin")
    backup(reopen(repo), BackupOptions(sources=[str(src)], helpers=0))
    cache = tmp_path / "cache"
    before, _ = _cached(repo, cache, monkeypatch)
    # forget the first snapshot and prune: index files are replaced, packs deleted
    pruning = reopen(repo)
    forget(pruning, KeepPolicy(last=1), dry_run=False)
    prune(pruning, repack_threshold=0.0)
    after, counting = _cached(repo, cache, monkeypatch)
    listed = {name for name, _ in repo.storage.list(FileType.INDEX)}
    assert sorted(counting.names) == sorted(listed)  # a full reload
    assert _entries(after) == _full(repo)
    assert _entries(after) != _entries(before)
    packs = {bytes.fromhex(n) for n, _ in repo.storage.list(FileType.PACK)}
    assert {e.pack for e in _entries(after).values()} <= packs  # nothing points at a deleted pack
    # and the rewritten cache is the new state
    third, counting = _cached(repo, cache, monkeypatch)
    assert counting.names == [] and _entries(third) == _entries(after)
    restic(repo.storage.root, "check")


def test_new_index_files_are_read_on_top_of_the_cache(tmp_path, new_repo, restic, monkeypatch):
    repo, src = _backed_up(tmp_path, new_repo)
    cache = tmp_path / "cache"
    _cached(repo, cache, monkeypatch)
    old = {name for name, _ in repo.storage.list(FileType.INDEX)}
    write(src / "new.bin", os.urandom(50_000))
    writer = reopen(repo)
    writer.index_cache_dir = str(cache)
    backup(writer, BackupOptions(sources=[str(src)], helpers=0))
    new = {name for name, _ in repo.storage.list(FileType.INDEX)} - old
    assert new
    after, counting = _cached(repo, cache, monkeypatch)
    assert sorted(counting.names) == sorted(new)  # only the new files were parsed
    assert _entries(after) == _full(repo)
    restic(repo.storage.root, "check")


def test_refresh_reads_new_files_and_reloads_after_a_prune(tmp_path, new_repo, monkeypatch):
    repo, src = _backed_up(tmp_path, new_repo)
    kept = reopen(repo)  # a long-lived repository object, as the agent keeps one
    kept.ensure_index()
    write(src / "more.bin", os.urandom(40_000))
    backup(reopen(repo), BackupOptions(sources=[str(src)], helpers=0))
    counting = _Counting(kept, monkeypatch)
    kept.refresh_index()
    assert len(counting.names) >= 1
    assert _entries(kept) == _full(repo)
    counting.names.clear()
    kept.refresh_index()
    assert counting.names == []  # nothing new
    pruning = reopen(repo)
    forget(pruning, KeepPolicy(last=1), dry_run=False)
    prune(pruning, repack_threshold=0.0)
    kept.refresh_index()
    assert _entries(kept) == _full(repo)


def test_backup_with_the_index_cache_passes_restic_check(tmp_path, new_repo, restic):
    repo, src = _backed_up(tmp_path, new_repo, files=300)
    cache = tmp_path / "cache"
    for n in range(3):
        write(src / f"run{n}.txt", os.urandom(5000))
        again = reopen(repo)
        again.index_cache_dir = str(cache)
        backup(again, BackupOptions(sources=[str(src)], helpers=2))
    restic(repo.storage.root, "check", "--read-data")
