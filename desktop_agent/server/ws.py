"""The ``/ws`` endpoint: authentication, fan-out and command routing.

This module only moves messages: parsing and validation live in
:mod:`desktop_agent.protocol`, decisions in :mod:`desktop_agent.jobs`.

* Upgrade requests: any path but ``/ws`` gets 404; a browser ``Origin`` not
  in ``allowed_origins`` gets 403; a missing or wrong token gets 401, all
  before the upgrade. The token comes as ``Authorization: Bearer <token>``
  or, for browsers (which cannot set that header), as the WebSocket
  subprotocol ``desktop-agent.token.<token>`` offered next to
  ``desktop-agent`` (the server selects ``desktop-agent``; the token is
  never echoed). Tokens are compared in constant time and never logged.
  A duplicated ``Authorization`` or ``Origin`` header gets 400.
* Connections: at most ``[agent] max_connections`` at once, counted from
  the accept (the handshake included), and fewer if the open-file limit
  leaves no room for them beside a backup (:mod:`.limits`). One more gets
  503; while 16 such answers are under way, further ones are closed
  unanswered. A handshake must complete within 10 s.
* Client mistakes (malformed requests, duplicated headers, clients that
  vanish mid-handshake) never put a traceback into the log; refusals are
  logged one line at a time, at most one a minute per kind.
* Frames over 64 KiB are refused (the connection is closed with 1009), no
  compression, pings every 20 s.
* Commands: ``backup:*`` act on backup jobs, ``restore:*`` on restore jobs,
  ``upkeep:*`` on upkeep jobs (a job id of another kind is refused; upkeep
  has no start command: the agent decides); ``restore:start`` is honoured
  only with ``[agent] allow_remote_restore`` (the controller decides) and is
  answered, like every command, by events to everyone or an ``error`` to
  its sender.
* Fan-out: every client has a bounded queue. Progress of a job waiting in a
  queue (``backup:progress``, ``restore:progress``, ``upkeep:progress``) is
  replaced by newer progress (only the newest matters); a client
  whose queue overflows, or that cannot take a frame for 10 s (it stopped
  reading: its TCP window is full), is disconnected, so it never slows the
  others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import hmac
import json
import logging
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit

from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from desktop_agent.config import AgentConfig
from desktop_agent.config.network import normalize_origin
from desktop_agent.jobs import BusEvent, EventBus, JobController, JobError, JobKind
from desktop_agent.protocol import (
    AgentStatus,
    BackupCancel,
    BackupPause,
    BackupResume,
    BackupStart,
    Command,
    ErrorReply,
    Event,
    JobId,
    ProgressEvent,
    ProtocolError,
    RestoreCancel,
    RestorePause,
    RestoreResume,
    RestoreStart,
    SchedulePause,
    ScheduleResume,
    StatusRequest,
    UpkeepCancel,
    UpkeepPause,
    UpkeepResume,
    decode_command,
    encode_event,
)
from desktop_agent.server.limits import (
    ACCEPT_BATCH,
    REFUSE_SLOTS,
    Throttle,
    filter_accept_errors,
    plan_fd_budget,
)

__all__ = ["AgentServer", "SUBPROTOCOL", "TOKEN_PREFIX", "MAX_MESSAGE", "QUEUE_LIMIT"]

log = logging.getLogger(__name__)
# websockets logs request headers at debug level: keep it quieter than that
logging.getLogger("websockets").setLevel(logging.WARNING)

SUBPROTOCOL = "desktop-agent"
TOKEN_PREFIX = "desktop-agent.token."
MAX_MESSAGE = 64 * 1024
QUEUE_LIMIT = 1024  # messages waiting for one client before it is dropped
SEND_TIMEOUT = 10.0  # a frame that cannot be written for this long: the client is gone
STOP_TIMEOUT = 3.0  # waiting for clients to acknowledge the close at shutdown
HANDSHAKE_TIMEOUT = 10.0  # a client that has not completed its upgrade by then is cut off


def _normalize_origin(origin: str) -> str | None:
    # the same normal form the config gives allowed_origins; None if not an origin
    try:
        return normalize_origin(origin.strip())
    except ValueError:
        return None


class ScheduleControl(Protocol):
    """What the server needs of the scheduler (:class:`desktop_agent.jobs.scheduler.Scheduler`)."""

    def pause(self, minutes: float | None) -> None: ...

    def resume(self) -> None: ...

    def status_fields(self) -> dict[str, object]: ...


class _BadRequest(Exception):
    """The upgrade request is malformed in a way the client must fix."""


def _single(headers: Headers, name: str) -> str | None:
    # Headers.get raises MultipleValuesError on a repeated header (a 500 and
    # a traceback); two Authorization or Origin headers are the client's
    # mistake, or an attempt to slip one past a proxy: 400.
    values = headers.get_all(name)
    if len(values) > 1:
        raise _BadRequest(f"duplicated {name} header")
    return values[0] if values else None


class _Admission(enum.Enum):
    ADMIT = "admit"  # within the limit
    REFUSE = "refuse"  # over it: answered 503 once its request is read
    DROP = "drop"  # over it while enough 503s are under way: closed unanswered


class _Gate:
    """Counts the server's TCP connections from accept to close; decides who gets in."""

    def __init__(
        self, limit: Callable[[], int], on_drop: Callable[[ServerConnection], None]
    ) -> None:
        self.limit = limit
        self.on_drop = on_drop
        self.admitted = 0
        self.refusing = 0

    def enter(self) -> _Admission:
        if self.admitted < self.limit():
            self.admitted += 1
            return _Admission.ADMIT
        if self.refusing < REFUSE_SLOTS:
            self.refusing += 1
            return _Admission.REFUSE
        return _Admission.DROP

    def leave(self, admission: _Admission) -> None:
        if admission is _Admission.ADMIT:
            self.admitted -= 1
        elif admission is _Admission.REFUSE:
            self.refusing -= 1


