"""The restore's filling of files: pack reads capped, bytes in flight bounded,
all-zero blocks left as holes, hard links across many batches."""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support import reopen, signature, write

from desktop_agent.engine import restorefill
from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.errors import EngineError
from desktop_agent.engine.ids import BlobId, BlobType
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.restore import RestoreOptions, restore
from desktop_agent.engine.restorefill import all_zero
from desktop_agent.engine.storage import FileType
from desktop_agent.engine.tree import Node

KiB = 1024
MiB = 1024 * KiB


class _Recording:
    """A storage that records the restore workers' pack reads: their lengths, and
    how many ran at once.

    With ``hold_first``, the first pack read waits (at most half a second) for
    another to start beside it, so that reads allowed to overlap do overlap.
    """

    def __init__(self, backend: Any, *, hold_first: bool = False) -> None:
        self.backend = backend
        self.reads: list[int] = []
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()
        self._hold = hold_first
        self._second = threading.Event()

    def reset(self) -> None:
        """Forget the reads so far."""
        self.reads.clear()
        self.most = 0
        self._second.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def load(
        self, ftype: FileType, name: str, offset: int = 0, length: int | None = None, **kw: Any
    ) -> bytes:
        if ftype is not FileType.PACK or not threading.current_thread().name.startswith("restore"):
            return self.backend.load(ftype, name, offset, length, **kw)  # not a worker's read
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
            first = not self.reads
            self.reads.append(-1 if length is None else length)
            if not first:
                self._second.set()
        try:
            if first and self._hold:
                self._second.wait(0.5)
            return self.backend.load(ftype, name, offset, length, **kw)
        finally:
            with self._lock:
                self.running -= 1


def _backed_up(src: Path, repo: Repository, recording: _Recording | None = None) -> Repository:
    """Back ``src`` up; a fresh Repository on the same storage (recorded, if asked).

    No helper processes: small files go into the backup's own packs, whose
    size the tests rely on (helpers would each make packs of their own).
    """
    backup(repo, BackupOptions(sources=[str(src)], helpers=0))
    fresh = reopen(repo)
    if recording is not None:
        fresh.storage = recording
    return fresh


def _node(repo: Repository, path: Path) -> Node:
    nodes = repo.load_tree(repo.find_snapshot("latest").tree)
    parts = [os.fsencode(p) for p in path.parts[1:]]
    for i, part in enumerate(parts):
        node = next(n for n in nodes if n.name == part)
        if i == len(parts) - 1:
            return node
        assert node.subtree is not None
        nodes = repo.load_tree(node.subtree)
    raise AssertionError(f"{path} is not in the snapshot")


def _restore(repo: Repository, target: Path) -> None:
    res = restore(repo, repo.find_snapshot("latest"), RestoreOptions(target=str(target)))
    assert res.errors == ()


def test_pack_reads_are_capped_and_a_larger_blob_is_read_alone(tmp_path, mem_repo, monkeypatch):
    src = tmp_path / "src"
    for i in range(1500):  # 3 MiB of small files in one pack
        write(src / f"d{i % 7}" / f"f{i}", os.urandom(2 * KiB + i))
    write(src / "big.bin", os.urandom(700 * KiB))  # blobs of 512 KiB and more
    cap = 256 * KiB
    monkeypatch.setattr(restorefill, "MAX_RANGE", cap)
    recording = _Recording(mem_repo.storage)
    repo = _backed_up(src, mem_repo, recording)
    assert max(size for _name, size in repo.storage.list(FileType.PACK)) > 8 * cap

    _restore(repo, tmp_path / "out")

    assert signature(tmp_path / "out" / str(src).lstrip("/")) == signature(src)
    big = _node(repo, src / "big.bin").content or []
    big_lengths = {e.length for e in (repo.index.lookup(BlobType.DATA, b) for b in big) if e}
    assert max(big_lengths) > cap
    over = [n for n in recording.reads if n > cap]
    assert over and set(over) <= big_lengths  # a larger blob alone, nothing merged with it
    assert len(recording.reads) >= 1500 * 2 * KiB // cap  # the small files: many capped reads


def test_the_bytes_in_flight_are_bounded(tmp_path, mem_repo, monkeypatch):
    src = tmp_path / "src"
    for i in range(400):
        write(src / f"f{i}", os.urandom(3 * KiB))
    monkeypatch.setattr(restorefill, "MAX_RANGE", 64 * KiB)
    monkeypatch.setattr(restorefill, "SMALL_BLOBS", 0)  # no range of small blobs waits its turn
    recording = _Recording(mem_repo.storage, hold_first=True)
    repo = _backed_up(src, mem_repo, recording)

    # every range costs more than the budget: each is read alone, none waits forever
    monkeypatch.setattr(restorefill, "IN_FLIGHT", 16 * KiB)
    _restore(repo, tmp_path / "alone")
    assert len(recording.reads) > 10
    assert recording.most == 1

    # with room for them, ranges are read side by side
    monkeypatch.setattr(restorefill, "IN_FLIGHT", 16 * MiB)
    recording.reset()
    _restore(repo, tmp_path / "together")
    assert recording.most > 1
    for out in ("alone", "together"):
        assert signature(tmp_path / out / str(src).lstrip("/")) == signature(src)


