"""The files the application loads at run time, as package data.

They live in the top-level ``resources/`` directory of the source tree and
ship as the package ``desktop_agent.resources`` (see pyproject.toml), so
``importlib.resources`` finds them in a checkout, an editable install, an
installed wheel and a PyInstaller bundle alike: no path is ever guessed.
"""

from __future__ import annotations

from importlib.resources import files

__all__ = ["ResourceMissing", "resource_bytes"]

_PACKAGE = "desktop_agent.resources"


class ResourceMissing(FileNotFoundError):
    """A file that should ship with the application is not there (a broken install)."""


def resource_bytes(*parts: str) -> bytes:
    """The content of a resource, e.g. ``resource_bytes("icons", "app.svg")``."""
    try:
        return files(_PACKAGE).joinpath(*parts).read_bytes()
    except (OSError, ModuleNotFoundError) as exc:
        raise ResourceMissing(
            f"{'/'.join(parts)} is missing from the installation ({exc}); reinstall desktop-agent"
        ) from None