class _GatedConnection(ServerConnection):
    """A connection that holds a place at the gate from its accept until it is closed.

    websockets creates it as soon as the TCP connection is accepted, before
    a TLS handshake; ``connection_made`` follows once that is done. A TLS
    handshake that fails or times out never reaches this object, so the
    place is released ``release_after`` seconds after the accept if
    ``connection_made`` has not come by then (the TLS handshake timeout is
    the handshake timeout, which is shorter). A TLS handshake that fails
    early thus holds its place a little too long: safer than not counting
    handshakes, whose descriptors are as real as any.
    """

    gate: ClassVar[_Gate]
    release_after: ClassVar[float]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.admission = self.gate.enter()
        self._held = True
        self._orphan_timer = self.loop.call_later(self.release_after, self._release)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._orphan_timer.cancel()
        if not self._held:  # a TLS handshake that outlasted the timer: count it again
            self.admission = self.gate.enter()
            self._held = True
        super().connection_made(transport)
        if self.admission is _Admission.DROP:
            self.gate.on_drop(self)
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self._orphan_timer.cancel()
            self._release()

    def _release(self) -> None:
        if self._held:
            self._held = False
            self.gate.leave(self.admission)


def _peer(connection: ServerConnection) -> str:
    try:
        address = connection.remote_address
    except AttributeError:  # no transport yet
        return "?"
    return str(address[0]) if address else "?"


class _Slot:
    """A place in a client's queue holding the newest progress of one job."""

    __slots__ = ("event",)

    def __init__(self, event: ProgressEvent) -> None:
        self.event = event


class _Client:
    def __init__(self, ws: Connection, limit: int) -> None:
        self.ws = ws
        self.limit = limit
        self.queue: deque[Event | _Slot] = deque()
        self.pending: dict[JobId, _Slot] = {}
        self.wake = asyncio.Event()
        self.dropped = False

    def offer(self, event: Event) -> bool:
        """Queue an event; False when the client is too far behind."""
        if isinstance(event, ProgressEvent):
            slot = self.pending.get(event.job_id)
            if slot is not None:
                slot.event = event  # only the newest progress matters
                return True
            slot = _Slot(event)
            self.pending[event.job_id] = slot
            self.queue.append(slot)
        else:
            job_id = getattr(event, "job_id", None)
            if job_id is not None:
                # later progress must come after this event, not before it
                self.pending.pop(job_id, None)
            self.queue.append(event)
        self.wake.set()
        return len(self.queue) <= self.limit

    def next(self) -> Event | None:
        if not self.queue:
            return None
        item = self.queue.popleft()
        if isinstance(item, _Slot):
            if self.pending.get(item.event.job_id) is item:
                del self.pending[item.event.job_id]
            return item.event
        return item


