"""Following jobs over ``/ws`` for ``remote watch`` and ``remote start --watch``.

A :class:`Watcher` keeps the jobs seen on the connection and how they
ended; its printer shows them: on a terminal one line per active job,
redrawn in place (:class:`LivePrinter`); elsewhere one line per event
(:class:`LinePrinter`); with ``--json`` every message as the agent sent it
(:class:`JsonPrinter`). Backups and restores alike: a restore's lines say
"restore". The rate and ETA shown are the agent's own, from its
``backup:progress`` and ``restore:progress`` events; nothing here
estimates them.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from desktop_agent.protocol import (
    BackupCompleted,
    BackupFailed,
    BackupPaused,
    BackupResumed,
    BackupStarted,
    EndEvent,
    Event,
    JobId,
    JobProgress,
    RestoreCompleted,
    RestoreFailed,
    RestorePaused,
    RestoreProgress,
    RestoreResumed,
    RestoreStarted,
    UpkeepCompleted,
    UpkeepFailed,
    UpkeepPaused,
    UpkeepProgress,
    UpkeepResumed,
    UpkeepStarted,
)
from desktop_agent.termtext import clean, columns, fit, fit_tail, human_bytes, human_duration

from .common import emit
from .remote_client import Message, Options, receive

__all__ = [
    "Job",
    "Printer",
    "Watcher",
    "follow",
    "printer_for",
    "JsonPrinter",
    "LinePrinter",
    "LivePrinter",
    "describe",
]

_PAUSED = (BackupPaused, RestorePaused, UpkeepPaused)
_RESUMED = (BackupResumed, RestoreResumed, UpkeepResumed)
_RESTORE = (
    RestoreStarted,
    RestoreProgress,
    RestorePaused,
    RestoreResumed,
    RestoreCompleted,
    RestoreFailed,
)
_UPKEEP = (
    UpkeepStarted,
    UpkeepProgress,
    UpkeepPaused,
    UpkeepResumed,
    UpkeepCompleted,
    UpkeepFailed,
)

_REDRAW_INTERVAL = 0.1  # seconds between two redraws of the live display
_BAR_WIDTH = 16


@dataclass
class Job:
    """A job being watched."""

    id: JobId
    state: str = "waiting"  # waiting (queued), running, paused
    progress: JobProgress | None = None
    kind: str = "backup"  # backup, restore or upkeep


class Printer:
    """Where watched events go; see the three kinds below."""

    def event(self, msg: Message, jobs: dict[JobId, Job]) -> None:
        """Called for every message about a watched job, after ``jobs`` is updated."""
        raise NotImplementedError

    def due(self) -> float | None:
        """Seconds until :meth:`flush` should be called, or None."""
        return None

    def flush(self, jobs: dict[JobId, Job]) -> None:
        """Show what is held back."""


class Watcher:
    """The jobs seen on the connection and what became of them."""

    def __init__(self, printer: Printer, *, only: JobId | None = None, once: bool = False):
        self.printer = printer
        self.only = only
        self.once = once
        self.active: dict[JobId, Job] = {}
        self.ended: dict[JobId, EndEvent] = {}

    @property
    def finished(self) -> bool:
        """True when the watch should end."""
        if self.only is not None:
            return self.only in self.ended
        return self.once and bool(self.ended) and not self.active

    def handle(self, msg: Message) -> None:
        """Take one message from the agent."""
        ev = msg.event
        job_id: JobId | None = getattr(ev, "job_id", None)
        if job_id is None or (self.only is not None and job_id != self.only):
            return
        if job_id in self.ended:
            return  # nothing follows the end of a job
        if isinstance(ev, EndEvent):
            self.active.pop(job_id, None)
            self.ended[job_id] = ev
        else:
            job = self.active.setdefault(job_id, Job(job_id))
            if isinstance(ev, _RESTORE):
                job.kind = "restore"
            elif isinstance(ev, _UPKEEP):
                job.kind = "upkeep"
            if isinstance(ev, JobProgress):
                job.progress = ev
                if job.state == "waiting":
                    job.state = "running"
            elif isinstance(ev, _PAUSED):
                job.state = "paused"
            elif isinstance(ev, _RESUMED):
                job.state = "running"
        self.printer.event(msg, self.active)


async def follow(ws: ClientConnection, watcher: Watcher) -> None:
    """Feed the watcher until it is finished (or the connection ends)."""
    printer = watcher.printer
    while not watcher.finished:
        wait = printer.due()
        try:
            if wait is None:
                msg = await receive(ws)
            else:
                # recv() may be cancelled without losing a message
                async with asyncio.timeout(wait):
                    msg = await receive(ws)
        except TimeoutError:
            printer.flush(watcher.active)
            continue
        except ConnectionClosed:
            printer.flush(watcher.active)
            raise
        watcher.handle(msg)
    printer.flush(watcher.active)


def printer_for(opts: Options) -> Printer:
    """The printer for ``opts`` and standard output."""
    if opts.json:
        return JsonPrinter()
    if sys.stdout.isatty():
        return LivePrinter(sys.stdout)
    return LinePrinter(sys.stdout)


class JsonPrinter(Printer):
    """One message a line, as the agent sent it."""

    def event(self, msg: Message, jobs: dict[JobId, Job]) -> None:
        emit(msg.frame)


def describe(ev: Event) -> str | None:
    """A one-line text for an event (None: not worth a line)."""
    if isinstance(ev, BackupStarted):
        return f"{ev.job_id} started"
    if isinstance(ev, RestoreStarted):
        return f"{ev.job_id} restore of snapshot {ev.snapshot[:8]} into {ev.target} started"
    if isinstance(ev, UpkeepStarted):
        return f"{ev.job_id} upkeep ({ev.task}) started"
    if isinstance(ev, UpkeepCompleted):
        return f"{ev.job_id} upkeep completed: {ev.summary}"
    what = "restore " if isinstance(ev, _RESTORE) else "upkeep " if isinstance(ev, _UPKEEP) else ""
    if isinstance(ev, JobProgress):
        return f"{ev.job_id} {what}{_progress_text(ev)}"
    if isinstance(ev, _PAUSED):
        return f"{ev.job_id} {what}paused"
    if isinstance(ev, _RESUMED):
        return f"{ev.job_id} {what}resumed"
    if isinstance(ev, RestoreCompleted):
        return f"{ev.job_id} restore completed: {human_bytes(ev.total_bytes)}"
    if isinstance(ev, BackupCompleted):
        text = f"{ev.job_id} completed: {human_bytes(ev.total_bytes)}"
        if ev.skipped_total:
            named = "; ".join(f"{k.path}: {k.reason}" for k in ev.skipped)
            more = ev.skipped_total - len(ev.skipped)
            text += f"; {ev.skipped_total} path(s) could not be read and are not in it: {named}"
            if more > 0:
                text += f"; and {more} more"
        return text
    if isinstance(ev, BackupFailed | RestoreFailed | UpkeepFailed):
        return f"{ev.job_id} {what}failed: {ev.error}"
    return None


class LinePrinter(Printer):
    """One line per event (output that is not a terminal: logs, pipes)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def event(self, msg: Message, jobs: dict[JobId, Job]) -> None:
        text = describe(msg.event)
        if text is not None:
            self.stream.write(clean(text) + "\n")
            self.stream.flush()


