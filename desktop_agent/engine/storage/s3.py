"""A repository in an S3 bucket (AWS, MinIO, Ceph, ``rclone serve s3``...), through obstore.

The layout is restic's S3 layout under the location's prefix::

    <prefix>/config
    <prefix>/keys/<id>, snapshots/<id>, index/<id>, locks/<id>
    <prefix>/data/<first two hex digits>/<id>

(without a leading slash when the prefix is empty). S3 has no folders:
:meth:`S3Storage.create_layout` only makes sure that the bucket exists,
and creates it when it does not, as restic's ``init`` does. Each file is
stored with one PUT (no multipart upload), as restic does: an S3 PUT is atomic (readers see the old
object or the new one, never half of one), and a PUT signed with SigV4
carries the SHA-256 of its body, which the server checks, so a file damaged
on the way is refused instead of stored. Names are content hashes: a PUT
repeated because its answer was lost overwrites the object with the same
bytes, which is harmless.

**One retry policy.** obstore's own retries are switched off
(``max_retries`` 0): every request runs once per try under the
:class:`~.retry.Retrier`, which decides what to retry and for how long, so
that the bound of :class:`~.retry.RetryPolicy` holds for S3 as for the
other backends. A request that hangs is abandoned after its timeout and
counts as a failed try; the :class:`~.retry.NetworkError` therefore comes
at most one request timeout after ``give_up_after``.

**Timeouts.** A download, a listing, a HEAD or a DELETE is abandoned when
no byte of the answer arrived for ``stall_timeout`` seconds. An upload
cannot be watched that way (the HTTP client's read timeout runs from the
start of the request to the first byte of the answer, and a slow uplink
sends a pack for minutes before the answer comes), so an upload gets a
deadline from its size instead: ``stall_timeout`` plus the time
the body takes at ``min_upload_rate``. Uploads of similar sizes share an
obstore store (a store holds its client's timeouts); there are a handful.

**Errors.** 403 ``InvalidAccessKeyId`` / ``SignatureDoesNotMatch`` /
``AccessDenied`` become an :class:`~.retry.AuthError` naming the variables
to check; a missing bucket a :class:`MissingBucket` that names it; 404 of
an object :class:`~desktop_agent.engine.errors.NotFound`; quota answers a
:class:`StorageError` saying the server is full. Connection failures,
timeouts, 5xx, ``SlowDown`` and ``RequestTimeout`` are retried.

**Range reads.** ``rclone serve s3`` answers a Range GET with ``200 OK``,
the requested bytes and a ``Content-Range`` header; obstore refuses any
ranged answer that is not a 206. After the first such refusal, range reads
go through a pre-signed GET URL (signed locally by obstore, so the
secret key never leaves this process) and a plain ``urllib`` request that
accepts a 206, a 200 with the right ``Content-Range``, or a 200 with the
whole object (which is then cut). Bucket creation (which obstore lacks)
uses a pre-signed PUT the same way. urllib, unlike httpx, logs no URLs: a
pre-signed URL is a short-lived credential and stays out of the logs.

Credentials come from the caller (see :func:`~desktop_agent.engine.storage.open_storage`),
never from obstore's own search of the environment, ``~/.aws`` or an
instance metadata service: what the user configured is what is used. The
endpoint, region, addressing style and signing are set explicitly too;
other ``AWS_*`` settings that obstore reads from the environment (such as
server-side encryption) still apply.
"""

from __future__ import annotations

import http.client
import logging
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Literal, TypeVar

