"""index: index file documents and the in-memory master index."""

from __future__ import annotations

import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from desktop_agent.engine.errors import IntegrityError
from desktop_agent.engine.ids import BlobId, BlobType, PackId
from desktop_agent.engine.index import (
    IndexEntry,
    MasterIndex,
    decode_index,
    encode_index,
    index_bytes,
    parse_index,
)
from desktop_agent.engine.pack import PackedBlob

_id = st.binary(min_size=32, max_size=32)
_blob = st.builds(
    PackedBlob,
    st.sampled_from(BlobType),
    _id.map(BlobId),
    st.integers(0, 2**40 - 1),
    st.integers(32, 2**32 - 1),
    st.just(0) | st.integers(1, 2**32 - 1),
)
_packs = st.lists(st.tuples(_id.map(PackId), st.lists(_blob, max_size=5)), max_size=5)


@settings(max_examples=200)
@given(_packs, st.lists(_id, max_size=3))
def test_index_round_trip(
    packs: list[tuple[PackId, list[PackedBlob]]], supersedes: list[bytes]
) -> None:
    doc = encode_index(packs, supersedes)
    # the JSON text as stored, and parsed into Python objects first
    assert decode_index(json.dumps(doc).encode()) == (supersedes, packs)
    assert decode_index(json.loads(json.dumps(doc))) == (supersedes, packs)
    assert decode_index(index_bytes(packs, supersedes)) == (supersedes, packs)


def test_index_document_format() -> None:
    blob_id, pack_id = b"\x01" * 32, b"\x02" * 32
    doc = encode_index(
        [
            (
                PackId(pack_id),
                [
                    PackedBlob(BlobType.DATA, BlobId(blob_id), 0, 100),
                    PackedBlob(BlobType.TREE, BlobId(blob_id), 100, 60, 500),
                ],
            )
        ]
    )
    assert doc == {
        "packs": [
            {
                "id": "02" * 32,
                "blobs": [
                    {"id": "01" * 32, "type": "data", "offset": 0, "length": 100},
                    {
                        "id": "01" * 32,
                        "type": "tree",
                        "offset": 100,
                        "length": 60,
                        "uncompressed_length": 500,
                    },
                ],
            }
        ]
    }
    assert "supersedes" not in doc
    assert encode_index([], [b"\x03" * 32]) == {"supersedes": ["03" * 32], "packs": []}


def test_decode_accepts_restic_variants() -> None:
    pack = {
        "id": "aa" * 32,
        "blobs": [{"id": "bb" * 32, "type": "data", "offset": 5, "length": 40}],
    }
    expected = [(PackId(b"\xaa" * 32), [PackedBlob(BlobType.DATA, BlobId(b"\xbb" * 32), 5, 40)])]
    assert decode_index({"packs": [pack]}) == ([], expected)
    assert decode_index({"supersedes": None, "packs": [pack]}) == ([], expected)
    assert decode_index([pack]) == ([], expected)  # the legacy format: a bare list of packs
    assert decode_index({"packs": None}) == ([], [])
    assert decode_index({"packs": [{"id": "aa" * 32, "blobs": None}]}) == (
        [],
        [(PackId(b"\xaa" * 32), [])],
    )
    # fields a later restic may add are skipped, however deep
    later = {"packs": [{**pack, "note": {"a": [1, {"b": None}]}}], "version": 3, "x": [[[]]]}
    assert decode_index(json.dumps(later).encode()) == ([], expected)
    assert decode_index(json.dumps([pack]).encode()) == ([], expected)


_PACK = "aa" * 32
_BLOB = "bb" * 32


def _one(**blob: object) -> dict[str, object]:
    entry: dict[str, object] = {"id": _BLOB, "type": "data", "offset": 0, "length": 40}
    entry.update(blob)
    return {"packs": [{"id": _PACK, "blobs": [{k: v for k, v in entry.items() if v is not ...}]}]}


