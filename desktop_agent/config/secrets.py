"""Where secrets are kept: the OS keyring and private files, and which of them to use.

One home for every secret desktop-agent stores: the repository password
today, the backup server's credential (``[server] token_file``, the keyring)
tomorrow. Which password a repository is opened with (the environment
variable first, then the file, then the keyring) is decided by
:func:`desktop_agent.config.password.read_password`; this module reads and
writes the places.

* The OS keyring: service :data:`KEYRING_SERVICE`, one user name per secret
  (the repository password's is the expanded repository path).
  :func:`keyring_usable` tells a real backend from keyring's "fail" and
  "null" ones; any keyring error reads as "no secret there".
* Private files: the first line is the secret; written atomically with mode
  0600 in folders created 0700, read without following FIFOs or devices
  (:mod:`.privatefile`), with a warning when other users can read them.

No secret ever appears in a message or a log line. Every function may block
(keyring calls can wait on D-Bus or an unlock prompt; files are fsynced):
call them off the event loop thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from desktop_agent.config.atomicfile import make_private_dirs, resolve_link, write_atomic
from desktop_agent.config.errors import ConfigError
from desktop_agent.config.location import Location
from desktop_agent.config.model import Config
from desktop_agent.config.privatefile import read_regular_file, warn_if_exposed

__all__ = [
    "KEYRING_SERVICE",
    "REST_PASSWORD",
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
    "ServerCredentials",
    "credentials_dir",
    "environment_credentials",
    "read_server_secret",
    "server_credentials",
    "store_server_secret",
    "PASSWORD_FILE_LIMIT",
    "keyring_get",
    "keyring_set",
    "keyring_usable",
    "password_storage_problem",
    "read_password_file",
    "store_password",
    "write_password_file",
]

log = logging.getLogger(__name__)

KEYRING_SERVICE = "desktop-agent"

# A password is one line; anything this big is the wrong file (or /dev/zero).
PASSWORD_FILE_LIMIT = 64 * 1024


# ------------------------------------------------------------ the OS keyring
def keyring_usable() -> bool:
    """Whether ``keyring`` has a real backend (not the fail or null one)."""
    try:
        import keyring
        import keyring.backends.fail
        import keyring.backends.null

        backend = keyring.get_keyring()
        return not isinstance(
            backend, keyring.backends.fail.Keyring | keyring.backends.null.Keyring
        )
    except Exception as exc:  # noqa: BLE001 - any keyring failure means "no keyring"
        log.debug("no usable OS keyring: %s", type(exc).__name__)
        return False


def keyring_get(username: str, *, service: str = KEYRING_SERVICE) -> str | None:
    """The secret kept in the OS keyring under ``username``; None when there is
    none, it is empty, or the keyring cannot be asked (any error)."""
    try:
        import keyring  # optional at run time; the import itself may fail on odd systems

        secret = keyring.get_password(service, username)
    except Exception as exc:  # noqa: BLE001 - any keyring failure means "no keyring"
        log.debug("nothing from the OS keyring: %s", type(exc).__name__)
        return None
    return secret or None


def keyring_set(
    username: str, secret: str, *, service: str = KEYRING_SERVICE, what: str = "secret"
) -> None:
    """Keep ``secret`` in the OS keyring under ``username``.

    Raises :class:`ConfigError` naming ``what`` and the keyring's error type
    (never the secret) when there is no usable keyring or it refuses.
    """
    if not keyring_usable():
        raise ConfigError(f"there is no usable OS keyring for the {what}")
    try:
        import keyring

        keyring.set_password(service, username, secret)
    except Exception as exc:  # noqa: BLE001 - the caller falls back or says why not
        raise ConfigError(
            f"the OS keyring did not take the {what} ({type(exc).__name__})"
        ) from None


# ------------------------------------------------------------ private files
def read_password_file(path: str) -> str:
    """The first line of the password file at ``path``, without its line ending.

    A UTF-8 byte order mark is skipped, as restic does. Raises
    :class:`ConfigError` when the file cannot be read, is not a regular file
    (a FIFO or a device is refused before anything is read from it), is
    larger than 64 KiB, or the line is empty. Warns (once per process, on
    stderr too) when other users can read the file.
    """
    label = f"password file {path}"
    try:
        raw, info = read_regular_file(
            path, limit=PASSWORD_FILE_LIMIT, label=label, noun="a regular file"
        )
    except IsADirectoryError:
        raise ConfigError(f"{label}: is a directory, not a regular file") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read: {exc.strerror or exc}") from None
    try:
        # As a text file opened with newline="": \n, \r and \r\n all end the line.
        first = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8-sig", newline="").readline()
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: not UTF-8 text") from None
    warn_if_exposed(path, info.st_mode, "the repository password")
    password = first.rstrip("\r\n")
    if not password:
        raise ConfigError(f"password file {path}: the first line is empty")
    return password


def write_password_file(path: str, password: str) -> None:
    """Store ``password`` in the file ``path`` (mode 0600, written atomically).

    ``~`` and environment variables in ``path`` are expanded; missing parent
    directories are created with mode 0700. A symbolic link at ``path``
    stays a link and the file it points to gets the password. The password
    must be one non-empty line, since only the first line is read back.
    """
    if not password:
        raise ConfigError(f"password file {path}: refusing to write an empty password")
    if "\n" in password or "\r" in password:
        raise ConfigError(f"password file {path}: the password must be a single line")
    target = Path(os.path.abspath(os.path.expandvars(os.path.expanduser(path))))
    try:
        make_private_dirs(resolve_link(target).parent)
        write_atomic(target, (password + "\n").encode("utf-8"), mode=0o600)
    except OSError as exc:
        raise ConfigError(f"password file {target}: cannot write: {exc.strerror or exc}") from None


# ------------------------------------------------ the repository password
def store_password(config: Config, repository_path: str, password: str) -> str:
    """Keep ``password`` where :func:`~.password.read_password` finds it; returns where, in words.

    The OS keyring (service :data:`KEYRING_SERVICE`, user name the expanded
    ``repository_path``) when it is usable, otherwise the configured
    password file (mode 0600). An existing password file is rewritten
    instead of the keyring: it is read first, and would hide the keyring's
    entry. Raises :class:`ConfigError` when there is nowhere to keep it.
    """
    file = config.password_file_path
    if file is not None and os.path.lexists(file):
        write_password_file(file, password)
        return f"the password file {file}"
    if keyring_usable():
        try:
            keyring_set(repository_path, password, what="password")
            return "the OS keyring"
        except ConfigError as exc:
            if file is None:
                raise ConfigError(
                    f"{exc} and no password file is configured "
                    f"([repository] password_file in {config.path})"
                ) from None
            log.info("%s; using the password file", exc)
    if file is None:
        raise ConfigError(
            "there is no usable OS keyring and no password file is configured: "
            f"set [repository] password_file in {config.path}"
        )
    write_password_file(file, password)
    return f"the password file {file}"


def password_storage_problem(file: str | None, password: str, *, generated: bool) -> str | None:
    """Why ``password`` could not be kept for a new repository, or None.

    Checked before the repository is created, so that a failed attempt
    leaves nothing behind. ``file`` is the configured password file (None:
    none); a ``generated`` password goes to that file only, a typed one to
    the file if it exists, else the keyring. An existing password file that
    holds another password is never replaced: it may belong to a repository
    on a disk that is just not plugged in.
    """
    if file is not None and os.path.lexists(file):
        try:
            existing: str | None = read_password_file(file)
        except ConfigError:
            existing = None
        if existing != password:
            return (
                f"The password file {file} already exists and holds another password (of "
                "a repository on a disk that is not plugged in?). Move it away, or enter "
                "that password and choose that repository's location."
            )
        return None
    if file is None and not generated and not keyring_usable():
        return (
            "There is no OS keyring to keep the password in and no password file is "
            "configured ([repository] password_file)."
        )
    return None


# ------------------------------------------------ repository server credentials
# A REST password and S3 keys: kept in the OS keyring under "<kind>:<where>"
# (the location without any password), else in a 0600 file of their own in
# a 0700 folder beside the configuration. The environment (restic's
# variables) always wins over what is stored.
REST_PASSWORD = "rest-password"
S3_ACCESS_KEY = "s3-access-key"
S3_SECRET_KEY = "s3-secret-key"


def credentials_dir(config: Config) -> Path:
    """Where server credentials are kept when there is no keyring (0700)."""
    return config.path.parent / "credentials"


def _secret_name(kind: str, location: Location) -> str:
    where = (
        location.key() if location.scheme == "rest" else f"{location.endpoint}/{location.bucket}"
    )
    return f"{kind}:{where}"


def _secret_file(config: Config, name: str) -> Path:
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return credentials_dir(config) / digest


def read_server_secret(config: Config, kind: str, location: Location) -> str | None:
    """A stored server credential (``kind`` is one of :data:`REST_PASSWORD`,
    :data:`S3_ACCESS_KEY`, :data:`S3_SECRET_KEY`), or None."""
    return _read_named(config, _secret_name(kind, location))


def _read_named(config: Config, name: str) -> str | None:
    found = keyring_get(name)
    if found:
        return found
    path = _secret_file(config, name)
    if os.path.lexists(path):
        return read_password_file(str(path))
    return None


def store_server_secret(config: Config, kind: str, location: Location, secret: str) -> str:
    """Keep a server credential: the OS keyring when usable, else a 0600 file.

    Returns where, in words (never the secret). An empty ``secret`` removes
    what is stored.
    """
    return _store_named(config, _secret_name(kind, location), secret)


def _store_named(config: Config, name: str, secret: str) -> str:
    path = _secret_file(config, name)
    if not secret:
        if keyring_usable():
            with contextlib.suppress(Exception):
                import keyring

                keyring.delete_password(KEYRING_SERVICE, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return "nowhere (removed)"
    if keyring_usable():
        try:
            keyring_set(name, secret, what="server credential")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # one place only: a stale file would hide nothing, but confuse
            return "the OS keyring"
        except ConfigError as exc:
            log.info("%s; using a private file", exc)
    write_password_file(str(path), secret)
    return f"the private file {path}"


@dataclass(frozen=True)
class ServerCredentials:
    """What a remote repository is opened with (never shown, never logged)."""

    rest_user: str = field(default="", repr=False)
    rest_password: str = field(default="", repr=False)
    s3_access_key: str = field(default="", repr=False)
    s3_secret_key: str = field(default="", repr=False)
    s3_session_token: str = field(default="", repr=False)
    s3_region: str = ""


def environment_credentials(
    location: Location, env: Mapping[str, str] | None = None
) -> ServerCredentials:
    """The credentials for ``location`` that the URL (a REST user) and restic's
    environment variables give, nothing stored."""
    environ = os.environ if env is None else env
    if location.scheme == "rest":
        return ServerCredentials(
            rest_user=location.user or environ.get("RESTIC_REST_USERNAME", ""),
            rest_password=location.password or environ.get("RESTIC_REST_PASSWORD", ""),
        )
    if location.scheme == "s3":
        return ServerCredentials(
            s3_access_key=environ.get("AWS_ACCESS_KEY_ID", ""),
            s3_secret_key=environ.get("AWS_SECRET_ACCESS_KEY", ""),
            s3_session_token=environ.get("AWS_SESSION_TOKEN", ""),
            s3_region=environ.get("AWS_DEFAULT_REGION", "") or environ.get("AWS_REGION", ""),
        )
    return ServerCredentials()


def server_credentials(
    config: Config, location: Location, env: Mapping[str, str] | None = None
) -> ServerCredentials:
    """The credentials for ``location``: restic's environment variables first, then
    the URL (REST user), then what :func:`store_server_secret` kept."""
    found = environment_credentials(location, env)
    if location.scheme == "rest" and found.rest_user and not found.rest_password:
        stored = read_server_secret(config, REST_PASSWORD, location) or ""
        return replace(found, rest_password=stored)
    if location.scheme == "s3" and not (found.s3_access_key and found.s3_secret_key):
        return replace(
            found,
            s3_access_key=read_server_secret(config, S3_ACCESS_KEY, location) or "",
            s3_secret_key=read_server_secret(config, S3_SECRET_KEY, location) or "",
            s3_session_token="",
        )
    return found


# ------------------------------------------------ the backup server dialled out to
SERVER_TOKEN_ENV = "DESKTOP_AGENT_SERVER_TOKEN"


def _dialout_name(config: Config) -> str:
    return f"server-token:{config.server.url}"


def dialout_token(config: Config) -> str | None:
    """The credential for ``[server] url``: ``DESKTOP_AGENT_SERVER_TOKEN``, else
    ``[server] token_file``, else what :func:`store_dialout_token` kept (OS
    keyring or a private file); None when there is none. Raises
    :class:`ConfigError` for a token file that cannot be read."""
    env = os.environ.get(SERVER_TOKEN_ENV, "").strip()
    if env:
        return env
    if config.server.token_file:
        token = read_password_file(config.resolve_path(config.server.token_file))
        return token or None
    return _read_named(config, _dialout_name(config)) if config.server.url else None


def store_dialout_token(config: Config, token: str) -> str:
    """Keep the credential for ``[server] url`` (keyring, else a 0600 file); returns
    where, in words. An empty ``token`` removes it."""
    return _store_named(config, _dialout_name(config), token)


def agent_id(config: Config) -> str:
    """This agent's stable id for the backup server: made on first use (a random
    UUID) and kept in ``<config name>-agent-id`` beside the configuration."""
    path = config.path.with_name(f"{config.path.stem}-agent-id")
    try:
        raw, _info = read_regular_file(path, limit=200, label=str(path), noun="an agent id file")
        found = raw.decode("utf-8", "replace").strip()
        if found:
            return found
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the agent id: {exc.strerror or exc}") from None
    new = str(uuid.uuid4())
    try:
        make_private_dirs(path.parent)
        if not write_atomic(path, (new + "\n").encode(), mode=0o600, replace=False):
            return agent_id(config)  # someone else made it first: theirs
    except OSError as exc:
        raise ConfigError(f"{path}: cannot keep the agent id: {exc.strerror or exc}") from None
    return new
