"""Sleep and resume on Linux from systemd-logind, and its inhibitor locks.

logind (``org.freedesktop.login1`` at ``/org/freedesktop/login1``, interface
``org.freedesktop.login1.Manager``) sends ``PrepareForSleep(true)`` before
the system sleeps and ``PrepareForSleep(false)`` after it woke. Sleep waits
for every *delay* inhibitor lock to be released, at most
``InhibitDelayMaxUSec`` (5 s unless configured otherwise).

What the sink wants (``on_inhibit``) decides the lock held:

- ``delay`` (a backup runs): ``Inhibit("sleep", "desktop-agent", "a backup is
  running", "delay")``. On ``PrepareForSleep(true)`` the provider awaits the
  sink's ``before_sleep()`` (the backup checkpoints and pauses), then closes
  the lock's fd so the system sleeps at once, and within logind's delay even
  when the hooks take longer. After ``PrepareForSleep(false)`` it calls
  ``after_wake()`` and takes the lock again if it is still wanted.
- ``block`` (a backup runs and "keep awake" is on): ``Inhibit("sleep:idle",
  "desktop-agent", "a backup is running (keep awake is on)", "block")`` and
  nothing else.
- ``none``: no lock.

A lock is a unix fd logind hands over; holding it open holds the lock,
closing it releases it. Level changes are applied one at a time by one task,
so a change that arrives while an ``Inhibit`` call is in flight is applied
after it, and no fd is left behind. See docs/scheduling.md.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from typing import Any

from desktop_agent.system.power.dbus import BusError, DBusProvider, Signal

__all__ = ["LogindProvider"]

log = logging.getLogger(__name__)

SERVICE = "org.freedesktop.login1"
PATH = "/org/freedesktop/login1"
MANAGER = "org.freedesktop.login1.Manager"
WHO = "desktop-agent"
# mode -> (what, why)
LOCKS = {
    "delay": ("sleep", "a backup is running"),
    "block": ("sleep:idle", "a backup is running (keep awake is on)"),
}
DEFAULT_DELAY = 5.0  # logind's default InhibitDelayMaxSec
SLEEP_MARGIN = 0.5  # release the delay lock this long before logind stops waiting


class _Phase(enum.Enum):
    AWAKE = "awake"
    PREPARING = "preparing"  # PrepareForSleep(true) came, the sleep hooks run
    READY = "ready"  # the hooks ran (or ran out of time): sleep may come


class LogindProvider(DBusProvider):
    """Runs the sink's sleep hooks before sleep, reports wake-ups, and holds
    the inhibitor lock the sink wants."""

    service_label = "logind"
    missing = "backups are not paused before sleep and no inhibitor locks are taken"
    enable_fds = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wanted = "none"
        self._phase = _Phase.AWAKE
        self._held: tuple[str, Any] | None = None  # (mode, jeepney FileDescriptor)
        self._dirty = asyncio.Event()  # the level or the phase changed: look at the lock
        self._idle = asyncio.Event()  # the lock task applied the last change
        self._locker: asyncio.Task[None] | None = None
        self._sleep_hooks: asyncio.Future[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._delay = DEFAULT_DELAY

    @property
    def held(self) -> str | None:
        """The mode of the lock held now ("delay", "block"), or None."""
        return self._held[0] if self._held is not None else None

    async def wait_idle(self) -> None:
        """Return once the last change of the wanted level (or a wake-up) has
        been applied: the lock held is the one wanted, or taking it failed."""
        await self._idle.wait()

    @property
    def sleep_budget(self) -> float:
        """How long the sleep hooks may take before the delay lock is released anyway."""
        return max(self._delay - SLEEP_MARGIN, self._delay / 2)

    async def _setup(self) -> None:
        await self._bus.subscribe(
            self._signals, sender=SERVICE, path=PATH, interface=MANAGER, member="PrepareForSleep"
        )
        usec = await self._bus.get(SERVICE, PATH, MANAGER, "InhibitDelayMaxUSec")
        if isinstance(usec, int) and not isinstance(usec, bool) and usec > 0:
            self._delay = usec / 1_000_000
        self._locker = asyncio.create_task(self._keep_locks(), name="logind inhibitor locks")
        self._unsubscribe = self._sink.on_inhibit(self._on_level)

    # ------------------------------------------------------------- the locks
    def _on_level(self, level: object) -> None:
        value = getattr(level, "value", level)
        self._wanted = value if value in LOCKS else "none"
        self._kick()

    def _kick(self) -> None:
        self._idle.clear()
        self._dirty.set()

    def _desired(self) -> str | None:
        if self._wanted == "block":
            return "block"
        if self._wanted != "delay":
            return None
        if self._phase is _Phase.AWAKE:
            return "delay"
        if self._phase is _Phase.PREPARING and self.held == "delay":
            return "delay"  # until the hooks ran; no new lock once sleep is announced
        return None

    async def _keep_locks(self) -> None:
        while True:
            if not self._dirty.is_set():
                self._idle.set()
            await self._dirty.wait()
            self._dirty.clear()
            await self._reconcile()

    async def _reconcile(self) -> None:
        # the wanted level or the phase may change while Inhibit is in flight:
        # look again after every call until what is held is what is wanted
        while (want := self._desired()) != self.held:
            if want is None:
                self._release()
                return
            what, why = LOCKS[want]
            call = asyncio.ensure_future(
                self._bus.call(SERVICE, PATH, MANAGER, "Inhibit", "ssss", (what, WHO, why, want))
            )
            try:
                (fd,) = await asyncio.shield(call)
            except asyncio.CancelledError:
                call.add_done_callback(_drop_lock)  # an answer still on its way is let go
                raise
            except (BusError, ValueError) as exc:
                log.warning("could not take a %s lock from logind: %s", want, exc)
                return
            if not callable(getattr(fd, "close", None)):
                log.warning("logind answered Inhibit without a file descriptor")
                return
            old, self._held = self._held, (want, fd)
            if old is not None:
                old[1].close()
            log.debug("holding a %s inhibitor lock (%s)", want, what)

    def _release(self) -> None:
        if self._held is not None:
            mode, fd = self._held
            self._held = None
            fd.close()
            log.debug("released the %s inhibitor lock", mode)

    # ------------------------------------------------------------- sleeping
    async def _handle(self, signal: Signal) -> None:
        if signal.member != "PrepareForSleep" or len(signal.body) != 1:
            return
        if signal.body[0] is True:
            await self._prepare_for_sleep()
        elif signal.body[0] is False:
            self._woke()

    async def _prepare_for_sleep(self) -> None:
        self._phase = _Phase.PREPARING
        hooks = asyncio.ensure_future(self._sink.before_sleep())
        hooks.add_done_callback(_quiet)
        self._sleep_hooks = hooks
        budget = self.sleep_budget
        done, _ = await asyncio.wait({hooks}, timeout=budget)
        if not done:
            # they go on after the wake-up; logind would stop waiting anyway
            log.warning("not ready for sleep after %.1f s: letting the system sleep", budget)
        self._phase = _Phase.READY
        if self._desired() != self.held:
            self._release()  # at once, not via the lock task: sleep is waiting for it

    def _woke(self) -> None:
        self._phase = _Phase.AWAKE
        self._sink.after_wake()
        self._kick()  # take the delay lock again if a backup still runs

    async def _cleanup(self) -> None:
        if self._unsubscribe is not None:
            unsubscribe, self._unsubscribe = self._unsubscribe, None
            try:
                unsubscribe()
            except ValueError:  # the sink forgot the listener already
                pass
        tasks = [t for t in (self._locker, self._sleep_hooks) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        # after the cancel: a lock task resumes only to be cancelled, it takes no fd
        self._release()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._release()


def _quiet(future: asyncio.Future[None]) -> None:
    """Collect a sleep hook's outcome, so an error is logged once and not
    reported again as never retrieved."""
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.warning("getting ready for sleep failed: %s", exc)


def _drop_lock(call: asyncio.Future[tuple[Any, ...]]) -> None:
    """Close the fd of an Inhibit answer nobody waits for any more."""
    if call.cancelled() or call.exception() is not None:
        return
    for fd in call.result():
        if callable(getattr(fd, "close", None)):
            fd.close()
