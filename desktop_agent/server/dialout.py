"""Dial-out: the agent connects to its backup server instead of waiting for it.

An agent behind NAT or a firewall cannot be reached on ``/ws``; so it also
opens one WebSocket connection of its own to a backup server and is, over
it, the very endpoint ``/ws`` is (:meth:`AgentServer.serve`): every bus
event goes out, every command comes in and is answered the same way, with
the same bounded queue and merged progress (see docs/protocol.md).

* The agent authenticates with ``Authorization: Bearer <token>``; the token
  never appears in a log line or an error text.
* ``wss://`` is verified against the system trust store (``truststore`` if
  installed, else Python's default CA bundle) or against ``ca_file`` alone.
  ``ws://`` is allowed only to a loopback host unless ``allow_insecure``.
* After the upgrade the agent sends, in order: ``agent:hello`` {agent_id,
  hostname, version, os}, ``agent:status``, and the terminal events
  (``*:completed`` / ``*:failed``) of at most :data:`RESEND_LIMIT` jobs that
  ended while it was not connected; then the ordinary fan-out begins.
* Lost or refused connections are retried with exponential backoff and full
  jitter (``backoff_base`` doubling up to ``backoff_cap``); the backoff is
  reset after a connection that lasted :data:`STABLE_AFTER` seconds. A 401
  or 403 (state ``refused``) is retried at the cap. Each distinct error is
  logged once (until a connection succeeds again). :meth:`DialOut.reconnect_now`
  skips the wait (call it on wake-up or a network change).
* A job never waits for the server: while disconnected nothing is queued for
  it; the resend covers the outcomes.
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import json
import logging
import platform
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from desktop_agent import __version__
from desktop_agent.config import ConfigError
from desktop_agent.jobs import BusEvent
from desktop_agent.protocol import (
    EndEvent,
    Event,
)
from desktop_agent.server.ws import MAX_MESSAGE, AgentServer

__all__ = [
    "HELLO_TYPE",
    "RESEND_LIMIT",
    "DialOut",
    "DialOutSettings",
    "DialOutState",
    "default_hello",
    "is_loopback_host",
]

log = logging.getLogger(__name__)

HELLO_TYPE = "agent:hello"
RESEND_LIMIT = 20  # terminal events resent after a reconnection, newest kept
# Events sent in the last seconds before a connection dropped may not have
# reached the server (they were still in a buffer): they are resent as well.
RESEND_OVERLAP = 5.0
STABLE_AFTER = 60.0  # a connection that lasted this long resets the backoff
CLOSE_TIMEOUT = 2.0  # waiting for the server to acknowledge our close

DialOutState = Literal["off", "connecting", "connected", "refused", "unreachable"]


@dataclass(frozen=True)
class DialOutSettings:
    """Where to dial and as whom. ``url`` is ``wss://host[:port]/path`` (or ``ws://``
    to a loopback host, or anywhere with ``allow_insecure``)."""

    url: str
    token: str
    agent_id: str
    ca_file: str | None = None
    allow_insecure: bool = False


def default_hello() -> dict[str, str]:
    """``hostname``, ``version`` and ``os`` of this machine, for ``agent:hello``."""
    return {
        "hostname": socket.gethostname(),
        "version": __version__,
        "os": f"{platform.system()} {platform.release()}".strip(),
    }


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1 (names are not resolved)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Refused(Exception):
    """A setting makes connecting pointless (or unsafe): no attempt is made."""


class DialOut:
    """One outbound connection to a backup server, kept up while started.

    ``hello`` gives ``hostname``, ``version`` and ``os`` (see
    :func:`default_hello`); ``agent_id`` comes from the settings.
    ``on_state`` is called with the new :attr:`state` on every change.
    """

    def __init__(
        self,
        server: AgentServer,
        settings: DialOutSettings,
        *,
        hello: dict[str, str],
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        open_timeout: float = 10.0,
        resend_limit: int = RESEND_LIMIT,
        stable_after: float = STABLE_AFTER,
        load_token: Callable[[], str] | None = None,
    ) -> None:
        self.server = server
        # read on a worker thread when dialling starts (a keyring may be slow
        # or prompt): it replaces settings.token
        self._load_token = load_token
        self.settings = settings
        self.hello = {**hello, "agent_id": settings.agent_id}
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.open_timeout = open_timeout
        self.stable_after = stable_after
        self.on_state: Callable[[str], None] | None = None
        self.last_error: str | None = None
        self._state: DialOutState = "off"
        self._failures = 0
        self._logged: set[str] = set()  # errors logged since the last connection
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._connection: ClientConnection | None = None
        self._unsubscribe: Callable[[], None] | None = None
        # terminal events (monotonic time, event), the newest resend_limit kept
        self._ended: deque[tuple[float, Event]] = deque(maxlen=max(resend_limit, 0))
        self._dropped_at: float | None = None  # None: never connected since start()
        self._stopping = False

    # ------------------------------------------------------------ public
    @property
    def state(self) -> DialOutState:
        """``off``, ``connecting``, ``connected``, ``refused`` (401/403, or a
        setting that forbids connecting) or ``unreachable``."""
        return self._state

    @property
    def target(self) -> str:
        """The server as logs name it: scheme, host and port (never a secret)."""
        try:
            parts = urlsplit(self.settings.url)
            host = parts.hostname or "?"
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            return "?"
        host = f"[{host}]" if ":" in host else host
        return f"{parts.scheme}://{host}{port}"

    def start(self) -> None:
        """Start dialing (a task on the running loop)."""
        if self._task is not None:
            return
        self._stopping = False
        self._unsubscribe = self.server.bus.subscribe(self._on_event)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Close the connection (if any) and stop dialing."""
        self._stopping = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        connection = self._connection
        if connection is not None:
            try:
                await asyncio.wait_for(connection.close(1001, "agent stopping"), CLOSE_TIMEOUT)
            except (TimeoutError, OSError):
                pass
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._set_state("off")

    async def use_server(self, server: AgentServer) -> None:
        """Serve the link from another :class:`AgentServer` (after the agent rebuilt
        its /ws server): the current connection is closed and made again at once."""
        self.server = server
        connection = self._connection
        if connection is not None:
            try:
                await asyncio.wait_for(connection.close(1012, "agent restarting"), CLOSE_TIMEOUT)
            except (TimeoutError, OSError):
                pass
        self.reconnect_now()

    def reconnect_now(self) -> None:
        """Skip the current backoff wait (after wake-up or a network change)."""
        self._failures = 0
        self._wake.set()

    # ------------------------------------------------------------ loop
    def _on_event(self, event: BusEvent) -> None:
        if isinstance(event, EndEvent):
            self._ended.append((time.monotonic(), event))

    async def _run(self) -> None:
        if self._load_token is not None:
            try:
                token = await asyncio.to_thread(self._load_token)
            except ConfigError as exc:
                self._fail("refused", f"cannot read the token for the backup server: {exc}")
                return
            self.settings = replace(self.settings, token=token)
        while not self._stopping:
            try:
                context = self._check()
            except _Refused as exc:
                self._fail("refused", str(exc))
                return  # nothing will change until the settings do
            if self._state not in ("refused", "unreachable"):
                self._set_state("connecting")  # retries keep showing why the last one failed
            self._wake.clear()  # a reconnect_now() from here on skips the next wait
            delay = await self._attempt(context)
            if self._stopping:
                return
            try:
                # not wait_for: on 3.11 it can swallow stop()'s cancel that
                # comes with a reconnect_now() wake-up, and stop() would hang
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _check(self) -> ssl.SSLContext | None:
        """The TLS context for the URL, or _Refused before any attempt."""
        try:
            parts = urlsplit(self.settings.url)
            host = parts.hostname
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise _Refused(f"dial-out URL is not valid: {self.target}") from None
        if parts.scheme not in ("ws", "wss") or not host:
            raise _Refused(f"dial-out URL must be wss://host/path, not {self.target}")
        if not self.settings.token:
            raise _Refused("dial-out has no token: set one for the backup server")
        if parts.scheme == "ws":
            if not (is_loopback_host(host) or self.settings.allow_insecure):
                raise _Refused(
                    f"refusing to dial {self.target} without TLS: use wss:// "
                    "(ws:// is only for loopback unless allow_insecure is set)"
                )
            return None
        try:
            return _client_tls(self.settings.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise _Refused(f"cannot read ca_file {self.settings.ca_file}: {_reason(exc)}") from None

    async def _attempt(self, context: ssl.SSLContext | None) -> float:
        """One connection, served until it closes; returns the wait before the next."""
        headers = {"Authorization": f"Bearer {self.settings.token}"}
        try:
            connection = await connect(
                self.settings.url,
                additional_headers=headers,
                ssl=context,
                open_timeout=self.open_timeout,
                close_timeout=CLOSE_TIMEOUT,
                compression=None,
                max_size=MAX_MESSAGE,
                ping_interval=20,
                ping_timeout=20,
            )
        except InvalidStatus as exc:
            code = exc.response.status_code
            if code in (401, 403):
                word = "Unauthorized" if code == 401 else "Forbidden"
                self._fail(
                    "refused",
                    f"the backup server at {self.target} refused the token ({code} {word})",
                )
                return self._delay(at_cap=True)
            self._fail("unreachable", f"the backup server at {self.target} answered {code}")
            return self._delay()
        except ssl.SSLCertVerificationError as exc:
            self._fail(
                "unreachable",
                f"the certificate of {self.target} is not trusted ({_reason(exc)}): "
                "install its CA in the system trust store or set ca_file",
            )
            return self._delay()
        except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, InvalidHandshake...
            self._fail(
                "unreachable", f"cannot reach the backup server at {self.target}: {_reason(exc)}"
            )
            return self._delay()
        return await self._serve(connection)

    async def _serve(self, connection: ClientConnection) -> float:
        began = time.monotonic()
        self._connection = connection
        served = False
        why = ""
        try:
            hello = json.dumps({"type": HELLO_TYPE, "payload": self.hello})
            await connection.send(hello)
            # status and resends are queued in the step the connection joins the fan-out
            since = None if self._dropped_at is None else self._dropped_at - RESEND_OVERLAP
            resend = [event for t, event in self._ended if since is None or t > since]
            self._logged.clear()
            self.last_error = None
            self._set_state("connected")
            log.info("connected to the backup server at %s", self.target)
            served = True
            await self.server.serve(
                connection,
                f"backup server {self.target}",
                first=[self.server.status(), *resend],
            )
        except Exception as exc:  # noqa: BLE001 - a broken link is retried, not raised
            why = f": {_reason(exc)}"
        finally:
            if served:
                self._dropped_at = time.monotonic()
            self._connection = None
            await connection.close()
        if self._stopping:
            return 0.0
        if time.monotonic() - began >= self.stable_after:
            self._failures = 0
        if not why and connection.close_code is not None:
            why = f" (code {connection.close_code})"
        self._fail("unreachable", f"lost the connection to the backup server at {self.target}{why}")
        return self._delay()

    # ------------------------------------------------------------ helpers
    def _delay(self, *, at_cap: bool = False) -> float:
        """Full jitter: uniform(0, min(cap, base * 2**failures)); at the cap for refusals."""
        if at_cap:
            return random.uniform(self.backoff_cap / 2, self.backoff_cap)
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** min(self._failures, 62))
        self._failures += 1
        return random.uniform(0, ceiling)

    def _fail(self, state: DialOutState, message: str) -> None:
        message = self._clean(message)
        self.last_error = message
        if message not in self._logged:
            self._logged.add(message)
            log.warning("%s", message)
        self._set_state(state)

    def _clean(self, text: str) -> str:
        token = self.settings.token
        return text.replace(token, "***") if token else text

    def _set_state(self, state: DialOutState) -> None:
        if state == self._state:
            return
        self._state = state
        if self.on_state is not None:
            try:
                self.on_state(state)
            except Exception:  # noqa: BLE001 - a broken listener must not stop dialing
                log.exception("dial-out state listener failed")


def _client_tls(ca_file: str | None) -> ssl.SSLContext:
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    try:
        truststore = importlib.import_module("truststore")
    except ImportError:
        return ssl.create_default_context()
    context: ssl.SSLContext = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or "certificate verify failed"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
