"""Jobs: the state machine, the event bus, the controller and the scheduler (asyncio, no Qt)."""

from __future__ import annotations

from .bus import BusEvent, EventBus, JobChanged
from .controller import JobController, JobError, JobView
from .state import Action, IllegalTransition, JobState

__all__ = [
    "Action",
    "BusEvent",
    "EventBus",
    "IllegalTransition",
    "JobChanged",
    "JobController",
    "JobError",
    "JobState",
    "JobView",
]
