"""The blob writer: dedup, packs by type and size, uploads, index checkpoints, ordering."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest
from support import FAST_KDF, PASSWORD, reopen, write

from desktop_agent.engine import crypto
from desktop_agent.engine import writer as writermod
from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.errors import StorageError
from desktop_agent.engine.ids import BlobType
from desktop_agent.engine.pack import PackBuilder, parse_pack_tail
from desktop_agent.engine.repository import Repository, hostname
from desktop_agent.engine.storage import FileType, MemoryStorage
from desktop_agent.engine.writer import BlobWriter, remove_stale_spool


def pack_headers(repo: Repository) -> dict[str, list]:  # type: ignore[type-arg]
    """Every stored pack's blobs, read from the pack itself."""
    out = {}
    for name, size in repo.storage.list(FileType.PACK):
        raw = repo.storage.load(FileType.PACK, name)
        assert crypto.sha256(raw).hex() == name
        out[name] = parse_pack_tail(repo.key, raw, size)
    return out


def indexed_packs(repo: Repository) -> list[set[str]]:
    """The packs each index file lists."""
    return [
        {p["id"] for p in repo.load_json(FileType.INDEX, name)["packs"]}
        for name, _ in repo.storage.list(FileType.INDEX)
    ]


def test_blobs_are_packed_by_type_and_read_back(mem_repo) -> None:
    w = BlobWriter(mem_repo)
    datas = [os.urandom(1000 + i) for i in range(20)]
    results = [w.save(BlobType.DATA, d) for d in datas]
    tree = b'{"nodes":[]}\n'
    tree_res = w.save(BlobType.TREE, tree)
    assert all(r.new and r.stored > len(d) for r, d in zip(results, datas, strict=True))
    assert [r.id for r in results] == [crypto.sha256(d) for d in datas]
    w.flush()
    w.write_index()
    w.close()
    headers = pack_headers(mem_repo)
    assert len(headers) == 2  # one pack per blob type
    kinds = sorted({b.type for b in blobs} for blobs in headers.values())
    assert kinds == [{BlobType.DATA}, {BlobType.TREE}]
    fresh = reopen(mem_repo)
    assert [fresh.load_blob(BlobType.DATA, r.id) for r in results] == datas
    assert fresh.load_blob(BlobType.TREE, tree_res.id) == tree
    assert w.packs_written == 2 and w.bytes_written == sum(
        size for _, size in mem_repo.storage.list(FileType.PACK)
    )


def test_a_pack_is_finished_when_it_reaches_the_pack_size(mem_repo) -> None:
    w = BlobWriter(mem_repo, pack_size=64 * 1024)
    for _ in range(40):
        w.save(BlobType.DATA, os.urandom(10_000))
    w.flush()
    w.write_index()
    w.close()
    headers = pack_headers(mem_repo)
    assert len(headers) >= 6
    assert sum(len(b) for b in headers.values()) == 40
    sizes = sorted(size for _, size in mem_repo.storage.list(FileType.PACK))
    assert all(s >= 64 * 1024 for s in sizes[1:])  # only the last, flushed one may be short


def test_compressible_blobs_are_compressed_unless_version_1(tmp_path, mem_repo) -> None:
    text = b"all work and no play makes jack a dull boy\n" * 2000
    assert BlobWriter(mem_repo).save(BlobType.DATA, text).stored < len(text) // 10
    v1 = Repository.init(
        MemoryStorage(str(tmp_path / "spool")), PASSWORD, kdf_params=FAST_KDF, version=1
    )
    assert BlobWriter(v1).save(BlobType.DATA, text).stored == len(text) + crypto.OVERHEAD


