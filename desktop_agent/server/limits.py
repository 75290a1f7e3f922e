"""Keeping ``/ws`` clients from starving the rest of the process.

Every TCP connection costs the process a file descriptor, and so does every
file a backup reads, every pack it writes and every pipe to a helper
process. Three things keep connections from taking them all:

* :func:`plan_fd_budget` raises the soft ``RLIMIT_NOFILE`` as far as the
  configured connection limit needs (never beyond the hard limit) and says
  how many connections fit beside a reserve kept free for everything else.
* :class:`AcceptErrorFilter` sits in the event loop's exception handler: when
  accepting fails for want of descriptors or memory, asyncio reports every
  failure there (dozens a second, each with a traceback); the filter turns
  them into one log line a minute and passes every other report on.
* :class:`Throttle` is that one-line-a-minute logger, also used for refused
  connections, so that no client can rotate the log history away.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ACCEPT_BATCH",
    "FD_RESERVE",
    "REFUSE_SLOTS",
    "AcceptErrorFilter",
    "FdBudget",
    "Throttle",
    "connection_cap",
    "filter_accept_errors",
    "installed_filter",
    "open_fd_count",
    "plan_fd_budget",
]

log = logging.getLogger(__name__)

# Descriptors kept free for everything but /ws connections: the backup engine
# (files it reads, packs it writes, pipes to its helper processes), the log,
# the repository lock, the tray's own. A backup of thousands of small files
# with two helpers needs a few dozen.
FD_RESERVE = 128
# Connections over the limit that are answered 503 at once; any more are
# closed unanswered until those answers are out.
REFUSE_SLOTS = 16
# asyncio accepts up to this many connections per wake-up (the listen backlog
# too), each holding a descriptor before the server can look at it.
ACCEPT_BATCH = 64

# What asyncio's selector loop says when accept() fails for want of resources
# (asyncio/selector_events.py, _accept_connection).
ACCEPT_ERROR_MESSAGE = "socket.accept() out of system resource"
_ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def connection_cap(soft_limit: int, in_use: int) -> int:
    """How many connections fit in ``soft_limit`` descriptors beside ``in_use`` and the reserves.

    Never less than 1: an agent nobody can reach is no use either.
    """
    return max(1, soft_limit - in_use - FD_RESERVE - REFUSE_SLOTS - ACCEPT_BATCH)


def open_fd_count() -> int | None:
    """File descriptors this process has open now; None where that cannot be told."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            # listing the directory opens one descriptor of its own
            return max(0, len(os.listdir(directory)) - 1)
        except OSError:
            continue
    return None


@dataclass(frozen=True)
class FdBudget:
    """The descriptor limit the /ws server works within.

    ``cap`` is how many connections fit (None: no limit to fit in, as on
    Windows); ``soft_limit`` the soft ``RLIMIT_NOFILE`` now and ``raised_from``
    what it was before :func:`plan_fd_budget` raised it (None if untouched).
    """

    cap: int | None
    soft_limit: int | None = None
    raised_from: int | None = None


