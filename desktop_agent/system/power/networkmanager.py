"""Metered and offline networks on Linux from NetworkManager (system bus).

Two properties of ``/org/freedesktop/NetworkManager``
(interface ``org.freedesktop.NetworkManager``), read at start and again on
every PropertiesChanged:

- ``Metered`` (NMMetered): 1 "yes" and 3 "guess yes" (a phone's hotspot, a
  mobile broadband modem) count as metered; 0 "unknown", 2 "no" and
  4 "guess no" do not.
- ``State`` (NMState): 60 "connected (site)" and 70 "connected (global)" count
  as up: there is a default route, so a server beyond the local link can be
  reached (60 is also what a captive portal or a network without internet
  access reports; the backup target may well be on it). 50 "connected
  (local)" has no default route, and 10 asleep, 20 disconnected,
  30 disconnecting and 40 connecting count as down. 0 "unknown" reports
  None: nobody knows.

Each change reaches the sink as ``update("networkmanager", metered=...,
network_up=...)``. See docs/scheduling.md.
"""

from __future__ import annotations

from typing import Any

from desktop_agent.system.power.dbus import PROPERTIES, DBusProvider, Signal, property_changes

__all__ = ["NetworkManagerProvider", "metered_from", "network_up_from"]

SERVICE = "org.freedesktop.NetworkManager"
PATH = "/org/freedesktop/NetworkManager"
INTERFACE = "org.freedesktop.NetworkManager"

METERED_YES = 1
METERED_GUESS_YES = 3
STATE_UNKNOWN = 0
STATE_CONNECTED_SITE = 60


def metered_from(value: object) -> bool | None:
    """NMMetered to ``metered``: yes and guess-yes are metered."""
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    return value in (METERED_YES, METERED_GUESS_YES)


def network_up_from(value: object) -> bool | None:
    """NMState to ``network_up``: site or global connectivity is up."""
    if not isinstance(value, int) or isinstance(value, bool) or value == STATE_UNKNOWN:
        return None
    return value >= STATE_CONNECTED_SITE


class NetworkManagerProvider(DBusProvider):
    """Reports ``metered`` and ``network_up`` as NetworkManager sees them."""

    service_label = "NetworkManager"
    missing = "metered and offline networks are not recognised"
    source = "networkmanager"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metered: bool | None = None
        self._up: bool | None = None

    async def _setup(self) -> None:
        await self._bus.subscribe(
            self._signals,
            sender=SERVICE,
            path=PATH,
            interface=PROPERTIES,
            member="PropertiesChanged",
        )
        values = await self._bus.get_all(SERVICE, PATH, INTERFACE)
        self._metered = metered_from(values.get("Metered"))
        self._up = network_up_from(values.get("State"))
        self._report()

    async def _handle(self, signal: Signal) -> None:
        changed, invalidated = property_changes(signal, INTERFACE)
        relevant = False
        for name in ("Metered", "State"):
            if name in changed:
                value = changed[name]
            elif name in invalidated:
                value = await self._bus.get(SERVICE, PATH, INTERFACE, name)
            else:
                continue
            relevant = True
            if name == "Metered":
                self._metered = metered_from(value)
            else:
                self._up = network_up_from(value)
        if relevant:
            self._report()

    def _report(self) -> None:
        self._sink.update(self.source, metered=self._metered, network_up=self._up)
