"""Opening, creating and reading a restic-format repository.

A :class:`Repository` couples a storage backend with the master key and the
repository config. It reads and writes "unpacked" files (config, index,
snapshots, locks), loads blobs through the master index, and lists
snapshots. Writing blobs goes through :class:`~.writer.BlobWriter`.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import zstandard

from . import crypto
from .errors import (
    EngineError,
    IntegrityError,
    NotFound,
    RepositoryExists,
    RepositoryNotFound,
    UnsupportedRepository,
    WrongPassword,
    malformed,
)
from .gocompat import format_time
from .ids import BlobType, PackId, SnapshotId
from .index import MasterIndex, decode_index
from .indexcache import CACHE_NAME, load_cache, save_cache
from .indexparse import parse_index_files
from .limits import (
    MAX_BLOB_PLAINTEXT,
    MAX_BLOB_STORED,
    MAX_KEY_FILE,
    MAX_UNPACKED,
    decode_unpacked,
    decompress_bounded,
    loads_json,
)
from .pack import PackedBlob
from .polynomial import random_polynomial
from .snapshot import Snapshot
from .storage import FileType, LocalStorage, Storage
from .tree import Node, decode_tree
from .unlock import MAX_KEYS_TRIED, Unlocked, unlock

__all__ = ["RepoConfig", "Repository", "hostname", "username", "MAX_KEYS_TRIED"]

MIN_VERSION = 1
MAX_VERSION = 2
# the index cache is rewritten once this many index files were read on top of it
INDEX_CACHE_MAX_UNCOVERED = 16


def _name_id(name: str) -> bytes:
    """A file name as the 32-byte id it should be (other names map to themselves)."""
    try:
        raw = bytes.fromhex(name)
    except ValueError:
        return name.encode()
    return raw if len(raw) == 32 else name.encode()


def _reason(name: str, exc: EngineError) -> str:
    """The error without a leading ``snapshots/<name>: `` (the caller names it)."""
    text = str(exc)
    return text.removeprefix(f"{FileType.SNAPSHOT.value}/{name}: ")


def hostname() -> str:
    """This machine's name as recorded in snapshots and locks."""
    return socket.gethostname()


