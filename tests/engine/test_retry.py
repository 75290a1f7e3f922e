"""The one retry policy of the network backends (engine/storage/retry.py)."""

from __future__ import annotations

import pytest

from desktop_agent.engine.errors import StorageError
from desktop_agent.engine.storage.retry import (
    AuthError,
    NetworkError,
    Permanent,
    Retrier,
    RetryPolicy,
    Transient,
)


class Clock:
    """Time that moves only when the retrier sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def test_transient_failures_are_retried_with_growing_jittered_delays() -> None:
    clock = Clock()
    retrier = Retrier(
        "rest:http://h/r", RetryPolicy(60, 0.5, 8), sleep=clock.sleep, clock=clock, seed=1
    )
    calls = []

    def request() -> str:
        calls.append(1)
        if len(calls) < 6:
            raise Transient("503 Service Unavailable")
        return "ok"

    assert retrier.call("saving data/ab", request) == "ok"
    assert len(calls) == 6 and retrier.retries == 5
    caps = [0.5, 1, 2, 4, 8]
    assert all(0 <= d <= cap for d, cap in zip(clock.sleeps, caps, strict=True))
    assert len(set(clock.sleeps)) == 5  # jittered, not a fixed schedule


def test_permanent_failures_are_raised_at_once() -> None:
    clock = Clock()
    retrier = Retrier("s3:https://h/b", sleep=clock.sleep, clock=clock)
    error = AuthError("the S3 server refused the keys: check AWS_ACCESS_KEY_ID")

    def request() -> None:
        raise Permanent(error)

    with pytest.raises(AuthError) as info:
        retrier.call("listing snapshots", request)
    assert info.value is error and clock.sleeps == [] and retrier.retries == 0
    assert isinstance(info.value, StorageError)


def test_a_server_gone_longer_than_the_bound_is_a_network_error_in_bounded_time() -> None:
    clock = Clock()
    retrier = Retrier(
        "rest:http://h:8000/r", RetryPolicy(30, 0.5, 4), sleep=clock.sleep, clock=clock
    )

    def request() -> None:
        raise Transient("connection refused")

    with pytest.raises(NetworkError) as info:
        retrier.call("loading index/ab12", request)
    message = str(info.value)
    assert message.startswith("network: rest:http://h:8000/r could not be reached for 30 s")
    assert "connection refused" in message and "loading index/ab12" in message
    assert "\n" not in message
    assert clock.now == pytest.approx(30)  # the last wait is cut to the bound


def test_after_giving_up_the_server_counts_as_down_until_a_request_succeeds() -> None:
    clock = Clock()
    retrier = Retrier("sftp:me@nas:/r", RetryPolicy(10, 0.5, 2), sleep=clock.sleep, clock=clock)

    def down() -> None:
        raise Transient("connection reset")

    with pytest.raises(NetworkError):
        retrier.call("saving data/aa", down)
    waited = len(clock.sleeps)
    # the packs still queued, the index, the lock: one try each, no second bound
    for what in ("saving data/bb", "saving index/cc", "removing locks/dd"):
        with pytest.raises(NetworkError, match="still unreachable"):
            retrier.call(what, down)
    assert len(clock.sleeps) == waited
    assert retrier.call("loading config", lambda: "back") == "back"
    flaky = iter([Transient("503"), None])

    def once_more() -> str:
        failure = next(flaky)
        if failure is not None:
            raise failure
        return "ok"

    assert retrier.call("saving data/ee", once_more) == "ok"  # retried again, as before
    assert len(clock.sleeps) == waited + 1
