"""pack: header encoding, PackBuilder spooling, and tamper detection of finished packs."""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from desktop_agent.engine import crypto
from desktop_agent.engine.errors import IntegrityError
from desktop_agent.engine.ids import BlobId, BlobType
from desktop_agent.engine.pack import (
    PackBuilder,
    PackedBlob,
    encode_header,
    parse_header,
    parse_pack_tail,
)

KEY = crypto.new_random_key()

_entry = st.tuples(
    st.sampled_from(BlobType),
    st.binary(min_size=32, max_size=32),
    st.integers(crypto.OVERHEAD, 2**32 - 1),
    st.one_of(st.just(0), st.integers(1, 2**32 - 1)),
)


@st.composite
def blob_lists(draw: st.DrawFn) -> list[PackedBlob]:
    """Blobs as a pack lists them: consecutive offsets from 0."""
    blobs = []
    offset = 0
    for blob_type, blob_id, length, ulen in draw(st.lists(_entry, max_size=20)):
        blobs.append(PackedBlob(blob_type, BlobId(blob_id), offset, length, ulen))
        offset += length
    return blobs


# ---------------------------------------------------------------------- header


@settings(max_examples=200)
@given(blob_lists())
def test_header_round_trip(blobs: list[PackedBlob]) -> None:
    header = encode_header(blobs)
    assert len(header) == sum(41 if b.compressed else 37 for b in blobs)
    assert parse_header(header) == blobs


def test_header_layout_matches_the_design_document() -> None:
    blob_id = bytes(range(32))
    raw = PackedBlob(BlobType.TREE, BlobId(blob_id), 0, 100)
    packed = PackedBlob(BlobType.DATA, BlobId(blob_id), 100, 50, 1000)
    header = encode_header([raw, packed])
    assert header[:37] == b"\x01" + struct.pack("<I", 100) + blob_id
    assert header[37:] == b"\x02" + struct.pack("<II", 50, 1000) + blob_id
    compressed_tree = PackedBlob(BlobType.TREE, BlobId(blob_id), 0, 40, 7)
    assert encode_header([compressed_tree])[0] == 3
    assert parse_header(encode_header([compressed_tree])) == [compressed_tree]


def test_packed_blob_lengths() -> None:
    raw = PackedBlob(BlobType.DATA, BlobId(b"\0" * 32), 0, 132)
    assert not raw.compressed and raw.plaintext_length == 100
    packed = PackedBlob(BlobType.DATA, BlobId(b"\0" * 32), 0, 132, 5000)
    assert packed.compressed and packed.plaintext_length == 5000


@settings(max_examples=100)
@given(blob_lists().filter(bool), st.data())
def test_truncated_header_raises(blobs: list[PackedBlob], data: st.DataObject) -> None:
    header = encode_header(blobs)
    cut = data.draw(st.integers(1, len(header) - 1))
    if cut in _boundaries(blobs):
        return  # a shorter list of whole entries is a valid header
    with pytest.raises(IntegrityError, match="truncated"):
        parse_header(header[:cut])


def _boundaries(blobs: list[PackedBlob]) -> set[int]:
    pos, out = 0, set()
    for b in blobs:
        pos += 41 if b.compressed else 37
        out.add(pos)
    return out


@pytest.mark.parametrize("kind", [4, 5, 0x80, 0xFF])
def test_invalid_blob_type_raises(kind: int) -> None:
    header = bytes([kind]) + struct.pack("<I", 100) + b"\0" * 32
    with pytest.raises(IntegrityError, match="invalid blob type"):
        parse_header(header)


@pytest.mark.parametrize("length", [0, 1, crypto.OVERHEAD - 1])
def test_blob_shorter_than_the_overhead_raises(length: int) -> None:
    with pytest.raises(IntegrityError, match="shorter"):
        parse_header(b"\0" + struct.pack("<I", length) + b"\0" * 32)


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_random_header_parses_or_raises_integrity_error(raw: bytes) -> None:
    try:
        blobs = parse_header(raw)
    except IntegrityError:
        return
    assert encode_header(blobs) == raw


# ------------------------------------------------------------------ PackBuilder


