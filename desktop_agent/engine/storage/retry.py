"""Retrying network requests: what is worth retrying, how long, and what to say.

Network faults are normal on a laptop: a Wi-Fi hand-over resets a
connection, a server answers 503 while it restarts, S3 says SlowDown. Every
remote backend runs each request through :meth:`Retrier.call`:

* a :class:`Transient` failure (connection refused or reset, a timeout,
  5xx, throttling) is retried with exponential backoff and full jitter
  (``base * 2**n``, capped at ``max_delay``), until the request has failed
  for longer than ``give_up_after`` seconds of wall clock in a row; then
  the last failure becomes a :class:`NetworkError` whose message starts
  with "network" and says how long the server has been unreachable;
* a :class:`Permanent` failure (401/403 credentials, 404 of a required
  file, 507/quota, a bad request) is raised at once as the
  :class:`~desktop_agent.engine.errors.StorageError` it carries
  (:class:`AuthError` for a wrong credential), in one line.

A backend decides which is which; this module holds the policy, so that
every backend retries alike. ``sleep`` and ``clock`` are injectable for
tests.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from desktop_agent.config.privatefile import USER_NOTICE

from ..errors import StorageError

__all__ = [
    "AuthError",
    "NetworkError",
    "Permanent",
    "RetryPolicy",
    "Retrier",
    "Transient",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class NetworkError(StorageError):
    """The server could not be reached (or kept failing) for longer than the bound."""


class AuthError(StorageError):
    """The server refused the credentials (or there were none)."""


class Transient(Exception):
    """A failure worth retrying; ``reason`` says what happened, in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Permanent(Exception):
    """A failure that cannot succeed on a retry; raise ``error`` as it is."""

    def __init__(self, error: StorageError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often to retry.

    ``give_up_after``: seconds a request may keep failing before the
    operation fails with a :class:`NetworkError` (the bound on "the network
    is gone"). ``base_delay`` and ``max_delay``: the backoff between tries.
    """

    give_up_after: float = 120.0
    base_delay: float = 0.5
    max_delay: float = 15.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before try ``attempt + 1`` (full jitter)."""
        cap = min(self.max_delay, self.base_delay * (2**attempt))
        return rng.uniform(0.0, cap)


class Retrier:
    """Runs requests under a :class:`RetryPolicy`; thread-safe.

    ``where`` names the server in messages (never with a password).

    Once a request has given up (:class:`NetworkError`), the server counts
    as down: later requests get one try each, and a transient failure
    raises at once, until one succeeds again. A backup that lost its
    server so ends in one bound, not in one bound per request still queued
    (the last uploads, the index, the lock).
    """

    def __init__(
        self,
        where: str,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
    ) -> None:
        self.where = where
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.retries = 0  # how many tries were repeated (for tests and logs)
        self._last_notice: float | None = None
        self._down_since: float | None = None  # set when a request gave up

    def _notice_due(self) -> bool:
        now = self._clock()
        with self._lock:
            if self._last_notice is not None and now - self._last_notice < 30.0:
                return False
            self._last_notice = now
            return True

    def call(self, what: str, request: Callable[[], T]) -> T:
        """``request()``, retried while it raises :class:`Transient`.

        ``what`` names the request in messages ("saving data/1a2b...").
        """
        started = self._clock()
        attempt = 0
        while True:
            try:
                result = request()
            except Permanent as exc:
                raise exc.error from None
            except Transient as exc:
                down_since = self._down_since
                if down_since is not None:
                    raise NetworkError(
                        f"network: {self.where} is still unreachable ({exc.reason}) "
                        f"while {what}; check the connection and try again"
                    ) from None
                elapsed = self._clock() - started
                if elapsed >= self.policy.give_up_after:
                    with self._lock:
                        self._down_since = self._clock()
                    raise NetworkError(
                        f"network: {self.where} could not be reached for {elapsed:.0f} s "
                        f"({exc.reason}) while {what}; check the connection and try again"
                    ) from None
                with self._lock:
                    delay = self.policy.delay(attempt, self._rng)
                    self.retries += 1
                delay = min(delay, max(0.0, self.policy.give_up_after - elapsed))
                if attempt == 0 and self._notice_due():
                    # on stderr too (at most every 30 s): a person waiting sees why
                    log.warning(
                        "network: %s: %s while %s; retrying for up to %.0f s",
                        self.where,
                        exc.reason,
                        what,
                        self.policy.give_up_after - elapsed,
                        extra={USER_NOTICE: True},
                    )
                else:
                    log.info("%s: %s; retrying in %.1f s", self.where, exc.reason, delay)
                self._sleep(delay)
                attempt += 1
            else:
                if self._down_since is not None:
                    with self._lock:
                        self._down_since = None
                return result
