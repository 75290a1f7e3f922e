"""The local spool folder of remote backends: packs wait there for their upload."""

from __future__ import annotations

import logging
import os

from ..errors import describe_oserror

__all__ = ["discard_spooled", "make_spool_dir"]

log = logging.getLogger(__name__)


def make_spool_dir(path: str) -> str:
    """Create the spool folder (private: 0700) if needed; returns it."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise describe_oserror(exc, path) from None
    return path


def discard_spooled(path: str) -> None:
    """Remove a spool file whose upload succeeded."""
    try:
        os.unlink(path)
    except OSError as exc:
        # it is stored; a leftover spool file is removed by a later run
        log.warning("could not remove the spool file %s after its upload: %s", path, exc)
