"""An asyncio event loop in a daemon thread of its own, for synchronous callers.

The engine is synchronous and runs in several threads; asyncio libraries
(asyncssh) want a loop. :class:`LoopThread` starts one on first use, runs
coroutines on it for any thread, and stops it with a clean-up coroutine.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from contextlib import suppress
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """An asyncio event loop in a daemon thread, started on first use."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result (from any other thread)."""
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=self._main, args=(loop,), name=self._name, daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    @staticmethod
    def _main(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self, cleanup: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``cleanup()`` on the loop (briefly), then end the loop and its thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None or loop.is_closed():
            return
        if threading.current_thread() is thread:  # garbage collected on the loop itself
            loop.create_task(_shut_down(cleanup)).add_done_callback(lambda _: loop.stop())
            return
        with suppress(Exception):
            asyncio.run_coroutine_threadsafe(_shut_down(cleanup), loop).result(timeout=5)
        with suppress(RuntimeError):  # already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)


async def _shut_down(cleanup: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Cancel what still runs, then ``cleanup()``: a call under way when the storage
    is closed ends (with an error) instead of waiting for a loop that is gone."""
    current = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not current]
    for task in others:
        task.cancel()
    if others:
        await asyncio.wait(others, timeout=2)
    await cleanup()
