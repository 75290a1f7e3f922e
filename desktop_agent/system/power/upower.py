"""Battery state on Linux from UPower (org.freedesktop.UPower on the system bus).

``OnBattery`` of ``/org/freedesktop/UPower`` says whether the machine runs on
battery; the charge is the ``Percentage`` of the DisplayDevice (UPower's
combined battery), reported only while its ``IsPresent`` is true (a desktop
has no battery: the percentage is None). Both are read when the provider
starts and again on every PropertiesChanged of either object; each change
reaches the sink as ``update("upower", on_battery=..., battery_percent=...)``.
See docs/scheduling.md.
"""

from __future__ import annotations

import logging
from typing import Any

from desktop_agent.system.power.dbus import (
    PROPERTIES,
    BusError,
    DBusProvider,
    Signal,
    property_changes,
)

__all__ = ["UPowerProvider"]

log = logging.getLogger(__name__)

SERVICE = "org.freedesktop.UPower"
PATH = "/org/freedesktop/UPower"
INTERFACE = "org.freedesktop.UPower"
DISPLAY_DEVICE = "/org/freedesktop/UPower/devices/DisplayDevice"
DEVICE_INTERFACE = "org.freedesktop.UPower.Device"


class UPowerProvider(DBusProvider):
    """Reports ``on_battery`` and ``battery_percent`` as UPower sees them."""

    service_label = "UPower"
    missing = "the battery state is unknown"
    source = "upower"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_battery: bool | None = None
        self._present: bool | None = None
        self._percent: float | None = None

    async def _setup(self) -> None:
        for path in (PATH, DISPLAY_DEVICE):
            await self._bus.subscribe(
                self._signals,
                sender=SERVICE,
                path=path,
                interface=PROPERTIES,
                member="PropertiesChanged",
            )
        # subscribed first: a change between the reads and the subscription is not lost
        manager = await self._bus.get_all(SERVICE, PATH, INTERFACE)
        self._on_battery = _bool(manager.get("OnBattery"))
        await self._read_device()
        self._report()

    async def _read_device(self) -> None:
        try:
            device = await self._bus.get_all(SERVICE, DISPLAY_DEVICE, DEVICE_INTERFACE)
        except BusError as exc:
            # an old UPower without the DisplayDevice: on battery or not still works
            log.debug("no battery percentage from UPower: %s", exc)
            self._present, self._percent = None, None
            return
        self._present = _bool(device.get("IsPresent"))
        self._percent = _percent(device.get("Percentage"))

    async def _handle(self, signal: Signal) -> None:
        if signal.path == PATH:
            changed, invalidated = property_changes(signal, INTERFACE)
            if "OnBattery" in changed:
                self._on_battery = _bool(changed["OnBattery"])
            elif "OnBattery" in invalidated:
                self._on_battery = _bool(await self._bus.get(SERVICE, PATH, INTERFACE, "OnBattery"))
            else:
                return
        elif signal.path == DISPLAY_DEVICE:
            changed, invalidated = property_changes(signal, DEVICE_INTERFACE)
            wanted = {"IsPresent", "Percentage"}
            if wanted & set(invalidated):
                await self._read_device()
            elif wanted & set(changed):
                if "IsPresent" in changed:
                    self._present = _bool(changed["IsPresent"])
                if "Percentage" in changed:
                    self._percent = _percent(changed["Percentage"])
            else:
                return  # energy, time to empty...: nothing the scheduler decides by
        self._report()

    def _report(self) -> None:
        self._sink.update(
            self.source,
            on_battery=self._on_battery,
            battery_percent=self._percent if self._present else None,
        )


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _percent(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 100:
        return float(value)
    return None
