"""``desktop-agent remote``: talk to a running agent over ``/ws``.

Ask for the status, start a backup, pause, resume or cancel a job, and
watch progress live. It needs no local configuration: the URL and the
token are all it knows (the token from ``--token`` or, better, since
command lines are visible to other users, the environment variable
``DESKTOP_AGENT_TOKEN``).

Here: the parser, the options and the commands. The connection and the
request/answer exchange are in :mod:`.remote_client`, following jobs and
showing them in :mod:`.remote_watch`.

Exit status as for every command: 0 success, 1 failure (one line on stderr),
2 bad usage. Every failure the client expects is a
:class:`~.remote_client.RemoteError`.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection

from desktop_agent.protocol import (
    CANCELLED,
    AgentStatus,
    BackupCancel,
    BackupCompleted,
    BackupFailed,
    BackupPause,
    BackupPaused,
    BackupResume,
    BackupResumed,
    BackupStart,
    BackupStarted,
    Event,
    JobId,
    StatusRequest,
)
from desktop_agent.termtext import clean, human_duration

from .common import EXIT_USAGE, CliError, emit
from .remote_args import DEFAULT_TIMEOUT, TOKEN_ENV, add_remote
from .remote_client import Options, RemoteError, RemoteUsageError, connected, request
from .remote_watch import Watcher, follow, printer_for

__all__ = ["TOKEN_ENV", "DEFAULT_TIMEOUT", "add_remote", "cmd_remote", "run"]


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


def _options(args: argparse.Namespace) -> Options:
    return Options(
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
def cmd_remote(args: argparse.Namespace) -> int:
    """``remote URL COMMAND``: needs no local configuration, only the URL and the token."""
    try:
        return run(args)
    except RemoteUsageError as exc:
        print(f"desktop-agent: error: {clean(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except RemoteError as exc:
        raise CliError(str(exc)) from None


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
    command = _COMMANDS[opts.command]
    try:
        return asyncio.run(connected(opts, lambda ws: command(ws, opts)))
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


# -------------------------------------------------------------- commands
async def _status(ws: ClientConnection, opts: Options) -> int:
    msg = await request(
        ws, opts, StatusRequest(), lambda e: isinstance(e, AgentStatus), "agent:status"
    )
    ev = msg.event
    assert isinstance(ev, AgentStatus)
    if opts.json:
        emit(msg.frame["payload"])
    else:
        jobs = f"{ev.active_jobs} active job{'' if ev.active_jobs == 1 else 's'}"
        print(f"{clean(ev.status)}, {jobs}, up {human_duration(ev.uptime_secs)}", flush=True)
        for line in schedule_lines(msg.frame["payload"]):
            print(clean(line), flush=True)
    return 0


def schedule_lines(payload: dict[str, Any]) -> list[str]:
    """The schedule's optional ``agent:status`` fields as lines for a person
    (none when the agent sent none)."""
    lines: list[str] = []
    schedule = payload.get("schedule")
    if isinstance(schedule, dict):
        lines.append(f"schedule: {schedule.get('state')}: {schedule.get('reason')}")
    facts = [
        f"{label} {payload[key]}"
        for key, label in (
            ("last_success", "last backup"),
            ("next_backup", "next"),
            ("paused_until", "paused until"),
        )
        if isinstance(payload.get(key), str)
    ]
    if payload.get("paused_indefinitely") is True:
        facts.append("paused until resumed")
    conditions = payload.get("conditions")
    if isinstance(conditions, dict) and conditions:
        facts.append(", ".join(f"{k}={v}" for k, v in sorted(conditions.items())))
    if facts:
        lines.append("; ".join(facts))
    return lines


async def _start(ws: ClientConnection, opts: Options) -> int:
    # backup:started goes to every client: the first one after our command
    # is taken as ours (the protocol has no request ids)
    msg = await request(
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
            emit(msg.frame["payload"])
        else:
            print(clean(job), flush=True)
        return 0
    watcher = Watcher(printer_for(opts), only=job)
    watcher.handle(msg)
    await follow(ws, watcher)
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


async def _control(ws: ClientConnection, opts: Options) -> int:
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

    msg = await request(ws, opts, kind(job), done, f"{confirmation} for job {job}")
    if opts.json:
        emit(msg.frame["payload"])
    else:
        print(f"job {job} {verb}", flush=True)
    return 0


async def _watch(ws: ClientConnection, opts: Options) -> int:
    if sys.stderr.isatty() and sys.stdout.isatty() and not opts.json:
        print(f"watching {opts.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    await follow(ws, Watcher(printer_for(opts), once=opts.once))
    return 0


_COMMANDS: dict[str, Callable[[ClientConnection, Options], Awaitable[int]]] = {
    "status": _status,
    "start": _start,
    "pause": _control,
    "resume": _control,
    "cancel": _control,
    "watch": _watch,
}
