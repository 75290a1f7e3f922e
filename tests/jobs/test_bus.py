"""The event bus: synchronous, ordered fan-out that one broken subscriber cannot stop."""

from __future__ import annotations

import logging

import pytest

from desktop_agent.jobs import EventBus, JobChanged, JobKind, JobState
from desktop_agent.protocol import BackupStarted, JobId, RestoreStarted


def test_every_subscriber_gets_every_event_in_order() -> None:
    bus = EventBus()
    got: list[tuple[str, object]] = []
    bus.subscribe(lambda e: got.append(("a", e)))
    bus.subscribe(lambda e: got.append(("b", e)))
    one, two = BackupStarted(JobId("1")), RestoreStarted(JobId("2"), "ab" * 32, "/t")
    bus.publish(one)
    bus.publish(two)
    assert got == [("a", one), ("b", one), ("a", two), ("b", two)]
    assert len(bus) == 2


def test_publishing_is_synchronous() -> None:
    bus = EventBus()
    seen: list[object] = []
    bus.subscribe(seen.append)
    event = JobChanged("j", None, JobState.QUEUED, JobKind.RESTORE)
    bus.publish(event)
    assert seen == [event]  # delivered before publish returned


def test_unsubscribe_stops_delivery_and_is_idempotent() -> None:
    bus = EventBus()
    seen: list[object] = []
    unsubscribe = bus.subscribe(seen.append)
    bus.publish(BackupStarted(JobId("1")))
    unsubscribe()
    unsubscribe()
    bus.publish(BackupStarted(JobId("2")))
    assert seen == [BackupStarted(JobId("1"))]
    assert len(bus) == 0


def test_a_subscriber_may_unsubscribe_while_an_event_is_delivered() -> None:
    """Delivery goes over a copy of the list: the others still get this event."""
    bus = EventBus()
    seen: list[str] = []
    unsubscribe_first = None

    def first(_e: object) -> None:
        seen.append("first")
        assert unsubscribe_first is not None
        unsubscribe_first()

    unsubscribe_first = bus.subscribe(first)
    bus.subscribe(lambda _e: seen.append("second"))
    bus.publish(BackupStarted(JobId("1")))
    bus.publish(BackupStarted(JobId("2")))
    assert seen == ["first", "second", "second"]


def test_a_failing_subscriber_is_logged_and_the_others_still_get_the_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    seen: list[object] = []

    def broken(_e: object) -> None:
        raise RuntimeError("boom")

    bus.subscribe(broken)
    bus.subscribe(seen.append)
    with caplog.at_level(logging.ERROR, logger="desktop_agent.jobs.bus"):
        bus.publish(BackupStarted(JobId("1")))
    assert seen == [BackupStarted(JobId("1"))]
    assert "subscriber failed on BackupStarted" in caplog.text


def test_job_changes_say_which_kind_of_job() -> None:
    assert JobChanged("j", None, JobState.QUEUED).kind is JobKind.BACKUP  # the default
    assert JobChanged("j", None, JobState.QUEUED, JobKind.RESTORE).kind is JobKind.RESTORE
