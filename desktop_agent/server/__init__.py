"""The ``/ws`` server (websockets asyncio API, no Qt)."""

from __future__ import annotations

from .ws import AgentServer

__all__ = ["AgentServer"]
