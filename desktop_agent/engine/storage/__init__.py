"""Where repository files live: one Protocol, several implementations."""

from __future__ import annotations

from .base import FileType, Storage, is_storage_id
from .local import LocalStorage, describe_oserror, gone_message
from .memory import MemoryStorage

__all__ = [
    "FileType",
    "Storage",
    "LocalStorage",
    "MemoryStorage",
    "is_storage_id",
    "open_storage",
    "describe_oserror",
    "gone_message",
]


def open_storage(location: str) -> Storage:
    """The storage backend for a repository location (a local path for now)."""
    return LocalStorage(location)