def username() -> str:
    """The current user's name as recorded in snapshots and locks."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


@dataclass(frozen=True)
class RepoConfig:
    """The decrypted ``config`` file."""

    version: int
    id: str
    chunker_polynomial: int

    def to_bytes(self) -> bytes:
        """JSON as restic writes it (the polynomial as a hex string)."""
        doc = {
            "version": self.version,
            "id": self.id,
            "chunker_polynomial": f"{self.chunker_polynomial:x}",
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> RepoConfig:
        """Parse and validate the config document."""
        try:
            doc = loads_json(raw, "repository config")
            version = int(doc["version"])
            repo_id = str(doc["id"])
            poly = int(str(doc.get("chunker_polynomial") or "0"), 16)
            if not 0 <= poly < 1 << 64:
                raise ValueError("chunker polynomial out of range")
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
            raise malformed("repository config", exc) from None
        if not MIN_VERSION <= version <= MAX_VERSION:
            raise UnsupportedRepository(
                f"repository format version {version} is not supported "
                f"(this desktop-agent reads versions {MIN_VERSION}-{MAX_VERSION}); "
                "a newer desktop-agent or restic wrote it"
            )
        return cls(version, repo_id, poly)


class _Codecs(threading.local):
    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(level=3)
        self.decompressor = zstandard.ZstdDecompressor()


class Repository:
    """An open repository: storage + master key + config + index."""

    def __init__(
        self, storage: Storage, key: crypto.Key, config: RepoConfig, key_name: str
    ) -> None:
        self.storage = storage
        self.key = key
        self.config = config
        self.key_name = key_name
        self.index = MasterIndex()
        self._codecs = _Codecs()
        self._index_loaded = False
        self._index_lock = threading.Lock()
        # where the local index cache lives (None: no cache); see ensure_index
        self.index_cache_dir: str | None = None
        self._cache_files: set[bytes] = set()  # index files the cache on disk covers
        # unreadable snapshot files met by the last listing: (name, error)
        self.damaged_snapshots: list[tuple[str, EngineError]] = []

    # ------------------------------------------------------------ lifecycle
    @property
    def compression(self) -> bool:
        """Version 2 repositories may hold compressed blobs and files."""
        return self.config.version >= 2

    @classmethod
    def init(
        cls,
        storage: Storage,
        password: str,
        *,
        kdf_params: crypto.KDFParams = crypto.DEFAULT_KDF,
        version: int = 2,
    ) -> Repository:
        """Create a new, empty repository and return it opened."""
        if not password:
            raise EngineError("the repository password must not be empty")
        if storage.exists():
            raise RepositoryExists(f"a repository already exists at {storage.location}")
        if isinstance(storage, LocalStorage) and os.path.isdir(storage.root):
            if any(True for _ in os.scandir(storage.root)):
                raise RepositoryExists(
                    f"{storage.root} exists and is not empty; choose an empty or new directory"
                )
        master = crypto.new_random_key()
        config = RepoConfig(version, os.urandom(32).hex(), random_polynomial())
        key_file = crypto.seal_key_file(
            master,
            password,
            params=kdf_params,
            created=format_time(time.time_ns()),
            username=username(),
            hostname=hostname(),
        )
        storage.create_layout()
        key_name = crypto.sha256(key_file).hex()
        storage.save(FileType.KEY, key_name, [key_file])
        # The config is never compressed: its version says whether compression exists.
        storage.save(FileType.CONFIG, "", [crypto.encrypt(master, config.to_bytes())])
        repo = cls(storage, master, config, key_name)
        repo._index_loaded = True
        return repo

    @classmethod
    def open(cls, storage: Storage, password: str) -> Repository:
        """Open an existing repository with a password."""
        return cls.from_unlocked(storage, unlock(storage, password))

    @classmethod
    def from_unlocked(cls, storage: Storage, unlocked: Unlocked) -> Repository:
        """Open a repository :func:`~.unlock.unlock` has found the key of."""
        try:
            config = RepoConfig.from_bytes(crypto.decrypt(unlocked.master, unlocked.raw_config))
        except IntegrityError as exc:
            raise IntegrityError(f"repository config cannot be read: {exc}") from None
        return cls(storage, unlocked.master, config, unlocked.key_name)

    @classmethod
    def open_with_key(cls, storage: Storage, key: crypto.Key) -> Repository:
        """Open again with a master key kept from an earlier :meth:`open`.

        A long-running agent derives the key once; every job still gets a
        fresh Repository (and so a freshly loaded index).
        """
        if not storage.exists():
            raise RepositoryNotFound(f"there is no repository at {storage.location}")
        try:
            raw_config = storage.load(FileType.CONFIG, "", max_size=MAX_KEY_FILE)
            config = RepoConfig.from_bytes(crypto.decrypt(key, raw_config))
        except IntegrityError:
            raise WrongPassword(
                f"the repository at {storage.location} no longer opens with the remembered "
                "key (was it replaced?)"
            ) from None
        return cls(storage, key, config, "")

    # ------------------------------------------------------- unpacked files
    def decode_unpacked(self, plain: bytes) -> bytes:
        """Strip the v2 encoding byte; decompress when it says zstd."""
        return decode_unpacked(plain, self._codecs.decompressor)

    def encode_unpacked(self, doc_bytes: bytes) -> bytes:
        """Add the v2 encoding byte and compress (v1: plain JSON)."""
        if not self.compression:
            return doc_bytes
        return b"\x02" + self._codecs.compressor.compress(doc_bytes)

    def load_stored(self, ftype: FileType, name: str) -> bytes:
        """Load an unpacked file as stored (encrypted), its hash checked against its name."""
        # compression only shrinks it: a stored file is never much larger than the decoded cap
        raw = self.storage.load(ftype, name, max_size=MAX_UNPACKED + 64)
        if crypto.sha256(raw).hex() != name:
            raise IntegrityError(f"{ftype.value}/{name}: content does not match its name")
        return raw

    def load_unpacked(self, ftype: FileType, name: str) -> bytes:
        """Load, authenticate, decrypt and decode an unpacked file."""
        return self.decode_unpacked(crypto.decrypt(self.key, self.load_stored(ftype, name)))

    def load_json(self, ftype: FileType, name: str) -> Any:
        """Load an unpacked file and parse its JSON."""
        return loads_json(self.load_unpacked(ftype, name), f"{ftype.value}/{name}")

    def save_unpacked(self, ftype: FileType, doc_bytes: bytes) -> str:
        """Encode, encrypt and durably store a document; returns its name."""
        sealed = crypto.encrypt(self.key, self.encode_unpacked(doc_bytes))
        name = crypto.sha256(sealed).hex()
        self.storage.save(ftype, name, [sealed])
        return name

    def save_json(self, ftype: FileType, doc: Any) -> str:
        """Serialize compactly and store as an unpacked file."""
        return self.save_unpacked(
            ftype, json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        )

    # ---------------------------------------------------------------- index
    def load_index(self, *, workers: int = 4) -> tuple[list[str], dict[PackId, list[PackedBlob]]]:
        """Read every index file into the master index (in parallel).

        Returns every index file's name and the blobs of each pack that the
        live (not superseded) files list, for callers that rewrite the index
        (prune). Always reads the index files themselves, never the cache.
        """
        names = [name for name, _ in self.storage.list(FileType.INDEX)]
        superseded: set[bytes] = set()

        def load(name: str) -> Any:
            return name, decode_index(self.load_unpacked(FileType.INDEX, name), f"index/{name}")

        results: list[Any] = []
        if len(names) <= 1:
            results = [load(n) for n in names]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(load, names))
        for _name, (sup, _packs) in results:
            superseded.update(sup)
        live: dict[PackId, list[PackedBlob]] = {}
        loader = self.index.loader()
        loaded = []
        for name, (_sup, packs) in results:
            if bytes.fromhex(name) in superseded:
                continue
            for pack_id, blobs in packs:
                loader.add_pack(pack_id, blobs)
                live[pack_id] = blobs
            loaded.append(bytes.fromhex(name))
        loader.finish()
        self.index.files.update(loaded)
        self.index.superseded.update(superseded)
        self._index_loaded = True
        return names, live

    def ensure_index(self) -> None:
        """Load the index once (thread-safe); from the local cache when it is current.

        With :attr:`index_cache_dir` set, the tables come from the cache
        file there while every index file it covers still exists; index
        files added since are read on top. See :mod:`.indexcache`.
        """
        if self._index_loaded:
            return
        with self._index_lock:
            if not self._index_loaded:
                self._sync_index(refresh=False)

    def add_pack(self, pack_id: PackId, blobs: list[PackedBlob]) -> None:
        """A pack was stored: its blobs go into the index.

        Under the index lock, so that a first load running meanwhile (which
        replaces the index object) cannot drop them.
        """
        with self._index_lock:
            self.index.add_pack(pack_id, blobs)

    def add_index_files(self, names: list[bytes]) -> None:
        """Index files were written for packs already in the index."""
        with self._index_lock:
            self.index.files.update(names)

    @property
    def index_loaded(self) -> bool:
        """The index has been loaded (or the repository is new)."""
        return self._index_loaded

    def refresh_index(self) -> None:
        """Bring a loaded index up to date with the repository.

        Lists the index files again and reads only the new ones; when one
        that was loaded is gone (another client pruned) or a new one
        supersedes a loaded one, everything is loaded again. A long-lived
        Repository calls this before each job.
        """
        with self._index_lock:
            self._sync_index(refresh=True)

    def _cache_path(self) -> str | None:
        if not self.index_cache_dir:
            return None
        return os.path.join(self.index_cache_dir, CACHE_NAME)

    def _sync_index(self, *, refresh: bool) -> None:
        sizes = dict(self.storage.list(FileType.INDEX))
        names = list(sizes)
        listed = {_name_id(n) for n in names}
        index: MasterIndex | None = None
        incremental = False  # on top of the cache or of the index in memory
        if refresh and self._index_loaded and self.index.files <= listed:
            index, incremental = self.index, True
        cache_path = self._cache_path()
        if index is None and cache_path is not None:
            state = load_cache(cache_path, self.key, self.config.id)
            if state is not None and state.files <= listed:
                index = MasterIndex.from_state(state)
                self._cache_files = set(state.files)
                incremental = True
        if index is None:
            index = MasterIndex()
            self._cache_files = set()
        known = index.files | index.superseded
        todo = [n for n in names if _name_id(n) not in known]
        parsed = 0
        if todo:
            conflict = self._parse_index_files(index, todo, sizes)
            if conflict is not None:
                # a new file supersedes what was loaded: everything again, skipping
                # every file seen superseded
                index = MasterIndex()
                incremental = False
                index.superseded.update(conflict)
                todo = [n for n in names if _name_id(n) not in conflict]
                self._parse_index_files(index, todo, sizes, final=True)
            parsed = len(todo)
        old = self.index
        if not refresh and old is not index and len(old):
            # blobs stored before the first load (trees are saved without it)
            by_pack: dict[PackId, list[PackedBlob]] = {}
            for blob_id, e in old.entries():
                by_pack.setdefault(e.pack, []).append(
                    PackedBlob(e.type, blob_id, e.offset, e.length, e.uncompressed_length)
                )
            for pack_id, blobs in by_pack.items():
                index.add_pack(pack_id, blobs)
        self.index = index
        self._index_loaded = True
        if cache_path is not None and parsed and self._cache_due(index, incremental):
            try:
                save_cache(cache_path, self.key, self.config.id, index.export_state())
                self._cache_files = set(index.files)
            except OSError:
                pass  # only the next load's speed depends on it

    def update_index_cache(self) -> None:
        """After a backup: save the index cache if the index in memory is complete
        and the cache on disk lacks many of its files (or does not exist)."""
        cache_path = self._cache_path()
        if cache_path is None or not self._index_loaded:
            return
        index = self.index
        uncovered = index.files - self._cache_files
        if not uncovered or (self._cache_files and len(uncovered) < INDEX_CACHE_MAX_UNCOVERED):
            return
        with self._index_lock:
            try:
                save_cache(cache_path, self.key, self.config.id, index.export_state())
                self._cache_files = set(index.files)
            except OSError:
                pass  # only the next load's speed depends on it

    def _cache_due(self, index: MasterIndex, incremental: bool) -> bool:
        """Rewrite the cache? Not for every small index file a backup adds on top."""
        if not incremental:
            return True
        uncovered = index.files - self._cache_files
        return len(uncovered) >= INDEX_CACHE_MAX_UNCOVERED

    def _parse_index_files(
        self, index: MasterIndex, names: list[str], sizes: dict[str, int], *, final: bool = False
    ) -> set[bytes] | None:
        """Read index files into ``index`` (see :func:`~.indexparse.parse_index_files`).

        Returns None when done, or (unless ``final``) every superseded name
        seen when a file supersedes one already loaded: the caller starts
        over. Only a few files' JSON exist at a time.
        """
        loader = index.loader()
        superseded = set(index.superseded)
        loaded: list[bytes] = []
        files = parse_index_files(
            self.key,
            partial(self.load_stored, FileType.INDEX),
            names,
            sum(sizes.get(n, 0) for n in names),
        )
        try:
            for name, parsed in files:
                superseded.update(parsed.supersedes)
                if not final and (superseded & index.files or superseded & set(loaded)):
                    return superseded
                name_id = _name_id(name)
                if name_id not in superseded:
                    loader.add_parsed(parsed.packs)
                    loaded.append(name_id)
                del parsed
        finally:
            files.close()
        loader.finish()
        index.files.update(loaded)
        index.superseded.update(superseded)
        return None

    # ---------------------------------------------------------------- blobs
    def decode_blob(
        self,
        blob_type: BlobType,
        blob_id: bytes,
        sealed: bytes | bytearray | memoryview,
        ulen: int,
        *,
        verify: bool = True,
    ) -> bytes:
        """Decrypt (and decompress) one blob read from a pack.

        ``ulen`` (from the index or a pack header) bounds the decompression
        before anything is allocated.
        """
        what = f"{blob_type.label} blob {blob_id.hex()}"
        plain_length = ulen or len(sealed) - crypto.OVERHEAD
        if plain_length > MAX_BLOB_PLAINTEXT[blob_type] or len(sealed) > MAX_BLOB_STORED:
            raise IntegrityError(f"{what}: its length ({plain_length}) is beyond any genuine blob")
        plain = crypto.decrypt(self.key, sealed)
        if ulen:
            plain = decompress_bounded(self._codecs.decompressor, plain, ulen, what)
            if len(plain) != ulen:
                raise IntegrityError(
                    f"{blob_type.label} blob {blob_id.hex()}: wrong decompressed length"
                )
        if verify and crypto.sha256(plain) != blob_id:
            raise IntegrityError(
                f"{blob_type.label} blob {blob_id.hex()}: content does not match its id"
            )
        return plain

    def load_blob(self, blob_type: BlobType, blob_id: bytes) -> bytes:
        """Load a blob by id through the index."""
        self.ensure_index()
        entry = self.index.lookup(blob_type, blob_id)
        if entry is None:
            raise NotFound(f"{blob_type.label} blob {blob_id.hex()} is not in the index")
        if entry.plaintext_length > MAX_BLOB_PLAINTEXT[blob_type] or entry.length > MAX_BLOB_STORED:
            raise IntegrityError(
                f"{blob_type.label} blob {blob_id.hex()}: the index gives it a length beyond "
                "any genuine blob"
            )
        sealed = self.storage.load(FileType.PACK, entry.pack.hex(), entry.offset, entry.length)
        return self.decode_blob(blob_type, blob_id, sealed, entry.uncompressed_length)

    def load_tree(self, tree_id: bytes) -> list[Node]:
        """Load and decode a tree blob."""
        return decode_tree(self.load_blob(BlobType.TREE, tree_id))

    # ------------------------------------------------------------ snapshots
    def load_snapshots(self) -> tuple[list[Snapshot], list[tuple[str, EngineError]]]:
        """Every readable snapshot (oldest first) and the unreadable ones with why.

        A snapshot removed while we list (another client's forget) is neither.
        """
        names = [name for name, _ in self.storage.list(FileType.SNAPSHOT)]
        snaps: list[Snapshot] = []
        damaged: list[tuple[str, EngineError]] = []
        for n in names:
            try:
                doc = self.load_json(FileType.SNAPSHOT, n)
                snaps.append(Snapshot.from_json(doc, SnapshotId(bytes.fromhex(n))))
            except NotFound:
                continue
            except (IntegrityError, UnsupportedRepository) as exc:
                damaged.append((n, exc))
        snaps.sort(key=lambda s: (s.time_ns, s.id or b""))
        self.damaged_snapshots = damaged
        return snaps, damaged

    def list_snapshots(self, *, skip_damaged: bool = False) -> list[Snapshot]:
        """All snapshots, oldest first.

        An unreadable snapshot raises :class:`IntegrityError` unless
        ``skip_damaged``: then it is left out and named in
        :attr:`damaged_snapshots` (listing and restoring go on; prune must
        not, it would delete the data that snapshot needs).
        """
        snaps, damaged = self.load_snapshots()
        if damaged and not skip_damaged:
            name, exc = damaged[0]
            more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
            raise IntegrityError(f"snapshot {name} cannot be read{more}: {_reason(name, exc)}")
        return snaps

    def find_snapshot(self, ref: str) -> Snapshot:
        """Resolve ``latest``, a full id or a unique id prefix."""
        ref = ref.strip().lower()
        if ref == "latest":
            # a damaged snapshot file must not make the others unreachable
            snaps = self.list_snapshots(skip_damaged=True)
            if not snaps and self.damaged_snapshots:
                name, exc = self.damaged_snapshots[0]
                raise IntegrityError(
                    f"no readable snapshot: snapshot {name} cannot be read: {_reason(name, exc)}"
                )
            if not snaps:
                raise NotFound("the repository has no snapshots yet")
            return snaps[-1]
        if not ref or any(c not in "0123456789abcdef" for c in ref):
            raise NotFound(f"{ref!r} is not a snapshot id (use an id, an id prefix or `latest`)")
        matches = [name for name, _ in self.storage.list(FileType.SNAPSHOT) if name.startswith(ref)]
        if not matches:
            raise NotFound(f"no snapshot matches {ref!r}")
        if len(matches) > 1:
            raise NotFound(f"{ref!r} matches {len(matches)} snapshots; give more digits")
        name = matches[0]
        return Snapshot.from_json(
            self.load_json(FileType.SNAPSHOT, name), SnapshotId(bytes.fromhex(name))
        )

    def save_snapshot(self, snap: Snapshot) -> SnapshotId:
        """Store a snapshot document; returns its id."""
        return SnapshotId(bytes.fromhex(self.save_unpacked(FileType.SNAPSHOT, snap.to_bytes())))