def test_concurrent_saves_of_one_blob_store_it_once(mem_repo) -> None:
    w = BlobWriter(mem_repo)
    data = os.urandom(50_000)
    barrier = threading.Barrier(8)
    results = []
    lock = threading.Lock()

    def save() -> None:
        barrier.wait()
        for _ in range(20):
            r = w.save(BlobType.DATA, data)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=save) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 160 and sum(r.new for r in results) == 1
    assert sum(r.stored for r in results) == next(r.stored for r in results if r.new)
    w.flush()
    w.write_index()
    assert sum(len(b) for b in pack_headers(mem_repo).values()) == 1
    # and once stored and indexed, a new writer knows it too
    again = BlobWriter(reopen(mem_repo)).save(BlobType.DATA, data)
    assert not again.new and again.stored == 0


def test_save_many_is_save_for_each(mem_repo) -> None:
    w = BlobWriter(mem_repo)
    a, b = os.urandom(3000), os.urandom(3000)
    first = w.save(BlobType.DATA, a)
    results = w.save_many(BlobType.DATA, [a, b, b, b"", b""])
    assert [r.new for r in results] == [False, True, False, True, False]
    assert results[0].id == first.id and results[0].stored == 0
    assert [r.id for r in results] == [crypto.sha256(d) for d in (a, b, b, b"", b"")]
    w.flush()
    w.write_index()
    fresh = reopen(mem_repo)
    assert fresh.load_blob(BlobType.DATA, results[1].id) == b
    assert fresh.load_blob(BlobType.DATA, results[3].id) == b""


def test_index_checkpoints_list_only_stored_packs(mem_repo, monkeypatch) -> None:
    """While blobs keep coming, an index file is written after every second
    stored pack: a run killed later keeps them. Each pack is in exactly one
    index file, written after the pack."""
    stored: list[str] = []
    real_save_file = mem_repo.storage.save_file

    def save_file(ftype: FileType, name: str, path: str) -> None:
        real_save_file(ftype, name, path)
        stored.append(name)

    monkeypatch.setattr(mem_repo.storage, "save_file", save_file)
    w = BlobWriter(mem_repo, pack_size=32 * 1024)
    for _ in range(24):
        w.save(BlobType.DATA, os.urandom(20_000))
    w.wait_uploads()
    checkpoints = indexed_packs(mem_repo)
    assert len(checkpoints) >= 5  # 24 packs or so, an index file every 2
    assert all(len(c) == 2 for c in checkpoints)
    w.flush()
    w.write_index()
    w.close()
    every = indexed_packs(mem_repo)
    listed = [p for c in every for p in c]
    assert sorted(listed) == sorted(stored)  # each stored pack in exactly one index file


def test_a_checkpoint_is_also_due_after_a_while(mem_repo, monkeypatch) -> None:
    monkeypatch.setattr(writermod, "CHECKPOINT_SECONDS", 0.0)
    w = BlobWriter(mem_repo, pack_size=16 * 1024)
    w.save(BlobType.DATA, os.urandom(20_000))  # one full pack: due at once
    w.wait_uploads()
    assert len(indexed_packs(mem_repo)) == 1
    w.close()


def test_a_pack_made_elsewhere_is_adopted(tmp_path, mem_repo) -> None:
    builder = PackBuilder(mem_repo.key, str(tmp_path))
    data = os.urandom(5000)
    blob_id = crypto.sha256(data)
    builder.add(BlobType.DATA, blob_id, crypto.encrypt(mem_repo.key, data), 0)
    finished = builder.finish()
    w = BlobWriter(mem_repo)
    w.adopt(finished)
    w.flush()
    w.write_index()
    w.close()
    assert not os.path.exists(finished.path)  # the spool file went into the storage
    assert indexed_packs(mem_repo) == [{finished.pack_id.hex()}]
    assert reopen(mem_repo).load_blob(BlobType.DATA, blob_id) == data


def test_abandon_drops_open_packs_and_keeps_stored_ones(tmp_path, mem_repo) -> None:
    spool = Path(mem_repo.storage.spool_dir())
    w = BlobWriter(mem_repo, pack_size=32 * 1024)
    for _ in range(3):
        w.save(BlobType.DATA, os.urandom(20_000))
    w.wait_uploads()
    w.write_index()
    assert list(spool.iterdir())  # an open pack is being spooled
    w.abandon()
    w.close()
    assert list(spool.iterdir()) == []
    stored = {name for name, _ in mem_repo.storage.list(FileType.PACK)}
    assert stored and set().union(*indexed_packs(mem_repo)) == stored


