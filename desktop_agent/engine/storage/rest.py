"""A repository on a server that speaks restic's REST protocol.

The servers are restic's rest-server and ``rclone serve restic``; the
protocol is restic's ``doc/REST_backend.rst``::

    POST   /?create=true          create the repository's folders
    HEAD   /config, /{type}/{id}  exists? (Content-Length is the size)
    GET    /config, /{type}/{id}  read (a Range header reads part of it)
    POST   /config, /{type}/{id}  store (the body is the file)
    DELETE /config, /{type}/{id}  delete
    GET    /{type}/               list; with Accept: application/vnd.x.restic.rest.v2
                                  a JSON list of {"name": ..., "size": ...}

where ``type`` is ``data``, ``keys``, ``locks``, ``snapshots`` or ``index``.
The server decides where files live on its disk (rest-server puts packs
in ``data/xx/``, as restic's local layout does).

Every request runs through a :class:`~.retry.Retrier`: connection
failures, timeouts, 408/429 and 5xx answers are retried with backoff; 401
and 403 (credentials, permissions), 400 (a request the server rejects),
404 and 507 (the server is full) are not. rest-server refuses to store a
name that exists (403), so a retried upload whose first try did land but
whose answer was lost is accepted when a HEAD finds the file with the
right size: names are content hashes. One ``httpx.Client`` (HTTP/1.1, a
pool of five connections, TLS verified) serves every thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import ssl
from collections.abc import Callable, Iterable, Iterator, Sequence

import httpx

from desktop_agent.config.location import Location

from ..errors import NotFound, StorageError, describe_oserror
from .base import Buffer, FileType, is_storage_id, too_large
from .retry import AuthError, Permanent, Retrier, RetryPolicy, Transient
from .spool import discard_spooled, make_spool_dir

__all__ = ["RestStorage", "V2_LISTING"]

log = logging.getLogger(__name__)

V2_LISTING = "application/vnd.x.restic.rest.v2"

_CHUNK = 1024 * 1024
# A listing of a million packs is about 100 MB of JSON; refuse a listing far
# larger than any real repository's instead of filling the memory.
_MAX_LISTING = 512 * 1024 * 1024
# (name, size) pairs of a listing; no size in a v1 listing (``list`` is a method below)
_Listing = list[tuple[str, int | None]]
_CREDENTIALS = re.compile(r"(//)[^/@]*@")  # user:password@ in a URL
_RETRYABLE_4XX = frozenset({408, 425, 429})
_PERMANENT_5XX = frozenset({501, 505, 507})


def _reason(status: int) -> str:
    """``404 Not Found`` and the like."""
    return f"{status} {httpx.codes.get_reason_phrase(status)}".strip()


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind an httpx exception, if that is what it was."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLError):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def _one_line(text: str, limit: int = 160) -> str:
    """``text`` on one line, shortened."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _file_chunks(path: str) -> Iterator[bytes]:
    """The bytes of ``path`` in chunks (a spooled pack is streamed, not read whole)."""
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                yield chunk
    except OSError as exc:
        raise describe_oserror(exc, path) from None


