"""The D-Bus plumbing the Linux providers share: a connection, properties, signals.

Each provider (:mod:`.upower`, :mod:`.networkmanager`, :mod:`.logind`) opens
its own connection to the system bus (or to an explicit address: the tests'
private bus) with :func:`connect`, reads properties, subscribes to signals
and runs one task over them; :class:`DBusProvider` is that shape.

jeepney's asyncio connection (0.9) cannot pass unix file descriptors, and
logind's ``Inhibit`` answers with one, so :class:`_Connection` is a small
asyncio connection that can (``sendmsg``/``recvmsg`` with ``SCM_RIGHTS``,
waiting with the loop's ``add_reader``/``add_writer``, which qasync provides
too). It has the shape of ``jeepney.io.asyncio.DBusConnection``, so jeepney's
own ``DBusRouter`` matches replies and signals on it. See docs/scheduling.md.

jeepney has no type information; it is imported here only, and everything
this module hands out is typed.
"""

from __future__ import annotations

import array
import asyncio
import itertools
import logging
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from jeepney import (  # type: ignore[import-untyped]
    DBusAddress,
    FileDescriptor,
    HeaderFields,
    MatchRule,
    MessageType,
    Parser,
    message_bus,
    new_method_call,
)
from jeepney.auth import BEGIN, Authenticator  # type: ignore[import-untyped]
from jeepney.bus import get_bus  # type: ignore[import-untyped]
from jeepney.fds import fds_buf_size  # type: ignore[import-untyped]
from jeepney.io.asyncio import DBusRouter  # type: ignore[import-untyped]
from jeepney.io.common import RouterClosed  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from typing import Self

    from desktop_agent.system.power import PowerSink

__all__ = [
    "Bus",
    "BusError",
    "DBusProvider",
    "Signal",
    "connect",
    "describe_address",
]

log = logging.getLogger(__name__)

CALL_TIMEOUT = 5.0  # a method call on the system bus; logind answers in milliseconds
START_TIMEOUT = 5.0  # connecting plus a provider's first reads
PROPERTIES = "org.freedesktop.DBus.Properties"
DEFAULT_SYSTEM_BUS = "unix:path=/var/run/dbus/system_bus_socket"


class BusError(Exception):
    """The bus, or a service on it, is not there or refused (a one-line message)."""


@dataclass(frozen=True)
class Signal:
    """A received signal: where it came from and its arguments."""

    path: str
    interface: str
    member: str
    body: tuple[Any, ...]


def describe_address(address: str | None) -> str:
    """The bus address as a log line names it (``None``: the system bus)."""
    if address is None:
        return "the system bus"
    # the bus's guid says nothing to a reader
    return ",".join(part for part in address.split(",") if not part.startswith("guid="))