def test_stale_spool_files_of_dead_processes_are_cleaned(new_repo):
    repo = new_repo()
    spool = Path(repo.storage.spool_dir())
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = spool / f"pack-{hostname()}-{dead.pid}-abc123"
    stale.write_bytes(b"half a pack")
    alive = spool / f"pack-{hostname()}-{os.getpid()}-def456"
    alive.write_bytes(b"being written")
    other_host = spool / f"pack-elsewhere-{dead.pid}-ghi789"
    other_host.write_bytes(b"not ours to judge")
    assert remove_stale_spool(repo) == 1
    assert not stale.exists() and alive.exists() and other_host.exists()


# ------------------------------------------------------------------ write ordering


class _Recording(MemoryStorage):
    """A memory storage noting each save (packs too) when it has completed."""

    def __init__(self, spool: str) -> None:
        super().__init__(spool)
        self.done: list[tuple[FileType, str]] = []

    def save(self, ftype, name, parts):  # type: ignore[no-untyped-def]
        super().save(ftype, name, parts)
        self.done.append((ftype, name))


def test_packs_are_stored_before_their_index_and_the_index_before_the_snapshot(
    tmp_path, monkeypatch
):
    monkeypatch.setitem(BlobWriter.__init__.__kwdefaults__, "pack_size", 512 * 1024)
    src = tmp_path / "src"
    for i in range(12):
        write(src / f"f{i}.bin", os.urandom(700_000))
    for i in range(300):
        write(src / "small" / f"s{i}.txt", os.urandom(3000))
    (tmp_path / "spool").mkdir()
    storage = _Recording(str(tmp_path / "spool"))
    repo = Repository.init(storage, PASSWORD, kdf_params=FAST_KDF)
    backup(repo, BackupOptions(sources=[str(src)]))
    saved = storage.done
    when = {name: i for i, (_t, name) in enumerate(saved)}
    indexes = [(i, n) for i, (t, n) in enumerate(saved) if t is FileType.INDEX]
    assert len(indexes) >= 2  # checkpoints, and the last index
    listed = 0
    for i, name in indexes:
        for pack in repo.load_json(FileType.INDEX, name)["packs"]:
            assert when[pack["id"]] < i, f"index {name[:8]} lists pack {pack['id'][:8]} early"
            listed += 1
    assert listed == sum(1 for t, _ in saved if t is FileType.PACK)  # every pack indexed
    (snap,) = [i for i, (t, _n) in enumerate(saved) if t is FileType.SNAPSHOT]
    assert snap > max(i for i, _n in indexes)


@pytest.mark.parametrize("fail_on", [FileType.PACK, FileType.INDEX])
def test_a_failed_upload_fails_the_saves_after_it(mem_repo, monkeypatch, fail_on) -> None:
    """A pack (or the index checkpoint after it) that cannot be stored: the
    writer says so at the next wait and refuses every later blob."""

    def broken(*_args: object) -> None:
        raise StorageError("the destination went away")

    monkeypatch.setattr(writermod, "CHECKPOINT_PACKS", 1)
    monkeypatch.setattr(
        mem_repo.storage, "save_file" if fail_on is FileType.PACK else "save", broken
    )
    w = BlobWriter(mem_repo, pack_size=16 * 1024)
    w.save(BlobType.DATA, os.urandom(20_000))  # a full pack: uploaded at once
    with pytest.raises(StorageError, match="went away"):
        w.wait_uploads()
    with pytest.raises(StorageError, match="went away"):
        w.save(BlobType.DATA, os.urandom(100))
    w.abandon()
    w.close()
    assert list(Path(mem_repo.storage.spool_dir()).iterdir()) == []
