"""What the machine is doing right now, as the scheduler needs to know it.

Small per-OS providers (:mod:`desktop_agent.system.power`, and the tray's
Qt network information) observe the battery, the network, sleep and
resume, and push what they see into the one :class:`ConditionHub`. The
scheduler reads :attr:`ConditionHub.current` when it decides and listens
for changes; it asks for sleep inhibitor locks through the hub too, so it
never talks to an operating system itself (see docs/scheduling.md).

Everything here runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields, replace

__all__ = ["ConditionHub", "Conditions", "Inhibit"]

log = logging.getLogger(__name__)

SLEEP_HOOK_TIMEOUT = 4.0  # logind's default InhibitDelayMaxSec is 5 s


@dataclass(frozen=True)
class Conditions:
    """The last values the providers reported; None = nobody knows (no provider)."""

    on_battery: bool | None = None
    battery_percent: float | None = None
    metered: bool | None = None
    network_up: bool | None = None

    def to_json(self) -> dict[str, object]:
        """The known values, as ``agent:status`` carries them (unknown ones left out)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: value for name, value in values.items() if value is not None}


class Inhibit(enum.Enum):
    """Which sleep inhibitor lock the agent wants held."""

    NONE = "none"  # nothing runs
    DELAY = "delay"  # a backup runs: sleep waits (a few seconds) until it checkpointed
    BLOCK = "block"  # a backup runs and the user asked to keep the machine awake


ConditionListener = Callable[[Conditions], None]
SleepHook = Callable[[], Awaitable[None]]
WakeListener = Callable[[], None]
InhibitListener = Callable[[Inhibit], None]


class ConditionHub:
    """Where providers push observations and the scheduler listens.

    Providers call :meth:`update` (any subset of the :class:`Conditions`
    fields), ``await`` :meth:`before_sleep` when the system is about to
    sleep (it returns once every hook has run, or after
    :data:`SLEEP_HOOK_TIMEOUT`), and call :meth:`after_wake` when it woke.
    A provider that can hold sleep inhibitor locks subscribes with
    :meth:`on_inhibit` and gets the wanted level now and on every change.
    """

    def __init__(self) -> None:
        self._current = Conditions()
        self._sources: dict[str, set[str]] = {}
        self._listeners: list[ConditionListener] = []
        self._sleep_hooks: list[SleepHook] = []
        self._wake_listeners: list[WakeListener] = []
        self._inhibit_listeners: list[InhibitListener] = []
        self._inhibit = Inhibit.NONE

    # ------------------------------------------------------------ providers
    @property
    def current(self) -> Conditions:
        """The conditions as last reported."""
        return self._current

    def update(self, source: str, **values: object) -> None:
        """A provider (``source``: "upower", "networkmanager", "qt", "psutil"...)
        reports values; listeners hear about it when something changed."""
        known = {f.name for f in fields(Conditions)}
        unknown = set(values) - known
        if unknown:
            raise TypeError(f"unknown condition(s): {', '.join(sorted(unknown))}")
        self._sources.setdefault(source, set()).update(values)
        new = replace(self._current, **values)  # type: ignore[arg-type]
        if new == self._current:
            return
        log.info("conditions from %s: %s", source, _describe(values))
        self._current = new
        for listener in list(self._listeners):
            _call(listener, new)

    def sources(self) -> dict[str, tuple[str, ...]]:
        """Which provider reported which values (for the log and the docs' table)."""
        return {name: tuple(sorted(values)) for name, values in self._sources.items()}

    async def before_sleep(self) -> None:
        """The system is about to sleep: run every sleep hook (a running backup
        checkpoints and pauses), at most :data:`SLEEP_HOOK_TIMEOUT` seconds."""
        log.info("the system is going to sleep")
        hooks = [hook() for hook in list(self._sleep_hooks)]
        if not hooks:
            return
        try:
            ready = asyncio.gather(*hooks, return_exceptions=True)
            await asyncio.wait_for(ready, SLEEP_HOOK_TIMEOUT)
        except TimeoutError:
            log.warning("getting ready for sleep took longer than %.0f s", SLEEP_HOOK_TIMEOUT)

    def after_wake(self) -> None:
        """The system woke up (or the wall clock jumped, which counts the same)."""
        log.info("the system woke up")
        for listener in list(self._wake_listeners):
            _call(listener)

    def on_inhibit(self, listener: InhibitListener) -> Callable[[], None]:
        """Hear the wanted inhibitor level now and whenever it changes."""
        self._inhibit_listeners.append(listener)
        _call(listener, self._inhibit)
        return lambda: self._inhibit_listeners.remove(listener)

    # ------------------------------------------------------------- scheduler
    def listen(self, listener: ConditionListener) -> Callable[[], None]:
        """Hear every change of :attr:`current`."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def on_sleep(self, hook: SleepHook) -> None:
        """Run ``hook`` (a coroutine function) before the system sleeps."""
        self._sleep_hooks.append(hook)

    def on_wake(self, listener: WakeListener) -> None:
        """Call ``listener`` after the system woke up."""
        self._wake_listeners.append(listener)

    @property
    def inhibit(self) -> Inhibit:
        """The inhibitor lock the agent wants now."""
        return self._inhibit

    def want_inhibit(self, level: Inhibit) -> None:
        """Say which inhibitor lock should be held (providers take or release it)."""
        if level is self._inhibit:
            return
        self._inhibit = level
        for listener in list(self._inhibit_listeners):
            _call(listener, level)


def _describe(values: dict[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items()))


def _call(fn: Callable[..., None], *args: object) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - a broken listener must not stop the others
        log.exception("condition listener %r failed", fn)
