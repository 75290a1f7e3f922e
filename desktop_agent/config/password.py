"""Where the repository password comes from, and writing the password file.

Order: the environment variable ``DESKTOP_AGENT_PASSWORD``, then the
configured password file, then the OS keyring. The password itself never
appears in a message or a log line.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

from desktop_agent.config.atomicfile import make_private_dirs, resolve_link, write_atomic
from desktop_agent.config.errors import ConfigError
from desktop_agent.config.model import Config
from desktop_agent.config.privatefile import read_regular_file, warn_if_exposed

__all__ = [
    "KEYRING_SERVICE",
    "PASSWORD_ENV",
    "PASSWORD_FILE_LIMIT",
    "read_password",
    "read_password_file",
    "write_password_file",
]

log = logging.getLogger(__name__)

PASSWORD_ENV = "DESKTOP_AGENT_PASSWORD"
KEYRING_SERVICE = "desktop-agent"

# A password is one line; anything this big is the wrong file (or /dev/zero).
PASSWORD_FILE_LIMIT = 64 * 1024


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


def _from_keyring(username: str) -> str | None:
    try:
        import keyring  # optional at run time; the import itself may fail on odd systems

        password = keyring.get_password(KEYRING_SERVICE, username)
    except Exception as exc:  # noqa: BLE001 - any keyring failure means "no keyring"
        log.debug("no password from the OS keyring: %s", type(exc).__name__)
        return None
    return password or None


def read_password(config: Config) -> str | None:
    """The repository password, or None when no source has one.

    1. ``$DESKTOP_AGENT_PASSWORD`` when set and not empty;
    2. the configured password file when it exists (first line; an
       unreadable or empty file is a :class:`ConfigError`, not a fallthrough);
    3. the OS keyring, service ``"desktop-agent"``, user name the expanded
       repository path, when ``keyring`` has a usable backend (any keyring
       error counts as no password).
    """
    from_env = os.environ.get(PASSWORD_ENV, "")
    if from_env:
        return from_env
    password_file = config.password_file_path
    if password_file is not None and os.path.lexists(password_file):
        return read_password_file(password_file)
    return _from_keyring(config.repository_path)


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