import obstore
from obstore.exceptions import (
    BaseError,
    InvalidPathError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from desktop_agent.config.location import Location

from ..errors import NotFound, StorageError, describe_oserror
from .base import Buffer, FileType, is_storage_id, too_large
from .retry import AuthError, Permanent, Retrier, RetryPolicy, Transient
from .spool import discard_spooled, make_spool_dir

if TYPE_CHECKING:
    from obstore.store import ClientConfig, S3Config, S3Credential

__all__ = ["MissingBucket", "S3Storage"]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_REGION = "us-east-1"
# A download may take long on a slow line as long as bytes keep coming (the
# stall timeout watches that); this only ends one that trickles forever.
_DOWNLOAD_DEADLINE = 3600.0
# How long a pre-signed URL stays valid: it is used at once, by one try.
_SIGNED_FOR = timedelta(minutes=15)
_ERROR_BODY = 16 * 1024
_LIST_PAGE = 1000

_STATUS_RE = re.compile(r"status code: (\d{3})(?: ([^:\n]*))?")
_CODE_RE = re.compile(r"<Code>\s*([^<]+?)\s*</Code>")
_MESSAGE_RE = re.compile(r"<Message>\s*([^<]+?)\s*</Message>")
_REGION_RE = re.compile(r"<Region>\s*([^<]+?)\s*</Region>")
_OS_ERROR_RE = re.compile(r'kind: (\w+),\s*message: "([^"]+)"')
_HTTP_KIND_RE = re.compile(r"HttpError \{\s*kind: (\w+)")
_AWS_REGION_HOST_RE = re.compile(
    r"^s3[.-](?:dualstack\.)?([a-z]{2}(?:-gov)?-[a-z]+-\d)\.amazonaws\.com$"
)
# Transport failures obstore reports without an HTTP status
_TRANSPORT_WORDS = (
    "http error",
    "error sending request",
    "error decoding response body",
    "error reading",
    "connection",
    "timed out",
    "timeout",
    "broken pipe",
    "os error",
    "incomplete",
    "unexpected eof",
)

_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidSecurity",
        "AuthorizationHeaderMalformed",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
    }
)
_TOKEN_CODES = frozenset({"ExpiredToken", "InvalidToken", "TokenRefreshRequired"})
_FULL_CODES = frozenset(
    {
        "QuotaExceeded",
        "XMinioStorageFull",
        "XMinioAdminBucketQuotaExceeded",
        "StorageFull",
        "InsufficientStorage",
        "NotEnoughSpace",
    }
)
_RETRY_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "OperationAborted",
        "XMinioServerNotInitialized",
    }
)
_RETRY_STATUS = frozenset({408, 425, 429})
_PERMANENT_5XX = frozenset({501, 505, 507})
_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    416: "Range Not Satisfiable",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    507: "Insufficient Storage",
}


class MissingBucket(StorageError):
    """The location's bucket does not exist on the server."""


