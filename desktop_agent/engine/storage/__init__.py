"""Where repository files live: one Protocol, several implementations.

:func:`open_storage` picks the backend for a repository location in
restic's syntax (:mod:`desktop_agent.config.location`): a local folder,
``rest:``, ``sftp:`` or ``s3:``. Remote backends are imported only when
used. Credentials never come from the location text alone: see
:func:`open_storage`.
"""

from __future__ import annotations

import hashlib
import os

from desktop_agent.config.location import Location, parse_location
from desktop_agent.config.model import Config
from desktop_agent.config.secrets import (
    ServerCredentials,
    environment_credentials,
    server_credentials,
)

from .base import FileType, Storage, is_storage_id
from .cache import CachingStorage
from .local import LocalStorage, gone_message
from .memory import MemoryStorage
from .retry import AuthError, NetworkError, RetryPolicy

__all__ = [
    "AuthError",
    "CachingStorage",
    "FileType",
    "LocalStorage",
    "MemoryStorage",
    "NetworkError",
    "RetryPolicy",
    "Storage",
    "cache_dir_for",
    "gone_message",
    "is_storage_id",
    "open_storage",
    "spool_dir_for",
    "storage_for",
]


def _digest(location: Location) -> str:
    return hashlib.sha256(location.key().encode("utf-8", "surrogateescape")).hexdigest()[:16]


def spool_dir_for(location: Location, cache_root: str) -> str:
    """The local folder where packs of a remote repository are assembled before upload."""
    return os.path.join(cache_root, "spool", _digest(location))


def cache_dir_for(location: Location, cache_root: str) -> str:
    """The local folder that caches a remote repository's index, snapshot and key files."""
    return os.path.join(cache_root, "repos", _digest(location))


def open_storage(
    location: str | Location,
    *,
    cache_root: str | None = None,
    credentials: ServerCredentials | None = None,
    retry: RetryPolicy | None = None,
) -> Storage:
    """The storage backend for a repository location.

    ``location`` is a local path (already expanded) or a remote location.
    ``cache_root`` is where remote backends spool packs before upload and
    cache the repository's index, snapshot and key files
    (:class:`~.cache.CachingStorage`; the user's cache folder by default).
    ``credentials`` are the server's (see
    :func:`desktop_agent.config.secrets.server_credentials`); without them,
    restic's environment variables are read. SFTP needs none: it uses the
    user's SSH agent and keys and ``~/.ssh/known_hosts``.
    """
    loc = parse_location(location) if isinstance(location, str) else location
    if not loc.remote:
        return LocalStorage(loc.path)
    if credentials is None:
        credentials = environment_credentials(loc)
    if cache_root is None:
        from desktop_agent.config import user_cache_dir

        cache_root = str(user_cache_dir())
    backend = _remote_backend(loc, spool_dir_for(loc, cache_root), credentials, retry)
    return CachingStorage(backend, cache_dir_for(loc, cache_root))


def _remote_backend(
    loc: Location, spool: str, credentials: ServerCredentials, retry: RetryPolicy | None
) -> Storage:
    if loc.scheme == "rest":
        from .rest import RestStorage

        return RestStorage(
            loc,
            spool_dir=spool,
            user=credentials.rest_user,
            password=credentials.rest_password,
            retry=retry,
        )
    if loc.scheme == "s3":
        from .s3 import S3Storage

        return S3Storage(
            loc,
            spool_dir=spool,
            access_key=credentials.s3_access_key,
            secret_key=credentials.s3_secret_key,
            session_token=credentials.s3_session_token,
            region=credentials.s3_region,
            retry=retry,
        )
    from .sftp import SftpStorage

    return SftpStorage(loc, spool_dir=spool, retry=retry)


def storage_for(
    config: Config, location: str | Location | None = None, *, retry: RetryPolicy | None = None
) -> Storage:
    """The storage of the configured repository (or of ``location``, a local path or a
    remote location in restic's syntax), opened with the server credentials the
    configuration's secrets hold for it."""
    if location is None:
        loc = config.repository_location
    elif isinstance(location, str):
        loc = parse_location(location)
    else:
        loc = location
    if not loc.remote:
        return LocalStorage(loc.path)
    from desktop_agent.config import user_cache_dir

    return open_storage(
        loc,
        cache_root=str(user_cache_dir()),
        credentials=server_credentials(config, loc),
        retry=retry,
    )
