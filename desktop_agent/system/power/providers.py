"""Start the condition providers this operating system offers.

- Linux (and other systems with D-Bus): UPower (battery), NetworkManager
  (metered, network up) and logind (sleep, wake, inhibitor locks) on the
  system bus; each that cannot start (no system bus, service missing) logs
  one info line and is left out.
- Windows and macOS: the psutil battery poller; on Windows also the
  keep-awake that follows the "block" inhibitor level.

See docs/scheduling.md.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from desktop_agent.system.power import PowerSink

__all__ = ["Providers", "start_providers"]

log = logging.getLogger(__name__)


class _Provider(Protocol):
    async def close(self) -> None: ...


class Providers:
    """The providers that started; :meth:`close` stops them all."""

    def __init__(self, parts: list[_Provider]) -> None:
        self._parts = list(parts)

    @property
    def parts(self) -> tuple[object, ...]:
        """The running providers (for the log and the tests)."""
        return tuple(self._parts)

    async def close(self) -> None:
        """Stop every provider: tasks cancelled, locks released, connections closed."""
        parts, self._parts = self._parts, []
        results = await asyncio.gather(*(p.close() for p in parts), return_exceptions=True)
        for part, result in zip(parts, results, strict=True):
            if isinstance(result, Exception):
                log.warning("stopping %s failed: %s", type(part).__name__, result)


async def start_providers(sink: PowerSink, *, system_bus: str | None = None) -> Providers:
    """Start what this system offers, reporting into ``sink``; never raises.

    ``system_bus`` is a D-Bus address (``unix:path=...``); None means the
    system bus (``DBUS_SYSTEM_BUS_ADDRESS``, or its usual socket).
    """
    parts: list[_Provider] = []
    if sys.platform in ("win32", "darwin"):
        from desktop_agent.system.power.psutil_battery import BatteryPoller, psutil_sensors

        sensors = psutil_sensors()
        if sensors is not None:
            poller = BatteryPoller(sink, sensors)
            poller.start()
            parts.append(poller)
        if sys.platform == "win32":
            from desktop_agent.system.power.windows import KeepAwake

            parts.append(KeepAwake(sink))
    else:
        parts.extend(await _start_dbus(sink, system_bus))
    if parts:
        log.info("condition providers: %s", ", ".join(_name(p) for p in parts))
    return Providers(parts)


async def _start_dbus(sink: PowerSink, address: str | None) -> list[_Provider]:
    try:
        from desktop_agent.system.power.logind import LogindProvider
        from desktop_agent.system.power.networkmanager import NetworkManagerProvider
        from desktop_agent.system.power.upower import UPowerProvider
    except ImportError as exc:
        log.info("no D-Bus providers (%s): battery, network and sleep are unknown", exc)
        return []
    started = await asyncio.gather(
        UPowerProvider.start(sink, address=address),
        NetworkManagerProvider.start(sink, address=address),
        LogindProvider.start(sink, address=address),
    )
    return [p for p in started if p is not None]


def _name(part: object) -> str:
    return str(getattr(part, "service_label", None) or type(part).__name__)
