"""Writing blobs: dedup, compress, encrypt, pack, upload, index.

:meth:`BlobWriter.save` may be called from many worker threads at once. The
expensive parts (SHA-256, zstd, AES, Poly1305) run outside any lock in C code
that releases the GIL; only the dedup claim and the append to the open pack
are serialized. Packs are assembled in spool files, not memory; full
packs are stored (fsync + rename for a local repository) by one background
thread, at most two at a time.

Write ordering (docs/design.md, section 2): packs are durably stored before
the index that lists them (:meth:`write_index` waits for uploads), and the
caller writes the snapshot only after the index. Index checkpoints while a
backup runs (every few stored packs, or every minute) keep what a killed run
stored usable by the next.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import zstandard

from . import crypto
from .errors import EngineError, StorageError, describe_oserror
from .ids import BlobId, BlobType, PackId
from .index import MAX_BLOBS_PER_FILE, index_bytes
from .pack import BLOB_ZSTD_LEVEL, SMALL_BLOB_ZSTD_LEVEL, FinishedPack, PackBuilder, PackedBlob
from .repository import Repository, hostname
from .storage import FileType

__all__ = ["BlobWriter", "SaveResult", "PACK_SIZE", "remove_stale_spool"]


def remove_stale_spool(repo: Repository) -> int:
    """Delete spool files that a dead process of this host left behind.

    Spool files are named ``pack-<host>-<pid>-...``; one whose process no
    longer exists is an unfinished pack of a killed run: no index lists it.
    Returns how many were removed.
    """
    spool = repo.storage.spool_dir()
    me = hostname()
    removed = 0
    try:
        names = os.listdir(spool)
    except OSError:
        return 0
    for name in names:
        parts = name.split("-")
        if len(parts) < 4 or parts[0] != "pack" or "-".join(parts[1:-2]) != me:
            continue
        try:
            pid = int(parts[-2])
            os.kill(pid, 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except (ValueError, OSError):
            continue
        try:
            os.unlink(os.path.join(spool, name))
            removed += 1
        except OSError:
            pass
    return removed


PACK_SIZE = 16 * 1024 * 1024
# Index checkpoints while a backup runs: after this many stored packs or
# seconds, whichever comes first (a killed run loses at most that much).
CHECKPOINT_PACKS = 2
CHECKPOINT_SECONDS = 60.0
_MAX_PENDING_UPLOADS = 2


@dataclass(frozen=True, slots=True)
class SaveResult:
    """Outcome of saving one blob: its id and how many bytes it added."""

    id: BlobId
    new: bool
    stored: int  # encrypted bytes added to a pack (0 for a duplicate)


class _Codec(threading.local):
    def __init__(self) -> None:
        self.zstd = zstandard.ZstdCompressor(level=BLOB_ZSTD_LEVEL)
        self.zstd_small = zstandard.ZstdCompressor(level=SMALL_BLOB_ZSTD_LEVEL)


class BlobWriter:
    """Collects blobs into packs and writes packs and index files."""

    def __init__(self, repo: Repository, *, pack_size: int = PACK_SIZE) -> None:
        self.repo = repo
        self.pack_size = pack_size
        self._codec = _Codec()
        self._lock = threading.Lock()
        self._claimed: dict[BlobType, set[bytes]] = {BlobType.DATA: set(), BlobType.TREE: set()}
        spool = repo.storage.spool_dir()
        self._builders = {
            BlobType.DATA: PackBuilder(repo.key, spool),
            BlobType.TREE: PackBuilder(repo.key, spool),
        }
        # a server takes several uploads at once (its latency hides behind the others);
        # packs wait as spool files on disk, so memory stays bounded either way
        parallel = max(1, int(getattr(repo.storage, "upload_parallelism", 1)))
        self._uploader = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="upload")
        self._upload_slots = threading.BoundedSemaphore(_MAX_PENDING_UPLOADS + parallel - 1)
        self._uploads: list[Future[None]] = []
        self._uploaded: list[tuple[PackId, list[PackedBlob]]] = []  # not yet in an index file
        self._error: BaseException | None = None
        self.packs_written = 0
        self.bytes_written = 0
        self._last_index = time.monotonic()

    # ------------------------------------------------------------- blobs
    def known(self, blob_type: BlobType, blob_id: bytes) -> bool:
        """True when the blob is in the index or already being written."""
        return self.repo.index.has(blob_type, blob_id) or blob_id in self._claimed[blob_type]

    def save(
        self,
        blob_type: BlobType,
        data: bytes | bytearray | memoryview,
        blob_id: bytes | None = None,
    ) -> SaveResult:
        """Store a blob unless it is already known. Thread-safe.

        A tree blob does not load the index: a run that writes no data blob
        (only the trees above a change) never loads it, at the price of a
        tree stored twice now and then, which the format allows.
        """
        if self._error is not None:
            raise self._error
        repo = self.repo
        if blob_type is BlobType.DATA:
            repo.ensure_index()
        bid = BlobId(blob_id if blob_id is not None else crypto.sha256(data))
        if repo.index.has(blob_type, bid):
            return SaveResult(bid, False, 0)
        claimed = self._claimed[blob_type]
        with self._lock:
            if bid in claimed:
                return SaveResult(bid, False, 0)
            claimed.add(bid)
        ulen = 0
        payload: bytes | bytearray | memoryview = data
        if self.repo.compression and len(data) > 0:
            packed = self._codec.zstd.compress(data)
            if len(packed) < len(data):
                payload, ulen = packed, len(data)
        sealed = crypto.encrypt(self.repo.key, payload)
        full = self._append(blob_type, [(blob_type, bid, sealed, ulen)])
        if full is not None:
            self._submit(full)
        return SaveResult(bid, True, len(sealed))

    def _append(
        self, blob_type: BlobType, entries: list[tuple[BlobType, BlobId, bytes, int]]
    ) -> FinishedPack | None:
        """Append sealed blobs to the open pack; returns the pack if it is full.

        A spool file that cannot take them (disk full, I/O error) fails the
        save with a StorageError; the pack keeps exactly its earlier blobs
        and the failed ones are no longer claimed (they are not stored).
        """
        with self._lock:
            builder = self._builders[blob_type]
            try:
                builder.add_many(entries)
                if builder.size >= self.pack_size:
                    return builder.finish()
            except OSError as exc:
                claimed = self._claimed[blob_type]
                for e in entries:
                    claimed.discard(e[1])
                where = builder.path or self.repo.storage.spool_dir()
                raise describe_oserror(exc, where) from None
        return None

    def save_many(self, blob_type: BlobType, datas: list[bytes]) -> list[SaveResult]:
        """Store several (small) blobs at once: one cipher context, one write.

        Same semantics as calling :meth:`save` for each; much cheaper per blob.
        """
        if self._error is not None:
            raise self._error
        self.repo.ensure_index()
        results: list[SaveResult] = []
        fresh: list[tuple[int, BlobId]] = []
        has = self.repo.index.has
        claimed = self._claimed[blob_type]
        ids = [BlobId(crypto.sha256(d)) for d in datas]
        with self._lock:
            for i, bid in enumerate(ids):
                if has(blob_type, bid) or bid in claimed:
                    results.append(SaveResult(bid, False, 0))
                else:
                    claimed.add(bid)
                    fresh.append((i, bid))
                    results.append(SaveResult(bid, True, 0))
        if not fresh:
            return results
        payloads: list[bytes] = []
        ulens: list[int] = []
        compress = self._codec.zstd_small.compress if self.repo.compression else None
        for i, _bid in fresh:
            data = datas[i]
            if compress is not None and data:
                packed = compress(data)
                if len(packed) < len(data):
                    payloads.append(packed)
                    ulens.append(len(data))
                    continue
            payloads.append(data)
            ulens.append(0)
        sealed = crypto.encrypt_many(self.repo.key, payloads)
        entries = [
            (blob_type, bid, sl, ul) for (_i, bid), sl, ul in zip(fresh, sealed, ulens, strict=True)
        ]
        full = self._append(blob_type, entries)
        if full is not None:
            self._submit(full)
        for (i, bid), sl in zip(fresh, sealed, strict=True):
            results[i] = SaveResult(bid, True, len(sl))
        return results

    def adopt(self, finished: FinishedPack) -> None:
        """Store and index a pack file assembled elsewhere (a helper process)."""
        self._submit(finished)

    # ----------------------------------------------------------- uploads
    def _submit(self, finished: FinishedPack) -> None:
        self._upload_slots.acquire()
        try:
            fut = self._uploader.submit(self._upload, finished)
        except BaseException:
            self._upload_slots.release()
            raise
        with self._lock:
            self._uploads = [f for f in self._uploads if not f.done()] + [fut]

    def _upload(self, finished: FinishedPack) -> None:
        pack_id, path, blobs, size = finished
        try:
            if self._error is not None:
                # an upload already failed (the server is gone, say): the backup fails
                # with that error; the packs still queued are not tried one by one
                raise self._error
            self.repo.storage.save_file(FileType.PACK, pack_id.hex(), path)
            self.repo.add_pack(pack_id, blobs)
            with self._lock:
                self._uploaded.append((pack_id, blobs))
                self.packs_written += 1
                self.bytes_written += size
                for b in blobs:
                    self._claimed[b.type].discard(b.id)
                due = (
                    len(self._uploaded) >= CHECKPOINT_PACKS
                    or time.monotonic() - self._last_index >= CHECKPOINT_SECONDS
                )
            if due:
                # a checkpoint: a run killed later keeps what is stored so far
                self.write_index()
        except BaseException as exc:
            if self._error is None:
                self._error = exc if isinstance(exc, EngineError) else StorageError(str(exc))
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        finally:
            self._upload_slots.release()

    def flush(self) -> None:
        """Finish the open packs and wait until every pack is stored."""
        for blob_type in (BlobType.DATA, BlobType.TREE):
            with self._lock:
                builder = self._builders[blob_type]
                try:
                    full = builder.finish() if len(builder) else None
                except OSError as exc:
                    raise describe_oserror(exc, builder.path) from None
            if full is not None:
                self._submit(full)
        self.wait_uploads()

    def wait_idle(self) -> None:
        """Block until no upload (nor the index checkpoint after it) is running.

        Unlike :meth:`wait_uploads` it does not raise: a pause waits here so
        that nothing is written while it lasts; failures surface later.
        """
        with self._lock:
            pending = list(self._uploads)
        for fut in pending:
            try:
                fut.result()
            except BaseException:  # noqa: BLE001 - reported by wait_uploads
                pass

    def wait_uploads(self) -> None:
        """Block until pending uploads are done; re-raise their failure."""
        with self._lock:
            pending = list(self._uploads)
        for fut in pending:
            try:
                fut.result()
            except BaseException:
                pass
        if self._error is not None:
            raise self._error

    def write_index(self) -> list[str]:
        """Write index files for every stored pack not yet indexed.

        Only packs whose upload completed are listed, so an index never
        references a pack that is not durably stored.
        """
        with self._lock:
            packs, self._uploaded = self._uploaded, []
        names: list[str] = []
        batch: list[tuple[PackId, list[PackedBlob]]] = []
        count = 0
        try:
            for pack in packs:
                batch.append(pack)
                count += len(pack[1])
                if count >= MAX_BLOBS_PER_FILE:
                    names.append(self.repo.save_unpacked(FileType.INDEX, index_bytes(batch)))
                    batch, count = [], 0
            if batch:
                names.append(self.repo.save_unpacked(FileType.INDEX, index_bytes(batch)))
        except BaseException:
            with self._lock:  # keep them for a retry or the next checkpoint
                self._uploaded = packs + self._uploaded
            raise
        self.repo.add_index_files([bytes.fromhex(n) for n in names])
        self._last_index = time.monotonic()
        return names

    def checkpoint_index(self) -> None:
        """Index the packs stored and not yet indexed (during a pause, with no
        upload running); a failure is left for the next checkpoint or the end."""
        with self._lock:
            if not self._uploaded:
                return
        try:
            self.write_index()
        except EngineError:
            pass  # kept for the next write_index (see there)

    def close(self) -> None:
        """Stop the upload thread (does not flush)."""
        self._uploader.shutdown(wait=True)

    def abandon(self) -> None:
        """Drop unfinished packs (cancel/failure); stored packs stay indexed."""
        with self._lock:
            for builder in self._builders.values():
                builder.discard()
