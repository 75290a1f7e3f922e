"""Finding the files in the top-level ``resources/`` directory."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["resource_path"]


def resource_path(*parts: str) -> Path:
    """Path of a resource, from a source checkout or a packaged binary."""
    bundle = getattr(sys, "_MEIPASS", None)  # PyInstaller unpacks data files here
    base = Path(bundle) if bundle else Path(__file__).resolve().parents[2]
    return base.joinpath("resources", *parts)