class AgentServer:
    """Serves ``/ws`` for one agent (controller + bus)."""

    def __init__(
        self,
        config: AgentConfig,
        controller: JobController,
        bus: EventBus,
        *,
        host: str | None = None,
        port: int | None = None,
        queue_limit: int = QUEUE_LIMIT,
        send_timeout: float = SEND_TIMEOUT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        scheduler: ScheduleControl | None = None,
    ) -> None:
        self.config = config
        self.controller = controller
        self.scheduler = scheduler
        self.bus = bus
        self.host = host if host is not None else config.host
        self.port = port if port is not None else config.port
        self.queue_limit = queue_limit
        self.send_timeout = send_timeout
        self.handshake_timeout = handshake_timeout
        self.ssl_context = ssl_context if ssl_context is not None else _tls(config)
        self.clients: set[_Client] = set()
        self._server: Server | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._commands: set[asyncio.Task[None]] = set()  # commands that take a while
        self._fd_cap: int | None = None  # connections the open-file limit leaves room for
        self._gate = _Gate(lambda: self.connection_limit, self._on_drop)
        self._refusals: dict[str, Throttle] = {}

    @property
    def connection_limit(self) -> int:
        """How many connections are let in at once: ``max_connections``, or fewer if
        the open-file limit leaves no room for them (known once started)."""
        limit = self.config.max_connections
        return limit if self._fd_cap is None else min(limit, self._fd_cap)

    @property
    def connection_count(self) -> int:
        """TCP connections held now: open, in their handshake, or being refused."""
        return self._gate.admitted + self._gate.refusing

    @property
    def url(self) -> str:
        """Where clients connect (with the port actually bound)."""
        scheme = "wss" if self.ssl_context else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/ws"

    async def start(self) -> None:
        """Bind and start serving."""
        budget = plan_fd_budget(self.config.max_connections)
        self._fd_cap = budget.cap
        if budget.raised_from is not None:
            log.info(
                "raised the open-file limit from %d to %d", budget.raised_from, budget.soft_limit
            )
        if self.connection_limit < self.config.max_connections:
            log.warning(
                "/ws lets in at most %d connections, not max_connections = %d: the open-file "
                "limit (%s, see ulimit -n) must leave room for backups",
                self.connection_limit,
                self.config.max_connections,
                budget.soft_limit,
            )
        filter_accept_errors(asyncio.get_running_loop())
        server = self

        class Connection(_GatedConnection):
            gate = server._gate
            release_after = server.handshake_timeout + 1.0

        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._check_request,
            select_subprotocol=_select_subprotocol,
            compression=None,
            max_size=MAX_MESSAGE,
            ping_interval=20,
            ping_timeout=20,
            open_timeout=self.handshake_timeout,
            ssl=self.ssl_context,
            server_header=None,
            create_connection=Connection,
            backlog=ACCEPT_BATCH,
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        self._unsubscribe = self.bus.subscribe(self._on_event)
        if self.host not in ("127.0.0.1", "::1", "localhost") and self.ssl_context is None:
            log.warning(
                "/ws listens on %s without TLS: put a TLS proxy in front or set tls_cert/tls_key",
                self.host,
            )
        log.info("listening on %s", self.url)

    def disconnect_all(self, reason: str) -> None:
        """Close every connection (e.g. their token is no longer valid)."""
        for client in list(self.clients):
            client.dropped = True
            self.clients.discard(client)
            task = asyncio.get_event_loop().create_task(client.ws.close(1008, reason))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def drain(self, timeout: float) -> None:
        """Wait until every client's queue is sent (or ``timeout`` passes)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while any(c.queue for c in self.clients):
            if asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        for task in list(self._commands):
            task.cancel()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), STOP_TIMEOUT)
            except TimeoutError:  # clients that do not answer the close: cut them off
                for client in list(self.clients):
                    self._drop(client, "no answer to the close")
            self._server = None
        for throttle in self._refusals.values():
            throttle.close()

    # ------------------------------------------------------------ upgrade
    def _refused(self, kind: str, message: str) -> None:
        # one line per refusal, at most one a minute per kind: a client that
        # keeps trying must not rotate the log history away
        throttle = self._refusals.get(kind)
        if throttle is None:
            throttle = self._refusals[kind] = Throttle(log, logging.WARNING)
        throttle(message)

    def _on_drop(self, connection: ServerConnection) -> None:
        self._refused(
            "busy",
            f"refused a connection from {_peer(connection)}: too many connections "
            f"(limit {self.connection_limit}; closed without an answer)",
        )

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        peer = _peer(connection)
        if getattr(connection, "admission", _Admission.ADMIT) is not _Admission.ADMIT:
            self._refused(
                "busy",
                f"refused a connection from {peer}: too many connections "
                f"(limit {self.connection_limit})",
            )
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable: too many connections\n"
            )
        try:
            return self._check_upgrade(connection, request, peer)
        except _BadRequest as exc:
            self._refused("bad", f"refused a connection from {peer}: {exc}")
            return connection.respond(HTTPStatus.BAD_REQUEST, f"Bad Request: {exc}\n")

    def _check_upgrade(
        self, connection: ServerConnection, request: Request, peer: str
    ) -> Response | None:
        try:
            path = urlsplit(request.path).path
        except ValueError:  # e.g. "//[x": an unclosed IPv6 bracket
            raise _BadRequest("malformed request target") from None
        if path != "/ws":
            return connection.respond(HTTPStatus.NOT_FOUND, "Not found: the endpoint is /ws\n")
        origin = _single(request.headers, "Origin")
        if origin is not None and _normalize_origin(origin) not in self.config.allowed_origins:
            self._refused("origin", f"refused a browser connection from {peer}: origin not allowed")
            return connection.respond(HTTPStatus.FORBIDDEN, "Forbidden: origin not allowed\n")
        if not self._authorized(request.headers):
            self._refused("token", f"refused a connection from {peer}: missing or wrong token")
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "Unauthorized: token required\n")
            response.headers["WWW-Authenticate"] = 'Bearer realm="desktop-agent"'
            return response
        return None

    def _authorized(self, headers: Headers) -> bool:
        expected = self.config.token.encode()
        if not expected:
            return False
        offered: list[str] = []
        auth = _single(headers, "Authorization") or ""
        if auth[:7].lower() == "bearer ":
            offered.append(auth[7:].strip())
        for value in headers.get_all("Sec-WebSocket-Protocol"):
            for proto in value.split(","):
                proto = proto.strip()
                if proto.startswith(TOKEN_PREFIX):
                    offered.append(proto[len(TOKEN_PREFIX) :])
        return any(hmac.compare_digest(t.encode(), expected) for t in offered)

    # ------------------------------------------------------------ clients
    async def _handle(self, ws: ServerConnection) -> None:
        await self.serve(ws, ws.remote_address[0] if ws.remote_address else "?")

    async def serve(self, ws: Connection, peer: str, *, first: Sequence[Event] = ()) -> None:
        """Be the ``/ws`` endpoint over any open WebSocket connection until it closes.

        The connection may be one a ``/ws`` client opened or one the agent
        opened itself (:mod:`.dialout`): either way it gets every bus event
        and its commands are handled and answered alike. ``first`` is sent
        to this client before anything else (it is queued in the same step
        as the client joins the fan-out, so no event falls between them).
        """
        client = _Client(ws, self.queue_limit)
        for event in first:
            client.offer(event)
        self.clients.add(client)
        log.info("client %s connected (%d now)", peer, len(self.clients))
        sender = asyncio.create_task(self._send_loop(client))
        try:
            async for message in ws:
                self._dispatch(client, message)
                if client.dropped:
                    break
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(client)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            log.info("client %s disconnected (%d left)", peer, len(self.clients))

    async def _send_loop(self, client: _Client) -> None:
        try:
            while True:
                await client.wake.wait()
                client.wake.clear()
                while (event := client.next()) is not None:
                    try:
                        text = _encoded(event)
                        await asyncio.wait_for(client.ws.send(text), self.send_timeout)
                    except TimeoutError:
                        # its TCP window stays full: it stopped reading
                        self._drop(client, "it stopped reading")
                        return
        except ConnectionClosed:
            pass

    def _drop(self, client: _Client, why: str) -> None:
        if client.dropped:
            return
        client.dropped = True
        self.clients.discard(client)
        log.warning("dropped a client: %s (%d events waiting)", why, len(client.queue))
        transport = client.ws.transport
        if transport is not None:
            transport.abort()

    def _deliver(self, client: _Client, event: Event) -> None:
        if client.dropped:
            return
        if not client.offer(event):
            client.dropped = True
            self.clients.discard(client)
            log.warning(
                "dropped a client that stopped reading (%d events waiting)", len(client.queue)
            )
            transport = client.ws.transport
            if transport is not None:
                transport.abort()

    def _on_event(self, event: BusEvent) -> None:
        if not hasattr(event, "TYPE"):  # internal events (JobChanged) stay inside
            return
        for client in list(self.clients):
            self._deliver(client, event)  # type: ignore[arg-type]

    def _dispatch(self, client: _Client, message: str | bytes) -> None:
        try:
            command = decode_command(message)
        except ProtocolError as exc:
            self._deliver(client, exc.reply())
            return
        ctl = self.controller
        backup, restore = JobKind.BACKUP, JobKind.RESTORE
        try:
            if isinstance(command, StatusRequest):
                self._deliver(client, self.status())
            elif isinstance(command, SchedulePause | ScheduleResume):
                self._schedule(command)
                self._deliver(client, self.status())  # the answer: paused_until as it is now
            elif isinstance(command, BackupStart):
                ctl.start_backup(command.paths, origin="/ws")  # backup:started goes to everyone
            elif isinstance(command, RestoreStart):
                # finding the snapshot reads the repository: off the loop, answered later
                task = asyncio.get_running_loop().create_task(self._restore(client, command))
                self._commands.add(task)
                task.add_done_callback(self._commands.discard)
            elif isinstance(command, BackupPause | RestorePause):
                ctl.pause(command.job_id, backup if isinstance(command, BackupPause) else restore)
            elif isinstance(command, BackupResume | RestoreResume):
                ctl.resume(command.job_id, backup if isinstance(command, BackupResume) else restore)
            elif isinstance(command, BackupCancel | RestoreCancel):
                ctl.cancel(command.job_id, backup if isinstance(command, BackupCancel) else restore)
            elif isinstance(command, UpkeepPause):
                ctl.pause(command.job_id, JobKind.UPKEEP)
            elif isinstance(command, UpkeepResume):
                ctl.resume(command.job_id, JobKind.UPKEEP)
            elif isinstance(command, UpkeepCancel):
                ctl.cancel(command.job_id, JobKind.UPKEEP)
        except JobError as exc:
            self._refuse(client, command, exc)

    def status(self) -> AgentStatus:
        """``agent:status``: the controller's three fields, and the scheduler's
        optional ones (next_backup, last_success, paused_until, conditions...)."""
        status = self.controller.status()
        if self.scheduler is None:
            return status
        extra = json.dumps(self.scheduler.status_fields(), sort_keys=True)
        return dataclasses.replace(status, extra_json=extra)

    def _schedule(self, command: SchedulePause | ScheduleResume) -> None:
        if self.scheduler is None:
            raise JobError("this agent runs no scheduler: there is no schedule to pause or resume")
        if isinstance(command, SchedulePause):
            self.scheduler.pause(command.minutes)
        else:
            self.scheduler.resume()

    async def _restore(self, client: _Client, command: RestoreStart) -> None:
        try:
            # restore:started goes to everyone
            await self.controller.start_remote_restore(command.snapshot, command.paths)
        except JobError as exc:
            self._refuse(client, command, exc)

    def _refuse(self, client: _Client, command: Command, exc: JobError) -> None:
        self._deliver(client, ErrorReply(str(exc), command.TYPE))


@functools.lru_cache(maxsize=512)
def _encoded(event: Event) -> str:
    # events are frozen (hashable): each is encoded once, not once per client
    return encode_event(event)


def _select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    # Browsers offer ["desktop-agent", "desktop-agent.token.<token>"]: select
    # the first, never echo the token. Other clients need no subprotocol.
    return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in offered else None


def make_tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or newer) from PEM files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def _tls(config: AgentConfig) -> ssl.SSLContext | None:
    if not config.tls_cert or not config.tls_key:
        return None
    return make_tls_context(config.tls_cert, config.tls_key)