def plan_fd_budget(max_connections: int) -> FdBudget:
    """Raise the soft descriptor limit as far as ``max_connections`` needs; say what fits.

    The limit is process-wide (helper processes inherit it), so it is raised
    only as far as needed, never beyond the hard limit, and never lowered.
    """
    if sys.platform == "win32":  # no RLIMIT_NOFILE; sockets are not counted against one
        return FdBudget(cap=None)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return FdBudget(cap=None)
    in_use = open_fd_count()
    if in_use is None:
        in_use = 64  # a guess on the high side for a process of this kind
    wanted = in_use + FD_RESERVE + REFUSE_SLOTS + ACCEPT_BATCH + max_connections
    raised_from = None
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (ValueError, OSError) as exc:  # e.g. above macOS's per-process maximum
                log.info("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
            else:
                raised_from, soft = soft, target
    return FdBudget(cap=connection_cap(soft, in_use), soft_limit=soft, raised_from=raised_from)


class Throttle:
    """Logs the first of a burst of like events at once, then one line a minute while it lasts.

    The summary names how many were left out, so nothing is lost but the
    repetition. Messages are logged as given: never pass a secret.
    """

    def __init__(
        self, logger: logging.Logger, level: int = logging.WARNING, interval: float = 60.0
    ) -> None:
        self.logger = logger
        self.level = level
        self.interval = interval
        self.suppressed = 0
        self._last = ""
        self._window: asyncio.TimerHandle | None = None

    def __call__(self, message: str) -> None:
        """Log ``message``, or count it if a line went out less than ``interval`` ago."""
        if self._window is not None:
            self.suppressed += 1
            self._last = message
            return
        self.logger.log(self.level, "%s", message)
        self._open_window()

    def _open_window(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to time the window with: log every one
            return
        self._window = loop.call_later(self.interval, self._close_window)

    def _close_window(self) -> None:
        self._window = None
        if self._summarize():
            self._open_window()  # it is still going on: keep summing up

    def _summarize(self) -> bool:
        if not self.suppressed:
            return False
        count, self.suppressed = self.suppressed, 0
        self.logger.log(
            self.level, "%s (%d more like it since the last such line)", self._last, count
        )
        return True

    def close(self) -> None:
        """Log the summary now, if one is pending, and stop timing (the server stops)."""
        if self._window is not None:
            self._window.cancel()
            self._window = None
        self._summarize()


_Handler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


class AcceptErrorFilter:
    """An event-loop exception handler that rate-limits accept() failures.

    When accept() fails with EMFILE, ENFILE, ENOBUFS or ENOMEM, asyncio's
    selector loop pauses accepting for a second and reports the error to the
    loop's exception handler, which by default logs it with a traceback; in a
    flood that is tens of thousands of tracebacks, enough to rotate the whole
    log away. This handler logs those as one warning a minute (how many,
    without a traceback) and passes every other report to the handler that
    was installed before it, or to the loop's default handler. It works the
    same under plain asyncio and under qasync, whose loop reports accept
    errors through the same call.
    """

    def __init__(self, previous: _Handler | None, interval: float = 60.0) -> None:
        self.previous = previous
        self.throttle = Throttle(log, logging.WARNING, interval)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Handle one report of ``loop``."""
        exc = context.get("exception")
        if (
            context.get("message") == ACCEPT_ERROR_MESSAGE
            and isinstance(exc, OSError)
            and exc.errno in _ACCEPT_ERRNOS
        ):
            name = errno.errorcode.get(exc.errno or 0, "?")
            self.throttle(
                f"cannot accept connections: {exc.strerror or exc} ({name}); "
                "trying again in a second"
            )
            return
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)


def filter_accept_errors(
    loop: asyncio.AbstractEventLoop, interval: float = 60.0
) -> AcceptErrorFilter:
    """Put an :class:`AcceptErrorFilter` in front of ``loop``'s exception handler (once).

    It stays for the life of the loop: it changes nothing but the logging
    of accept errors, which any server on that loop may run into.
    """
    installed = _installed.get(loop)
    if installed is not None:
        return installed
    # (qasync keeps the handler it is given where get_exception_handler does
    # not see it: the registry, not that call, tells whether ours is in place)
    current = loop.get_exception_handler()
    if isinstance(current, AcceptErrorFilter):
        return current
    handler = AcceptErrorFilter(current, interval)
    loop.set_exception_handler(handler)
    _installed[loop] = handler
    return handler


def installed_filter(loop: asyncio.AbstractEventLoop) -> AcceptErrorFilter | None:
    """The filter :func:`filter_accept_errors` put on ``loop``, if it did (for diagnostics)."""
    return _installed.get(loop)


_installed: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AcceptErrorFilter] = (
    weakref.WeakKeyDictionary()
)
