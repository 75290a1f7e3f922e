"""Repository locations in restic's own syntax.

* a local path (``/srv/backup``, ``~/backup``, ``local:/srv/backup``);
* ``rest:http(s)://[user:pass@]host[:port]/path`` - restic's REST protocol
  (rest-server, ``rclone serve restic``);
* ``sftp:[user@]host:/path`` (``sftp:host:path`` is relative to the login
  folder) and ``sftp://[user@]host[:port]//abs/path`` (one slash: relative);
* ``s3:https://host[:port]/bucket[/prefix]``, ``s3:http://...`` and
  ``s3:host[:port]/bucket[/prefix]`` (meaning https).

:func:`parse_location` turns the text into a :class:`Location` or raises a
:class:`~.errors.ConfigError` that says what is wrong in one line. A REST
password in the URL is kept in :attr:`Location.password` and never shown:
:meth:`Location.display` and ``str()`` put ``***`` in its place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from .errors import ConfigError

__all__ = ["Location", "parse_location", "REMOTE_SCHEMES"]

REMOTE_SCHEMES = ("rest", "sftp", "s3")

_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class Location:
    """Where a repository is.

    ``scheme`` is ``local``, ``rest``, ``sftp`` or ``s3``. For ``local``,
    ``path`` is the path as written (``~`` and variables not expanded yet).
    For ``rest``, ``url`` is the base URL without credentials (ending
    without a slash). For ``sftp``, ``path`` is the folder on the server
    (absolute, or relative to the login folder). For ``s3``, ``endpoint`` is
    ``https://host[:port]``, ``bucket`` the bucket and ``path`` the prefix
    inside it ("" for the top).
    """

    scheme: str
    text: str = field(repr=False)  # as written; may hold a password: never shown
    path: str = ""
    url: str = ""
    host: str = ""
    port: int | None = None
    user: str = ""
    password: str = field(default="", repr=False)
    endpoint: str = ""
    bucket: str = ""

    @property
    def remote(self) -> bool:
        """True for a location on a server (not a local folder)."""
        return self.scheme != "local"

    def display(self) -> str:
        """The location for messages and logs: the URL without its password."""
        if self.scheme == "rest":
            base = urlsplit(self.url)
            netloc = base.netloc
            if self.user:
                who = quote(self.user, safe="")
                netloc = f"{who}:***@{netloc}" if self.password else f"{who}@{netloc}"
            return f"rest:{base.scheme}://{netloc}{base.path}"
        return self.text

    def key(self) -> str:
        """What identifies the repository (for the keyring and caches): no password."""
        if self.scheme == "rest":
            base = urlsplit(self.url)
            who = f"{quote(self.user, safe='')}@" if self.user else ""
            return f"rest:{base.scheme}://{who}{base.netloc}{base.path}"
        return self.text

    def __str__(self) -> str:
        return self.display()


_CREDENTIALS_RE = re.compile(r"(//[^/@:]*):[^/@]*@")


def _bad(text: str, why: str) -> ConfigError:
    """The error for ``text``, which is quoted with any password in it replaced by ``***``."""
    shown = _CREDENTIALS_RE.sub(r"\1:***@", text)
    return ConfigError(f"repository location {shown!r}: {why}")


def _host_port(text: str, netloc: str, default_port: int | None = None) -> tuple[str, int | None]:
    host, _, port_text = netloc.rpartition(":") if netloc.count(":") == 1 else (netloc, "", "")
    if netloc.startswith("["):  # IPv6 literal
        end = netloc.find("]")
        host, port_text = (
            netloc[: end + 1],
            netloc[end + 2 :] if netloc[end + 1 : end + 2] == ":" else "",
        )
    if not host or not _HOST_RE.match(host):
        raise _bad(text, f"{host or 'an empty host'!r} is not a host name")
    if port_text == "":
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad(text, f"{port_text!r} is not a port (1-65535)")
    return host, int(port_text)


def _rest(text: str) -> Location:
    rest = text[len("rest:") :]
    parts = urlsplit(rest)
    if parts.scheme not in ("http", "https"):
        raise _bad(text, "a REST location is rest:http://host:port/path or rest:https://...")
    if parts.query or parts.fragment:
        raise _bad(text, "a REST location has no query or fragment")
    netloc = parts.netloc
    user = password = ""
    if "@" in netloc:
        creds, _, netloc = netloc.rpartition("@")
        user_part, sep, pass_part = creds.partition(":")
        user = unquote(user_part)
        password = unquote(pass_part) if sep else ""
        if not user:
            raise _bad(text, "the user name before '@' is empty")
    host, port = _host_port(text, netloc)
    path = parts.path.rstrip("/")
    netloc_clean = host if port is None else f"{host}:{port}"
    return Location(
        "rest",
        text,
        path=path,
        url=f"{parts.scheme}://{netloc_clean}{path}",
        host=host,
        port=port,
        user=user,
        password=password,
    )


def _sftp(text: str) -> Location:
    rest = text[len("sftp:") :]
    if rest.startswith("//"):
        # sftp://[user@]host[:port]/relative or //absolute
        netloc, slash, path = rest[2:].partition("/")
        if not slash or not path:
            raise _bad(text, "no folder after the host: sftp://user@host:port//absolute/path")
        user = ""
        if "@" in netloc:
            user, _, netloc = netloc.rpartition("@")
        host, port = _host_port(text, netloc)
        folder = unquote(path)
    else:
        # sftp:[user@]host:path
        user = ""
        if "@" in rest.split(":", 1)[0]:
            user, _, rest = rest.partition("@")
        host, colon, folder = rest.partition(":")
        if not colon:
            raise _bad(
                text, "an SFTP location is sftp:user@host:/path or sftp://user@host:port//path"
            )
        host, port = _host_port(text, host)
    if not folder or folder == "/":
        raise _bad(text, "the folder on the server is missing")
    if "\0" in folder or "\n" in folder:
        raise _bad(text, "the folder holds a control character")
    return Location("sftp", text, path=folder.rstrip("/") or "/", host=host, port=port, user=user)


def _s3(text: str) -> Location:
    rest = text[len("s3:") :]
    if rest.startswith(("https://", "http://")):
        parts = urlsplit(rest)
        scheme, netloc, path = parts.scheme, parts.netloc, parts.path
        if parts.query or parts.fragment:
            raise _bad(text, "an S3 location has no query or fragment")
    else:
        scheme = "https"
        netloc, slash, path = rest.partition("/")
        path = slash + path
    if "@" in netloc:
        raise _bad(text, "S3 credentials do not go into the location (use AWS_ACCESS_KEY_ID etc.)")
    host, port = _host_port(text, netloc)
    segments = [s for s in path.split("/") if s]
    if not segments:
        raise _bad(text, "the bucket is missing: s3:https://host/bucket[/prefix]")
    bucket, prefix = segments[0], "/".join(segments[1:])
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise _bad(text, f"{bucket!r} is not a bucket name (3-63 of a-z, 0-9, '.', '-')")
    endpoint = f"{scheme}://{host}" + (f":{port}" if port is not None else "")
    return Location("s3", text, path=prefix, host=host, port=port, endpoint=endpoint, bucket=bucket)


def parse_location(text: str) -> Location:
    """The location ``text`` names, in restic's syntax (see the module docstring)."""
    if not text or not text.strip():
        raise ConfigError("the repository location is empty")
    if text.startswith(("rest:", "sftp:", "s3:")) and text != text.strip():
        raise _bad(text, "it starts or ends with white space")
    if text.startswith("rest:"):
        return _rest(text)
    if text.startswith("sftp:"):
        return _sftp(text)
    if text.startswith("s3:"):
        return _s3(text)
    if text.startswith("local:"):
        return Location("local", text, path=text[len("local:") :])
    scheme = text.split(":", 1)[0]
    if ":" in text and scheme in ("b2", "azure", "gs", "swift", "rclone"):
        raise _bad(
            text, f"{scheme}: repositories are not supported; use rest:, sftp:, s3: or a folder"
        )
    return Location("local", text, path=text)
