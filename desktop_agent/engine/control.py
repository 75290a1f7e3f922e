"""Pause, resume and cancel for long-running engine work.

The engine calls :meth:`Control.checkpoint` between chunks. While paused the
calling thread blocks on an event (no CPU); cancel wakes it and raises
:class:`~.errors.Cancelled`. Any thread may call pause/resume/cancel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .errors import Cancelled

__all__ = ["Control"]


class Control:
    """A thread-safe pause/cancel switch polled by the engine."""

    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self._cancelled = threading.Event()
        self._paused_ack = threading.Event()

    def pause(self) -> None:
        """Ask the engine to stop at its next checkpoint until resumed."""
        self._running.clear()

    def resume(self) -> None:
        """Let a paused engine continue."""
        self._running.set()

    def cancel(self) -> None:
        """Ask the engine to stop for good at its next checkpoint."""
        self._cancelled.set()
        self._running.set()

    @property
    def paused(self) -> bool:
        """True while a pause is requested."""
        return not self._running.is_set()

    @property
    def cancelled(self) -> bool:
        """True once cancel was requested."""
        return self._cancelled.is_set()

    def wait_paused(self, timeout: float | None = None) -> bool:
        """Block until the engine has actually stopped: nothing is read,
        hashed or written until :meth:`resume` (uploads of finished packs
        may complete)."""
        return self._paused_ack.wait(timeout)

    def checkpoint(
        self, *, secondary: bool = False, quiesce: Callable[[], None] | None = None
    ) -> None:
        """Called by the engine: block while paused, raise if cancelled.

        The engine's primary thread reports the pause as effective (see
        :meth:`wait_paused`) after ``quiesce`` has let work already in flight
        settle; ``secondary`` threads (workers, readers) just block.
        """
        if self._cancelled.is_set():
            raise Cancelled()
        if not self._running.is_set():
            if quiesce is not None:
                quiesce()
            if not secondary:
                self._paused_ack.set()
            try:
                self._running.wait()
            finally:
                if not secondary:
                    self._paused_ack.clear()
            if self._cancelled.is_set():
                raise Cancelled()
