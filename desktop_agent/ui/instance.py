"""The tray's half of "one instance": a local socket that later starts talk to.

The first tray start on a configuration holds the instance lock
(:class:`desktop_agent.system.instance.InstanceLock`) and listens on a
``QLocalServer`` named by :func:`desktop_agent.system.instance.server_name`
(a Unix socket in the private runtime directory; a named pipe on Windows).
A second start finds the lock taken by a tray, sends its request (the
``--show`` window, or none) as one JSON line, waits for ``ok`` and exits 0;
the first one raises that window.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer
from PySide6.QtNetwork import QLocalServer, QLocalSocket

from desktop_agent.system.instance import TrayRequest

__all__ = ["RequestServer", "send_request"]

log = logging.getLogger(__name__)

REPLY = b"ok\n"
CLIENT_TIMEOUT_MS = 5_000  # a client that sends nothing is dropped after this


class RequestServer(QObject):
    """Accepts requests from later starts and passes each to ``handle`` (on the Qt thread)."""

    def __init__(self, name: str, handle: Callable[[TrayRequest], None]) -> None:
        super().__init__()
        self.name = name
        self.handle = handle
        self.server = QLocalServer(self)
        # only this user may connect (the pipe's ACL on Windows; the socket's mode elsewhere)
        self.server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        self.server.newConnection.connect(self._accept)
        self._buffers: dict[QLocalSocket, bytes] = {}

    def listen(self) -> bool:
        """Start listening; False (logged) when it cannot, and later starts cannot reach us.

        Called only while holding the instance lock: a socket file left at
        the name belongs to a process that is gone, and is removed first.
        """
        QLocalServer.removeServer(self.name)
        if self.server.listen(self.name):
            log.info("accepting requests from later starts at %s", self.server.fullServerName())
            return True
        log.warning(
            "cannot listen at %s (%s): a second start cannot reach this one",
            self.name,
            self.server.errorString(),
        )
        return False

    def close(self) -> None:
        """Stop listening and drop the clients."""
        self.server.close()
        for sock in list(self._buffers):
            sock.abort()
        self._buffers.clear()

    def _accept(self) -> None:
        while self.server.hasPendingConnections():
            sock = self.server.nextPendingConnection()
            self._buffers[sock] = b""
            sock.readyRead.connect(lambda s=sock: self._read(s))
            sock.disconnected.connect(lambda s=sock: self._drop(s))
            QTimer.singleShot(CLIENT_TIMEOUT_MS, sock, lambda s=sock: self._drop(s))

    def _drop(self, sock: QLocalSocket) -> None:
        if self._buffers.pop(sock, None) is not None:
            sock.abort()
            sock.deleteLater()

    def _read(self, sock: QLocalSocket) -> None:
        if sock not in self._buffers:
            return
        data = self._buffers[sock] + sock.readAll().data()
        if b"\n" not in data:
            if len(data) > TrayRequest.MAX_SIZE:
                log.warning("dropped an oversized request from a later start")
                self._drop(sock)
            else:
                self._buffers[sock] = data
            return
        line = data.split(b"\n", 1)[0]
        try:
            request = TrayRequest.decode(line)
        except ValueError as exc:
            log.warning("ignored a malformed request from a later start: %s", exc)
            self._drop(sock)
            return
        self._buffers.pop(sock, None)
        try:
            self.handle(request)
        except Exception:  # noqa: BLE001 - a bad request must not take the app down
            log.exception("handling a request from a later start failed")
        sock.write(REPLY)
        sock.flush()
        sock.disconnectFromServer()
        sock.deleteLater()


def send_request(name: str, request: TrayRequest, timeout_ms: int = 5_000) -> bool:
    """Hand ``request`` to the instance listening at ``name``; True once it answered.

    Blocking (a start that hands over has nothing else to do). False when
    nobody listens there (yet) or no answer came in time.
    """
    sock = QLocalSocket()
    sock.connectToServer(name)
    if not sock.waitForConnected(timeout_ms):
        return False
    sock.write(request.encode())
    if not sock.waitForBytesWritten(timeout_ms):
        sock.abort()
        return False
    reply = b""
    while b"\n" not in reply:
        if not sock.waitForReadyRead(timeout_ms):
            # the reply may have arrived with the close
            reply += sock.readAll().data()
            break
        reply += sock.readAll().data()
    sock.abort()
    return reply.startswith(REPLY)
