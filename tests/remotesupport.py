"""What the remote-backend tests share: test data, where restic restores it, what an
index lists, and the small-packs fixture (imported by each backend's test module)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from support import PASSWORD, write

from desktop_agent.engine import crypto
from desktop_agent.engine.ids import BlobType
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import Storage
from desktop_agent.engine.writer import BlobWriter

__all__ = ["data_blobs", "many_packs_tree", "restored", "small_packs"]


@pytest.fixture
def small_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    """256 KiB packs: a file of 1.1 MB makes a pack of its own, so faults hit mid-backup."""
    monkeypatch.setitem(BlobWriter.__init__.__kwdefaults__, "pack_size", 256 * 1024)


def many_packs_tree(root: Path, seed: int, count: int) -> Path:
    """``count`` files of 1.1 MB (a pack each, at most about 1.2 MB) and a few small ones."""
    rng = random.Random(seed)
    for i in range(count):
        write(root / "big" / f"b{i:02}.bin", rng.randbytes(1_100_000 + i))
    for i in range(20):
        write(root / "small" / f"s{i:02}.txt", rng.randbytes(2000 + i))
    write(root / "empty", b"")
    os.symlink("empty", root / "link")
    return root


def restored(target: Path, source: Path) -> Path:
    """Where a restore into ``target`` puts ``source`` (at its full path, as restic does)."""
    return target / str(source).lstrip("/")


def data_blobs(store: Storage) -> dict[bytes, int]:
    """The data blobs the repository's index lists (as a new process sees them),
    with their plaintext sizes."""
    repo = Repository.open(store, PASSWORD)
    _names, live = repo.load_index()
    return {
        b.id: b.uncompressed_length or b.length - crypto.OVERHEAD
        for blobs in live.values()
        for b in blobs
        if b.type is BlobType.DATA
    }
