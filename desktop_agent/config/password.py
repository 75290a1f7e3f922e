"""Which password the repository is opened with.

Order: the environment variable ``DESKTOP_AGENT_PASSWORD``, then the
configured password file, then the OS keyring. Where passwords are kept
(reading and writing the file, the keyring, choosing between them when one
is stored) is :mod:`desktop_agent.config.secrets`; its file functions are
re-exported here for the callers that know them from here. The password
itself never appears in a message or a log line.
"""

from __future__ import annotations

import os

from desktop_agent.config.model import Config
from desktop_agent.config.secrets import (
    KEYRING_SERVICE,
    PASSWORD_FILE_LIMIT,
    keyring_get,
    read_password_file,
    write_password_file,
)

__all__ = [
    "KEYRING_SERVICE",
    "PASSWORD_ENV",
    "PASSWORD_FILE_LIMIT",
    "read_password",
    "read_password_file",
    "write_password_file",
]

PASSWORD_ENV = "DESKTOP_AGENT_PASSWORD"


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
    return keyring_get(config.repository_path)
