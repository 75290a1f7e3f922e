"""One fan-out for everything the agent reports.

Every consumer (the /ws server, the tray) subscribes to the same bus and so
sees the same events in the same order. Publishing calls the subscribers
synchronously, in subscription order, on the event loop thread; a
subscriber must not block (the server only enqueues). A failing subscriber
is logged and does not affect the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from desktop_agent.protocol import Event

from .schedule import ScheduleStatus
from .spec import JobKind
from .state import JobState

__all__ = ["EventBus", "JobChanged", "BusEvent", "ScheduleChanged", "Subscriber"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobChanged:
    """Internal event: a job changed state (the UI shows queued jobs, say).

    Published for every kind of job; ``kind`` says which (the tray counts
    waiting backups and shows a restore apart).
    """

    job_id: str
    old: JobState | None
    new: JobState
    kind: JobKind = JobKind.BACKUP


@dataclass(frozen=True, slots=True)
class ScheduleChanged:
    """Internal event: what the scheduler decided or holds changed (the tray shows it)."""

    status: ScheduleStatus


BusEvent = Event | JobChanged | ScheduleChanged
Subscriber = Callable[[BusEvent], None]


class EventBus:
    """Synchronous, ordered fan-out of events to subscribers."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def publish(self, event: BusEvent) -> None:
        """Deliver an event to every subscriber, in order."""
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:  # noqa: BLE001 - one broken consumer must not stop the others
                log.exception("event subscriber failed on %s", type(event).__name__)

    def __len__(self) -> int:
        return len(self._subscribers)
