"""Per-OS providers of the conditions the scheduler decides by.

Each provider observes one thing (battery, network, sleep) and pushes what
it sees into a sink: the agent's ``ConditionHub`` (desktop_agent.jobs.conditions),
which this package does not import (system imports nothing of ours but
config); :class:`PowerSink` is the part of it a provider uses.
See docs/scheduling.md for which provider runs where.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["PowerSink", "Providers", "start_providers"]


class PowerSink(Protocol):
    """What a provider reports to (the agent's ConditionHub)."""

    def update(self, source: str, **values: object) -> None:
        """Report condition values: ``on_battery``, ``battery_percent``,
        ``metered``, ``network_up`` (any subset)."""

    async def before_sleep(self) -> None:
        """The system is about to sleep; returns once the agent is ready for it."""

    def after_wake(self) -> None:
        """The system woke up."""

    def on_inhibit(self, listener: Callable[[object], None]) -> Callable[[], None]:
        """Hear the wanted inhibitor level (an enum whose ``value`` is
        ``"none"``, ``"delay"`` or ``"block"``) now and on every change."""


# at the end: providers.py names PowerSink only for type checking
from desktop_agent.system.power.providers import Providers, start_providers  # noqa: E402