class RestStorage:
    """Repository files on a REST server (rest-server, ``rclone serve restic``).

    ``location`` is a parsed ``rest:`` location; ``user`` and ``password``
    are the HTTP basic-auth credentials (none when ``user`` is empty).
    ``spool_dir`` is the local folder where packs are assembled before
    their upload. The timeouts are in seconds: ``read_timeout`` is how
    long a request may wait for the next byte of the answer before it is
    abandoned (and retried). ``verify`` is httpx's: True for the system's
    trusted certificates, a path to a CA file, or an ``ssl.SSLContext``.
    """

    upload_parallelism = 4

    def __init__(
        self,
        location: Location,
        *,
        spool_dir: str,
        user: str = "",
        password: str = "",
        retry: RetryPolicy | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        write_timeout: float = 60.0,
        pool_timeout: float = 60.0,
        verify: ssl.SSLContext | str | bool = True,
        max_connections: int = 5,
    ) -> None:
        if location.scheme != "rest":
            raise StorageError(f"{location.display()} is not a REST location")
        self._where = location.display()
        self._base = location.url.rstrip("/")
        self._spool = spool_dir
        self._has_user = bool(user)
        if isinstance(verify, str):
            verify = ssl.create_default_context(cafile=verify)
        self._client = httpx.Client(
            auth=httpx.BasicAuth(user, password) if user else None,
            http1=True,
            http2=False,
            verify=verify,
            follow_redirects=False,
            timeout=httpx.Timeout(
                connect=connect_timeout, read=read_timeout, write=write_timeout, pool=pool_timeout
            ),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers={"User-Agent": "desktop-agent"},
        )
        self.retrier = Retrier(self._where, retry)

    # ------------------------------------------------------------ names
    @property
    def location(self) -> str:
        """The repository URL, without its password."""
        return self._where

    def _url(self, ftype: FileType, name: str) -> str:
        if ftype is FileType.CONFIG:
            return f"{self._base}/config"
        if not is_storage_id(name):
            raise StorageError(f"invalid file name {name!r}")
        return f"{self._base}/{ftype.value}/{name}"

    @staticmethod
    def _label(ftype: FileType, name: str) -> str:
        return "config" if ftype is FileType.CONFIG else f"{ftype.value}/{name}"

    # ------------------------------------------------------------ errors
    @contextlib.contextmanager
    def _network(self) -> Iterator[None]:
        """Turn httpx's transport failures into Transient (or Permanent) ones."""
        try:
            yield
        except httpx.TimeoutException as exc:
            kind = {
                httpx.ConnectTimeout: "connecting timed out",
                httpx.ReadTimeout: "no answer within the read timeout",
                httpx.WriteTimeout: "sending timed out",
                httpx.PoolTimeout: "no free connection within the timeout",
            }.get(type(exc), "timed out")
            raise Transient(kind) from None
        except httpx.ConnectError as exc:
            tls = _ssl_cause(exc)
            if isinstance(tls, ssl.SSLCertVerificationError):
                raise Permanent(
                    StorageError(
                        f"the TLS certificate of the REST server at {self._where} is not "
                        f"trusted ({_one_line(tls.verify_message or str(tls))}); "
                        "check the URL, or install the server's CA certificate"
                    )
                ) from None
            if tls is not None and not isinstance(tls, ssl.SSLEOFError | ssl.SSLZeroReturnError):
                raise Permanent(
                    StorageError(
                        f"could not talk TLS with the REST server at {self._where} "
                        f"({_one_line(str(tls))}); does it serve https at that port?"
                    )
                ) from None
            raise Transient(
                f"cannot connect: {_one_line(str(exc)) or 'connection failed'}"
            ) from None
        except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
            raise Transient(
                f"connection lost: {_one_line(str(exc)) or type(exc).__name__}"
            ) from None
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
            raise Permanent(
                StorageError(f"cannot send requests to {self._where}: {_one_line(str(exc))}")
            ) from None
        except httpx.TransportError as exc:
            raise Transient(_one_line(str(exc)) or type(exc).__name__) from None

    def _refused(self, status: int, what: str, detail: str = "") -> StorageError:
        """The error for an answer that a retry cannot change."""
        said = f"{_reason(status)}{': ' + detail if detail else ''}"
        if status == 401:
            if not self._has_user:
                return AuthError(
                    f"the REST server at {self._where} wants a user name and password "
                    "(401 Unauthorized) and none was given; set the REST user and password "
                    "of this repository"
                )
            return AuthError(
                f"the REST server at {self._where} refused the user name or password "
                "(401 Unauthorized); check the REST user and password of this repository"
            )
        if status == 403:
            return AuthError(
                f"the REST server at {self._where} refused permission while {what} "
                "(403 Forbidden); check that this user may use the repository and that "
                "the server is not append-only"
            )
        if status == 507:
            return StorageError(
                f"the REST server at {self._where} is out of space (507 Insufficient Storage) "
                f"while {what}; free space or raise the quota on the server"
            )
        if status == 413:
            return StorageError(
                f"the REST server at {self._where} refused a file as too large ({said}) "
                f"while {what}; raise its size limit or quota"
            )
        if status == 400:
            return StorageError(
                f"the REST server at {self._where} rejected the request ({said}) while {what}"
            )
        if status == 404:
            return StorageError(
                f"the REST server at {self._where} answered {said} while {what}; "
                "is the repository URL right?"
            )
        if 300 <= status < 400:
            return StorageError(
                f"the REST server at {self._where} redirected the request ({said}) while "
                f"{what}; put the URL it redirects to into the repository location"
            )
        return StorageError(f"the REST server at {self._where} answered {said} while {what}")

    def _check(self, resp: httpx.Response, what: str) -> None:
        """Return for a 2xx answer; raise Transient or Permanent for any other."""
        status = resp.status_code
        if 200 <= status < 300:
            return
        if status in _RETRYABLE_4XX or (status >= 500 and status not in _PERMANENT_5XX):
            raise Transient(_reason(status))
        detail = ""
        if status in (400, 404, 405, 409, 413, 422) or status >= 500:
            detail = self._snippet(resp)
        if 300 <= status < 400 and resp.headers.get("Location"):
            target = _CREDENTIALS.sub(r"\1***@", resp.headers["Location"])
            detail = f"to {_one_line(target, 100)}"
        raise Permanent(self._refused(status, what, detail))

    @staticmethod
    def _snippet(resp: httpx.Response) -> str:
        """The first words of an error answer's body, if it says more than its status."""
        buf = b""
        with contextlib.suppress(httpx.HTTPError):
            for chunk in resp.iter_bytes():
                buf += chunk
                if len(buf) > 512:
                    break
        text = _one_line(buf[:512].decode("utf-8", "replace"), 100)
        if not text or text.lower() == resp.reason_phrase.lower() or "<" in text:
            return ""
        return text

    # ------------------------------------------------------------ requests
    def _head(self, url: str, what: str) -> int | None:
        """The size of the file at ``url`` (None when it does not exist); one try."""
        with self._network():
            resp = self._client.head(url)
        if resp.status_code == 404:
            return None
        self._check(resp, what)
        try:
            return int(resp.headers["Content-Length"])
        except (KeyError, ValueError):
            raise Permanent(
                StorageError(
                    f"the REST server at {self._where} did not say the size of a file "
                    f"while {what}; is this a restic REST server?"
                )
            ) from None

    def _size(self, ftype: FileType, name: str) -> int | None:
        """The size of a file, retried; None when it does not exist."""
        what = f"looking up {self._label(ftype, name)}"
        url = self._url(ftype, name)
        return self.retrier.call(what, lambda: self._head(url, what))

    def _upload(
        self,
        ftype: FileType,
        name: str,
        size: int,
        body: Callable[[], bytes | Iterable[bytes]],
    ) -> None:
        url = self._url(ftype, name)
        label = self._label(ftype, name)
        what = f"saving {label}"
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}

        def attempt() -> None:
            with self._network():
                resp = self._client.post(url, content=body(), headers=headers)
            if resp.status_code == 403:
                # rest-server never replaces a file: a 403 may mean an earlier try
                # (or another client) stored it already. Names are content
                # hashes, so a file of the same size is this one.
                stored = self._head(url, what)
                if stored == size:
                    return
                if stored is not None:
                    raise Permanent(
                        StorageError(
                            f"the REST server at {self._where} holds {label} with "
                            f"{stored} bytes instead of {size} and refuses to replace it "
                            "(403 Forbidden); run a check of the repository"
                        )
                    )
            self._check(resp, what)

        self.retrier.call(what, attempt)

    # ------------------------------------------------------------ Storage
    def exists(self) -> bool:
        """True when the server has the repository's config."""
        return self._size(FileType.CONFIG, "") is not None

    def create_layout(self) -> None:
        """Ask the server to create the repository's folders (``POST /?create=true``)."""
        what = "creating the repository"
        url = f"{self._base}/"

        def attempt() -> None:
            with self._network():
                resp = self._client.post(url, params={"create": "true"}, content=b"")
            self._check(resp, what)

        self.retrier.call(what, attempt)

    def save(self, ftype: FileType, name: str, parts: Sequence[Buffer]) -> None:
        """Upload the concatenation of ``parts``."""
        self._url(ftype, name)  # refuse a bad name before joining
        data = b"".join(parts)
        self._upload(ftype, name, len(data), lambda: data)

    def save_file(self, ftype: FileType, name: str, path: str) -> None:
        """Upload the spooled file at ``path`` (streamed from disk), then delete it."""
        self._url(ftype, name)
        try:
            size = os.stat(path).st_size
        except OSError as exc:
            raise describe_oserror(exc, path) from None
        self._upload(ftype, name, size, lambda: _file_chunks(path))
        discard_spooled(path)

    def spool_dir(self) -> str:
        """The local folder where packs are assembled (created, 0700)."""
        return make_spool_dir(self._spool)

    def load(
        self,
        ftype: FileType,
        name: str,
        offset: int = 0,
        length: int | None = None,
        *,
        max_size: int | None = None,
    ) -> bytes:
        """Read a file, or ``length`` bytes of it from ``offset`` (a Range request)."""
        url = self._url(ftype, name)
        label = self._label(ftype, name)
        what = f"reading {label}"
        if offset < 0 or (length is not None and length < 0):
            raise StorageError(f"{label}: invalid range {offset}+{length}")
        if length == 0:
            size = self._size(ftype, name)
            if size is None:
                raise NotFound(f"{label} does not exist at {self._where}")
            if offset > size:
                raise StorageError(f"{label} at {self._where}: read beyond end of file")
            return b""
        headers: dict[str, str] = {}
        if length is not None:
            headers["Range"] = f"bytes={offset}-{offset + length - 1}"
        elif offset:
            headers["Range"] = f"bytes={offset}-"

        def attempt() -> bytes:
            with self._network(), self._client.stream("GET", url, headers=headers) as resp:
                if resp.status_code == 404:
                    raise NotFound(f"{label} does not exist at {self._where}")
                if resp.status_code == 416:
                    raise StorageError(f"{label} at {self._where}: read beyond end of file")
                self._check(resp, what)
                skip = offset if (headers and resp.status_code == 200) else 0
                if resp.status_code == 206:
                    self._check_content_range(resp, offset, what)
                if length is not None:
                    return self._read(resp, skip, length)
                if max_size is not None:
                    declared = resp.headers.get("Content-Length", "")
                    if declared.isdigit() and int(declared) - skip > max_size:
                        raise too_large(f"{label} at {self._where}", int(declared), max_size)
                    data = self._read(resp, skip, max_size + 1)
                    if len(data) > max_size:
                        raise too_large(f"{label} at {self._where}", len(data) + offset, max_size)
                    return data
                return self._read(resp, skip, None)

        data = self.retrier.call(what, attempt)
        if length is not None and len(data) != length:
            raise StorageError(f"{label} at {self._where} is shorter than expected (truncated?)")
        return data

    def _check_content_range(self, resp: httpx.Response, offset: int, what: str) -> None:
        """A 206 answer must start where it was asked to."""
        got = resp.headers.get("Content-Range", "")
        start = got.removeprefix("bytes ").split("-", 1)[0]
        if not start.isdigit() or int(start) != offset:
            raise Permanent(
                StorageError(
                    f"the REST server at {self._where} answered another range ({got!r}) "
                    f"than asked for while {what}"
                )
            )

    @staticmethod
    def _read(resp: httpx.Response, skip: int, limit: int | None) -> bytes:
        """At most ``limit`` bytes of the body after the first ``skip``, streamed."""
        out = bytearray()
        for chunk in resp.iter_bytes(_CHUNK):
            if skip:
                if len(chunk) <= skip:
                    skip -= len(chunk)
                    continue
                chunk = chunk[skip:]
                skip = 0
            out += chunk
            if limit is not None and len(out) >= limit:
                del out[limit:]
                break
        return bytes(out)

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        """Yield ``(name, size)`` of every valid file of a type (v2 listing)."""
        if ftype is FileType.CONFIG:
            size = self._size(FileType.CONFIG, "")
            if size is not None:
                yield ("", size)
            return
        what = f"listing {ftype.value}/"
        url = f"{self._base}/{ftype.value}/"

        def attempt() -> bytes | None:
            with (
                self._network(),
                self._client.stream("GET", url, headers={"Accept": V2_LISTING}) as resp,
            ):
                if resp.status_code == 404:  # rest-server: the folder does not exist
                    return None
                self._check(resp, what)
                body = self._read(resp, 0, _MAX_LISTING + 1)
            if len(body) > _MAX_LISTING:
                raise Permanent(
                    StorageError(
                        f"the REST server at {self._where} sent a listing of "
                        f"{ftype.value}/ larger than {_MAX_LISTING} bytes; not read"
                    )
                )
            return body

        body = self.retrier.call(what, attempt)
        if body is None:
            return
        for name, size in self._parse_listing(ftype, body):
            if size is None:  # a v1 listing: names only
                size = self._size(ftype, name)
                if size is None:  # removed since it was listed
                    continue
            yield (name, size)

    def _parse_listing(self, ftype: FileType, body: bytes) -> _Listing:
        """The valid names (and sizes, for a v2 listing) in a listing."""
        bad = StorageError(
            f"the REST server at {self._where} sent a listing of {ftype.value}/ "
            "that is not restic's REST format; is this a restic REST server?"
        )
        try:
            doc = json.loads(body) if body.strip() else []
        except (ValueError, UnicodeDecodeError):
            raise bad from None
        if doc is None:  # rest-server's JSON of an empty Go slice
            return []
        if not isinstance(doc, list):
            raise bad
        out: _Listing = []
        for item in doc:
            if isinstance(item, str):
                if is_storage_id(item):
                    out.append((item, None))
                continue
            if not isinstance(item, dict):
                raise bad
            name, size = item.get("name"), item.get("size")
            if not isinstance(name, str) or not isinstance(size, int) or isinstance(size, bool):
                raise bad
            if size < 0:
                raise bad
            if is_storage_id(name):
                out.append((name, size))
        return out

    def remove(self, ftype: FileType, name: str) -> None:
        """Delete a file; a missing one is fine."""
        url = self._url(ftype, name)
        what = f"deleting {self._label(ftype, name)}"

        def attempt() -> None:
            with self._network():
                resp = self._client.delete(url)
            if resp.status_code == 404:
                return
            self._check(resp, what)

        self.retrier.call(what, attempt)

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close the connections to the server."""
        self._client.close()

    def __enter__(self) -> RestStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RestStorage({self._where!r})"