class _Connection:
    """An asyncio D-Bus connection that can receive (and send) unix fds.

    Shaped like ``jeepney.io.asyncio.DBusConnection`` for ``DBusRouter``:
    ``send``, ``receive``, ``outgoing_serial``, ``unique_name``. Writing is
    done by loop callbacks from a buffer, so a task cancelled while sending
    never leaves half a message on the wire.
    """

    def __init__(self, sock: socket.socket, *, enable_fds: bool, on_lost: Callable[[], None]):
        self._sock = sock
        self._fd = sock.fileno()
        self._enable_fds = enable_fds
        self._on_lost = on_lost
        self._loop = asyncio.get_running_loop()
        self._parser = Parser()
        self._out: deque[tuple[memoryview, list[int]]] = deque()
        self._writing = False
        self._lost = False
        self.outgoing_serial = itertools.count(start=1)
        self.unique_name: str | None = None

    async def send(self, message: Any, *, serial: int | None = None) -> None:
        """Queue ``message`` (a jeepney Message) for sending."""
        if self._lost:
            raise BusError("the bus connection is closed")
        if serial is None:
            serial = next(self.outgoing_serial)
        fds: array.array[int] | None = array.array("i") if self._enable_fds else None
        data = message.serialise(serial=serial, fds=fds)
        self._out.append((memoryview(data), list(fds or ())))
        self._flush()

    def _flush(self) -> None:
        while self._out:
            data, fds = self._out[0]
            try:
                if fds:
                    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                    sent = self._sock.sendmsg([data], ancillary)
                else:
                    sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._lose()
                return
            if sent < len(data):
                # fds go with the first byte sent; the rest is plain data
                self._out[0] = (data[sent:], fds if sent == 0 else [])
                if not self._writing:
                    self._loop.add_writer(self._fd, self._flush)
                    self._writing = True
                return
            self._out.popleft()
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    async def receive(self) -> Any:
        """The next message (a jeepney Message); EOFError once the bus is gone."""
        while True:
            msg = self._parser.get_next_message()
            if msg is not None:
                return msg
            data, fds = await self._read()
            if not data:
                self._lose()
                # let the task a reply just went to take it first: jeepney's
                # router fails every pending reply when this raises, and one
                # already answered then comes out as a KeyError, its fd lost
                await asyncio.sleep(0)
                raise EOFError("the bus closed the connection")
            # no await between reading and parsing: a cancel cannot lose data
            self._parser.add_data(data, fds)

    async def _read(self) -> tuple[bytes, list[Any]]:
        while not self._lost:
            try:
                if self._enable_fds:
                    wanted = self._parser.bytes_desired()
                    data, ancdata, flags, _ = self._sock.recvmsg(wanted, fds_buf_size())
                    fds = FileDescriptor.from_ancdata(ancdata)
                    if flags & getattr(socket, "MSG_CTRUNC", 0):
                        for fd in fds:
                            fd.close()
                        return b"", []
                    return data, list(fds)
                return self._sock.recv(65536), []
            except (BlockingIOError, InterruptedError):
                await self._readable()
            except OSError:
                return b"", []
        return b"", []

    async def _readable(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_reader(self._fd, wake)
        try:
            await ready
        finally:
            self._loop.remove_reader(self._fd)

    def _lose(self) -> None:
        if self._lost:
            return
        self._lost = True
        self._on_lost()

    async def close(self) -> None:
        """Close the socket (idempotent)."""
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        self._lost = True
        self._sock.close()


async def _authenticate(sock: socket.socket, enable_fds: bool) -> None:
    loop = asyncio.get_running_loop()
    auth = Authenticator(enable_fds=enable_fds)
    for line in auth:
        await loop.sock_sendall(sock, line)
        reply = await loop.sock_recv(sock, 1024)
        if not reply:
            raise BusError("the bus closed the connection while authenticating")
        auth.feed(reply)
    await loop.sock_sendall(sock, BEGIN)


class Bus:
    """An open connection to a message bus, with jeepney's router on it.

    Calls are bounded by :data:`CALL_TIMEOUT`; errors come out as
    :class:`BusError`. Signals arrive in the queues :meth:`subscribe` returns;
    when the connection is lost every queue gets ``None``.
    """

    def __init__(self) -> None:
        self._conn: _Connection | None = None
        self._router: Any = None
        self._queues: list[asyncio.Queue[Signal | None]] = []
        self._filters: list[Any] = []
        self.lost = False
        self._closed = False

    async def _open(self, address: str | None, enable_fds: bool) -> None:
        path = get_bus("SYSTEM" if address is None else address)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, path)
            await _authenticate(sock, enable_fds)
        except BaseException:
            sock.close()
            raise
        self._conn = _Connection(sock, enable_fds=enable_fds, on_lost=self._on_lost)
        self._router = DBusRouter(self._conn)
        (self._conn.unique_name,) = await self._call_msg(message_bus.Hello())

    @property
    def unique_name(self) -> str | None:
        """Our name on the bus (``:1.42``)."""
        return self._conn.unique_name if self._conn is not None else None

    def _on_lost(self) -> None:
        self.lost = True
        for queue in self._queues:
            queue.put_nowait(None)

    async def _call_msg(self, msg: Any) -> tuple[Any, ...]:
        if self._router is None or self.lost:
            raise BusError("the bus connection is closed")
        try:
            # not wait_for: on 3.11 it can swallow a cancel that comes with the reply
            async with asyncio.timeout(CALL_TIMEOUT):
                reply = await self._router.send_and_get_reply(msg)
        except TimeoutError:
            raise BusError(f"no answer within {CALL_TIMEOUT:.0f} s") from None
        except RouterClosed:
            raise BusError("the bus connection is closed") from None
        except (KeyError, asyncio.InvalidStateError):
            if not self.lost:
                raise
            raise BusError("the bus connection is closed") from None
        if reply.header.message_type == MessageType.error:
            name = reply.header.fields.get(HeaderFields.error_name, "an error")
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise BusError(f"{name}: {text}" if text else str(name))
        return tuple(reply.body)

    async def call(
        self,
        service: str,
        path: str,
        interface: str,
        method: str,
        signature: str | None = None,
        body: tuple[Any, ...] = (),
    ) -> tuple[Any, ...]:
        """Call ``method`` and return the reply's arguments."""
        address = DBusAddress(path, bus_name=service, interface=interface)
        return await self._call_msg(new_method_call(address, method, signature, body))

    async def get_all(self, service: str, path: str, interface: str) -> dict[str, Any]:
        """Every property of ``interface`` on ``path`` (values unwrapped from variants)."""
        (values,) = await self.call(service, path, PROPERTIES, "GetAll", "s", (interface,))
        if not isinstance(values, dict):
            raise BusError(f"{service} answered GetAll with {type(values).__name__}")
        return {str(name): variant[1] for name, variant in values.items()}

    async def get(self, service: str, path: str, interface: str, name: str) -> Any:
        """One property's value."""
        (variant,) = await self.call(service, path, PROPERTIES, "Get", "ss", (interface, name))
        return variant[1]

    async def subscribe(
        self,
        queue: asyncio.Queue[Signal | None],
        *,
        sender: str,
        path: str,
        interface: str,
        member: str,
    ) -> None:
        """Put the signals ``member`` of ``interface`` on ``path`` that ``sender``
        sends into ``queue``.

        The bus filters by sender (it knows who owns the well-known name now,
        so another process cannot fake a signal); locally the router filters
        by the rest, since messages carry the sender's unique name.
        """
        if self._router is None:
            raise BusError("the bus connection is closed")
        on_bus = MatchRule(
            type="signal", sender=sender, path=path, interface=interface, member=member
        )
        await self._call_msg(message_bus.AddMatch(on_bus))
        here = MatchRule(type="signal", path=path, interface=interface, member=member)
        relay: asyncio.Queue[Any] = _Relay(queue)
        self._filters.append(self._router.filter(here, queue=relay))
        if queue not in self._queues:
            self._queues.append(queue)
            if self.lost:
                queue.put_nowait(None)

    async def close(self) -> None:
        """Close the connection (idempotent; quiet if it was lost already)."""
        if self._closed:
            return
        self._closed = True
        for handle in self._filters:
            handle.close()
        self._filters.clear()
        if self._router is not None:
            try:
                await self._router.__aexit__(None, None, None)
            except Exception as exc:  # noqa: BLE001 - the receiver ended with the lost connection
                log.debug("the D-Bus receiver had stopped: %s", exc)
        if self._conn is not None:
            await self._conn.close()


