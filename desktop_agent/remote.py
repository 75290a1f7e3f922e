"""``desktop-agent remote``: talk to a running agent over ``/ws``.

A small client of the protocol (:mod:`desktop_agent.protocol` does the
parsing): ask for the status, start a backup, pause, resume or cancel a job,
and watch progress live. It needs no local configuration: the URL and the
token are all it knows (the token from ``--token`` or, better, since command
lines are visible to other users, the environment variable
``DESKTOP_AGENT_TOKEN``).

Exit status as for every command: 0 success, 1 failure (one line on stderr),
2 bad usage. Every failure this module expects is a :class:`RemoteError`.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import shutil
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
)

from desktop_agent import __version__
from desktop_agent.protocol import (
    CANCELLED,
    AgentStatus,
    BackupCancel,
    BackupCompleted,
    BackupFailed,
    BackupPause,
    BackupPaused,
    BackupProgress,
    BackupResume,
    BackupResumed,
    BackupStart,
    BackupStarted,
    Command,
    ErrorReply,
    Event,
    JobId,
    ProtocolError,
    StatusRequest,
    decode_event,
    encode_command,
)
from desktop_agent.termprogress import human_bytes, human_duration
from desktop_agent.termtext import clean, columns, fit, fit_tail, json_text

__all__ = [
    "TOKEN_ENV",
    "DEFAULT_TIMEOUT",
    "RemoteError",
    "RemoteUsageError",
    "add_arguments",
    "run",
]

TOKEN_ENV = "DESKTOP_AGENT_TOKEN"
DEFAULT_TIMEOUT = 10.0
_REDRAW_INTERVAL = 0.1  # seconds between two redraws of the live display
_BAR_WIDTH = 16


class RemoteError(Exception):
    """A failure to report in one line (exit status 1)."""


class RemoteUsageError(RemoteError):
    """Bad arguments: an unusable URL, no token (exit status 2)."""


# ------------------------------------------------------------ arguments
def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _common_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    """Options accepted both before and after COMMAND.

    Only the ``remote`` parser itself sets defaults; on the sub-commands they
    are suppressed so that an option given before COMMAND is not reset.
    """

    def d(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    p.add_argument(
        "--token",
        metavar="T",
        default=d(None),
        help=f"the agent's /ws token (default: env {TOKEN_ENV}; "
        "the agent prints it with `desktop-agent token`)",
    )
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive,
        default=d(DEFAULT_TIMEOUT),
        help=f"how long to wait to connect and for an answer (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "--json",
        action="store_true",
        default=d(False),
        help="machine-readable output: the agent's JSON payloads (watch: one message a line)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=d(False),
        help="wss://: do not verify the agent's certificate (self-signed certificates)",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``desktop-agent remote`` (``p`` is its sub-parser)."""
    p.add_argument(
        "url",
        metavar="URL",
        help="the agent's endpoint: ws://host:port/ws, or wss://... when it serves TLS",
    )
    _common_options(p, defaults=True)
    sub = p.add_subparsers(dest="remote_command", metavar="COMMAND", required=True)

    _common_options(
        sub.add_parser("status", help="the agent's status, active jobs and uptime"), defaults=False
    )

    s = sub.add_parser("start", help="start a backup and print its job id")
    s.add_argument(
        "paths",
        metavar="PATH",
        nargs="*",
        help="paths on the agent's machine (default: its configured sources)",
    )
    s.add_argument("--watch", action="store_true", help="then follow the job until it ends")
    _common_options(s, defaults=False)

    for verb, text in (
        ("pause", "pause a running job (waits until the pause has taken effect)"),
        ("resume", "resume a paused job"),
        ("cancel", "cancel a job (it ends as failed, error `cancelled`)"),
    ):
        c = sub.add_parser(verb, help=text)
        c.add_argument("job", metavar="JOB", help="the job id (from `start` or `watch`)")
        _common_options(c, defaults=False)

    w = sub.add_parser("watch", help="show live progress of every job until Ctrl-C")
    w.add_argument("--once", action="store_true", help="exit once every job seen so far has ended")
    _common_options(w, defaults=False)


