"""The remote client's side of the ``/ws`` protocol: connecting, asking, answering.

:func:`connected` opens the WebSocket connection (the token as
``Authorization: Bearer``) and turns every way that can fail into one
:class:`RemoteError` a user can act on; :func:`receive` gives the next
message this client understands; :func:`request` sends a command and waits
for the event that answers it. Parsing is :mod:`desktop_agent.protocol`'s.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

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
    Command,
    ErrorReply,
    Event,
    ProtocolError,
    decode_event,
    encode_command,
)
from desktop_agent.termtext import clean

__all__ = [
    "RemoteError",
    "RemoteUsageError",
    "Options",
    "Message",
    "connected",
    "receive",
    "request",
]


class RemoteError(Exception):
    """A failure to report in one line (exit status 1)."""


class RemoteUsageError(RemoteError):
    """Bad arguments: an unusable URL, no token (exit status 2)."""


@dataclass(frozen=True)
class Options:
    """What ``desktop-agent remote`` was asked to do, and where."""

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


# ------------------------------------------------------------- connecting
def _ssl_context(opts: Options) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if opts.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def connected(opts: Options, session: Callable[[ClientConnection], Awaitable[int]]) -> int:
    """Connect to the agent and run ``session`` on the connection; returns its exit status.

    Raises :class:`RemoteError` (:class:`RemoteUsageError` for a bad URL)
    when the connection cannot be made or is lost.
    """
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
            return await session(ws)
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
class Message:
    """An event from the agent, and its JSON as received."""

    event: Event
    frame: dict[str, Any]  # {"type": ..., "payload": ...}


async def receive(ws: ClientConnection) -> Message:
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
        return Message(event, frame)


Predicate = Callable[[Event], bool]


async def request(
    ws: ClientConnection, opts: Options, command: Command, done: Predicate, awaited: str
) -> Message:
    """Send ``command`` and wait (``--timeout``) for the message ``done`` accepts.

    ``awaited`` names that message for the timeout error.

    An ``error`` reply ends the wait with a :class:`RemoteError`; ``done``
    may raise one too (the job ended some other way).
    """
    await ws.send(encode_command(command))
    try:
        async with asyncio.timeout(opts.timeout):
            while True:
                msg = await receive(ws)
                ev = msg.event
                if isinstance(ev, ErrorReply) and ev.request_type in (command.TYPE, None):
                    raise RemoteError(f"the agent refused {command.TYPE}: {clean(ev.message)}")
                if done(ev):
                    return msg
    except TimeoutError:
        raise RemoteError(
            f"{command.TYPE}: no {awaited} from the agent within {opts.timeout:g} s"
        ) from None