@dataclass
class Finished:
    raw: bytes
    pack_id: bytes
    path: str
    blobs: list[PackedBlob]
    size: int
    plaintexts: dict[bytes, bytes]


def build_pack(spool: Path, plaintexts: list[tuple[BlobType, bytes, bool]]) -> Finished:
    """Pack plaintexts (compressed where asked) and read the spooled file back."""
    builder = PackBuilder(KEY, str(spool))
    by_id: dict[bytes, bytes] = {}
    for blob_type, plain, compress in plaintexts:
        blob_id = hashlib.sha256(plain).digest()
        by_id[blob_id] = plain
        if compress and plain:  # ulen 0 means "raw": an empty blob cannot be compressed
            sealed = crypto.encrypt(KEY, zstandard.compress(plain))
            builder.add(blob_type, BlobId(blob_id), sealed, len(plain))
        else:
            builder.add(blob_type, BlobId(blob_id), crypto.encrypt(KEY, plain), 0)
    assert len(builder) == len(plaintexts)
    pack_id, path, blobs, size = builder.finish()
    assert len(builder) == 0 and builder.size == 0
    return Finished(Path(path).read_bytes(), pack_id, path, blobs, size, by_id)


def open_blob(raw: bytes, blob: PackedBlob) -> bytes:
    """Decrypt (and decompress) one blob from a pack file's bytes."""
    plain = crypto.decrypt(KEY, raw[blob.offset : blob.offset + blob.length])
    if blob.compressed:
        plain = zstandard.ZstdDecompressor().decompress(
            plain, max_output_size=blob.uncompressed_length
        )
    return plain


_plaintexts = st.lists(
    st.tuples(st.sampled_from(BlobType), st.binary(max_size=2000), st.booleans()),
    min_size=1,
    max_size=8,
    unique_by=lambda t: t[1],
)


@settings(max_examples=60, deadline=None)
@given(_plaintexts)
def test_builder_spools_a_pack_that_parses_back(
    tmp_path_factory: pytest.TempPathFactory, plaintexts: list[tuple[BlobType, bytes, bool]]
) -> None:
    spool = tmp_path_factory.mktemp("spool")
    done = build_pack(spool, plaintexts)
    assert os.path.dirname(done.path) == str(spool)
    assert os.path.basename(done.path).startswith("pack-")
    assert len(done.raw) == done.size
    assert hashlib.sha256(done.raw).digest() == done.pack_id

    assert parse_pack_tail(KEY, done.raw, len(done.raw)) == done.blobs
    assert [(b.type, b.compressed) for b in done.blobs] == [
        (t, c and p != b"") for t, p, c in plaintexts
    ]
    for blob in done.blobs:
        plain = open_blob(done.raw, blob)
        assert plain == done.plaintexts[blob.id]
        assert hashlib.sha256(plain).digest() == blob.id
        assert blob.plaintext_length == len(plain)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    """One pack with raw and compressed blobs of both types."""
    spool = tmp_path_factory.mktemp("spool")
    return build_pack(
        spool,
        [
            (BlobType.DATA, b"", False),
            (BlobType.DATA, os.urandom(300), False),
            (BlobType.TREE, b'{"nodes":[]}\n' * 40, True),
            (BlobType.DATA, b"compressible " * 100, True),
            (BlobType.TREE, b'{"nodes":null}\n', False),
        ],
    )


def test_pack_tail_is_enough_to_read_the_header(finished: Finished) -> None:
    (hlen,) = struct.unpack("<I", finished.raw[-4:])
    tail = finished.raw[-(hlen + 4) :]
    assert parse_pack_tail(KEY, tail, len(finished.raw)) == finished.blobs
    with pytest.raises(IntegrityError, match="not enough"):
        parse_pack_tail(KEY, tail[1:], len(finished.raw))


def test_pack_size_must_match_the_header(finished: Finished) -> None:
    with pytest.raises(IntegrityError, match="does not match"):
        parse_pack_tail(KEY, finished.raw, len(finished.raw) + 1)
    with pytest.raises(IntegrityError):
        parse_pack_tail(KEY, finished.raw[1:], len(finished.raw) - 1)


