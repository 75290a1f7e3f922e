"""The fault proxy the remote-backend tests rely on does what it says."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from faultproxy import FaultProxy


@pytest.fixture
def echo() -> Iterator[int]:
    """An echo server on 127.0.0.1; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = False

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the proxy resets some connections
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while not stop:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    stop = True
    listener.close()


def roundtrip(port: int, data: bytes, timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def test_pass_reset_blackhole_refuse_and_http_failures(echo: int) -> None:
    with FaultProxy("127.0.0.1", echo) as proxy:
        assert roundtrip(proxy.port, b"x" * 100_000) == b"x" * 100_000

        proxy.reset_after(10_000)
        with pytest.raises(ConnectionResetError):
            roundtrip(proxy.port, b"y" * 100_000)

        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            roundtrip(proxy.port, b"z", timeout=0.5)
        assert time.monotonic() - started < 2

        proxy.refuse()
        with pytest.raises((ConnectionResetError, ConnectionRefusedError, BrokenPipeError)):
            roundtrip(proxy.port, b"r" * 10)

        proxy.fail_next(1, 503)
        reply = roundtrip(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"." * 40)
        assert reply.startswith(b"HTTP/1.1 503 ")
        assert proxy.failed_requests == 1

        proxy.pass_through()
        assert roundtrip(proxy.port, b"ok") == b"ok"


def test_a_bounded_reset_resets_that_many_connections_then_passes(echo: int) -> None:
    with FaultProxy("127.0.0.1", echo) as proxy:
        proxy.reset_after(10_000, times=2)
        for _ in range(2):
            with pytest.raises(ConnectionResetError):
                roundtrip(proxy.port, b"y" * 100_000)
        assert roundtrip(proxy.port, b"z" * 100_000) == b"z" * 100_000
        assert proxy.resets == 2
