"""Keep a Windows machine awake while a backup runs with "keep awake" on.

``SetThreadExecutionState(ES_CONTINUOUS | ES_SYSTEM_REQUIRED)`` keeps the
system from sleeping when idle (the display may still turn off) until it is
called again with ``ES_CONTINUOUS`` alone. The state belongs to the calling
thread: it is always set from the event loop thread, where the sink calls
its inhibit listeners. Windows has no delay lock: the "delay" level holds
nothing there. A user's explicit sleep (lid, menu) is not prevented. Only
used on Windows; see docs/scheduling.md.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from desktop_agent.system.power import PowerSink

__all__ = ["KeepAwake", "keep_awake"]

ES_CONTINUOUS = 0x80000000
ES_SYSTEM_REQUIRED = 0x00000001


def keep_awake(on: bool) -> None:
    """Keep the system from idle sleep (``on``) or let it sleep again (Windows only)."""
    if sys.platform == "win32":
        import ctypes

        flags = ES_CONTINUOUS | (ES_SYSTEM_REQUIRED if on else 0)
        ctypes.windll.kernel32.SetThreadExecutionState(flags)


class KeepAwake:
    """Follows the sink's wanted inhibitor level: "block" keeps the system awake."""

    service_label = "keep awake"

    def __init__(self, sink: PowerSink, apply: Callable[[bool], None] = keep_awake) -> None:
        self._apply = apply
        self._on: bool | None = None
        self._unsubscribe: Callable[[], None] | None = sink.on_inhibit(self._on_level)

    def _on_level(self, level: object) -> None:
        on = getattr(level, "value", level) == "block"
        if on != self._on:
            self._on = on
            self._apply(on)

    async def close(self) -> None:
        """Stop following the sink, and let the system sleep."""
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()
        if self._on:
            self._apply(False)
        self._on = False