@dataclass(frozen=True)
class _Options:
    url: str
    token: str
    command: str
    timeout: float
    json: bool
    insecure: bool
    paths: tuple[str, ...] = ()
    job: str = ""
    watch: bool = False
    once: bool = False


def _endpoint(url: str) -> str:
    """The URL to connect to; a URL without a path gets ``/ws``."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise RemoteUsageError(f"bad URL {url!r}: {exc}") from None
    if parts.scheme not in ("ws", "wss"):
        raise RemoteUsageError(
            f"bad URL {url!r}: it must start with ws:// (or wss:// when the agent serves TLS)"
        )
    if not parts.hostname:
        raise RemoteUsageError(f"bad URL {url!r}: no host")
    if parts.username is not None or parts.password is not None:
        raise RemoteUsageError("put the token in --token or $DESKTOP_AGENT_TOKEN, not in the URL")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/ws")
    return urlunsplit(parts)


def _token(given: str | None) -> str:
    token = given if given is not None else os.environ.get(TOKEN_ENV, "")
    token = token.strip()
    if not token:
        raise RemoteUsageError(
            f"no token: pass --token T or set {TOKEN_ENV} "
            "(on the agent's machine, `desktop-agent token` prints it)"
        )
    if not all(0x21 <= ord(c) <= 0x7E for c in token):
        raise RemoteUsageError("the token has characters that cannot be sent in an HTTP header")
    return token


def _options(args: argparse.Namespace) -> _Options:
    return _Options(
        url=_endpoint(args.url),
        token=_token(args.token),
        command=args.remote_command,
        timeout=args.timeout,
        json=args.json,
        insecure=args.insecure,
        paths=tuple(getattr(args, "paths", ()) or ()),
        job=getattr(args, "job", ""),
        watch=getattr(args, "watch", False),
        once=getattr(args, "once", False),
    )


# ---------------------------------------------------------- entry point
def run(args: argparse.Namespace) -> int:
    """Carry out ``desktop-agent remote ...``; returns the exit status.

    Raises :class:`RemoteError` (or :class:`RemoteUsageError`) for the
    caller to print in one line.
    """
    opts = _options(args)
    watching = opts.command == "watch" or (opts.command == "start" and opts.watch)
    host = urlsplit(opts.url).hostname or ""
    if opts.url.startswith("ws://") and not _is_loopback(host):
        print(
            f"desktop-agent: warning: ws:// sends the token to {clean(host)} unencrypted; "
            "use wss:// (TLS) across a network",
            file=sys.stderr,
        )
    try:
        return asyncio.run(_session(opts))
    except KeyboardInterrupt:
        if watching:  # Ctrl-C is how a watch ends
            return 0
        raise


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _ssl_context(opts: _Options) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if opts.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _session(opts: _Options) -> int:
    kwargs: dict[str, Any] = {}
    if opts.url.startswith("wss://"):
        kwargs["ssl"] = _ssl_context(opts)
    where = opts.url
    try:
        async with connect(
            opts.url,
            additional_headers={"Authorization": f"Bearer {opts.token}"},
            user_agent_header=f"desktop-agent/{__version__} (remote)",
            compression=None,  # the agent does not compress
            open_timeout=opts.timeout,
            close_timeout=2,
            **kwargs,
        ) as ws:
            return await _COMMANDS[opts.command](ws, opts)
    except InvalidStatus as exc:
        raise RemoteError(_refused(where, exc.response.status_code)) from None
    except InvalidURI as exc:
        raise RemoteUsageError(f"bad URL {where!r}: {exc}") from None
    except ssl.SSLCertVerificationError as exc:
        raise RemoteError(
            f"the certificate of {where} is not trusted ({exc.verify_message}); "
            "for a self-signed certificate use --insecure"
        ) from None
    except ssl.SSLError as exc:
        raise RemoteError(
            f"TLS with {where} failed ({exc.reason or exc}); does the agent serve TLS?"
        ) from None
    except socket.gaierror as exc:
        raise RemoteError(f"cannot find the host of {where}: {exc.strerror}") from None
    except ConnectionRefusedError:
        raise RemoteError(
            f"cannot connect to {where}: connection refused (is the agent running?)"
        ) from None
    except TimeoutError:
        raise RemoteError(f"no answer from {where} within {opts.timeout:g} s") from None
    except ConnectionClosed as exc:
        raise RemoteError(_closed(exc)) from None
    except InvalidMessage:
        raise RemoteError(
            f"{where} did not answer like a WebSocket server "
            "(wrong port, or ws:// where the agent serves wss://?)"
        ) from None
    except InvalidHandshake as exc:
        raise RemoteError(f"the WebSocket handshake with {where} failed: {exc}") from None
    except OSError as exc:
        raise RemoteError(f"cannot connect to {where}: {exc.strerror or exc}") from None


def _refused(url: str, status: int) -> str:
    if status == 401:
        return "the agent refused the token (HTTP 401); `desktop-agent token` prints the right one"
    if status == 403:
        return "the agent refused the connection (HTTP 403 Forbidden)"
    if status == 404:
        path = urlsplit(url).path
        return f"there is no agent endpoint at {path} (HTTP 404); the endpoint is /ws"
    return f"{url} answered HTTP {status} instead of accepting the WebSocket connection"


def _closed(exc: ConnectionClosed) -> str:
    if exc.rcvd is None:
        return "the connection to the agent was lost"
    reason = f": {clean(exc.rcvd.reason)}" if exc.rcvd.reason else ""
    if exc.rcvd.code == 1001:
        return f"the agent closed the connection (it is shutting down{reason})"
    return f"the agent closed the connection (code {exc.rcvd.code}{reason})"


# -------------------------------------------------------------- messages
@dataclass(frozen=True)
class _Message:
    event: Event
    frame: dict[str, Any]  # the JSON as received: {"type": ..., "payload": ...}


async def _next(ws: ClientConnection) -> _Message:
    """The next message from the agent that this client understands.

    Messages of a newer agent (unknown types) are skipped, so that adding a
    message type to the protocol does not break older clients.
    """
    while True:
        text = await ws.recv()
        try:
            event = decode_event(text)
            frame = json.loads(text)
        except (ProtocolError, ValueError):
            continue
        return _Message(event, frame)


Predicate = Callable[[Event], bool]


async def _reply(
    ws: ClientConnection, opts: _Options, command: Command, done: Predicate, awaited: str
) -> _Message:
    """Send ``command`` and wait (``--timeout``) for the message ``done`` accepts.

    ``awaited`` names that message for the timeout error.

    An ``error`` reply ends the wait with a :class:`RemoteError`; ``done``
    may raise one too (the job ended some other way).
    """
    await ws.send(encode_command(command))
    try:
        async with asyncio.timeout(opts.timeout):
            while True:
                msg = await _next(ws)
                ev = msg.event
                if isinstance(ev, ErrorReply) and ev.request_type in (command.TYPE, None):
                    raise RemoteError(f"the agent refused {command.TYPE}: {clean(ev.message)}")
                if done(ev):
                    return msg
    except TimeoutError:
        raise RemoteError(
            f"{command.TYPE}: no {awaited} from the agent within {opts.timeout:g} s"
        ) from None


def _emit(obj: Any) -> None:
    # exact JSON, with what could drive a terminal \u-escaped
    sys.stdout.write(json_text(obj) + "\n")
    sys.stdout.flush()


# -------------------------------------------------------------- commands
async def _status(ws: ClientConnection, opts: _Options) -> int:
    msg = await _reply(
        ws, opts, StatusRequest(), lambda e: isinstance(e, AgentStatus), "agent:status"
    )
    ev = msg.event
    assert isinstance(ev, AgentStatus)
    if opts.json:
        _emit(msg.frame["payload"])
    else:
        jobs = f"{ev.active_jobs} active job{'' if ev.active_jobs == 1 else 's'}"
        print(f"{clean(ev.status)}, {jobs}, up {human_duration(ev.uptime_secs)}", flush=True)
    return 0


async def _start(ws: ClientConnection, opts: _Options) -> int:
    # backup:started goes to every client: the first one after our command
    # is taken as ours (the protocol has no request ids)
    msg = await _reply(
        ws,
        opts,
        BackupStart(opts.paths or None),
        lambda e: isinstance(e, BackupStarted),
        "backup:started",
    )
    assert isinstance(msg.event, BackupStarted)
    job = msg.event.job_id
    if not opts.watch:
        if opts.json:
            _emit(msg.frame["payload"])
        else:
            print(clean(job), flush=True)
        return 0
    watcher = _Watcher(_printer(opts), only=job)
    watcher.handle(msg)
    await _follow(ws, watcher)
    end = watcher.ended[job]
    if isinstance(end, BackupFailed):
        raise RemoteError(f"backup {job} failed: {clean(end.error)}")
    return 0


# command, past participle, the event that confirms it
_CONTROL: dict[str, tuple[type[BackupPause | BackupResume | BackupCancel], str, str]] = {
    "pause": (BackupPause, "paused", "backup:paused"),
    "resume": (BackupResume, "resumed", "backup:resumed"),
    "cancel": (BackupCancel, "cancelled", 'backup:failed "cancelled"'),
}


async def _control(ws: ClientConnection, opts: _Options) -> int:
    kind, verb, confirmation = _CONTROL[opts.command]
    job = JobId(opts.job)

    def done(ev: Event) -> bool:
        if getattr(ev, "job_id", None) != job:
            return False
        if isinstance(ev, BackupPaused):
            return opts.command == "pause"
        if isinstance(ev, BackupResumed):
            return opts.command == "resume"
        if isinstance(ev, BackupFailed):
            if ev.error == CANCELLED:
                if opts.command == "cancel":
                    return True
                raise RemoteError(f"job {job} was cancelled before it was {verb}")
            raise RemoteError(f"job {job} failed before it was {verb}: {clean(ev.error)}")
        if isinstance(ev, BackupCompleted):
            raise RemoteError(f"job {job} completed before it was {verb}")
        return False

    msg = await _reply(ws, opts, kind(job), done, f"{confirmation} for job {job}")
    if opts.json:
        _emit(msg.frame["payload"])
    else:
        print(f"job {job} {verb}", flush=True)
    return 0


async def _watch(ws: ClientConnection, opts: _Options) -> int:
    if sys.stderr.isatty() and sys.stdout.isatty() and not opts.json:
        print(f"watching {opts.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    await _follow(ws, _Watcher(_printer(opts), once=opts.once))
    return 0


_COMMANDS: dict[str, Callable[[ClientConnection, _Options], Awaitable[int]]] = {
    "status": _status,
    "start": _start,
    "pause": _control,
    "resume": _control,
    "cancel": _control,
    "watch": _watch,
}


# ---------------------------------------------------------------- watching
@dataclass
class _Job:
    id: JobId
    state: str = "waiting"  # waiting (queued), running, paused
    progress: BackupProgress | None = None


class _Printer:
    """Where watched events go; see the three kinds below."""

    def event(self, msg: _Message, jobs: dict[JobId, _Job]) -> None:
        """Called for every message about a watched job, after ``jobs`` is updated."""
        raise NotImplementedError

    def due(self) -> float | None:
        """Seconds until :meth:`flush` should be called, or None."""
        return None

    def flush(self, jobs: dict[JobId, _Job]) -> None:
        """Show what is held back."""


class _Watcher:
    """The jobs seen on the connection and what became of them."""

    def __init__(self, printer: _Printer, *, only: JobId | None = None, once: bool = False):
        self.printer = printer
        self.only = only
        self.once = once
        self.active: dict[JobId, _Job] = {}
        self.ended: dict[JobId, BackupCompleted | BackupFailed] = {}

    @property
    def finished(self) -> bool:
        """True when the watch should end."""
        if self.only is not None:
            return self.only in self.ended
        return self.once and bool(self.ended) and not self.active

    def handle(self, msg: _Message) -> None:
        ev = msg.event
        job_id: JobId | None = getattr(ev, "job_id", None)
        if job_id is None or (self.only is not None and job_id != self.only):
            return
        if job_id in self.ended:
            return  # nothing follows the end of a job
        if isinstance(ev, BackupCompleted | BackupFailed):
            self.active.pop(job_id, None)
            self.ended[job_id] = ev
        else:
            job = self.active.setdefault(job_id, _Job(job_id))
            if isinstance(ev, BackupProgress):
                job.progress = ev
                if job.state == "waiting":
                    job.state = "running"
            elif isinstance(ev, BackupPaused):
                job.state = "paused"
            elif isinstance(ev, BackupResumed):
                job.state = "running"
        self.printer.event(msg, self.active)


async def _follow(ws: ClientConnection, watcher: _Watcher) -> None:
    """Feed the watcher until it is finished (or the connection ends)."""
    printer = watcher.printer
    while not watcher.finished:
        wait = printer.due()
        try:
            if wait is None:
                msg = await _next(ws)
            else:
                # recv() may be cancelled without losing a message
                async with asyncio.timeout(wait):
                    msg = await _next(ws)
        except TimeoutError:
            printer.flush(watcher.active)
            continue
        except ConnectionClosed:
            printer.flush(watcher.active)
            raise
        watcher.handle(msg)
    printer.flush(watcher.active)


def _printer(opts: _Options) -> _Printer:
    if opts.json:
        return _JsonPrinter()
    if sys.stdout.isatty():
        return _LivePrinter(sys.stdout)
    return _LinePrinter(sys.stdout)


class _JsonPrinter(_Printer):
    """One message a line, as the agent sent it."""

    def event(self, msg: _Message, jobs: dict[JobId, _Job]) -> None:
        _emit(msg.frame)


def _describe(ev: Event) -> str | None:
    """A one-line text for an event (None: not worth a line)."""
    if isinstance(ev, BackupStarted):
        return f"{ev.job_id} started"
    if isinstance(ev, BackupProgress):
        return f"{ev.job_id} {_progress_text(ev)}"
    if isinstance(ev, BackupPaused):
        return f"{ev.job_id} paused"
    if isinstance(ev, BackupResumed):
        return f"{ev.job_id} resumed"
    if isinstance(ev, BackupCompleted):
        text = f"{ev.job_id} completed: {human_bytes(ev.total_bytes)}"
        if ev.skipped_total:
            named = "; ".join(f"{k.path}: {k.reason}" for k in ev.skipped)
            more = ev.skipped_total - len(ev.skipped)
            text += f"; {ev.skipped_total} path(s) could not be read and are not in it: {named}"
            if more > 0:
                text += f"; and {more} more"
        return text
    if isinstance(ev, BackupFailed):
        return f"{ev.job_id} failed: {ev.error}"
    return None


class _LinePrinter(_Printer):
    """One line per event (output that is not a terminal: logs, pipes)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def event(self, msg: _Message, jobs: dict[JobId, _Job]) -> None:
        text = _describe(msg.event)
        if text is not None:
            self.stream.write(clean(text) + "\n")
            self.stream.flush()


