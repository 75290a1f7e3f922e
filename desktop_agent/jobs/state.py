"""The job state machine: one transition table, every change published.

::

    queued --start--> running --pause--> paused --resume--> running
    running --complete--> completed          running|paused --fail--> failed
    queued|running|paused --cancelled--> cancelled

``cancelled`` is entered when the engine has actually stopped (a cancel
request alone changes nothing); a queued job is cancelled at once.
"""

from __future__ import annotations

import enum

__all__ = ["JobState", "Action", "TRANSITIONS", "IllegalTransition", "next_state", "TERMINAL"]


class JobState(enum.Enum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Action(enum.Enum):
    """What can happen to a job."""

    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    COMPLETE = "complete"
    FAIL = "fail"
    CANCELLED = "cancelled"


TRANSITIONS: dict[tuple[JobState, Action], JobState] = {
    (JobState.QUEUED, Action.START): JobState.RUNNING,
    (JobState.QUEUED, Action.CANCELLED): JobState.CANCELLED,
    (JobState.RUNNING, Action.PAUSE): JobState.PAUSED,
    (JobState.RUNNING, Action.COMPLETE): JobState.COMPLETED,
    (JobState.RUNNING, Action.FAIL): JobState.FAILED,
    (JobState.RUNNING, Action.CANCELLED): JobState.CANCELLED,
    (JobState.PAUSED, Action.RESUME): JobState.RUNNING,
    (JobState.PAUSED, Action.FAIL): JobState.FAILED,
    (JobState.PAUSED, Action.CANCELLED): JobState.CANCELLED,
}

TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})


class IllegalTransition(Exception):
    """An action that the job's current state does not allow."""

    def __init__(self, state: JobState, action: Action) -> None:
        super().__init__(f"cannot {action.value} a job that is {state.value}")
        self.state = state
        self.action = action


def next_state(state: JobState, action: Action) -> JobState:
    """The state after ``action``; :class:`IllegalTransition` if not allowed."""
    try:
        return TRANSITIONS[(state, action)]
    except KeyError:
        raise IllegalTransition(state, action) from None
