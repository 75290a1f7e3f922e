"""crypto: authenticated encryption, scrypt key files, the chunker seed; restic as the oracle."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from desktop_agent.engine import crypto
from desktop_agent.engine.errors import (
    EngineError,
    IntegrityError,
    UnsupportedRepository,
    WrongPassword,
)

FAST = crypto.KDFParams(n=1024, r=8, p=1)
KEY = crypto.new_random_key()
OTHER_KEY = crypto.new_random_key()
PASSWORD = "correct horse battery staple"

CRYPTO_SETTINGS = settings(max_examples=200, deadline=None)
KDF_SETTINGS = settings(max_examples=50, deadline=None)


def seal(master: crypto.Key, password: str = PASSWORD, params: crypto.KDFParams = FAST) -> bytes:
    """A key file with fixed metadata and fast scrypt parameters."""
    return crypto.seal_key_file(
        master,
        password,
        params=params,
        created="2024-05-06T07:08:09.123456789+02:00",
        username="me",
        hostname="box",
    )


def key_doc(**overrides: object) -> bytes:
    """A well-formed key file (for KEY under PASSWORD) with some fields replaced."""
    doc = json.loads(seal(KEY))
    doc.update(overrides)
    return json.dumps(doc).encode()


SEALED = seal(KEY)


def same_key(a: crypto.Key, b: crypto.Key) -> bool:
    return (a.encrypt, a.mac_k, a.mac_r) == (b.encrypt, b.mac_k, b.mac_r)


# ------------------------------------------------------------ encrypt / decrypt


@CRYPTO_SETTINGS
@given(st.binary(max_size=4096))
@example(b"")
def test_encrypt_decrypt_round_trip(plaintext: bytes) -> None:
    sealed = crypto.encrypt(KEY, plaintext)
    assert len(sealed) == crypto.ciphertext_length(len(plaintext)) == len(plaintext) + 32
    assert crypto.decrypt(KEY, sealed) == plaintext
    assert crypto.decrypt(KEY, bytearray(sealed)) == plaintext
    assert crypto.decrypt(KEY, memoryview(sealed)) == plaintext


def test_decrypting_one_after_another_starts_each_key_stream_afresh() -> None:
    """A thread reuses one AES-CTR context per key for every decryption: a
    message that ends within a block must leave nothing behind for the next
    (odd lengths in a row, two keys taking turns)."""
    keys = [crypto.new_random_key(), crypto.new_random_key()]
    lengths = [1, 17, 15, 32, 4095, 0, 3, 16, 33]
    for i, n in enumerate(lengths * 2):
        key = keys[i % 2]
        plain = os.urandom(n)
        assert crypto.decrypt(key, crypto.encrypt(key, plain)) == plain


def test_each_encryption_uses_a_fresh_iv() -> None:
    a = crypto.encrypt(KEY, b"same plaintext")
    b = crypto.encrypt(KEY, b"same plaintext")
    assert a[:16] != b[:16]
    assert a[16:-16] != b[16:-16]


def test_ciphertext_is_not_the_plaintext() -> None:
    plaintext = b"A" * 64
    assert plaintext not in crypto.encrypt(KEY, plaintext)


@CRYPTO_SETTINGS
@given(st.data())
def test_any_flipped_bit_is_detected(data: st.DataObject) -> None:
    plaintext = data.draw(st.binary(max_size=300), label="plaintext")
    sealed = bytearray(crypto.encrypt(KEY, plaintext))
    pos = data.draw(st.integers(0, len(sealed) - 1), label="position")
    bit = data.draw(st.integers(0, 7), label="bit")
    sealed[pos] ^= 1 << bit
    with pytest.raises(IntegrityError):
        crypto.decrypt(KEY, bytes(sealed))


@CRYPTO_SETTINGS
@given(st.data())
def test_any_changed_byte_is_detected(data: st.DataObject) -> None:
    plaintext = data.draw(st.binary(max_size=300), label="plaintext")
    sealed = bytearray(crypto.encrypt(KEY, plaintext))
    pos = data.draw(st.integers(0, len(sealed) - 1), label="position")
    sealed[pos] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(IntegrityError):
        crypto.decrypt(KEY, bytes(sealed))


def test_every_bit_of_a_short_message_is_covered() -> None:
    sealed = crypto.encrypt(KEY, b"tiny")
    for pos in range(len(sealed)):
        for bit in range(8):
            bad = bytearray(sealed)
            bad[pos] ^= 1 << bit
            with pytest.raises(IntegrityError):
                crypto.decrypt(KEY, bytes(bad))


@CRYPTO_SETTINGS
@given(st.data())
def test_truncated_or_extended_input_raises(data: st.DataObject) -> None:
    sealed = crypto.encrypt(KEY, data.draw(st.binary(max_size=200), label="plaintext"))
    cut = data.draw(st.integers(1, len(sealed)), label="cut")
    with pytest.raises(IntegrityError):
        crypto.decrypt(KEY, sealed[:-cut])
    with pytest.raises(IntegrityError):
        crypto.decrypt(KEY, sealed[cut:])
    with pytest.raises(IntegrityError):
        crypto.decrypt(KEY, sealed + data.draw(st.binary(min_size=1, max_size=8), label="extra"))


@pytest.mark.parametrize("size", [0, 1, 15, 16, 31])
def test_input_shorter_than_overhead_raises(size: int) -> None:
    with pytest.raises(IntegrityError, match="too short"):
        crypto.decrypt(KEY, os.urandom(size))


def test_wrong_key_raises() -> None:
    with pytest.raises(IntegrityError, match="MAC"):
        crypto.decrypt(OTHER_KEY, crypto.encrypt(KEY, b"secret"))


# ------------------------------------------------------------------ encrypt_many


@CRYPTO_SETTINGS
@given(st.lists(st.binary(max_size=80), max_size=12))
def test_encrypt_many_objects_each_decrypt_on_their_own(plaintexts: list[bytes]) -> None:
    sealed = crypto.encrypt_many(KEY, plaintexts)
    assert [crypto.decrypt(KEY, s) for s in sealed] == plaintexts
    assert [len(s) for s in sealed] == [len(p) + 32 for p in plaintexts]
    # Each object's key stream starts at its IV: the stretches must not overlap
    # (that would reuse key stream) and no IV may repeat (it is also the
    # Poly1305-AES nonce), not even for empty objects.
    counters = [int.from_bytes(s[:16], "big") for s in sealed]
    for (a, plain), b in zip(zip(counters, plaintexts, strict=True), counters[1:], strict=False):
        assert (b - a) % 2**128 >= max(1, -(-len(plain) // 16))


@CRYPTO_SETTINGS
@given(st.data())
def test_encrypt_many_any_flipped_bit_is_detected(data: st.DataObject) -> None:
    plaintexts = data.draw(
        st.lists(st.binary(max_size=60), min_size=1, max_size=6), label="plaintexts"
    )
    sealed = crypto.encrypt_many(KEY, plaintexts)
    which = data.draw(st.integers(0, len(sealed) - 1), label="object")
    bad = bytearray(sealed[which])
    bad[data.draw(st.integers(0, len(bad) - 1), label="position")] ^= 1 << data.draw(
        st.integers(0, 7)
    )
    with pytest.raises(IntegrityError):
        crypto.decrypt(KEY, bytes(bad))


def test_encrypt_many_empty_objects_do_not_share_a_nonce() -> None:
    sealed = crypto.encrypt_many(KEY, [b"", b"secret", b"", b""])
    assert len({s[:16] for s in sealed}) == 4
    assert crypto.encrypt_many(KEY, []) == []


def test_encrypt_many_counter_wraps_around_like_openssl(monkeypatch: pytest.MonkeyPatch) -> None:
    # the first IV is the last counter value: the stream wraps to zero, and an
    # object's IV must be where the stream really is
    monkeypatch.setattr(crypto, "os", SimpleNamespace(urandom=lambda n: b"\xff" * n))
    plaintexts = [b"a" * 20, b"b" * 5, b"c" * 33]
    sealed = crypto.encrypt_many(KEY, plaintexts)
    assert [s[:16] for s in sealed] == [
        b"\xff" * 16,
        (1).to_bytes(16, "big"),
        (2).to_bytes(16, "big"),
    ]
    assert [crypto.decrypt(KEY, s) for s in sealed] == plaintexts


# ------------------------------------------------------------------------ keys


def test_key_rejects_wrong_lengths_and_zero_keys() -> None:
    with pytest.raises(IntegrityError):
        crypto.Key(encrypt=b"\x01" * 31, mac_k=b"\x01" * 16, mac_r=b"\x01" * 16)
    with pytest.raises(IntegrityError):
        crypto.Key(encrypt=b"\x01" * 32, mac_k=b"\x01" * 17, mac_r=b"\x01" * 16)
    with pytest.raises(IntegrityError):
        crypto.Key(encrypt=b"\x01" * 32, mac_k=b"\x01" * 16, mac_r=b"\x00" * 16)


def test_key_repr_hides_the_material() -> None:
    text = repr(KEY)
    assert text == "Key(<secret>)"
    assert KEY.encrypt.hex() not in text


def test_key_json_round_trip_and_format() -> None:
    doc = KEY.to_json()
    assert doc == {
        "mac": {
            "k": base64.b64encode(KEY.mac_k).decode(),
            "r": base64.b64encode(KEY.mac_r).decode(),
        },
        "encrypt": base64.b64encode(KEY.encrypt).decode(),
    }
    assert same_key(crypto.Key.from_json(json.loads(json.dumps(doc))), KEY)


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        "key",
        {"encrypt": "AAAA"},
        {"mac": {"k": "!!", "r": "AA=="}, "encrypt": "AA=="},
        {"mac": "x", "encrypt": "AA=="},
        {"mac": {"k": 1, "r": 2}, "encrypt": 3},
    ],
)
def test_key_from_malformed_json_raises(obj: object) -> None:
    with pytest.raises(IntegrityError):
        crypto.Key.from_json(obj)


def test_kdf_matches_the_rfc_7914_vector() -> None:
    # RFC 7914 section 12: scrypt("password", "NaCl", N=1024, r=8, p=16, dkLen=64)
    expected = bytes.fromhex(
        "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
        "2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640"
    )
    key = crypto.kdf("password", b"NaCl", crypto.KDFParams(n=1024, r=8, p=16))
    assert key.encrypt + key.mac_k + key.mac_r == expected


def test_kdf_depends_on_password_and_salt() -> None:
    a = crypto.kdf("pw", b"salt", FAST)
    assert same_key(a, crypto.kdf("pw", b"salt", FAST))
    assert not same_key(a, crypto.kdf("pw2", b"salt", FAST))
    assert not same_key(a, crypto.kdf("pw", b"salt2", FAST))


@pytest.mark.parametrize(
    "n, r, p",
    [
        (1 << 30, 8, 1),  # 1 TiB of memory
        (1 << 30, 1, 1),
        (1 << 20, 8, 1),  # just over the 1 GiB cap
        (1024, 1 << 20, 1),
        (1000, 8, 1),  # not a power of two
        (1, 8, 1),
        (0, 8, 1),
        (-1024, 8, 1),
        (1024, 0, 1),
        (1024, 8, 0),
        (1 << 16, 1, 1),  # OpenSSL refuses N >= 2**(16 r)
    ],
)
def test_kdf_refuses_absurd_or_invalid_parameters(n: int, r: int, p: int) -> None:
    start = time.monotonic()
    with pytest.raises(UnsupportedRepository):
        crypto.kdf("pw", b"salt", crypto.KDFParams(n=n, r=r, p=p))
    assert time.monotonic() - start < 2  # refused before any work, nothing allocated


# ------------------------------------------------------------------- key files


@KDF_SETTINGS
@given(st.text(max_size=40))
def test_key_file_round_trip(password: str) -> None:
    master = crypto.new_random_key()
    raw = seal(master, password)
    assert same_key(crypto.open_key_file(raw, password), master)


def test_key_file_has_restics_fields() -> None:
    doc = json.loads(seal(KEY))
    assert list(doc) == ["created", "username", "hostname", "kdf", "N", "r", "p", "salt", "data"]
    assert doc["kdf"] == "scrypt"
    assert (doc["N"], doc["r"], doc["p"]) == (1024, 8, 1)
    assert len(base64.b64decode(doc["salt"])) == 64
    user = crypto.kdf(PASSWORD, base64.b64decode(doc["salt"]), FAST)
    assert json.loads(crypto.decrypt(user, base64.b64decode(doc["data"]))) == KEY.to_json()


def test_two_key_files_for_one_key_differ() -> None:
    assert seal(KEY) != seal(KEY)


@KDF_SETTINGS
@given(st.text(max_size=20))
def test_wrong_password_raises_wrong_password(password: str) -> None:
    if password == PASSWORD:
        return
    with pytest.raises(WrongPassword):
        crypto.open_key_file(SEALED, password)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_corrupted_key_file_raises_or_yields_the_same_key(data: st.DataObject) -> None:
    raw = bytearray(SEALED)
    pos = data.draw(st.integers(0, len(raw) - 1), label="position")
    raw[pos] ^= data.draw(st.integers(1, 255), label="xor")
    try:
        got = crypto.open_key_file(bytes(raw), PASSWORD)
    except EngineError:
        return
    # only unauthenticated metadata (created, username...) or unused base64
    # bits may change without an error; the key itself never does
    assert same_key(got, KEY)


def test_corrupted_salt_or_data_raises() -> None:
    doc = json.loads(SEALED)
    for field in ("salt", "data"):
        raw = bytearray(base64.b64decode(doc[field]))
        raw[len(raw) // 2] ^= 0x10
        with pytest.raises(WrongPassword):
            crypto.open_key_file(key_doc(**{field: base64.b64encode(raw).decode()}), PASSWORD)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, len(SEALED) - 1))
def test_truncated_key_file_raises(cut: int) -> None:
    with pytest.raises(IntegrityError):
        crypto.open_key_file(SEALED[:cut], PASSWORD)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe not json",
        b"[]",
        b"null",
        b'"key"',
        key_doc(salt="not base64!"),
        key_doc(data=12),
        key_doc(N="many"),
        key_doc(r=None),
        b'{"kdf":"scrypt","N":1e999,"r":8,"p":1,"salt":"","data":""}',
        json.dumps({k: v for k, v in json.loads(key_doc()).items() if k != "p"}).encode(),
    ],
)
def test_malformed_key_file_raises_integrity_error(raw: bytes) -> None:
    with pytest.raises(IntegrityError):
        crypto.open_key_file(raw, PASSWORD)


def test_key_file_with_a_valid_mac_but_garbage_inside_raises() -> None:
    salt = os.urandom(64)
    user = crypto.kdf(PASSWORD, salt, FAST)
    for plain in (b"not json", b"[1,2]", json.dumps({"mac": {}, "encrypt": ""}).encode()):
        data = base64.b64encode(crypto.encrypt(user, plain)).decode()
        raw = key_doc(salt=base64.b64encode(salt).decode(), data=data)
        with pytest.raises(IntegrityError):
            crypto.open_key_file(raw, PASSWORD)


@pytest.mark.parametrize(
    "overrides",
    [
        {"N": 1 << 30},
        {"N": 1 << 30, "r": 1},
        {"N": 3000},
        {"r": 0},
        {"N": 1 << 16, "r": 1},
        {"kdf": "argon2"},
    ],
)
def test_unusable_kdf_settings_raise_unsupported(overrides: dict[str, object]) -> None:
    start = time.monotonic()
    with pytest.raises(UnsupportedRepository):
        crypto.open_key_file(key_doc(**overrides), PASSWORD)
    assert time.monotonic() - start < 2


_junk = st.recursive(
    # numbers stay small: a huge p is slow but valid (see the kdf tests for the caps)
    st.none() | st.booleans() | st.integers(-5, 64) | st.floats(-10, 64) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "kdf": st.just("scrypt") | _junk,
            "N": st.just(1024) | _junk,
            "r": st.just(8) | _junk,
            "p": st.just(1) | _junk,
            "salt": st.just("c2FsdA==") | _junk,
            "data": st.just(base64.b64encode(os.urandom(80)).decode()) | _junk,
        },
    )
)
def test_any_malformed_key_file_raises_an_engine_error(doc: dict[str, object]) -> None:
    with pytest.raises(EngineError):
        crypto.open_key_file(json.dumps(doc).encode(), PASSWORD)


# ----------------------------------------------------------------- chunker seed


def test_chunker_seed_is_deterministic_and_in_range() -> None:
    seed = crypto.chunker_seed(KEY, "a" * 64)
    assert seed == crypto.chunker_seed(KEY, "a" * 64)
    assert 0 < seed < 2**63


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=64, max_size=64).filter(
        lambda b: any(b[:32]) and any(b[32:48]) and any(b[48:])
    ),
    st.text(max_size=64),
    st.text(max_size=64),
)
def test_chunker_seed_differs_per_repository(raw: bytes, id_a: str, id_b: str) -> None:
    key = crypto.Key(encrypt=raw[:32], mac_k=raw[32:48], mac_r=raw[48:])
    a, b = crypto.chunker_seed(key, id_a), crypto.chunker_seed(key, id_b)
    assert 0 < a < 2**63 and 0 < b < 2**63
    assert (a == b) == (id_a == id_b)


def test_chunker_seed_depends_on_the_key_only_through_the_mac_key() -> None:
    repo_id = "ab" * 32
    assert crypto.chunker_seed(KEY, repo_id) != crypto.chunker_seed(OTHER_KEY, repo_id)
    same_mac = crypto.Key(encrypt=OTHER_KEY.encrypt, mac_k=KEY.mac_k, mac_r=KEY.mac_r)
    assert crypto.chunker_seed(same_mac, repo_id) == crypto.chunker_seed(KEY, repo_id)


def test_sha256() -> None:
    assert crypto.sha256(b"abc") == hashlib.sha256(b"abc").digest()


# ------------------------------------------------------------ restic as oracle


def _restic(repo: Path, password: str, *args: str) -> bytes:
    exe = shutil.which("restic")
    if exe is None:
        pytest.skip("restic is not installed")
    env = dict(os.environ, RESTIC_PASSWORD=password, RESTIC_CACHE_DIR=str(repo.parent / "cache"))
    proc = subprocess.run(
        [exe, "-r", str(repo), *args], env=env, capture_output=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def test_restic_key_files_and_ours_open_each_others_config(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _restic(repo, PASSWORD, "init")
    (key_name,) = os.listdir(repo / "keys")

    # restic's key file opens with our scrypt + Poly1305-AES ...
    master = crypto.open_key_file((repo / "keys" / key_name).read_bytes(), PASSWORD)
    config = json.loads(crypto.decrypt(master, (repo / "config").read_bytes()))
    assert config["version"] == 2
    assert len(config["id"]) == 64

    # ... and restic opens a key file we sealed for the same master key
    ours = seal(master, "our own password")
    ours_name = hashlib.sha256(ours).hexdigest()
    (repo / "keys" / ours_name).write_bytes(ours)
    shown = json.loads(_restic(repo, "our own password", "--key-hint", ours_name, "cat", "config"))
    assert shown == config