class _LivePrinter(_Printer):
    """One line per active job, redrawn in place; ended jobs scroll up above them."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.drawn = 0  # lines of the live block currently on screen
        self.notes: list[str] = []  # lines to print above the live block
        self.last = 0.0
        self.dirty = False

    def event(self, msg: _Message, jobs: dict[JobId, _Job]) -> None:
        ev = msg.event
        if isinstance(ev, BackupCompleted | BackupFailed):
            text = _describe(ev)
            if text is not None:
                self.notes.append(clean(text))
        self.dirty = True
        # progress is throttled; a change of state shows at once
        if not isinstance(ev, BackupProgress) or time.monotonic() - self.last >= _REDRAW_INTERVAL:
            self.flush(jobs)

    def due(self) -> float | None:
        if not self.dirty:
            return None
        return max(0.0, self.last + _REDRAW_INTERVAL - time.monotonic())

    def flush(self, jobs: dict[JobId, _Job]) -> None:
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


def _progress_text(p: BackupProgress) -> str:
    eta = human_duration(p.eta_seconds) if p.eta_seconds > 0 else "?"
    text = (
        f"{p.percent:5.1f}%  {human_bytes(p.transferred_bytes)} / {human_bytes(p.total_bytes)}  "
        f"{human_bytes(p.bytes_per_second)}/s  ETA {eta}  "
        f"{p.files_processed}/{p.total_files} files"
    )
    if p.current_file:
        text += f"  {p.current_file}"
    return text


def _live_line(job: _Job, width: int) -> str:
    head = clean(job.id[:8])
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
