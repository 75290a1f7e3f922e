"""Random bytes into every decoder that reads repository data: only the
engine's own errors come out (never ValueError, OverflowError, MemoryError,
RecursionError, KeyError...), and a decoded value is always one the rest of
the program can use."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import FAST_KDF, PASSWORD

from desktop_agent.engine import crypto
from desktop_agent.engine.errors import EngineError
from desktop_agent.engine.ids import BlobId, BlobType
from desktop_agent.engine.index import decode_index
from desktop_agent.engine.limits import MAX_UNPACKED
from desktop_agent.engine.pack import parse_header, parse_pack_tail
from desktop_agent.engine.repository import RepoConfig, Repository
from desktop_agent.engine.restorewalk import Light, light_tree_by_node
from desktop_agent.engine.snapshot import Snapshot
from desktop_agent.engine.storage import MemoryStorage
from desktop_agent.engine.tree import NodeType, decode_tree, decode_tree_by_node
from desktop_agent.engine.treedoc import light_nodes

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# JSON values with the shapes repository documents have, and wrong ones
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["ab" * 32, "file", "dir", "2024-01-01T00:00:00Z", "data", "tree", ""])
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
_keys = "name type mode mtime atime ctime uid gid size inode links linktarget linktarget_raw "
_keys += "content subtree device device_id extended_attributes id offset length "
_keys += "uncompressed_length blobs packs supersedes time tree paths hostname summary "
_keys += "version chunker_polynomial kdf N r p salt data"
_shaped = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(_keys.split()), inner, max_size=8)
    ),
    max_leaves=30,
)
_docs = _json | _shaped
_names = st.sampled_from(["a", "", ".", "..", "a/b", "a\x00b", "\\xff", "ok"]) | st.text(max_size=6)
_node_dicts = st.fixed_dictionaries(
    {"name": _names, "type": st.sampled_from(["file", "dir", "symlink", "dev", "x"])},
    optional={k: _shaped for k in _keys.split()[2:17]},
)
_trees = st.fixed_dictionaries({"nodes": st.lists(_node_dicts | _shaped, max_size=4)})


@pytest.fixture(scope="module")
def repo() -> Repository:
    return Repository.init(MemoryStorage(), PASSWORD, kdf_params=FAST_KDF)


def _only_engine_errors(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except EngineError:
        return None


@FUZZ
@given(st.binary(max_size=2000) | (_docs | _trees).map(lambda d: json.dumps(d).encode()))
def test_tree(data: bytes) -> None:
    nodes = _only_engine_errors(decode_tree, data)
    for node in nodes or ():
        if node.type == NodeType.INVALID:
            assert node.invalid
            continue
        assert node.name and b"/" not in node.name and b"\0" not in node.name
        assert node.name not in (b".", b"..")
        assert 0 <= node.size < 2**63 and 0 <= node.uid < 2**32 and 0 <= node.gid < 2**32
        assert b"\0" not in node.linktarget


@FUZZ
@given(st.binary(max_size=2000) | (_docs | _trees).map(lambda d: json.dumps(d).encode()))
def test_tree_decoded_in_c_or_not_the_nodes_are_the_same(data: bytes) -> None:
    # decode_tree takes msgspec's nodes only where the slow path makes the same
    assert _only_engine_errors(decode_tree, data) == _only_engine_errors(decode_tree_by_node, data)


@FUZZ
@given(st.binary(max_size=2000) | (_docs | _trees).map(lambda d: json.dumps(d).encode()))
def test_counting_pass_decoded_in_c_counts_what_the_slow_path_counts(data: bytes) -> None:
    fast = light_nodes(data, Light)
    if fast is None:
        return  # the slow path decides
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return  # skipped fields are not read in C: such a tree is counted there only
    assert fast == _only_engine_errors(light_tree_by_node, data, BlobId(bytes(32)))


@FUZZ
@given(_docs)
def test_index(doc: Any) -> None:
    result = _only_engine_errors(decode_index, doc)
    if result is not None:
        for _pack, blobs in result[1]:
            for b in blobs:
                assert 0 <= b.offset < 2**40 and 32 <= b.length < 2**32


@FUZZ
@given(_docs)
def test_snapshot(doc: Any) -> None:
    snap = _only_engine_errors(Snapshot.from_json, doc)
    if snap is not None:
        assert isinstance(snap.hostname, str) and all(isinstance(p, str) for p in snap.paths)
        snap.time_ns  # noqa: B018 - parses again: must not raise
        if snap.summary is not None:
            assert isinstance(snap.summary.total_bytes_processed, int)


@FUZZ
@given(st.binary(max_size=600) | _docs.map(lambda d: json.dumps(d).encode()))
def test_key_file(data: bytes) -> None:
    _only_engine_errors(crypto.open_key_file, data, "password")


@FUZZ
@given(st.binary(max_size=300) | _docs.map(lambda d: json.dumps(d).encode()))
def test_config(data: bytes) -> None:
    _only_engine_errors(RepoConfig.from_bytes, data)


@FUZZ
@given(st.binary(max_size=400))
def test_pack_header(data: bytes) -> None:
    _only_engine_errors(parse_header, data)


@FUZZ
@given(st.binary(max_size=400), st.integers(0, 2**40))
def test_pack_tail(repo: Repository, tail: bytes, size: int) -> None:
    _only_engine_errors(parse_pack_tail, repo.key, tail, size)


@FUZZ
@given(st.binary(max_size=400))
def test_pack_tail_with_an_authentic_header(repo: Repository, header: bytes) -> None:
    """A header that passes the MAC (someone with the key wrote it) but holds garbage."""
    sealed = crypto.encrypt(repo.key, header)
    tail = sealed + struct.pack("<I", len(sealed))
    _only_engine_errors(parse_pack_tail, repo.key, tail, len(tail))


_frames = (
    st.binary(max_size=300)
    | st.binary(max_size=2000).map(lambda b: zstandard.ZstdCompressor().compress(b))
    | st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 1 << 20)).map(
        # a frame whose header claims a size (up to 16 EiB) and holds another
        lambda t: _claiming(*t)
    )
)


def _claiming(claimed: int, actual: int) -> bytes:
    frame = bytearray(b"\x28\xb5\x2f\xfd\xe0" + claimed.to_bytes(8, "little"))
    while True:
        n = min(actual, 128 * 1024)
        actual -= n
        frame += ((1 if actual == 0 else 0) | (1 << 1) | (n << 3)).to_bytes(3, "little") + b"x"
        if not actual:
            return bytes(frame)


@FUZZ
@given(st.binary(max_size=1) | st.just(b"\x02"), _frames)
def test_unpacked_file(repo: Repository, head: bytes, body: bytes) -> None:
    out = _only_engine_errors(repo.decode_unpacked, head + body)
    if out is not None:
        assert len(out) <= MAX_UNPACKED


@FUZZ
@given(_frames, st.integers(0, 2**32 - 1), st.sampled_from(BlobType))
def test_blob(repo: Repository, payload: bytes, ulen: int, blob_type: BlobType) -> None:
    """Decrypting works (the key is right); what is inside is anything."""
    sealed = crypto.encrypt(repo.key, payload)
    out = _only_engine_errors(
        lambda: repo.decode_blob(blob_type, b"\0" * 32, sealed, ulen, verify=False)
    )
    if out is not None:
        assert len(out) == (ulen or len(payload))