def _one_line(text: str, limit: int = 160) -> str:
    """``text`` on one line, shortened."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _field(pattern: re.Pattern[str], text: str) -> str:
    match = pattern.search(text)
    return match.group(1) if match else ""


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


class S3Storage:
    """Repository files in an S3 bucket, under the location's prefix.

    ``location`` is a parsed ``s3:`` location: its endpoint (``http://``
    is allowed), bucket and prefix. ``access_key`` and ``secret_key`` (and
    ``session_token`` for temporary credentials) sign every request;
    ``region`` defaults to us-east-1 (or the one in an AWS host name).
    Requests are path-style (``endpoint/bucket/key``), except on
    ``*.amazonaws.com``, where they are virtual-hosted as AWS wants.
    ``spool_dir`` is the local folder where packs are assembled before
    their upload. Timeouts are in seconds (see the module docstring);
    ``min_upload_rate`` is in bytes per second.
    """

    upload_parallelism = 4

    def __init__(
        self,
        location: Location,
        *,
        spool_dir: str,
        access_key: str,
        secret_key: str,
        session_token: str = "",
        region: str = "",
        retry: RetryPolicy | None = None,
        connect_timeout: float = 10.0,
        stall_timeout: float = 60.0,
        min_upload_rate: float = 32 * 1024,
    ) -> None:
        if location.scheme != "s3" or not location.bucket or not location.endpoint:
            raise StorageError(f"{location.display()} is not an S3 location")
        self._where = location.display()
        self._bucket = location.bucket
        self._prefix = location.path.strip("/")
        self._spool = spool_dir
        self._connect_timeout = connect_timeout
        self._stall = stall_timeout
        self._min_rate = min_upload_rate
        host = location.host.lower()
        aws = host == "amazonaws.com" or host.endswith(".amazonaws.com")
        if not region and aws:
            found = _AWS_REGION_HOST_RE.match(host)
            region = found.group(1) if found else ""
        self._region = region or DEFAULT_REGION
        endpoint = location.endpoint
        # AWS wants virtual-hosted requests (bucket.s3.amazonaws.com); a bucket
        # with a dot in it does not fit its TLS certificate and stays path-style.
        self._virtual_hosted = aws and "." not in self._bucket
        if self._virtual_hosted:
            scheme, _, rest = endpoint.partition("://")
            endpoint = f"{scheme}://{self._bucket}.{rest}"
        self._endpoint = endpoint
        self._allow_http = endpoint.startswith("http://")
        self._no_credentials = ""
        if not access_key or not secret_key:
            wanted = [
                var
                for var, value in (
                    ("AWS_ACCESS_KEY_ID", access_key),
                    ("AWS_SECRET_ACCESS_KEY", secret_key),
                )
                if not value
            ]
            self._no_credentials = (
                f"no S3 credentials for {self._where}: set {' and '.join(wanted)}, or store "
                "the access key and secret key of this repository in the settings"
            )
        self._credential: S3Credential = {
            "access_key_id": access_key,
            "secret_access_key": secret_key,
            "token": session_token or None,
            "expires_at": None,
        }
        self._has_token = bool(session_token)
        self._lock = threading.Lock()
        self._uploaders: dict[int, S3Store] = {}
        self._reader = self._make_store(read_timeout=stall_timeout, deadline=_DOWNLOAD_DEADLINE)
        self._ranges_via_url = False  # the server answers ranges in a way obstore refuses
        self.retrier = Retrier(self._where, retry)

    # ------------------------------------------------------------ set-up
    def _credentials(self) -> S3Credential:
        return self._credential

    def _make_store(self, *, read_timeout: float | None, deadline: float) -> S3Store:
        config: S3Config = {
            "endpoint": self._endpoint,
            # the environment's AWS_ENDPOINT_URL_S3 would win over ``endpoint``
            "aws_endpoint_url_s3": self._endpoint,
            "region": self._region,
            "virtual_hosted_style_request": self._virtual_hosted,
            "skip_signature": False,
            "unsigned_payload": False,
            "s3_express": False,
            # one DELETE per object, as restic does: every S3 server has it
            "disable_bulk_delete": True,
        }
        client: ClientConfig = {
            "allow_http": self._allow_http,
            "connect_timeout": _seconds(self._connect_timeout),
            "timeout": _seconds(deadline),
            "pool_idle_timeout": _seconds(15),
            "user_agent": "desktop-agent",
        }
        if read_timeout is not None:
            client["read_timeout"] = _seconds(read_timeout)
        try:
            return S3Store(
                self._bucket,
                config=config,
                client_options=client,
                retry_config={"max_retries": 0},
                credential_provider=self._credentials,
            )
        except (BaseError, ValueError) as exc:
            raise StorageError(
                f"cannot use the S3 location {self._where}: {_one_line(str(exc))}"
            ) from None

    def _uploader(self, size: int) -> S3Store:
        """The store for uploads of ``size`` bytes: its deadline lets the body go
        through at ``min_upload_rate``, rounded up to a power of two times the
        stall timeout so that few stores are made."""
        needed = self._stall + size / self._min_rate
        step = 0
        while self._stall * (1 << step) < needed:
            step += 1
        with self._lock:
            store = self._uploaders.get(step)
            if store is None:
                store = self._make_store(read_timeout=None, deadline=self._stall * (1 << step))
                self._uploaders[step] = store
            return store

    # ------------------------------------------------------------ names
    @property
    def location(self) -> str:
        """The repository location, as written."""
        return self._where

    def _key(self, ftype: FileType, name: str) -> str:
        """The object key of a repository file (restic's S3 layout)."""
        if ftype is FileType.CONFIG:
            rel = "config"
        elif not is_storage_id(name):
            raise StorageError(f"invalid file name {name!r}")
        elif ftype is FileType.PACK:
            rel = f"data/{name[:2]}/{name}"
        else:
            rel = f"{ftype.value}/{name}"
        return f"{self._prefix}/{rel}" if self._prefix else rel

    def _dir(self, ftype: FileType) -> str:
        return f"{self._prefix}/{ftype.value}" if self._prefix else ftype.value

    @staticmethod
    def _label(ftype: FileType, name: str) -> str:
        return "config" if ftype is FileType.CONFIG else f"{ftype.value}/{name}"

    # ------------------------------------------------------------ errors
    def _missing_bucket(self, extra: str = "") -> MissingBucket:
        return MissingBucket(
            f"the bucket {self._bucket!r} does not exist at {self._endpoint_shown()}"
            f"{extra}; create it, or check the repository location {self._where}"
        )

    def _endpoint_shown(self) -> str:
        return self._endpoint.split("://", 1)[-1]

    def _answer_error(self, status: int, body: str, what: str, label: str) -> BaseException:
        """The exception for an S3 error answer (``body`` is its XML, or obstore's
        text around it): NotFound, Transient or Permanent."""
        code = _field(_CODE_RE, body)
        message = _field(_MESSAGE_RE, body)
        said = code or f"{status} {_REASONS.get(status, '')}".strip()
        detail = f"{said}: {_one_line(message, 100)}" if message and code else said
        if code == "NoSuchBucket":
            return Permanent(self._missing_bucket())
        if status == 404 and code in ("", "NoSuchKey", "NotFound"):
            return NotFound(f"{label} does not exist at {self._where}")
        if code in _FULL_CODES or status == 507:
            return Permanent(
                StorageError(
                    f"the S3 server at {self._where} is full ({said}) while {what}; "
                    "free space or raise the bucket's quota"
                )
            )
        if code in _RETRY_CODES or status in _RETRY_STATUS:
            return Transient(f"{status} {code}" if code else said)
        if status >= 500 and status not in _PERMANENT_5XX:
            return Transient(f"{status} {code}" if code else said)
        if code == "AuthorizationHeaderMalformed" and (region := _field(_REGION_RE, body)):
            return Permanent(
                AuthError(
                    f"the bucket {self._bucket!r} is in region {region!r}, not "
                    f"{self._region!r}; set AWS_DEFAULT_REGION={region}"
                )
            )
        if code in _TOKEN_CODES:
            return Permanent(
                AuthError(
                    f"the S3 server at {self._where} refused the session token ({said}); "
                    "renew the temporary credentials in AWS_SESSION_TOKEN"
                )
            )
        if code in _CREDENTIAL_CODES or status == 401 or (status == 403 and not code):
            token = ", AWS_SESSION_TOKEN" if self._has_token else ""
            return Permanent(
                AuthError(
                    f"the S3 server at {self._where} refused the credentials ({said}); "
                    "check the access key and secret key of this repository "
                    f"(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY{token})"
                )
            )
        if code == "RequestTimeTooSkewed":
            return Permanent(
                StorageError(
                    f"the S3 server at {self._where} refused the request because this "
                    f"computer's clock is off ({said}); set the clock right"
                )
            )
        if status == 403:
            return Permanent(
                AuthError(
                    f"the S3 server at {self._where} denied access ({said}) while {what}; "
                    "check that the access key of this repository (AWS_ACCESS_KEY_ID, "
                    "AWS_SECRET_ACCESS_KEY) may read, write, list and delete in bucket "
                    f"{self._bucket!r}"
                )
            )
        if status == 416 or code == "InvalidRange":
            return Permanent(_BeyondEnd(f"{label} at {self._where}: read beyond end of file"))
        if 300 <= status < 400:
            return Permanent(
                StorageError(
                    f"the S3 server at {self._where} redirected the request ({detail}) while "
                    f"{what}; check the endpoint and region of the location"
                )
            )
        return Permanent(
            StorageError(
                f"the S3 server at {self._where} rejected the request ({detail}) while {what}"
            )
        )

    def _classify(self, exc: Exception, what: str, label: str) -> BaseException:
        """The exception to raise for a failure of one try (obstore's or urllib's)."""
        if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                return Transient("no answer within the timeout")
            why = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
            return Transient(f"cannot connect: {_one_line(str(why), 80)}")
        if isinstance(exc, TimeoutError):
            return Transient("no answer within the timeout")
        if isinstance(exc, ConnectionError | http.client.HTTPException):
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return Transient(f"connection lost: {_one_line(why or type(exc).__name__, 80)}")
        if isinstance(exc, ValueError) and not isinstance(exc, BaseError):
            return Permanent(StorageError(f"{what} at {self._where}: {_one_line(str(exc))}"))
        text = str(exc)
        status_match = _STATUS_RE.search(text)
        if status_match is not None:
            return self._answer_error(int(status_match.group(1)), text, what, label)
        if isinstance(exc, FileNotFoundError):
            return NotFound(f"{label} does not exist at {self._where}")
        if isinstance(exc, UnauthenticatedError | PermissionDeniedError):
            status = 401 if isinstance(exc, UnauthenticatedError) else 403
            return self._answer_error(status, "", what, label)
        if isinstance(exc, InvalidPathError):
            return Permanent(StorageError(f"invalid object key while {what}: {_one_line(text)}"))
        lowered = text.lower()
        if "non-partial response" in lowered:
            return _NotPartial()
        kind = _field(_HTTP_KIND_RE, text)
        if kind == "Timeout" or ("timed out" in lowered and "connect" not in lowered):
            return Transient("no answer within the timeout")
        if kind or any(word in lowered for word in _TRANSPORT_WORDS):
            os_error = _OS_ERROR_RE.search(text)
            why = os_error.group(2) if os_error else (kind or "transport error").lower()
            if kind == "Connect":
                return Transient(f"cannot connect: {why}")
            return Transient(f"connection lost: {why}")
        return Permanent(
            StorageError(f"S3 request failed while {what} at {self._where}: {_one_line(text)}")
        )

    def _call(self, what: str, label: str, request: Callable[[], T]) -> T:
        """``request()`` under the retry policy, its failures classified."""
        if self._no_credentials:
            raise AuthError(self._no_credentials)

        def attempt() -> T:
            try:
                return request()
            except (Transient, Permanent, NotFound, StorageError, _NotPartial):
                raise
            except Exception as exc:  # obstore and urllib raise many kinds
                raise self._classify(exc, what, label) from None

        return self.retrier.call(what, attempt)

    # ------------------------------------------------------------ requests
    def _head(self, key: str, label: str) -> int:
        """The size of an object; NotFound when there is none."""
        meta = self._call(f"looking up {label}", label, lambda: obstore.head(self._reader, key))
        return int(meta["size"])

    def _put(self, key: str, label: str, data: bytes) -> None:
        store = self._uploader(len(data))
        self._call(
            f"saving {label}",
            label,
            lambda: obstore.put(store, key, data, use_multipart=False),
        )

    def _get(self, key: str, label: str) -> bytes:
        return self._call(
            f"reading {label}",
            label,
            lambda: bytes(obstore.get(self._reader, key).bytes()),
        )

    def _get_range(self, key: str, label: str, start: int, length: int | None) -> bytes:
        """``length`` bytes (None: the rest) from ``start``; may be shorter at the end."""
        what = f"reading {label}"
        if not self._ranges_via_url:
            try:
                if length is None:
                    return self._call(
                        what,
                        label,
                        lambda: bytes(
                            obstore.get(
                                self._reader, key, options={"range": {"offset": start}}
                            ).bytes()
                        ),
                    )
                return self._call(
                    what,
                    label,
                    lambda: bytes(obstore.get_range(self._reader, key, start=start, length=length)),
                )
            except _NotPartial:
                log.info(
                    "%s answers range requests with 200 OK; reading ranges by signed URL",
                    self._where,
                )
                self._ranges_via_url = True
        return self._call(what, label, lambda: self._signed_range(key, label, start, length))

    def _signed(
        self,
        method: Literal["GET", "PUT"],
        key: str,
        headers: dict[str, str],
        body: bytes | None = None,
    ) -> tuple[int, str, bytes]:
        """One request to a URL that obstore pre-signed: the status, Content-Range and
        body of the answer, whatever its status; transport failures raise."""
        url = obstore.sign(self._reader, method, key, _SIGNED_FOR)
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        request.add_header("User-Agent", "desktop-agent")
        try:
            with urllib.request.urlopen(request, timeout=self._stall) as resp:
                return resp.status, resp.headers.get("Content-Range", ""), resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, "", exc.read(_ERROR_BODY)

    def _signed_range(self, key: str, label: str, start: int, length: int | None) -> bytes:
        """One ranged GET through a pre-signed URL, for servers that answer 200 to it."""
        end = "" if length is None else str(start + length - 1)
        status, content_range, body = self._signed("GET", key, {"Range": f"bytes={start}-{end}"})
        if status == 206:
            return body
        if status == 200:
            if not content_range:
                # the whole object: the server ignored the Range header
                return body[start:] if length is None else body[start : start + length]
            found = re.fullmatch(r"\s*bytes (\d+)-(\d+)/(\d+|\*)\s*", content_range)
            if found is None or int(found.group(1)) != start:
                raise Permanent(
                    StorageError(
                        f"the S3 server at {self._where} answered a read of {label} with "
                        f"the wrong range ({_one_line(content_range, 60)})"
                    )
                )
            return body
        raise self._answer_error(
            status, body[:_ERROR_BODY].decode("utf-8", "replace"), f"reading {label}", label
        )

    def _create_bucket(self) -> None:
        """Create the bucket with a pre-signed PUT (obstore cannot); restic does the same."""
        what = f"creating the bucket {self._bucket!r}"
        body = b""
        if self._region != DEFAULT_REGION:
            body = (
                '<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                f"<LocationConstraint>{self._region}</LocationConstraint>"
                "</CreateBucketConfiguration>"
            ).encode()

        def attempt() -> None:
            status, _range, answer = self._signed(
                "PUT", "", {"Content-Type": "application/xml"}, body
            )
            if 200 <= status < 300:
                return
            text = answer[:_ERROR_BODY].decode("utf-8", "replace")
            code = _field(_CODE_RE, text)
            if code == "BucketAlreadyOwnedByYou":
                return
            if code == "BucketAlreadyExists":
                raise Permanent(
                    StorageError(
                        f"the bucket name {self._bucket!r} is taken by another account at "
                        f"{self._endpoint_shown()}; choose another bucket name"
                    )
                )
            if (status == 403 and code not in _CREDENTIAL_CODES | _TOKEN_CODES) or status in (
                405,
                501,
            ):
                # the key may not create buckets, or the server cannot
                said = code or f"{status} {_REASONS.get(status, '')}".strip()
                raise Permanent(self._missing_bucket(f" and could not be created ({said})"))
            raise self._answer_error(status, text, what, "the bucket")

        self._call(what, "the bucket", attempt)
        log.info("created the bucket %r at %s", self._bucket, self._endpoint_shown())

    # ------------------------------------------------------------ Storage
    def exists(self) -> bool:
        """True when the repository's config object exists."""
        try:
            self._head(self._key(FileType.CONFIG, ""), "config")
        except NotFound:
            return False
        return True

    def create_layout(self) -> None:
        """Make sure the bucket exists, creating it when it does not (as restic does).

        S3 has no folders: nothing else is created.
        """
        prefix = self._prefix or None
        try:
            self._call(
                "checking the bucket",
                "the bucket",
                lambda: obstore.list_with_delimiter(self._reader, prefix),
            )
        except MissingBucket:
            self._create_bucket()

    def save(self, ftype: FileType, name: str, parts: Sequence[Buffer]) -> None:
        """Store the concatenation of ``parts`` with one PUT."""
        key = self._key(ftype, name)
        self._put(key, self._label(ftype, name), b"".join(parts))

    def save_file(self, ftype: FileType, name: str, path: str) -> None:
        """Upload the spooled file at ``path`` with one PUT, then delete it."""
        key = self._key(ftype, name)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise describe_oserror(exc, path) from None
        self._put(key, self._label(ftype, name), data)
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
        """Read an object, or ``length`` bytes of it from ``offset`` (a ranged GET)."""
        key = self._key(ftype, name)
        label = self._label(ftype, name)
        if offset < 0 or (length is not None and length < 0):
            raise StorageError(f"{label}: invalid range {offset}+{length}")
        if length == 0:
            if offset > self._head(key, label):
                raise StorageError(f"{label} at {self._where}: read beyond end of file")
            return b""
        if length is None and max_size is not None:
            size = self._head(key, label)
            if size > max_size:
                raise too_large(f"{label} at {self._where}", size, max_size)
        if length is None and offset == 0:
            data = self._get(key, label)
            if max_size is not None and len(data) > max_size:
                raise too_large(f"{label} at {self._where}", len(data), max_size)
            return data
        try:
            data = self._get_range(key, label, offset, length)
        except _BeyondEnd:
            # S3 refuses a range that starts at the end (416); reading the
            # empty rest of a file is no error
            if length is None and self._head(key, label) == offset:
                return b""
            raise
        if length is not None and len(data) != length:
            raise StorageError(
                f"{label} at {self._where}: file is shorter than expected (truncated?)"
            )
        return data

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        """Yield ``(name, size)`` of the objects of a type whose keys are restic's."""
        if ftype is FileType.CONFIG:
            try:
                yield ("", self._head(self._key(FileType.CONFIG, ""), "config"))
            except NotFound:
                pass
            return
        base = self._dir(ftype)
        found: list[tuple[str, int]] = []
        last: list[str] = []  # the last key seen: a retry resumes after it

        def attempt() -> None:
            stream = obstore.list(
                self._reader, base, offset=last[0] if last else None, chunk_size=_LIST_PAGE
            )
            for chunk in stream:
                for meta in chunk:
                    path = meta["path"]
                    last[:] = [path]
                    name = self._listed_name(ftype, path[len(base) + 1 :])
                    if name is not None:
                        found.append((name, int(meta["size"])))

        self._call(f"listing {ftype.value}", ftype.value, attempt)
        yield from found

    @staticmethod
    def _listed_name(ftype: FileType, rel: str) -> str | None:
        """The id in a key below a type's folder, if the key is where restic puts it."""
        if ftype is FileType.PACK:
            sub, _, name = rel.partition("/")
            return name if is_storage_id(name) and sub == name[:2] else None
        return rel if is_storage_id(rel) else None

    def remove(self, ftype: FileType, name: str) -> None:
        """Delete an object; a missing one is not an error."""
        key = self._key(ftype, name)
        label = self._label(ftype, name)
        try:
            self._call(f"deleting {label}", label, lambda: obstore.delete(self._reader, key))
        except NotFound:
            pass

    def __repr__(self) -> str:
        return f"S3Storage({self._where!r})"


class _BeyondEnd(StorageError):
    """A read that starts beyond the end of a file (416)."""


class _NotPartial(Exception):
    """obstore refused a 200 answer to a range request (``rclone serve s3`` sends those)."""
