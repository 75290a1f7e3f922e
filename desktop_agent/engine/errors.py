"""Exceptions raised by the engine.

Every engine failure a user can meet is an :class:`EngineError` whose message
says what happened and, where possible, what to do about it. Callers (CLI,
job controller) print ``str(exc)``; they never show a traceback.
"""

from __future__ import annotations

import errno

__all__ = [
    "EngineError",
    "RepositoryNotFound",
    "RepositoryExists",
    "WrongPassword",
    "UnsupportedRepository",
    "IntegrityError",
    "SourceError",
    "StorageError",
    "Cancelled",
    "NotFound",
    "RepositoryLocked",
    "describe_oserror",
    "malformed",
    "invalid_json",
]


class EngineError(Exception):
    """Base class for every error the engine reports to its callers."""


class RepositoryNotFound(EngineError):
    """The configured location holds no repository."""


class RepositoryExists(EngineError):
    """``init`` was asked to create a repository where one already is."""


class WrongPassword(EngineError):
    """No key file of the repository opens with the given password."""


class UnsupportedRepository(EngineError):
    """The repository uses a format version or feature we cannot read."""


class IntegrityError(EngineError):
    """Stored data failed authentication, hashing or parsing."""


class SourceError(EngineError):
    """A backup source cannot be read at all (missing, not a directory...)."""


class StorageError(EngineError):
    """The storage backend failed (I/O error, disk full, unplugged...)."""


class NotFound(EngineError):
    """A requested snapshot, blob or file does not exist."""


class RepositoryLocked(EngineError):
    """Another process holds a conflicting lock on the repository."""


class Cancelled(EngineError):
    """The operation was cancelled through its control object."""

    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(message)


def describe_oserror(exc: OSError, what: str) -> StorageError:
    """The StorageError, in words a user can act on, for an OSError met at ``what``."""
    if exc.errno == errno.ENOSPC:
        return StorageError(f"the backup destination is full (no space left) while writing {what}")
    if exc.errno == errno.EDQUOT:
        return StorageError(f"disk quota exceeded while writing {what}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StorageError(f"permission denied: {what}")
    if exc.errno in (errno.EIO, errno.ENODEV, errno.ENXIO, errno.ESTALE):
        return StorageError(
            f"I/O error on the backup destination ({exc.strerror}) at {what}; "
            "is the drive still connected?"
        )
    return StorageError(f"{what}: {exc.strerror or exc}")


# characters of a parser's message kept in a "malformed" error: the message
# quotes the value it refused, which a hostile repository can make megabytes long
MAX_DETAIL = 300


def _detail(exc: BaseException) -> str:
    """``<exception type>: <message>``, the message cut to :data:`MAX_DETAIL`
    characters (the cut says how long it was)."""
    detail = str(exc)
    if len(detail) > MAX_DETAIL:
        detail = f"{detail[:MAX_DETAIL]}... ({len(detail):,} characters)"
    return f"{type(exc).__name__}: {detail}"


def malformed(what: str, exc: BaseException) -> IntegrityError:
    """``<what> is malformed: <exception type>: <message>`` (a value of the wrong
    type or out of range; the message cut as :func:`_detail` says)."""
    return IntegrityError(f"{what} is malformed: {_detail(exc)}")


def invalid_json(what: str, exc: BaseException) -> IntegrityError:
    """``<what>: invalid JSON: <exception type>: <message>`` (a parser's failure,
    the message cut as :func:`_detail` says)."""
    return IntegrityError(f"{what}: invalid JSON: {_detail(exc)}")