class LivePrinter(Printer):
    """One line per active job, redrawn in place; ended jobs scroll up above them."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.drawn = 0  # lines of the live block currently on screen
        self.notes: list[str] = []  # lines to print above the live block
        self.last = 0.0
        self.dirty = False

    def event(self, msg: Message, jobs: dict[JobId, Job]) -> None:
        ev = msg.event
        if isinstance(ev, EndEvent):
            text = describe(ev)
            if text is not None:
                self.notes.append(clean(text))
        self.dirty = True
        # progress is throttled; a change of state shows at once
        if not isinstance(ev, JobProgress) or time.monotonic() - self.last >= _REDRAW_INTERVAL:
            self.flush(jobs)

    def due(self) -> float | None:
        if not self.dirty:
            return None
        return max(0.0, self.last + _REDRAW_INTERVAL - time.monotonic())

    def flush(self, jobs: dict[JobId, Job]) -> None:
        if not self.dirty:
            return
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        out = []
        if self.drawn:
            out.append(f"\r\x1b[{self.drawn}A")  # back to the top of the live block
        out.append("\x1b[J")  # and clear it
        out.extend(note + "\n" for note in self.notes)
        lines = [fit(_live_line(job, width), width) for job in jobs.values()]
        out.extend(line + "\n" for line in lines)
        self.stream.write("".join(out))
        self.stream.flush()
        self.notes.clear()
        self.drawn = len(lines)
        self.last = time.monotonic()
        self.dirty = False


def _progress_text(p: JobProgress) -> str:
    eta = human_duration(p.eta_seconds) if p.eta_seconds > 0 else "?"
    text = (
        f"{p.percent:5.1f}%  {human_bytes(p.transferred_bytes)} / {human_bytes(p.total_bytes)}  "
        f"{human_bytes(p.bytes_per_second)}/s  ETA {eta}  "
        f"{p.files_processed}/{p.total_files} files"
    )
    if p.current_file:
        text += f"  {p.current_file}"
    return text


def _live_line(job: Job, width: int) -> str:
    head = clean(job.id[:8]) + ("" if job.kind == "backup" else f" {job.kind}")
    p = job.progress
    if p is None:
        return f"{head} {'paused' if job.state == 'paused' else 'waiting to start'}"
    filled = int(_BAR_WIDTH * min(max(p.percent, 0.0), 100.0) / 100)
    bar = "[" + "#" * filled + "." * (_BAR_WIDTH - filled) + "]"
    if job.state == "paused":
        rate = "paused"
    else:
        eta = human_duration(p.eta_seconds) if p.eta_seconds > 0 else "?"
        rate = f"{human_bytes(p.bytes_per_second)}/s ETA {eta}"
    text = (
        f"{head} {bar} {p.percent:5.1f}% {human_bytes(p.transferred_bytes)}/"
        f"{human_bytes(p.total_bytes)} {rate} {p.files_processed}/{p.total_files} files"
    )
    name = clean(p.current_file or "")
    room = width - columns(text) - 2
    if name and job.state != "paused" and room > 8:
        text += "  " + fit_tail(name, room)
    return text