@pytest.mark.parametrize(
    "doc",
    [
        None,
        5,
        "index",
        {"packs": 5},
        {"packs": [5]},
        {"packs": [{}]},
        {"packs": [{"id": "zz"}]},
        {"packs": [{"id": _PACK, "blobs": [5]}]},
        {"supersedes": ["short"], "packs": []},
        {"supersedes": 7, "packs": []},
        _one(type="blob"),
        _one(type=None),
        _one(id="not hex" * 10),
        _one(id="aa" * 21 + " " * 22),  # fromhex skips spaces: 21 bytes
        _one(id="aa" * 31 + "a"),
        {"supersedes": ["aa" * 21 + " " * 22], "packs": []},
        {"packs": [{"id": " " * 64}]},
        _one(id=...),
        _one(offset=...),
        _one(length="forty"),
        _one(offset=float("inf")),
        _one(length=float("nan")),
        _one(offset=-1),
        _one(length=-40),
        _one(uncompressed_length=-1),
        _one(uncompressed_length=[1]),
    ],
)
def test_malformed_index_raises_integrity_error(doc: object) -> None:
    with pytest.raises(IntegrityError):
        decode_index(doc)
    with pytest.raises(IntegrityError):
        parse_index(doc)
    if doc is not None and not isinstance(doc, str):  # and as JSON text
        with pytest.raises(IntegrityError):
            decode_index(json.dumps(doc).encode())
        with pytest.raises(IntegrityError):
            parse_index(json.dumps(doc).encode())


@pytest.mark.parametrize("number", ["40.0", "4e1", '"40"', "true", "1e400", "18446744073709551656"])
def test_numbers_must_be_json_integers(number: str) -> None:
    # as restic's decoder requires of its uint fields
    blob = f'{{"id":"{_BLOB}","type":"data","offset":0,"length":{number}}}'
    text = f'{{"packs":[{{"id":"{_PACK}","blobs":[{blob}]}}]}}'.encode()
    for parse in (decode_index, parse_index):
        with pytest.raises(
            IntegrityError, match=r"index/x is malformed: .*\$\.packs\[0\]\.blobs\[0\]\.length"
        ):
            parse(text, "index/x")


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"{",
        b'{"packs":[]} []',
        b"\xff\xfe{}",
        b'{"packs":[' * 100_000,
        b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
def test_invalid_or_deeply_nested_json_is_an_integrity_error(text: bytes) -> None:
    for parse in (decode_index, parse_index):
        with pytest.raises(IntegrityError, match="^index/x: invalid JSON"):
            parse(text, "index/x")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
_blob_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.just(_BLOB) | _json,
        "type": st.sampled_from(["data", "tree"]) | _json,
        "offset": st.integers(0, 10) | _json,
        "length": st.integers(0, 100) | _json,
        "uncompressed_length": _json,
    },
)


@settings(max_examples=200)
@given(
    st.one_of(
        _json,
        st.fixed_dictionaries(
            {
                "packs": st.lists(
                    st.fixed_dictionaries(
                        {"id": st.just(_PACK) | _json, "blobs": st.lists(_blob_like, max_size=3)}
                    ),
                    max_size=3,
                )
            }
        ),
    )
)
def test_any_document_decodes_or_raises_integrity_error(doc: object) -> None:
    text = json.dumps(doc).encode()
    for form in (doc, text):
        try:
            decode_index(form)
        except IntegrityError:
            pass
        try:
            parse_index(form)
        except IntegrityError:
            pass


# ---------------------------------------------------------------- MasterIndex


def _blob(
    n: int, blob_type: BlobType = BlobType.DATA, offset: int = 0, ulen: int = 0
) -> PackedBlob:
    return PackedBlob(blob_type, BlobId(bytes([n]) * 32), offset, 100, ulen)


