"""Unlocking a repository: its config file and the key file the password opens.

The first half of :meth:`~.repository.Repository.open`, kept import-light
(crypto and storage only): the command line runs it on a thread while the
rest of the engine is imported, because deriving the key from the
password (scrypt, about 0.1 s) does not hold the interpreter's lock.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import crypto
from .errors import (
    IntegrityError,
    NotFound,
    RepositoryNotFound,
    UnsupportedRepository,
    WrongPassword,
)
from .limits import MAX_KEY_FILE
from .storage.base import FileType, Storage

__all__ = ["MAX_KEYS_TRIED", "Unlocked", "unlock"]

MAX_KEYS_TRIED = 20


@dataclass(frozen=True)
class Unlocked:
    """A repository's config file (still encrypted) and its master key."""

    raw_config: bytes
    master: crypto.Key
    key_name: str  # the key file the password opened


def unlock(storage: Storage, password: str) -> Unlocked:
    """Find the key file ``password`` opens (the first :data:`MAX_KEYS_TRIED`
    in name order); a damaged key file does not hide a good one."""
    if not storage.exists():
        raise RepositoryNotFound(
            f"there is no repository at {storage.location} (create one with `desktop-agent init`)"
        )
    try:
        raw_config = storage.load(FileType.CONFIG, "", max_size=MAX_KEY_FILE)
    except NotFound:
        raise RepositoryNotFound(f"there is no repository at {storage.location}") from None
    key_names = sorted(name for name, _ in storage.list(FileType.KEY))
    if not key_names:
        raise IntegrityError(f"the repository at {storage.location} has no key files")
    for name in key_names[:MAX_KEYS_TRIED]:
        try:
            raw_key = storage.load(FileType.KEY, name, max_size=MAX_KEY_FILE)
            return Unlocked(raw_config, crypto.open_key_file(raw_key, password), name)
        except WrongPassword:
            continue
        except (IntegrityError, UnsupportedRepository):
            continue  # a damaged key file must not hide a good one
    raise WrongPassword(f"wrong password for the repository at {storage.location}")
