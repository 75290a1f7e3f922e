"""Fixtures of the engine tests beyond tests/conftest.py."""

from __future__ import annotations

from remotesupport import small_packs

__all__ = ["small_packs"]