def test_master_index_add_lookup_has() -> None:
    index = MasterIndex()
    p1, p2 = PackId(b"\x10" * 32), PackId(b"\x20" * 32)
    index.add_pack(p1, [_blob(1), _blob(2, offset=100, ulen=900), _blob(3, BlobType.TREE, 200)])
    assert len(index) == 3
    assert index.has(BlobType.DATA, b"\x01" * 32)
    assert not index.has(BlobType.TREE, b"\x01" * 32)  # the type is part of the key
    assert index.has(BlobType.TREE, b"\x03" * 32)
    assert not index.has(BlobType.DATA, b"\x09" * 32)
    assert index.lookup(BlobType.DATA, b"\x09" * 32) is None

    entry = index.lookup(BlobType.DATA, b"\x02" * 32)
    assert entry == IndexEntry(p1, 100, 100, 900, BlobType.DATA)
    assert entry is not None and entry.plaintext_length == 900
    plain = index.lookup(BlobType.DATA, b"\x01" * 32)
    assert plain is not None and plain.plaintext_length == 100 - 32

    # the first location of a blob wins; the pack still counts
    index.add_pack(p2, [_blob(1, offset=500), _blob(4)])
    first = index.lookup(BlobType.DATA, b"\x01" * 32)
    assert first is not None and (first.pack, first.offset) == (p1, 0)
    assert len(index) == 4
    assert index.packs() == {p1, p2}
    assert index.blob_ids(BlobType.DATA) == {bytes([n]) * 32 for n in (1, 2, 4)}
    assert index.blob_ids(BlobType.TREE) == {b"\x03" * 32}
    assert sorted(bid for bid, _ in index.entries()) == sorted(
        bytes([n]) * 32 for n in (1, 2, 3, 4)
    )


def test_master_index_blob_ids_is_a_copy() -> None:
    index = MasterIndex()
    index.add_pack(PackId(b"\x10" * 32), [_blob(1)])
    ids = index.blob_ids(BlobType.DATA)
    ids.add(b"\x02" * 32)
    assert not index.has(BlobType.DATA, b"\x02" * 32)


def test_master_index_from_decoded_files() -> None:
    packs = [
        (PackId(bytes([p]) * 32), [_blob(p * 10 + i, offset=i * 100) for i in range(3)])
        for p in range(1, 4)
    ]
    _, decoded = decode_index(json.loads(json.dumps(encode_index(packs))))
    index = MasterIndex()
    for pack_id, blobs in decoded:
        index.add_pack(pack_id, blobs)
    assert len(index) == 9
    entry = index.lookup(BlobType.DATA, bytes([32]) * 32)
    assert entry == IndexEntry(PackId(b"\x03" * 32), 200, 100, 0, BlobType.DATA)


def test_master_index_concurrent_adds() -> None:
    index = MasterIndex()

    def add(t: int) -> None:
        for p in range(50):
            blobs = [
                PackedBlob(BlobType.DATA, BlobId(bytes([t, p, i]) + b"\0" * 29), i * 100, 100)
                for i in range(20)
            ]
            index.add_pack(PackId(bytes([t, p]) + b"\0" * 30), blobs)

    threads = [threading.Thread(target=add, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(index) == 4 * 50 * 20
    assert len(index.packs()) == 4 * 50


def test_index_bytes_is_the_json_of_encode_index():
    """The fast text encoder writes exactly the document encode_index describes."""
    import json

    from desktop_agent.engine.ids import BlobId, BlobType, PackId
    from desktop_agent.engine.index import encode_index, index_bytes
    from desktop_agent.engine.pack import PackedBlob

    packs = [
        (
            PackId(bytes([i]) * 32),
            [
                PackedBlob(BlobType(j % 2), BlobId(bytes([i, j]) * 16), j * 100, 90, j * 3)
                for j in range(5)
            ],
        )
        for i in range(3)
    ]
    for sup in ([], [b"\x07" * 32]):
        assert json.loads(index_bytes(packs, sup)) == encode_index(packs, sup)
    assert json.loads(index_bytes([])) == {"packs": []}
