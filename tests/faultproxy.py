"""A TCP proxy on 127.0.0.1 that injects the network faults a laptop meets.

Put it between a backend and its test server::

    with FaultProxy("127.0.0.1", server_port) as proxy:
        storage = SomeStorage(... port=proxy.port ...)
        proxy.reset_after(200_000)   # connections are reset (RST) after 200 kB
        proxy.reset_after(600_000, times=3)  # only the first three that get that far
        proxy.blackhole()            # a dead link: nothing forwarded, nothing closed
        proxy.fail_next(2, 503)      # plain HTTP: the next 2 requests get a 503
        proxy.lose_next_answer()     # plain HTTP: the next request reaches the server,
                                     # its whole answer is swallowed, the client is reset
        proxy.refuse()               # new connections are refused
        proxy.pass_through()         # back to normal

A mode applies to the connections open when it is set as well as to new
ones (a dead link kills the transfers under way too). ``bytes_forwarded``
counts what went through, both ways.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from types import TracebackType

__all__ = ["FaultProxy"]

_CHUNK = 64 * 1024


def _rst(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (SO_LINGER 0) instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        # wakes a pump blocked in recv() on it, so the close really sends the RST
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


class _Conn:
    def __init__(self, client: socket.socket, server: socket.socket | None) -> None:
        self.client = client
        self.server = server
        self.flowed = 0
        self.closed = False
        self.lose_answer = False
        self.reset_counted = False  # its reset is in FaultProxy.resets

    def kill(self, *, reset: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        for s in (self.client, self.server):
            if s is None:
                continue
            if reset:
                _rst(s)
            else:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to ``target_host:target_port``, with faults on demand."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._mode = "pass"
        self._reset_budget = 0
        self._resets_left: int | None = None  # None: every connection
        self.resets = 0  # connections reset by reset_after
        self._fail_count = 0
        self._fail_status = 503
        self._lose_answers = 0
        self.lost_answers = 0
        self._conns: list[_Conn] = []
        self._stopping = False
        self.bytes_forwarded = 0
        self.connections = 0
        self.failed_requests = 0
        self._listener = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)

    # ------------------------------------------------------------ modes
    def pass_through(self) -> None:
        """Forward everything (the default)."""
        with self._lock:
            self._mode = "pass"
            self._fail_count = 0

    def reset_after(self, nbytes: int, *, times: int | None = None) -> None:
        """Reset each connection (RST both ways) once ``nbytes`` have flowed through it.

        ``times``: reset only that many connections, then pass everything
        through (a fault the client must meet, however it spreads its
        requests over connections).
        """
        with self._lock:
            self._mode = "reset"
            self._reset_budget = nbytes
            self._resets_left = times
            victims = [c for c in self._conns if c.flowed >= nbytes]
            if times is not None:
                victims = victims[:times]
            for c in victims:
                self._count_reset(c)
        for c in victims:
            c.kill()

    def _count_reset(self, conn: _Conn) -> bool:
        """Count ``conn``'s reset, once; False when no more resets are allowed
        (the caller holds the lock)."""
        if conn.reset_counted:
            return True
        if self._mode != "reset":
            return False  # the last allowed reset went to another connection
        conn.reset_counted = True
        self.resets += 1
        if self._resets_left is not None:
            self._resets_left -= 1
            if self._resets_left <= 0:
                self._mode = "pass"
        return True

    def blackhole(self) -> None:
        """A dead link: accept, forward nothing, close nothing."""
        with self._lock:
            self._mode = "blackhole"

    def refuse(self) -> None:
        """Refuse new connections (RST at once) and reset the open ones."""
        with self._lock:
            self._mode = "refuse"
            victims = list(self._conns)
        for c in victims:
            c.kill()

    def fail_next(self, count: int, status: int = 503) -> None:
        """Plain HTTP: answer the next ``count`` requests with ``status`` and close.

        Open keep-alive connections are closed first (with a FIN), so that
        the next request opens a new connection and meets the failure.
        """
        with self._lock:
            self._mode = "pass"
            self._fail_count = count
            self._fail_status = status
            victims = list(self._conns)
        for c in victims:
            c.kill(reset=False)

    def lose_next_answer(self, count: int = 1) -> None:
        """Plain HTTP: the next ``count`` connections reach the server, which answers;
        the answer is read to its end and dropped, and the client's connection reset.

        The server has then done the work (stored the upload, say) while the
        client saw a broken connection: what a retry must cope with. Open
        keep-alive connections are closed first so the next request opens one.
        """
        with self._lock:
            self._mode = "pass"
            self._lose_answers = count
            victims = list(self._conns)
        for c in victims:
            c.kill(reset=False)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> FaultProxy:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            victims = list(self._conns)
        for c in victims:
            c.kill()
        self._acceptor.join(5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ internals
    def _listen(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        return sock

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.1)  # a close in another thread does not wake accept()
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            self.connections += 1
            with self._lock:
                mode = self._mode
                failing = self._fail_count > 0
                if failing:
                    self._fail_count -= 1
                status = self._fail_status
            if mode == "refuse":
                _rst(client)
                continue
            if failing:
                threading.Thread(target=self._fail, args=(client, status), daemon=True).start()
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _fail(self, client: socket.socket, status: int) -> None:
        """Read one HTTP request (headers and body) and answer ``status``."""
        client.settimeout(10)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = client.recv(_CHUNK)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            while len(body) < length:
                chunk = client.recv(_CHUNK)
                if not chunk:
                    break
                body += chunk
            reason = {500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
            head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            self.failed_requests += 1  # before the answer: a client may check it at once
            client.sendall(head.encode())
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.close()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            blackholed = self._mode == "blackhole"
        server: socket.socket | None = None
        if not blackholed:
            try:
                server = socket.create_connection(self.target, timeout=10)
                server.settimeout(None)
            except OSError:
                _rst(client)
                return
        conn = _Conn(client, server)
        with self._lock:
            self._conns.append(conn)
            if server is not None and self._lose_answers > 0:
                self._lose_answers -= 1
                conn.lose_answer = True
        if server is None:
            self._hold(conn)
            return
        answer = self._swallow if conn.lose_answer else self._pump
        threading.Thread(target=answer, args=(conn, server, client), daemon=True).start()
        self._pump(conn, client, server)

    def _swallow(self, conn: _Conn, src: socket.socket, _dst: socket.socket) -> None:
        """Read the server's answer to its end (Content-Length, or the server closing),
        drop it, and reset the client."""
        data = b""
        try:
            while True:
                head, sep, body = data.partition(b"\r\n\r\n")
                if sep:
                    length = None
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value.strip())
                    if length is not None and len(body) >= length:
                        break
                chunk = src.recv(_CHUNK)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        self.lost_answers += 1
        conn.kill()
        self._forget(conn)

    def _hold(self, conn: _Conn) -> None:
        """A dead link: read and drop whatever the client sends, answer nothing."""
        while not conn.closed and not self._stopping:
            try:
                conn.client.settimeout(0.2)
                if conn.client.recv(_CHUNK) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        self._forget(conn)

    def _pump(self, conn: _Conn, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not conn.closed:
                try:
                    data = src.recv(_CHUNK)
                except OSError:
                    break
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                with self._lock:
                    mode = self._mode
                    budget = self._reset_budget
                if mode == "blackhole":
                    # the link died under this transfer: drop everything, keep the sockets
                    # open; a connection that lived through it is dead when the link returns
                    while not conn.closed and self._mode == "blackhole" and not self._stopping:
                        time.sleep(0.05)
                    conn.kill()
                    break
                if mode == "reset" and conn.flowed + len(data) >= budget:
                    with self._lock:
                        allowed = self._count_reset(conn)
                    if allowed:  # else the last allowed reset went elsewhere: pass
                        room = max(0, budget - conn.flowed)
                        with contextlib.suppress(OSError):
                            dst.sendall(data[:room])
                        conn.kill()
                        break
                try:
                    dst.sendall(data)
                except OSError:
                    break
                conn.flowed += len(data)
                self.bytes_forwarded += len(data)
        finally:
            if not conn.closed:
                conn.kill(reset=False)
            self._forget(conn)

    def _forget(self, conn: _Conn) -> None:
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)
