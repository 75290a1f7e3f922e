"""The first start does the main job by itself.

A fresh configuration names a repository in the user's data folder. On the
headless agent's first start nothing is there yet; rather than fail its
first scheduled backup with "there is no repository", the agent creates
that default repository, keeps a generated password where ``init`` keeps
one (the configured password file, 0600), and says so in one line. A
repository location the user chose is never created behind their back:
an empty folder there may be the mount point of an unplugged disk.
"""

from __future__ import annotations

import logging
import os
import secrets

from desktop_agent.config import Config, ConfigError
from desktop_agent.config.password import PASSWORD_ENV, read_password, write_password_file
from desktop_agent.config.paths import default_repository_path
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import storage_for

__all__ = ["create_default_repository"]

log = logging.getLogger(__name__)


def create_default_repository(config: Config) -> str | None:
    """Create the default repository if the configuration still names it and
    nothing is there; returns the line to show the user, or None.

    Raises :class:`ConfigError` when there is nowhere to keep a password and
    the engine's errors when the repository cannot be created.
    """
    if config.repository.path != default_repository_path():
        return None
    path = config.repository_path
    storage = storage_for(config)
    if storage.exists():
        return None
    if os.path.isdir(path) and any(True for _ in os.scandir(path)):
        return None  # something else lives there: leave it to the user
    password = read_password(config)
    if password:
        where = (
            f"the password is the one in ${PASSWORD_ENV}"
            if os.environ.get(PASSWORD_ENV)
            else "the password is the one already stored for it"
        )
    else:
        file = config.password_file_path
        if file is None:
            raise ConfigError(
                "no repository yet and nowhere to keep a new password: set "
                f"[repository] password_file in {config.path} or ${PASSWORD_ENV}"
            )
        password = secrets.token_urlsafe(24)
        write_password_file(file, password)
        where = f"its password is in {file} (keep a copy: without it nothing can be restored)"
    Repository.init(storage, password)
    message = f"created a new repository at {path}; {where}"
    log.info("%s", message)
    return message