class _Relay(asyncio.Queue[Any]):
    """What the router puts matching messages into: turns them into Signals."""

    def __init__(self, target: asyncio.Queue[Signal | None]) -> None:
        super().__init__()
        self._target = target

    def put_nowait(self, item: Any) -> None:
        fields = item.header.fields
        self._target.put_nowait(
            Signal(
                path=str(fields.get(HeaderFields.path, "")),
                interface=str(fields.get(HeaderFields.interface, "")),
                member=str(fields.get(HeaderFields.member, "")),
                body=tuple(item.body),
            )
        )


async def connect(address: str | None = None, *, enable_fds: bool = False) -> Bus:
    """Connect to the system bus, or to ``address`` (a D-Bus address such as
    ``unix:path=/run/dbus/system_bus_socket``); ``BusError`` if that fails.

    With ``enable_fds`` the connection can receive unix file descriptors
    (logind's inhibitor locks).
    """
    bus = Bus()
    try:
        await bus._open(address, enable_fds)
    except BusError:
        await bus.close()
        raise
    except (OSError, EOFError, ValueError, RuntimeError) as exc:
        # OSError: no socket, refused; ValueError/RuntimeError: a bad address,
        # jeepney's AuthenticationError (a ValueError) or FDNegotiationError
        await bus.close()
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BusError(f"cannot connect to {describe_address(address)}: {detail}") from None
    return bus


