"""The headless agent's jobs on a terminal: one progress line, drawn from events.

:class:`TerminalProgress` shows the figures of the protocol events it is
given (rate and ETA included, computed by the job controller) and clears its
line before any log line, so the two never overwrite each other. Apart from
:mod:`desktop_agent.termtext` (whose sanitizer and widths it uses) so that a
command-line start does not import the protocol's message classes.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TextIO

from desktop_agent.protocol import (
    EndEvent,
    JobProgress,
    RestoreProgress,
    UpkeepProgress,
)
from desktop_agent.termtext import (
    clean,
    columns,
    fit,
    fit_tail,
    human_bytes,
    human_duration,
    line_width,
)

__all__ = ["TerminalProgress", "show_progress_on_terminal"]


class TerminalProgress:
    """The agent's jobs on a terminal: one line redrawn in place while a job
    runs, cleared before any log line so the two never overwrite each other.

    It shows the rate and ETA the events carry (the job controller's
    :class:`RateEstimator`), computing none of its own.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._shown = 0

    def on_event(self, event: object) -> None:
        """Bus subscriber: draw progress, end the line when the job ends."""
        if isinstance(event, JobProgress):
            self.draw(event)
        elif isinstance(event, EndEvent):
            self.clear()

    def draw(self, p: JobProgress) -> None:
        """Redraw the line with ``p``'s figures."""
        width = max(20, line_width())
        eta = f"  ETA {human_duration(p.eta_seconds)}" if p.eta_seconds > 0 else ""
        what = (
            "restore"
            if isinstance(p, RestoreProgress)
            else "upkeep"
            if isinstance(p, UpkeepProgress)
            else "backup"
        )
        text = (
            f"{what} {p.percent:5.1f}%  {human_bytes(p.transferred_bytes)} / "
            f"{human_bytes(p.total_bytes)}  {human_bytes(p.bytes_per_second)}/s{eta}  "
            f"{p.files_processed}/{p.total_files} files"
        )
        if p.current_file and columns(text) + 12 < width:
            text += "  " + fit_tail(clean(p.current_file), width - columns(text) - 2)
        text = fit(text, width)
        self.stream.write("\r" + text + " " * max(0, self._shown - columns(text)))
        self.stream.flush()
        self._shown = columns(text)

    def clear(self) -> None:
        """Wipe the progress line (before a log line, or at the end of a job)."""
        if self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0


class _ClearFirst(logging.Filter):
    """Wipes the progress line before its handler writes a log line."""

    def __init__(self, progress: TerminalProgress) -> None:
        super().__init__()
        self.progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self.progress.clear()
        return True


def show_progress_on_terminal(
    subscribe: Callable[[Callable[[object], None]], object], stream: TextIO | None = None
) -> TerminalProgress | None:
    """Show the jobs' progress on ``stream`` (default: stderr) when it is a terminal.

    ``subscribe`` adds an event subscriber (the agent's ``bus.subscribe``).
    Every log handler writing to the same stream wipes the line before a
    log line. Returns the display, or None when ``stream`` is no terminal.
    """
    stream = sys.stderr if stream is None else stream
    if stream is None or not stream.isatty():
        return None
    progress = TerminalProgress(stream)
    subscribe(progress.on_event)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is stream:
            handler.addFilter(_ClearFirst(progress))
    return progress
