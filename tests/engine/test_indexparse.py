"""Index files parsed here and in a helper process at once (engine.indexparse).

Real helper processes, real index files in a real repository: the index a
helper helped to load must equal the one this process loads alone, errors
must name their file and come in the files' order, and a helper that dies
or is left early must cost nothing but time.
"""

from __future__ import annotations

import os
import random
import re
import signal

import pytest
from support import reopen

from desktop_agent.engine import indexparse
from desktop_agent.engine.errors import IntegrityError, StorageError
from desktop_agent.engine.ids import BlobId, BlobType, PackId
from desktop_agent.engine.index import encode_index
from desktop_agent.engine.pack import PackedBlob
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import FileType

FILES = 8
BLOBS = 3000  # per file


def _blob(rng: random.Random, blob_id: bytes | None = None) -> PackedBlob:
    return PackedBlob(
        BlobType.DATA if blob_id else rng.choice(list(BlobType)),
        BlobId(blob_id or rng.randbytes(32)),
        rng.randrange(0, 1 << 40) if rng.random() < 0.01 else rng.randrange(0, 1 << 27),
        rng.randrange(32, 1 << 20),
        rng.choice([0, rng.randrange(1, 1 << 20)]),
    )


@pytest.fixture
def many_files(new_repo) -> tuple[Repository, list[str]]:
    """A repository with FILES index files of BLOBS blobs each (a few blobs in two)."""
    repo = new_repo()
    rng = random.Random(7)
    twice = [rng.randbytes(32) for _ in range(20)]  # the same blob in two packs
    names = []
    for f in range(FILES):
        packs = []
        for p in range(10):
            blobs = [_blob(rng) for _ in range(BLOBS // 10)]
            if f in (2, 5) and p == 0:
                blobs += [_blob(rng, blob_id) for blob_id in twice]
            packs.append((PackId(rng.randbytes(32)), blobs))
        names.append(repo.save_json(FileType.INDEX, encode_index(packs)))
    return repo, names


def _entries(repo: Repository) -> dict:
    return {(e.type, bid): e for bid, e in repo.index.entries()}


def _load(repo: Repository, monkeypatch, *, helper: bool) -> tuple[Repository, int]:
    """A fresh load of ``repo``'s index; returns it and how many files this process parsed."""
    monkeypatch.setattr(indexparse, "HELPER_MIN_BYTES", 0 if helper else 1 << 62)
    parsed_here = []
    real = indexparse.parse_index_file

    def counted(key, dctx, name, sealed):
        parsed_here.append(name)
        return real(key, dctx, name, sealed)

    monkeypatch.setattr(indexparse, "parse_index_file", counted)
    fresh = reopen(repo)
    fresh.ensure_index()
    return fresh, len(parsed_here)


def test_the_helper_loads_the_same_index(many_files, monkeypatch):
    repo, names = many_files
    alone, here_alone = _load(repo, monkeypatch, helper=False)
    helped, here_helped = _load(repo, monkeypatch, helper=True)
    assert here_alone == FILES
    assert 0 < here_helped < FILES  # the helper parsed the others
    assert len(alone.index) == FILES * BLOBS + 20
    # the same records, pack numbers and first locations of the blobs stored twice
    assert _entries(helped) == _entries(alone)
    assert helped.index.files == alone.index.files == {bytes.fromhex(n) for n in names}
    assert helped.index.packs() == alone.index.packs()


def test_files_come_in_order_and_the_helper_stops_when_left_early(many_files):
    repo, names = many_files
    sizes = dict(repo.storage.list(FileType.INDEX))
    ordered = sorted(names)
    assert sum(sizes.values()) < indexparse.HELPER_MIN_BYTES  # too little for a helper ...
    files = indexparse.parse_index_files(
        repo.key,
        lambda n: repo.load_stored(FileType.INDEX, n),
        ordered,
        1 << 30,  # ... but said
    )
    first = [next(files)[0] for _ in range(3)]
    assert first == ordered[:3]
    helper = files.gi_frame.f_locals["helper"]
    assert helper is not None and helper.proc.poll() is None
    files.close()
    assert helper.proc.poll() is not None  # ended and reaped
    again = indexparse.parse_index_files(
        repo.key, lambda n: repo.load_stored(FileType.INDEX, n), ordered, 1 << 30
    )
    assert [name for name, _ in again] == ordered


@pytest.mark.parametrize("where", [0, 1, 5])
def test_a_malformed_file_fails_the_load_in_its_turn(many_files, monkeypatch, where):
    repo, names = many_files
    bad = repo.save_unpacked(FileType.INDEX, b'{"packs":[{"id":"00","blobs":[]}]}')
    order = sorted(names)
    order.insert(where, bad)
    seen = []
    files = indexparse.parse_index_files(
        repo.key, lambda n: repo.load_stored(FileType.INDEX, n), order, 1 << 30
    )
    with pytest.raises(IntegrityError, match=f"index/{bad} is malformed"):
        for name, _ in files:
            seen.append(name)
    assert seen == order[:where]  # every file before it, none after
    monkeypatch.setattr(indexparse, "HELPER_MIN_BYTES", 0)
    with pytest.raises(IntegrityError, match=f"index/{bad}"):
        reopen(repo).ensure_index()


def test_a_storage_error_comes_in_its_turn(many_files):
    repo, names = many_files
    order = sorted(names)

    def fetch(name):
        if name == order[4]:
            raise StorageError(f"index/{name}: gone")
        return repo.load_stored(FileType.INDEX, name)

    seen = []
    with pytest.raises(StorageError, match="gone"):
        for name, _ in indexparse.parse_index_files(repo.key, fetch, order, 1 << 30):
            seen.append(name)
    assert seen == order[:4]


def test_a_helper_that_dies_leaves_its_files_here(many_files, monkeypatch):
    repo, _names = many_files
    alone, _ = _load(repo, monkeypatch, helper=False)
    real = indexparse._Helper.parse
    killed = []

    def dies(self, name, sealed):
        if not killed:  # the first file it is given: the process is gone before it answers
            self.proc.kill()
            self.proc.wait()
            killed.append(name)
        return real(self, name, sealed)

    monkeypatch.setattr(indexparse._Helper, "parse", dies)
    helped, here = _load(repo, monkeypatch, helper=True)
    assert killed
    assert here == FILES  # every file, the one the helper held among them
    assert _entries(helped) == _entries(alone)


def test_a_helper_that_cannot_start_leaves_everything_here(many_files, monkeypatch):
    repo, _names = many_files
    alone, _ = _load(repo, monkeypatch, helper=False)

    def cannot(key):
        raise OSError("no processes left")

    monkeypatch.setattr(indexparse, "_Helper", cannot)
    helped, here = _load(repo, monkeypatch, helper=True)
    assert here == FILES
    assert _entries(helped) == _entries(alone)


@pytest.mark.parametrize("helper", [False, True])
def test_a_blob_stored_twice_keeps_its_first_location_far_offset_included(
    new_repo, monkeypatch, helper
):
    repo = new_repo()
    rng = random.Random(3)
    blob_id = rng.randbytes(32)
    for offset in (5 << 32, 7 << 32):  # far offsets (4 GiB and up): kept beside the records
        packs = [(PackId(rng.randbytes(32)), [_blob(rng, blob_id)._replace(offset=offset)])]
        packs += [(PackId(rng.randbytes(32)), [_blob(rng) for _ in range(50)])]
        repo.save_json(FileType.INDEX, encode_index(packs))
    listed = [n for n, _ in repo.storage.list(FileType.INDEX)]
    first = {}
    for name in listed:  # the first file in the order the repository lists them
        doc = repo.load_json(FileType.INDEX, name)
        for p in doc["packs"]:
            for b in p["blobs"]:
                if bytes.fromhex(b["id"]) == blob_id and not first:
                    first = {"pack": bytes.fromhex(p["id"]), "offset": b["offset"]}
    loaded, _ = _load(repo, monkeypatch, helper=helper)
    entry = loaded.index.lookup(BlobType.DATA, blob_id)
    assert entry is not None
    assert (entry.pack, entry.offset) == (first["pack"], first["offset"])


def test_a_helper_that_hangs_leaves_its_file_here(many_files, monkeypatch):
    repo, _names = many_files
    alone, _ = _load(repo, monkeypatch, helper=False)
    monkeypatch.setattr(indexparse, "_HELPER_ANSWER", 1.0)
    real = indexparse._Helper.parse
    stopped = []

    def hangs(self, name, sealed):
        if not stopped:  # stopped, not dead: it never answers
            os.kill(self.proc.pid, signal.SIGSTOP)
            stopped.append(self.proc)
        return real(self, name, sealed)

    monkeypatch.setattr(indexparse._Helper, "parse", hangs)
    helped, here = _load(repo, monkeypatch, helper=True)
    assert here == FILES
    assert _entries(helped) == _entries(alone)
    assert stopped[0].poll() is not None  # killed and reaped


@pytest.mark.parametrize("pack_id", [" " * 64, "ab" * 31 + "  "])
def test_a_pack_id_short_of_32_bytes_is_malformed(new_repo, pack_id):
    repo = new_repo()
    rng = random.Random(5)
    doc = encode_index([(PackId(rng.randbytes(32)), [_blob(rng)]) for _ in range(2)])
    doc["packs"][0]["id"] = pack_id
    repo.save_json(FileType.INDEX, doc)
    with pytest.raises(IntegrityError, match="is malformed: ValueError: invalid id"):
        reopen(repo).ensure_index()


def test_a_huge_refused_value_gives_a_short_error(new_repo):
    repo = new_repo()
    rng = random.Random(9)
    doc = encode_index([(PackId(rng.randbytes(32)), [_blob(rng)])])
    doc["packs"][0]["blobs"][0]["type"] = "x" * 1_000_000
    name = repo.save_json(FileType.INDEX, doc)
    with pytest.raises(IntegrityError) as err:
        reopen(repo).ensure_index()
    message = str(err.value)
    assert message.startswith(
        f"index/{name} is malformed: ValidationError: at $.packs[0].blobs[0].type: Invalid enum"
    )
    assert re.search(r"\.\.\. \(1,000,0\d\d characters\)$", message)
    assert len(message) < 500