def property_changes(signal: Signal, interface: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A PropertiesChanged signal's changed values (unwrapped) and invalidated
    names, if it is about ``interface``; empty otherwise."""
    if len(signal.body) != 3 or signal.body[0] != interface:
        return {}, ()
    changed, invalidated = signal.body[1], signal.body[2]
    if not isinstance(changed, dict) or not isinstance(invalidated, list):
        return {}, ()
    return {str(k): v[1] for k, v in changed.items()}, tuple(map(str, invalidated))


class DBusProvider:
    """Base of the D-Bus providers: one connection, one task over its signals.

    A subclass names itself (``service_label``: "UPower"; ``missing``: what
    the agent does without it, for the log), subscribes and reads its first
    values in :meth:`_setup`, and handles each signal in :meth:`_handle`.
    :meth:`start` never raises: a provider that cannot start logs one info
    line and returns None. When the bus goes away the provider logs once and stops quietly.
    """

    service_label: ClassVar[str] = ""
    missing: ClassVar[str] = ""
    enable_fds: ClassVar[bool] = False

    def __init__(self, bus: Bus, sink: PowerSink) -> None:
        self._bus = bus
        self._sink = sink
        self._signals: asyncio.Queue[Signal | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    @classmethod
    async def start(cls, sink: PowerSink, *, address: str | None = None) -> Self | None:
        """Connect, read the first values, report them, and watch for changes;
        None (and one info line in the log) when that is not possible."""
        where = describe_address(address)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                bus = await connect(address, enable_fds=cls.enable_fds)
        except (BusError, TimeoutError) as exc:
            log.info("%s not used (%s): %s", cls.service_label, _reason(exc), cls.missing)
            return None
        provider = cls(bus, sink)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await provider._setup()
        except (BusError, TimeoutError) as exc:
            log.info(
                "%s not found on %s (%s): %s", cls.service_label, where, _reason(exc), cls.missing
            )
            await provider._cleanup()
            await bus.close()
            return None
        except Exception as exc:  # noqa: BLE001 - a provider must never stop the agent
            log.warning("%s not used: %s", cls.service_label, _reason(exc))
            log.debug("starting %s failed", cls.service_label, exc_info=True)
            await provider._cleanup()
            await bus.close()
            return None
        provider._task = asyncio.create_task(provider._run(), name=f"{cls.service_label} signals")
        return provider

    async def _setup(self) -> None:
        """Subscribe to the signals into ``self._signals``, read and report the
        first values (BusError if the service is not there)."""
        raise NotImplementedError

    async def _handle(self, signal: Signal) -> None:
        """React to one signal."""
        raise NotImplementedError

    async def _cleanup(self) -> None:
        """Release what the provider holds (fds, listeners); called once it stops."""

    async def _run(self) -> None:
        try:
            while (signal := await self._signals.get()) is not None:
                try:
                    await self._handle(signal)
                except BusError as exc:
                    log.debug("%s: %s", self.service_label, exc)
                except (ValueError, TypeError, IndexError, KeyError) as exc:
                    log.debug("%s sent an odd signal %s: %s", self.service_label, signal, exc)
            log.info("lost the system bus: no more updates from %s", self.service_label)
        finally:
            await self._cleanup()
            await self._bus.close()
            self._stopped.set()

    async def wait_stopped(self) -> None:
        """Return once the provider stopped (bus lost, or closed)."""
        await self._stopped.wait()

    async def close(self) -> None:
        """Stop watching, release what is held, close the connection."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                if (current := asyncio.current_task()) is not None and current.cancelling():
                    raise
        await self._cleanup()
        await self._bus.close()
        self._stopped.set()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {START_TIMEOUT:.0f} s"
    return str(exc) or type(exc).__name__