@pytest.mark.parametrize(
    "raw",
    [b"", b"\0\0\0", b"\0" * 35, b"\xff\xff\xff\xff" * 10, b"\0" * 40 + struct.pack("<I", 36)],
)
def test_short_or_absurd_pack_raises(raw: bytes) -> None:
    with pytest.raises(IntegrityError):
        parse_pack_tail(KEY, raw, len(raw))


def test_pack_header_with_the_wrong_key_raises(finished: Finished) -> None:
    with pytest.raises(IntegrityError, match="MAC"):
        parse_pack_tail(crypto.new_random_key(), finished.raw, len(finished.raw))


def _detected(raw: bytes, original: Finished) -> bool:
    """True when reading the pack notices the damage (the header or a blob fails)."""
    try:
        blobs = parse_pack_tail(KEY, raw, len(raw))
    except IntegrityError:
        return True
    assert blobs == original.blobs  # the header MAC held, so it is the same header
    for blob in blobs:
        try:
            open_blob(raw, blob)
        except IntegrityError:
            return True
    return False


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_changed_byte_of_a_pack_is_detected(finished: Finished, data: st.DataObject) -> None:
    raw = bytearray(finished.raw)
    pos = data.draw(st.integers(0, len(raw) - 1), label="position")
    raw[pos] ^= data.draw(st.integers(1, 255), label="xor")
    assert hashlib.sha256(raw).digest() != finished.pack_id
    assert _detected(bytes(raw), finished)


def test_every_byte_of_a_pack_is_covered(finished: Finished) -> None:
    for pos in range(len(finished.raw)):
        raw = bytearray(finished.raw)
        raw[pos] ^= 0x01
        assert _detected(bytes(raw), finished), f"flip at {pos} went unnoticed"


def test_builder_is_reusable_and_discard_removes_the_spool_file(tmp_path: Path) -> None:
    builder = PackBuilder(KEY, str(tmp_path))
    builder.add(BlobType.DATA, BlobId(b"\1" * 32), crypto.encrypt(KEY, b"one"), 0)
    first = builder.finish()
    builder.add(BlobType.DATA, BlobId(b"\2" * 32), crypto.encrypt(KEY, b"two"), 0)
    second = builder.finish()
    assert first[1] != second[1] and first[0] != second[0]
    assert [b.offset for b in second[2]] == [0]
    assert sorted(os.listdir(tmp_path)) == sorted(
        [os.path.basename(first[1]), os.path.basename(second[1])]
    )

    builder.add(BlobType.TREE, BlobId(b"\3" * 32), crypto.encrypt(KEY, b"three"), 0)
    assert len(os.listdir(tmp_path)) == 3
    builder.discard()
    assert len(builder) == 0 and builder.size == 0
    assert len(os.listdir(tmp_path)) == 2
    builder.discard()  # discarding an empty builder is harmless


def test_add_many_is_the_same_as_adding_one_by_one(tmp_path: Path) -> None:
    items = [
        (BlobType.DATA, BlobId(bytes([i]) * 32), crypto.encrypt(KEY, bytes([i]) * (i * 7)), 0)
        for i in range(1, 6)
    ]
    one = PackBuilder(KEY, str(tmp_path))
    for item in items:
        one.add(*item)
    many = PackBuilder(KEY, str(tmp_path))
    many.add(*items[0])
    many.add_many([])  # nothing to add: no change
    many.add_many(items[1:4])
    many.add(*items[4])
    assert len(many) == len(one) == 5 and many.size == one.size

    a_id, a_path, a_blobs, a_size = one.finish()
    b_id, b_path, b_blobs, b_size = many.finish()
    assert a_blobs == b_blobs and a_size == b_size
    a_raw, b_raw = Path(a_path).read_bytes(), Path(b_path).read_bytes()
    data_end = a_blobs[-1].offset + a_blobs[-1].length
    assert a_raw[:data_end] == b_raw[:data_end] == b"".join(i[2] for i in items)
    assert parse_pack_tail(KEY, b_raw, len(b_raw)) == b_blobs
    assert hashlib.sha256(b_raw).digest() == b_id


def test_add_many_on_an_empty_builder_creates_no_spool_file(tmp_path: Path) -> None:
    builder = PackBuilder(KEY, str(tmp_path))
    builder.add_many([])
    assert len(builder) == 0 and os.listdir(tmp_path) == []
