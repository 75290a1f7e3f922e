"""Battery state on Windows and macOS: psutil's ``sensors_battery()``, polled.

Every :data:`POLL_INTERVAL` seconds the poller reads the battery and reports
``update("psutil", on_battery=..., battery_percent=...)``: on battery is
``not power_plugged`` (None when the system does not say), and a machine
without a battery is never on battery (percentage None).

psutil is imported only on Windows and macOS, and only when the poller is
wanted (:func:`psutil_sensors`); the poller itself takes any ``sensors``
callable, so its logic runs (and is tested) anywhere. Neither system tells a
process before it sleeps without a native event loop hook (macOS needs
pyobjc, which is not used): there the scheduler's wall-clock check notices a
sleep afterwards. See docs/scheduling.md.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

if TYPE_CHECKING:
    from desktop_agent.system.power import PowerSink

__all__ = ["POLL_INTERVAL", "BatteryPoller", "BatteryReading", "Sensors", "psutil_sensors"]

log = logging.getLogger(__name__)

POLL_INTERVAL = 60.0


class BatteryReading(Protocol):
    """What ``psutil.sensors_battery()`` returns (``sbattery``), as far as used."""

    @property
    def percent(self) -> float:
        """The charge, 0 to 100."""

    @property
    def power_plugged(self) -> bool | None:
        """On mains power; None when the system does not say."""


Sensors = Callable[[], BatteryReading | None]


def psutil_sensors() -> Sensors | None:
    """``psutil.sensors_battery`` on Windows and macOS; None elsewhere, or
    when psutil is not installed (logged once)."""
    if sys.platform not in ("win32", "darwin"):
        return None
    try:
        # a plain import, so that PyInstaller bundles it; no stubs needed
        import psutil  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        log.info("psutil is not installed: the battery state is unknown")
        return None
    sensors = getattr(psutil, "sensors_battery", None)
    if not callable(sensors):
        log.info("this psutil cannot read the battery: the battery state is unknown")
        return None
    return cast(Sensors, sensors)


class BatteryPoller:
    """Reads the battery now and every ``interval`` seconds, and reports it."""

    source = "psutil"
    service_label = "psutil"

    def __init__(
        self, sink: PowerSink, sensors: Sensors, *, interval: float = POLL_INTERVAL
    ) -> None:
        self._sink = sink
        self._sensors = sensors
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        """Start polling (on the running loop); the first reading is taken at once."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="battery poller")

    def poll(self) -> None:
        """Read the battery once and report it (a failing read is logged once)."""
        on_battery: bool | None
        percent: float | None
        try:
            reading = self._sensors()
            if reading is None:
                on_battery, percent = False, None  # no battery: a desktop
            else:
                plugged = reading.power_plugged
                on_battery = None if plugged is None else not plugged
                percent = float(reading.percent)
        except Exception as exc:  # noqa: BLE001 - a sensor error must not stop polling
            if not self._failing:
                log.warning("cannot read the battery state: %s", exc)
                self._failing = True
            return
        if self._failing:
            log.info("the battery state can be read again")
            self._failing = False
        self._sink.update(self.source, on_battery=on_battery, battery_percent=percent)

    async def _run(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(self._interval)

    async def close(self) -> None:
        """Stop polling."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
