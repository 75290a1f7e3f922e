"""The job state machine: the one transition table, and nothing else."""

from __future__ import annotations

import itertools

import pytest

from desktop_agent.jobs.state import (
    TERMINAL,
    TRANSITIONS,
    Action,
    IllegalTransition,
    JobState,
    next_state,
)


def test_the_table_is_the_documented_machine():
    assert TRANSITIONS == {
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


@pytest.mark.parametrize(("state", "action"), list(itertools.product(JobState, Action)))
def test_every_other_transition_raises(state, action):
    if (state, action) in TRANSITIONS:
        assert next_state(state, action) == TRANSITIONS[(state, action)]
    else:
        with pytest.raises(IllegalTransition, match=f"cannot {action.value}"):
            next_state(state, action)


def test_terminal_states_have_no_way_out():
    for state in TERMINAL:
        assert not [a for (s, a) in TRANSITIONS if s is state]
