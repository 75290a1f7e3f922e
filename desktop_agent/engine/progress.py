"""Progress state of engine operations, kept apart from anything that prints it.

The engine updates a :class:`ProgressState` and calls the reporter with an
immutable :class:`Progress` at most every ``interval`` seconds (and once at
the end). The fields are those of the protocol's ``backup:progress``; rates
and ETAs are the consumer's business.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Progress", "ProgressState", "RateEstimator", "Reporter", "RATE_WINDOW"]

RATE_WINDOW = 3.0  # seconds: time constant of the transfer rate's moving average


@dataclass(frozen=True)
class Progress:
    """A consistent view of an operation's progress."""

    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    current_file: str
    bytes_new: int = 0  # bytes added to the repository (after dedup+compression)
    scan_finished: bool = False
    errors: int = 0
    elapsed: float = 0.0
    final: bool = False

    def to_json(self) -> dict[str, object]:
        """restic's ``--json`` status message."""
        return {
            "message_type": "status",
            "percent_done": self.bytes_done / self.bytes_total if self.bytes_total else 0.0,
            "total_files": self.files_total,
            "files_done": self.files_done,
            "total_bytes": self.bytes_total,
            "bytes_done": self.bytes_done,
            "seconds_elapsed": round(self.elapsed, 3),
            "current_files": [self.current_file] if self.current_file else [],
        }


Reporter = Callable[[Progress], None]


class ProgressState:
    """Mutable counters shared by engine threads; emits throttled snapshots."""

    def __init__(self, reporter: Reporter | None, interval: float = 0.1) -> None:
        self._reporter = reporter
        self._interval = interval
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last = 0.0
        self.bytes_done = 0
        self.bytes_total = 0
        self.files_done = 0
        self.files_total = 0
        self.bytes_new = 0
        self.errors = 0
        # set per file by the walker as the raw path: decoded only when reported
        self.current_file: str | bytes = ""
        self.scan_finished = False

    def add_total(self, files: int, nbytes: int) -> None:
        """Scanner found more work."""
        with self._lock:
            self.files_total += files
            self.bytes_total += nbytes

    def finish_scan(self) -> None:
        """The scanner is done: totals are final."""
        with self._lock:
            self.scan_finished = True

    def add_done(self, nbytes: int = 0, files: int = 0, new: int = 0) -> None:
        """Work completed."""
        with self._lock:
            self.bytes_done += nbytes
            self.files_done += files
            self.bytes_new += new

    def snapshot(self, final: bool = False) -> Progress:
        """The current state as a value."""
        with self._lock:
            total = (
                self.bytes_total if self.scan_finished else max(self.bytes_total, self.bytes_done)
            )
            files_total = (
                self.files_total if self.scan_finished else max(self.files_total, self.files_done)
            )
            return Progress(
                bytes_done=self.bytes_done,
                bytes_total=max(total, self.bytes_done),
                files_done=self.files_done,
                files_total=max(files_total, self.files_done),
                current_file=(
                    os.fsdecode(self.current_file)
                    if isinstance(self.current_file, bytes)
                    else self.current_file
                ),
                bytes_new=self.bytes_new,
                scan_finished=self.scan_finished,
                errors=self.errors,
                elapsed=time.monotonic() - self._start,
                final=final,
            )

    def due(self) -> bool:
        """Whether :meth:`maybe_report` would report now (to skip costly details otherwise)."""
        return self._reporter is not None and time.monotonic() - self._last >= self._interval

    def maybe_report(self) -> None:
        """Report if the interval has passed since the last report (any thread)."""
        if self._reporter is None:
            return
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        with self._lock:
            if now - self._last < self._interval:
                return
            self._last = now
        self._reporter(self.snapshot())

    def report_final(self) -> None:
        """Report the final state unconditionally."""
        if self._reporter is not None:
            self._reporter(self.snapshot(final=True))


class RateEstimator:
    """The transfer rate as an exponential moving average over ``window``
    seconds, and the time left at that rate: the one estimator behind every
    rate and ETA shown (the agent's ``backup:progress``, the terminal's
    progress line). A pause is not slow transfer: :meth:`restart` after one.
    """

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self.rate = 0.0
        self._at: float | None = None
        self._bytes = 0

    def restart(self, now: float, done: int) -> None:
        """Measure from here on (a start, or the end of a pause)."""
        self._at, self._bytes = now, done

    def update(self, now: float, done: int) -> float:
        """Take ``done`` bytes at time ``now``; returns the rate (bytes/s)."""
        if self._at is None:
            self.restart(now, done)
            return self.rate
        dt = now - self._at
        if dt > 0.05:  # shorter steps are noise
            inst = max(0, done - self._bytes) / dt
            weight = 1.0 - math.exp(-dt / self.window)
            self.rate = inst if self.rate == 0.0 else self.rate + weight * (inst - self.rate)
            self._at, self._bytes = now, done
        return self.rate

    def decay(self, now: float) -> float:
        """Nothing new arrived: let the rate fall, so that the ETA stays honest."""
        if self._at is not None:
            weight = 1.0 - math.exp(-(now - self._at) / self.window)
            self.rate -= weight * self.rate
            self._at = now
        return self.rate

    def eta(self, remaining: int) -> int:
        """Seconds left for ``remaining`` bytes at the current rate; 0 when unknown."""
        if self.rate <= 1 or remaining <= 0:
            return 0
        return int(math.ceil(remaining / self.rate))