class _SmallReads(_Recording):
    """Records how many reads of small-blob ranges (at most ``small`` bytes) ran at
    once; the first such read waits (at most half a second) for a second one to
    start beside it, so that small ranges allowed to overlap do overlap."""

    def __init__(self, backend: Any, small: int) -> None:
        super().__init__(backend)
        self.small = small
        self.small_running = 0
        self.small_most = 0
        self._small_seen = False
        self._small_second = threading.Event()

    def load(
        self, ftype: FileType, name: str, offset: int = 0, length: int | None = None, **kw: Any
    ) -> bytes:
        is_small = ftype is FileType.PACK and length is not None and length <= self.small
        if not is_small or not threading.current_thread().name.startswith("restore"):
            return super().load(ftype, name, offset, length, **kw)
        with self._lock:
            self.small_running += 1
            self.small_most = max(self.small_most, self.small_running)
            first = not self._small_seen
            self._small_seen = True
            if not first:
                self._small_second.set()
        try:
            if first:
                self._small_second.wait(0.5)
            return super().load(ftype, name, offset, length, **kw)
        finally:
            with self._lock:
                self.small_running -= 1


def test_ranges_of_small_blobs_run_one_at_a_time(tmp_path, mem_repo, monkeypatch):
    src = tmp_path / "src"
    for i in range(400):
        write(src / f"s{i}", os.urandom(3 * KiB))
    write(src / "big", os.urandom(1200 * KiB))  # blobs of 512 KiB and more, not gated
    monkeypatch.setattr(restorefill, "MAX_RANGE", 64 * KiB)
    recording = _SmallReads(mem_repo.storage, small=64 * KiB)
    repo = _backed_up(src, mem_repo, recording)

    _restore(repo, tmp_path / "one")
    assert signature(tmp_path / "one" / str(src).lstrip("/")) == signature(src)
    assert len([n for n in recording.reads if n <= 64 * KiB]) > 10
    assert recording.small_most == 1

    # the check above can see overlap: without the limit, small ranges overlap
    monkeypatch.setattr(restorefill, "SMALL_BLOBS", 0)
    recording = _SmallReads(mem_repo.storage, small=64 * KiB)
    repo.storage = recording
    _restore(repo, tmp_path / "many")
    assert recording.small_most > 1
    assert signature(tmp_path / "many" / str(src).lstrip("/")) == signature(src)


def test_all_zero():
    assert all_zero(bytes(4096))
    assert all_zero(bytes(8 * MiB + 12345))  # a partial last slice
    assert not all_zero(bytes(4095))  # too small to be worth a hole
    for where in (0, 1, 70_000, 8 * MiB + 12343, 8 * MiB + 12344):
        data = bytearray(8 * MiB + 12345)
        data[where] = 1
        assert not all_zero(bytes(data)), where


def test_all_zero_blocks_stay_holes_and_trailing_zeros_keep_the_size(tmp_path, mem_repo):
    src = tmp_path / "src"
    head, tail = os.urandom(64 * KiB), os.urandom(64 * KiB)
    # chunks end at 8 MiB at the latest: each file has at least one chunk of zeros only
    write(src / "middle.img", head + bytes(20 * MiB) + tail)
    write(src / "ends.img", head + bytes(20 * MiB))
    write(src / "zeros.img", bytes(5 * MiB))
    write(src / "few-zeros", bytes(100))  # a small zero file is written, not a hole
    repo = _backed_up(src, mem_repo)

    _restore(repo, tmp_path / "out")

    out = tmp_path / "out" / str(src).lstrip("/")
    assert signature(out) == signature(src)
    assert (out / "ends.img").stat().st_size == 20 * MiB + 64 * KiB
    # the chunks of zeros only were never written (the chunks that hold data
    # carry zeros with them, up to 8 MiB a chunk)
    assert (out / "middle.img").stat().st_blocks * 512 <= 13 * MiB
    assert (out / "ends.img").stat().st_blocks * 512 <= 9 * MiB
    assert (out / "zeros.img").stat().st_blocks == 0
    assert (out / "few-zeros").read_bytes() == bytes(100)


def test_many_small_batches_restore_hard_links_and_every_kind_of_entry(
    tmp_path, mem_repo, monkeypatch, odd_tree
):
    src = odd_tree(tmp_path / "src")
    for i in range(40):
        write(src / "many" / f"d{i % 4}" / f"f{i}", os.urandom(100 + i) if i % 5 else b"")
    first = write(src / "links" / "a" / "first", os.urandom(5000))
    for i in range(6):  # the same file in several later batches
        os.link(first, src / "links" / f"again-{i}")
    (src / "links" / "zz").mkdir()
    os.link(first, src / "links" / "zz" / "last")
    # a batch of three files: each hard link lands in a batch after its first path
    monkeypatch.setattr(restorefill, "_BATCH_FILES", 3)
    repo = _backed_up(src, mem_repo)

    _restore(repo, tmp_path / "out")

    out = tmp_path / "out" / str(src).lstrip("/")
    assert signature(out) == signature(src)
    inode = (out / "links" / "a" / "first").stat().st_ino
    assert (out / "links" / "zz" / "last").stat().st_ino == inode
    assert {(out / "links" / f"again-{i}").stat().st_ino for i in range(6)} == {inode}


@pytest.mark.parametrize("shown", [True, False])
def test_a_root_tree_that_cannot_be_read_leaves_no_target_behind(tmp_path, mem_repo, shown):
    # without progress to show (the CLI off a terminal) the counting pass is
    # skipped; the root tree is still read before the target is made
    src = tmp_path / "src"
    write(src / "a.txt", b"a")
    repo = _backed_up(src, mem_repo)
    snap = replace(repo.find_snapshot("latest"), tree=BlobId(bytes(32)))
    target = tmp_path / "target"
    with pytest.raises(EngineError):
        restore(
            repo,
            snap,
            RestoreOptions(target=str(target)),
            progress=(lambda _p: None) if shown else None,
        )
    assert not target.exists()
