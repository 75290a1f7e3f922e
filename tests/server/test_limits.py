"""Client mistakes and connection floods against a real /ws server on a real port:
duplicated headers, malformed requests, the connection limit, slow handshakes,
accept errors; none of them may put a traceback into the log."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from support import FAST_KDF, PASSWORD
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from desktop_agent.config import AgentConfig, BackupConfig, Config, RepositoryConfig
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import LocalStorage
from desktop_agent.jobs import EventBus, JobController
from desktop_agent.server import AgentServer
from desktop_agent.server.limits import (
    ACCEPT_BATCH,
    ACCEPT_ERROR_MESSAGE,
    FD_RESERVE,
    REFUSE_SLOTS,
    AcceptErrorFilter,
    Throttle,
    connection_cap,
    filter_accept_errors,
)

TOKEN = "limits-token-abcdefghijklmnop"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def make_config(tmp_path: Path, **agent: Any) -> Config:
    repo = tmp_path / "repo"
    if not repo.exists():
        Repository.init(LocalStorage(repo), PASSWORD, kdf_params=FAST_KDF)
    return Config(
        agent=AgentConfig(token=TOKEN, **agent),
        repository=RepositoryConfig(path=str(repo), password_file=None),
        backup=BackupConfig(sources=(str(tmp_path),), exclude=(), interval_minutes=0),
        path=tmp_path / "config.toml",
    )


@asynccontextmanager
async def serving(config: Config, **kw: Any) -> AsyncIterator[AgentServer]:
    """A bare AgentServer (controller, bus) on 127.0.0.1, port 0."""
    bus = EventBus()
    controller = JobController(config, bus)
    await controller.start()
    server = AgentServer(config.agent, controller, bus, host="127.0.0.1", port=0, **kw)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        await controller.stop()


def run(scenario: Callable[[], Any]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def upgrade(*extra: str, target: str = "/ws", auth: bool = True) -> list[str]:
    """The lines of a valid upgrade request, plus ``extra`` header lines."""
    lines = [
        f"GET {target} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if auth:
        lines.append(f"Authorization: Bearer {TOKEN}")
    return lines + list(extra)


async def exchange(port: int, data: bytes, *, close_after_send: bool = False) -> bytes:
    """Send raw bytes, then read until the server closes (or, for an upgrade, the 101 head)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if close_after_send:
            return b""
        got = b""
        while chunk := await reader.read(65536):
            got += chunk
            if got.startswith(b"HTTP/1.1 101 ") and b"\r\n\r\n" in got:
                break  # a WebSocket now: it would stay open
        return got
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def request_bytes(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def status_line(response: bytes) -> str:
    return response.split(b"\r\n", 1)[0].decode("latin-1")


def body(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in response else b""


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Wait for a state the server reaches on its own (a connection counted or released)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def status_roundtrip(ws: Any) -> None:
    await ws.send(json.dumps({"type": "agent:status", "payload": None}))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert reply["type"] == "agent:status"


def assert_clean_log(caplog: pytest.LogCaptureFixture) -> None:
    """No traceback, nothing at ERROR, no token: client mistakes are one short line at most."""
    assert "Traceback" not in caplog.text
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [(r.name, r.getMessage()) for r in bad]
    assert TOKEN not in caplog.text
    for record in caplog.records:
        assert "\n" not in record.getMessage(), record.getMessage()


# ------------------------------------------------------ duplicated headers
def test_a_duplicated_authorization_header_gets_400_without_a_traceback(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        async with serving(make_config(tmp_path)) as server:
            twice = upgrade(f"Authorization: Bearer {TOKEN}")  # the right token, twice
            response = await exchange(server.port, request_bytes(twice))
            assert status_line(response) == "HTTP/1.1 400 Bad Request", response
            assert body(response) == b"Bad Request: duplicated Authorization header\n"
            wrong = upgrade("Authorization: Bearer other")
            response = await exchange(server.port, request_bytes(wrong))
            assert status_line(response) == "HTTP/1.1 400 Bad Request", response
            # one header is still fine
            response = await exchange(server.port, request_bytes(upgrade()))
            assert status_line(response) == "HTTP/1.1 101 Switching Protocols", response

    run(scenario)
    assert_clean_log(caplog)
    assert "duplicated Authorization header" in caplog.text


def test_a_duplicated_origin_header_gets_400_without_a_traceback(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    origin = "https://backup.example.com"

    async def scenario() -> None:
        async with serving(make_config(tmp_path, allowed_origins=(origin,))) as server:
            for second in (origin, "https://evil.example.com"):
                lines = upgrade(f"Origin: {origin}", f"Origin: {second}")
                response = await exchange(server.port, request_bytes(lines))
                assert status_line(response) == "HTTP/1.1 400 Bad Request", response
                assert body(response) == b"Bad Request: duplicated Origin header\n"
            response = await exchange(server.port, request_bytes(upgrade(f"Origin: {origin}")))
            assert status_line(response) == "HTTP/1.1 101 Switching Protocols", response

    run(scenario)
    assert_clean_log(caplog)


# -------------------------------------------------------- malformed requests
MALFORMED: list[tuple[str, bytes, str | None]] = [
    # (what, bytes sent, expected status line or None = closed without an answer)
    ("not HTTP", b"hello there\r\n\r\n", None),
    ("binary garbage", bytes(range(256)) * 4 + b"\r\n\r\n", None),
    ("header without a colon", request_bytes(upgrade("no colon here")), None),
    ("non-ASCII path", request_bytes(upgrade(target="/w\xe9s")), None),
    ("unclosed IPv6 bracket in the target", request_bytes(upgrade(target="//[x/ws")), "400"),
    ("HTTP/1.0", request_bytes([upgrade()[0].replace("1.1", "1.0"), *upgrade()[1:]]), None),
    ("POST", request_bytes([upgrade()[0].replace("GET", "POST"), *upgrade()[1:]]), None),
    ("no Upgrade header", request_bytes([x for x in upgrade() if "Upgrade:" not in x]), "426"),
    (
        "Upgrade to something else",
        request_bytes([x.replace("websocket", "h2c") for x in upgrade()]),
        "426",
    ),
    ("two keys", request_bytes(upgrade("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==")), "400"),
    (
        "a key of the wrong size",
        request_bytes([*upgrade()[:4], "Sec-WebSocket-Key: abc", *upgrade()[5:]]),
        "400",
    ),
    (
        "version 8",
        request_bytes([*upgrade()[:5], "Sec-WebSocket-Version: 8", *upgrade()[6:]]),
        "400",
    ),
    (
        "malformed subprotocol header",
        request_bytes(upgrade("Sec-WebSocket-Protocol: desktop-agent, ,@@@")),
        "400",
    ),
    (
        "non-ASCII token",
        request_bytes(upgrade(auth=False) + ["Authorization: Bearer t\xf6ken"]),
        "401",
    ),
    ("empty bearer", request_bytes(upgrade(auth=False) + ["Authorization: Bearer"]), "401"),
    ("a 10 kB request line", request_bytes(upgrade(target="/ws?" + "x" * 10_000)), "414"),
    ("a 10 kB header", request_bytes(upgrade("X-Big: " + "y" * 10_000)), "431"),
    ("300 headers", request_bytes(upgrade(*[f"X-{i}: {i}" for i in range(300)])), "431"),
]


def test_malformed_upgrade_requests_are_refused_without_a_traceback(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        async with serving(make_config(tmp_path)) as server:
            for what, data, expected in MALFORMED:
                response = await exchange(server.port, data)
                if expected is None:
                    assert not response.startswith(b"HTTP/1.1 101"), what
                else:
                    assert status_line(response).startswith(f"HTTP/1.1 {expected} "), (
                        what,
                        response[:200],
                    )
            # clients that vanish: mid-request, right after the request, before a byte
            half = request_bytes(upgrade())[:40]
            for data in (half, request_bytes(upgrade()), b""):
                await exchange(server.port, data, close_after_send=True)
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(half)
            sock.close()  # a reset in the middle of the request
            await until(lambda: server.connection_count == 0)
            # and the server still serves
            async with connect(server.url, additional_headers=AUTH) as ws:
                await status_roundtrip(ws)

    run(scenario)
    assert_clean_log(caplog)


# ---------------------------------------------------------- connection limit
def test_beyond_max_connections_a_client_gets_503_and_the_others_keep_working(tmp_path, caplog):
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        async with serving(make_config(tmp_path, max_connections=5)) as server:
            assert server.connection_limit == 5
            clients = [await connect(server.url, additional_headers=AUTH) for _ in range(5)]
            for ws in clients:
                await status_roundtrip(ws)
            with pytest.raises(InvalidStatus) as info:
                async with connect(server.url, additional_headers=AUTH):
                    pass
            assert info.value.response.status_code == 503
            assert info.value.response.body == b"Service Unavailable: too many connections\n"
            for ws in clients:  # the first five are untouched
                await status_roundtrip(ws)
            await clients.pop().close()
            await until(lambda: server.connection_count == 4)
            async with connect(server.url, additional_headers=AUTH) as ws:
                await status_roundtrip(ws)
                with pytest.raises(InvalidStatus) as info:  # full again
                    async with connect(server.url, additional_headers=AUTH):
                        pass
                assert info.value.response.status_code == 503
            for ws in clients:
                await ws.close()

    run(scenario)
    assert_clean_log(caplog)
    assert "too many connections (limit 5)" in caplog.text


def test_unauthenticated_connections_count_and_a_flood_is_cut_short(tmp_path, caplog):
    """Connections count from the accept, token or not; beyond the limit 16 at a
    time are answered 503 and the rest are closed unanswered, so a flood holds
    at most limit + 16 descriptors for long."""
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        async with serving(
            make_config(tmp_path, max_connections=2), handshake_timeout=30
        ) as server:
            idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
            await until(lambda: server.connection_count == 2)
            with pytest.raises(InvalidStatus) as info:
                async with connect(server.url, additional_headers=AUTH):
                    pass
            assert info.value.response.status_code == 503
            # silent connections over the limit: 16 wait for their 503, the rest are cut off
            over = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(40)]
            await until(lambda: server.connection_count == 2 + REFUSE_SLOTS)
            cut = 0
            for reader, _writer in over[REFUSE_SLOTS:]:
                try:
                    data = await asyncio.wait_for(reader.read(), 10)
                except ConnectionResetError:
                    data = b""
                assert data == b""
                cut += 1
            assert cut == 40 - REFUSE_SLOTS
            assert server.connection_count == 2 + REFUSE_SLOTS
            # the waiting ones get their 503 once they send a request
            reader, writer = over[0]
            writer.write(request_bytes(upgrade()))
            assert status_line(await reader.read()) == "HTTP/1.1 503 Service Unavailable"
            for _reader, writer in idle + over:
                writer.close()
            await until(lambda: server.connection_count == 0)
            async with connect(server.url, additional_headers=AUTH) as ws:
                await status_roundtrip(ws)

    run(scenario)
    assert_clean_log(caplog)
    # 26 refusals (2 answered 503, 24 cut off; 15 never asked): one line for the
    # first, and one summing up the rest when the server stops
    busy = [r.getMessage() for r in caplog.records if "too many connections" in r.getMessage()]
    assert len(busy) == 2, busy
    assert busy[1].endswith("(25 more like it since the last such line)"), busy


def test_a_slow_loris_counts_toward_the_limit_and_is_dropped_after_the_handshake_timeout(
    tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    timeout = 0.5

    async def scenario() -> None:
        config = make_config(tmp_path, max_connections=2)
        async with serving(config, handshake_timeout=timeout) as server:
            started = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(request_bytes(upgrade())[:50])  # half a request, then nothing
            await writer.drain()
            await until(lambda: server.connection_count == 1)
            async with connect(server.url, additional_headers=AUTH) as ws:
                with pytest.raises(InvalidStatus) as info:  # the slow one holds the other place
                    async with connect(server.url, additional_headers=AUTH):
                        pass
                assert info.value.response.status_code == 503
                try:
                    data = await asyncio.wait_for(reader.read(), 10)
                except ConnectionResetError:
                    data = b""
                waited = time.monotonic() - started
                assert data == b""  # cut off without an answer
                assert timeout * 0.9 <= waited < timeout + 5, waited
                writer.close()
                await until(lambda: server.connection_count == 1)
                async with connect(server.url, additional_headers=AUTH) as other:
                    await status_roundtrip(other)
                await status_roundtrip(ws)

    run(scenario)
    assert_clean_log(caplog)


def test_the_limit_leaves_room_for_backups_under_the_open_file_limit():
    assert connection_cap(1024, 30) == 1024 - 30 - FD_RESERVE - REFUSE_SLOTS - ACCEPT_BATCH
    assert connection_cap(512, 30) >= 256  # the default limit fits in 512 descriptors
    assert connection_cap(256, 30) < 256 - FD_RESERVE  # macOS's default needs raising
    assert connection_cap(100, 30) == 1  # never 0: the agent stays reachable


def test_a_low_open_file_limit_lowers_the_connection_limit_and_says_so(
    tmp_path, caplog, monkeypatch
):
    import desktop_agent.server.ws as ws_module
    from desktop_agent.server.limits import FdBudget

    monkeypatch.setattr(ws_module, "plan_fd_budget", lambda wanted: FdBudget(3, 300))
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        async with serving(make_config(tmp_path, max_connections=100)) as server:
            assert server.connection_limit == 3
            clients = [await connect(server.url, additional_headers=AUTH) for _ in range(3)]
            with pytest.raises(InvalidStatus) as info:
                async with connect(server.url, additional_headers=AUTH):
                    pass
            assert info.value.response.status_code == 503
            for ws in clients:
                await ws.close()

    run(scenario)
    lowered = [r for r in caplog.records if "lets in at most 3 connections" in r.getMessage()]
    assert len(lowered) == 1 and "max_connections = 100" in lowered[0].getMessage()


# ------------------------------------------------------------- accept errors
def _accept_error(code: int = errno.EMFILE) -> dict[str, Any]:
    return {"message": ACCEPT_ERROR_MESSAGE, "exception": OSError(code, "Too many open files")}


def _check_filter(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture, *, previous: bool
) -> None:
    """Accept errors reported through ``loop`` are logged once, then summed up; the
    rest reaches the previous handler (or, without one, the loop's default handler)."""
    passed: list[dict[str, Any]] = []

    async def scenario() -> None:
        if previous:
            loop.set_exception_handler(lambda _loop, context: passed.append(context))
        else:
            loop.default_exception_handler = passed.append  # type: ignore[method-assign]
        handler = filter_accept_errors(loop, interval=0.3)
        assert filter_accept_errors(loop) is handler  # once per loop
        for _ in range(5000):
            loop.call_exception_handler(_accept_error())
        loop.call_exception_handler(_accept_error(errno.ENFILE))
        other = {"message": "something else", "exception": OSError(errno.EMFILE, "x")}
        loop.call_exception_handler(other)
        refused = {"message": ACCEPT_ERROR_MESSAGE, "exception": ConnectionRefusedError()}
        loop.call_exception_handler(refused)
        assert passed == [other, refused]
        lines = [r for r in caplog.records if r.name == "desktop_agent.server.limits"]
        assert len(lines) == 1
        await until(lambda: handler.throttle.suppressed == 0)
        lines = [r.getMessage() for r in caplog.records if r.name == "desktop_agent.server.limits"]
        assert len(lines) == 2, lines
        assert "Too many open files (EMFILE)" in lines[0]
        assert lines[1].endswith("(5000 more like it since the last such line)"), lines[1]
        assert "ENFILE" in lines[1]  # the summary repeats the latest

    loop.run_until_complete(asyncio.wait_for(scenario(), 30))
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info]


def test_accept_errors_are_rate_limited_under_asyncio(caplog):
    caplog.set_level(logging.INFO)
    loop = asyncio.new_event_loop()
    try:
        _check_filter(loop, caplog, previous=True)
    finally:
        loop.close()


def test_accept_errors_are_rate_limited_under_qasync(qapp, caplog):
    qasync = pytest.importorskip("qasync")
    caplog.set_level(logging.INFO)
    loop = qasync.QEventLoop(qapp)
    try:
        # qasync keeps a handler it is given out of get_exception_handler's
        # sight, so the filter hands other reports to the loop's default
        # handler: what qasync itself does when no handler is set
        _check_filter(loop, caplog, previous=False)
    finally:
        loop.close()


def test_without_a_previous_handler_other_reports_reach_the_default_one(caplog):
    loop = asyncio.new_event_loop()
    try:
        handler = filter_accept_errors(loop)
        assert isinstance(loop.get_exception_handler(), AcceptErrorFilter)
        assert handler.previous is None
        loop.call_exception_handler({"message": "unrelated trouble"})
        assert "unrelated trouble" in caplog.text
    finally:
        loop.close()


def test_a_throttle_without_a_loop_logs_every_line(caplog):
    caplog.set_level(logging.INFO)
    throttle = Throttle(logging.getLogger("t"), logging.INFO)
    throttle("one")
    throttle("two")
    assert [r.getMessage() for r in caplog.records] == ["one", "two"]


def test_with_tls_connections_count_from_the_accept_and_failed_handshakes_are_quiet(
    tmp_path, caplog
):
    """A TLS handshake in progress holds a place (the server's connection object
    exists from the accept, before TLS is up); one that never completes is cut
    off by the handshake timeout and its place is given back."""
    import importlib.util
    import ssl

    from desktop_agent.server.ws import make_tls_context

    # the certificate maker of the TLS tests (importlib mode: no package to import it from)
    spec = importlib.util.spec_from_file_location(
        "_tls_tests", Path(__file__).with_name("test_tls.py")
    )
    assert spec is not None and spec.loader is not None
    tls_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tls_tests)
    self_signed = tls_tests.self_signed

    caplog.set_level(logging.INFO)
    cert, key = self_signed(tmp_path)
    client_tls = ssl.create_default_context(cafile=str(cert))
    client_tls.check_hostname = False

    async def scenario() -> None:
        config = make_config(tmp_path, max_connections=1)
        tls = make_tls_context(str(cert), str(key))
        async with serving(config, handshake_timeout=0.5, ssl_context=tls) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            await until(lambda: server.connection_count == 1)  # no TLS yet, but counted
            with pytest.raises(InvalidStatus) as info:
                async with connect(server.url, additional_headers=AUTH, ssl=client_tls):
                    pass
            assert info.value.response.status_code == 503
            try:
                assert await asyncio.wait_for(reader.read(), 10) == b""  # TLS timed out
            except ConnectionResetError:
                pass
            writer.close()
            await until(lambda: server.connection_count == 0)
            # plain HTTP to the TLS port: closed, quietly; asyncio does not tell the
            # connection object that its TLS handshake failed, so its place comes
            # back only with the handshake timeout (erring on the safe side)
            response = await exchange(server.port, request_bytes(upgrade()))
            assert not response.startswith(b"HTTP/1.1 101")
            await until(lambda: server.connection_count == 0)
            async with connect(server.url, additional_headers=AUTH, ssl=client_tls) as ws:
                await status_roundtrip(ws)

    run(scenario)
    assert_clean_log(caplog)
