"""Index files parsed into records, here and in a helper process at once.

See docs/design.md, "The master index in memory". Loading the index of a
large repository for the first time on a machine (before the local index
cache exists) reads every index file: decrypt, decompress, decode the JSON
(:mod:`.indexdoc`), turn the blobs into 48-byte records and order them by
their first byte. That is CPU work under the GIL, about 1 us a blob, so
threads cannot share it. When there is enough of it (:data:`HELPER_MIN_BYTES`), one helper
process (the small-file helpers' kind, started fresh and handed the key
over its socket) parses files while this process parses others, each
taking the next file when done with one; the records come back pickled, a
few MB a file, and are merged here in the order of the files, so the index
is the same either way. A helper that cannot start, dies or does not
answer leaves its files to this process.
"""

from __future__ import annotations

import gc
import os
import subprocess
import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import NamedTuple

import zstandard

from . import crypto
from .errors import IntegrityError
from .index import ParsedPacks, parse_index
from .limits import decode_unpacked
from .memory import FEWER_GC_PASSES

__all__ = [
    "HELPER_MIN_BYTES",
    "IndexFile",
    "IndexInit",
    "parse_index_file",
    "parse_index_files",
    "index_helper_main",
]

# Stored index bytes to parse before a helper pays: a helper's start costs
# about 60 ms of CPU (on the other core), 4 MiB of index files (~80,000
# blobs) about 0.2 s here.
HELPER_MIN_BYTES = 4 << 20
_FETCH_AHEAD = 4  # files fetched (and their hashes checked) ahead, on threads
_HELPER_GRACE = 30.0  # seconds a helper has to finish its file once we stop
# seconds a helper has to parse one file (at most 64 MiB of JSON; a 50,000-blob
# file takes about 0.2 s): past that this process parses it
_HELPER_ANSWER = 120.0
# files this process parses ahead of the oldest one the helper still holds
# (their records wait here until that one is merged)
_MAX_AHEAD = 8


class IndexFile(NamedTuple):
    """One parsed index file: the files it supersedes, and its packs."""

    supersedes: list[bytes]
    packs: ParsedPacks


def parse_index_file(
    key: crypto.Key, dctx: zstandard.ZstdDecompressor, name: str, sealed: bytes
) -> IndexFile:
    """Decrypt, decode and parse a stored index file (whose hash was checked).

    Every failure is an :class:`IntegrityError` that names the file.
    """
    what = f"index/{name}"
    try:
        return IndexFile(*parse_index(decode_unpacked(crypto.decrypt(key, sealed), dctx), what))
    except IntegrityError as exc:
        message = str(exc)
        if not message.startswith(what):
            message = f"{what}: {message}"
        raise IntegrityError(message) from None


# ------------------------------------------------------ helper messages
class IndexInit(NamedTuple):
    """The first message to an index helper: the key (never on its command line)."""

    key_parts: tuple[bytes, bytes, bytes]  # encryption key, MAC k, MAC r


class ParseFile(NamedTuple):
    """Parse this stored index file (its hash already checked)."""

    name: str
    sealed: bytes


class FileParsed(NamedTuple):
    """The answer: the parsed file, or the message of its IntegrityError."""

    name: str
    parsed: IndexFile | None
    error: str

    def result(self) -> IndexFile | IntegrityError:
        return self.parsed if self.parsed is not None else IntegrityError(self.error)


def index_helper_main(conn: Connection, init: IndexInit) -> None:
    """Body of an index helper: :class:`ParseFile` in, :class:`FileParsed` out,
    until anything else arrives or the socket closes. The parent sends the
    next file only after the answer to the last, so neither side can block
    the other while both have megabytes to send."""
    gc.set_threshold(*FEWER_GC_PASSES)  # a process of its own: see engine.memory
    key = crypto.Key(*init.key_parts)
    dctx = zstandard.ZstdDecompressor()
    try:
        while isinstance(msg := conn.recv(), ParseFile):
            try:
                answer = FileParsed(msg.name, parse_index_file(key, dctx, msg.name, msg.sealed), "")
            except IntegrityError as exc:
                answer = FileParsed(msg.name, None, str(exc))
            del msg
            conn.send(answer)
            del answer
    except (EOFError, KeyboardInterrupt, BrokenPipeError, ConnectionResetError):
        pass


# ------------------------------------------------------ the parent's side
class _Helper:
    """One index helper process, fed one file at a time by a thread of ours."""

    def __init__(self, key: crypto.Key) -> None:
        from .smallfiles import spawn_helper  # the helpers' start (import-light here)

        self.conn: Connection
        self.proc: subprocess.Popen[bytes]
        self.conn, self.proc = spawn_helper()
        try:
            self.conn.send(IndexInit((key.encrypt, key.mac_k, key.mac_r)))
        except BaseException:
            self.close()
            raise

    def parse(self, name: str, sealed: bytes) -> IndexFile | IntegrityError:
        """One file parsed by the helper (OSError or EOFError when it died)."""
        self.conn.send(ParseFile(name, sealed))
        if not self.conn.poll(_HELPER_ANSWER):  # a helper stopped or wedged: do it here
            raise EOFError(f"the index helper did not answer within {_HELPER_ANSWER:.0f} s")
        answer = self.conn.recv()
        if not isinstance(answer, FileParsed) or answer.name != name:
            raise EOFError("the index helper answered something else")
        return answer.result()

    def close(self) -> None:
        from .smallfiles import reap

        try:
            self.conn.close()  # the helper sees EOF and exits
        finally:
            reap([self.proc])


