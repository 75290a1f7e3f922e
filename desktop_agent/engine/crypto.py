"""All cryptography of the repository format, in one place.

This module is the single trust boundary of the engine: nothing else touches
keys, ciphers, MACs or the KDF. The scheme is restic's (docs/design.md,
section 1, "Crypto"):

* every encrypted object is ``IV(16) || AES-256-CTR(plaintext) || MAC(16)``;
* the MAC is Poly1305-AES over the ciphertext: the Poly1305 key is
  ``r || AES-128_k(IV)`` where ``k`` and ``r`` are the two halves of the
  32-byte MAC key;
* a user's password opens a key file through scrypt, which yields 64 bytes:
  the AES key (32) followed by the MAC key ``k || r`` (16 + 16); the key
  file's ``data`` holds the encrypted master key as JSON.

The C code behind ``cryptography`` and ``hashlib`` releases the GIL, so
callers may encrypt from several worker threads at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.poly1305 import Poly1305

from .errors import IntegrityError, UnsupportedRepository, WrongPassword, malformed

__all__ = [
    "OVERHEAD",
    "Key",
    "KDFParams",
    "DEFAULT_KDF",
    "encrypt",
    "encrypt_many",
    "decrypt",
    "ciphertext_length",
    "new_random_key",
    "kdf",
    "sha256",
    "seal_key_file",
    "open_key_file",
    "chunker_seed",
]

IV_SIZE = 16
MAC_SIZE = 16
OVERHEAD = IV_SIZE + MAC_SIZE

# scrypt memory is 128 * r * N bytes; a hostile or corrupt key file must not
# make us allocate gigabytes.
_MAX_KDF_MEMORY = 1 << 30


@dataclass(frozen=True)
class KDFParams:
    """scrypt cost parameters as stored in a key file."""

    n: int
    r: int
    p: int


# restic's baseline parameters (32 MiB, about 0.1 s here). restic calibrates
# p upwards to ~0.5 s on fast machines; we keep the baseline because every
# CLI start derives the key. docs/design.md discusses the trade-off.
DEFAULT_KDF = KDFParams(n=1 << 15, r=8, p=1)


@dataclass(frozen=True, repr=False)
class Key:
    """A complete key: AES-256 key plus the Poly1305-AES key ``k || r``."""

    encrypt: bytes
    mac_k: bytes
    mac_r: bytes

    def __post_init__(self) -> None:
        if len(self.encrypt) != 32 or len(self.mac_k) != 16 or len(self.mac_r) != 16:
            raise IntegrityError("key has the wrong length")
        if not any(self.encrypt) or not any(self.mac_k) or not any(self.mac_r):
            raise IntegrityError("key is all zeros")

    def __repr__(self) -> str:  # never print key material
        return "Key(<secret>)"

    def to_json(self) -> dict[str, object]:
        """The master key as restic stores it inside a key file."""
        return {
            "mac": {"k": _b64(self.mac_k), "r": _b64(self.mac_r)},
            "encrypt": _b64(self.encrypt),
        }

    @classmethod
    def from_json(cls, obj: object) -> Key:
        """Parse the master key JSON object of a key file."""
        try:
            assert isinstance(obj, dict)
            mac = obj["mac"]
            assert isinstance(mac, dict)
            return cls(
                encrypt=base64.b64decode(obj["encrypt"], validate=True),
                mac_k=base64.b64decode(mac["k"], validate=True),
                mac_r=base64.b64decode(mac["r"], validate=True),
            )
        except (AssertionError, KeyError, TypeError, ValueError) as exc:
            raise malformed("master key", exc) from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_local = threading.local()


def _aes_context(mode: str, aes_key: bytes) -> Any:
    """A thread's reusable AES context for ``aes_key``: ``"ecb"`` (stateless
    between blocks) or ``"ctr"`` (given each blob's IV with ``reset_nonce``).

    Creating a context costs more than the AES call on a small blob (CTR:
    5.3 us a context against 1.9 us a reset), so each thread keeps one per
    mode and key.
    """
    cache: dict[tuple[str, bytes], Any] | None = getattr(_local, "aes", None)
    if cache is None:
        cache = {}
        _local.aes = cache
    ctx = cache.get((mode, aes_key))
    if ctx is None:
        chosen = modes.ECB() if mode == "ecb" else modes.CTR(bytes(IV_SIZE))
        ctx = Cipher(algorithms.AES(aes_key), chosen).encryptor()
        cache[(mode, aes_key)] = ctx
    return ctx


def _poly_key(key: Key, iv: bytes) -> bytes:
    return key.mac_r + _aes_context("ecb", key.mac_k).update(iv)  # type: ignore[no-any-return]


def encrypt(key: Key, plaintext: bytes | bytearray | memoryview) -> bytes:
    """Encrypt and authenticate: returns ``IV || ciphertext || MAC``."""
    iv = os.urandom(IV_SIZE)
    enc = Cipher(algorithms.AES(key.encrypt), modes.CTR(iv)).encryptor()
    ct = enc.update(plaintext)
    tag = Poly1305.generate_tag(_poly_key(key, iv), ct)
    return b"".join((iv, ct, tag))


_PAD = bytes(16)


def encrypt_many(key: Key, plaintexts: list[bytes]) -> list[bytes]:
    """Encrypt several objects, each as ``IV || ciphertext || MAC``.

    One random IV starts one AES-CTR key stream; each object takes the next
    unused 16-byte blocks of it, so its IV is the first counter value of its
    stretch. Counters never repeat, as with independent random IVs, and each
    object decrypts on its own (restic increments the full 128-bit counter
    just as OpenSSL does). One cipher context for many small objects saves
    most of the per-object overhead.
    """
    if not plaintexts:
        return []
    iv0 = os.urandom(IV_SIZE)
    counter = int.from_bytes(iv0, "big")
    enc = Cipher(algorithms.AES(key.encrypt), modes.CTR(iv0)).encryptor()
    update = enc.update
    ivs: list[bytes] = []
    cts: list[bytes] = []
    for plain in plaintexts:
        ivs.append((counter & _MASK128).to_bytes(16, "big"))
        cts.append(update(plain))
        # Skip to the next block boundary. An empty object still takes a whole
        # block: the IV is also the Poly1305-AES nonce, and two objects that
        # share one give away the MAC key (an empty one's tag is AES_k(IV)).
        blocks = max(1, (len(plain) + 15) // 16)
        skip = blocks * 16 - len(plain)
        if skip:
            update(_PAD[:skip])
        counter += blocks
    # every object's Poly1305 key half AES_k(IV) in one ECB call
    nonces = _aes_context("ecb", key.mac_k).update(b"".join(ivs))
    r = key.mac_r
    tag = Poly1305.generate_tag
    return [
        b"".join((iv, ct, tag(r + nonces[i : i + 16], ct)))
        for i, iv, ct in zip(range(0, len(nonces), 16), ivs, cts, strict=True)
    ]


_MASK128 = (1 << 128) - 1


def decrypt(key: Key, data: bytes | bytearray | memoryview) -> bytes:
    """Verify and decrypt ``IV || ciphertext || MAC``.

    Raises :class:`IntegrityError` when the data is too short or the MAC does
    not match (tampering, bit rot, or the wrong key).
    """
    view = memoryview(data)
    if len(view) < OVERHEAD:
        raise IntegrityError("ciphertext too short")
    iv = bytes(view[:IV_SIZE])
    ct = view[IV_SIZE:-MAC_SIZE]
    tag = bytes(view[-MAC_SIZE:])
    try:
        Poly1305.verify_tag(_poly_key(key, iv), ct, tag)
    except InvalidSignature:
        raise IntegrityError("MAC check failed: data is corrupted or was tampered with") from None
    ctx = _aes_context("ctr", key.encrypt)
    ctx.reset_nonce(iv)
    return ctx.update(ct)  # type: ignore[no-any-return]


def ciphertext_length(plaintext_length: int) -> int:
    """Length of the encrypted form of ``plaintext_length`` bytes."""
    return plaintext_length + OVERHEAD


def new_random_key() -> Key:
    """A fresh random master key."""
    return Key(encrypt=os.urandom(32), mac_k=os.urandom(16), mac_r=os.urandom(16))


def sha256(data: bytes | bytearray | memoryview) -> bytes:
    """SHA-256 digest (storage ids and blob ids)."""
    return hashlib.sha256(data).digest()


def kdf(password: str, salt: bytes, params: KDFParams) -> Key:
    """Derive the user key from a password with scrypt, as restic does."""
    n, r, p = params.n, params.r, params.p
    if n < 2 or n & (n - 1) or r < 1 or p < 1:
        raise UnsupportedRepository(f"key file has invalid scrypt parameters N={n} r={r} p={p}")
    need = 128 * r * (n + p + 2)
    if need > _MAX_KDF_MEMORY:
        raise UnsupportedRepository(
            f"key file asks scrypt for {need >> 20} MiB of memory (N={n} r={r} p={p}); refusing"
        )
    try:
        raw = hashlib.scrypt(
            password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=need + (1 << 20), dklen=64
        )
    except (ValueError, MemoryError) as exc:  # OpenSSL refuses e.g. N >= 2**(16 r)
        raise UnsupportedRepository(
            f"key file has unusable scrypt parameters N={n} r={r} p={p}: {exc}"
        ) from None
    return Key(encrypt=raw[:32], mac_k=raw[32:48], mac_r=raw[48:64])


def seal_key_file(
    master: Key,
    password: str,
    *,
    params: KDFParams = DEFAULT_KDF,
    created: str,
    username: str,
    hostname: str,
) -> bytes:
    """Serialize a restic key file that wraps ``master`` under ``password``."""
    salt = os.urandom(64)
    user = kdf(password, salt, params)
    data = encrypt(user, json.dumps(master.to_json(), separators=(",", ":")).encode())
    doc = {
        "created": created,
        "username": username,
        "hostname": hostname,
        "kdf": "scrypt",
        "N": params.n,
        "r": params.r,
        "p": params.p,
        "salt": _b64(salt),
        "data": _b64(data),
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def open_key_file(raw: bytes, password: str) -> Key:
    """Open a restic key file with ``password`` and return the master key.

    Raises :class:`WrongPassword` when the MAC does not verify (the only way
    to tell a wrong password from a right one) and :class:`IntegrityError`
    or :class:`UnsupportedRepository` for malformed key files.
    """
    try:
        doc = json.loads(raw)
        kdf_name = doc["kdf"]
        params = KDFParams(n=int(doc["N"]), r=int(doc["r"]), p=int(doc["p"]))
        salt = base64.b64decode(doc["salt"], validate=True)
        data = base64.b64decode(doc["data"], validate=True)
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:  # N: 1e999
        raise malformed("key file", exc) from None
    if kdf_name != "scrypt":
        raise UnsupportedRepository(f"key file uses KDF {kdf_name!r}; only scrypt is supported")
    user = kdf(password, salt, params)
    try:
        plain = decrypt(user, data)
    except IntegrityError:
        raise WrongPassword("wrong password or no key found") from None
    try:
        return Key.from_json(json.loads(plain))
    except (ValueError, RecursionError) as exc:
        raise malformed("master key", exc) from None


def chunker_seed(key: Key, repository_id: str) -> int:
    """The per-repository seed of the content-defined chunker.

    Derived from the secret MAC key, so chunk boundaries differ between
    repositories and cannot be predicted without the key; every client of the
    same repository derives the same seed and so deduplicates against the
    others. Never zero (pyfastcdc treats 0 as "unseeded").
    """
    digest = hmac.new(
        key.mac_k + key.mac_r, b"desktop-agent fastcdc v1 " + repository_id.encode(), "sha256"
    ).digest()
    return (int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)) or 1