class _Work:
    """The files in order, taken one at a time by this thread and the helper's feeder.

    Fetches run on a small pool, a few files ahead of the last one taken.
    Each file's result (or error) lands in its slot; :meth:`ready` hands
    them out in order.
    """

    def __init__(self, names: list[str], fetch: Callable[[str], bytes], pool: Executor) -> None:
        self.names = names
        self.fetch = fetch
        self.pool = pool
        self.fetches: dict[int, Future[bytes]] = {}
        self.results: dict[int, IndexFile | BaseException] = {}
        self.next_taken = 0  # the next file to hand out
        self.next_done = 0  # the next file to yield
        self.stopped = False
        self.cond = threading.Condition()

    def take(self) -> tuple[int, Future[bytes]] | None:
        """The next file to parse and its fetch, or None when there is none."""
        with self.cond:
            if self.stopped or self.next_taken >= len(self.names):
                return None
            i = self.next_taken
            self.next_taken += 1
            for j in range(i, min(i + _FETCH_AHEAD, len(self.names))):
                if j not in self.fetches:
                    self.fetches[j] = self.pool.submit(self.fetch, self.names[j])
            return i, self.fetches.pop(i)

    def put(self, i: int, result: IndexFile | BaseException) -> None:
        with self.cond:
            self.results[i] = result
            self.cond.notify_all()

    def ready(self, wait: bool, upto: int | None = None) -> Iterator[tuple[str, IndexFile]]:
        """Results in order while the next one is known (``wait``: until all
        are, or those before file number ``upto``)."""
        while self.next_done < (len(self.names) if upto is None else upto):
            with self.cond:
                if wait:
                    self.cond.wait_for(lambda: self.next_done in self.results)
                result = self.results.pop(self.next_done, None)
            if result is None:
                return
            if isinstance(result, BaseException):
                raise result
            self.next_done += 1
            yield self.names[self.next_done - 1], result

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            for fut in self.fetches.values():
                fut.cancel()


def _feed(helper: _Helper, work: _Work, key: crypto.Key) -> None:
    """The feeder thread: files to the helper, one at a time, while there are any.

    A helper that dies leaves the file it held to this thread and the rest
    to the caller's thread. Every file taken gets a result or an error.
    """
    while (taken := work.take()) is not None:
        i, fut = taken
        name = work.names[i]
        try:
            sealed = fut.result()
            try:
                result = helper.parse(name, sealed)
            except (OSError, EOFError, ValueError):
                work.put(i, _parse_or_error(key, zstandard.ZstdDecompressor(), name, sealed))
                return
            work.put(i, result)
        except BaseException as exc:  # the storage's error (or a bug): raised in its turn
            work.put(i, exc)
            if not isinstance(exc, Exception):
                raise


def parse_index_files(
    key: crypto.Key,
    fetch: Callable[[str], bytes],
    names: list[str],
    stored_bytes: int,
) -> Generator[tuple[str, IndexFile], None, None]:
    """Every named index file parsed, in the order of ``names``.

    ``fetch`` returns a file's stored bytes with their hash checked (it runs
    on threads, a few files ahead). With ``stored_bytes`` (their total size)
    of :data:`HELPER_MIN_BYTES` or more and a second CPU, a helper process
    parses files meanwhile: each takes the next file when done with one.
    Raises the :class:`IntegrityError` or storage error of the first file
    that fails, in the order of ``names``. Closing the iterator early stops
    the helper and the fetching.
    """
    if not names:
        return
    dctx = zstandard.ZstdDecompressor()
    helper: _Helper | None = None
    if stored_bytes >= HELPER_MIN_BYTES and len(names) > 1 and (os.cpu_count() or 1) > 1:
        try:
            helper = _Helper(key)
        except (OSError, EOFError, ValueError):
            helper = None  # this process parses everything
    with ThreadPoolExecutor(max_workers=_FETCH_AHEAD, thread_name_prefix="index-fetch") as pool:
        work = _Work(names, fetch, pool)
        feeder = None
        try:
            if helper is not None:
                feeder = threading.Thread(
                    target=_feed, args=(helper, work, key), name="index-helper", daemon=True
                )
                feeder.start()
            while True:
                # far ahead of a slow helper: wait for its file first
                yield from work.ready(wait=True, upto=work.next_taken - _MAX_AHEAD + 1)
                if (taken := work.take()) is None:
                    break
                i, fut = taken
                try:
                    work.put(i, _parse_or_error(key, dctx, names[i], fut.result()))
                except Exception as exc:  # the storage's error, raised in its turn
                    work.put(i, exc)
                yield from work.ready(wait=False)
            yield from work.ready(wait=True)
        finally:
            work.stop()
            if feeder is not None and helper is not None and feeder.ident is not None:
                feeder.join(timeout=_HELPER_GRACE)
                if feeder.is_alive():  # a helper that hangs: its socket ends the feeder's wait
                    helper.proc.kill()
                    feeder.join()
            if helper is not None:
                helper.close()


def _parse_or_error(
    key: crypto.Key, dctx: zstandard.ZstdDecompressor, name: str, sealed: bytes
) -> IndexFile | IntegrityError:
    """The parsed file, or its error (raised when the file's turn comes)."""
    try:
        return parse_index_file(key, dctx, name, sealed)
    except IntegrityError as exc:
        return exc
