"""The SSH connection of an SFTP repository and its channels (loop thread only).

:class:`Session` shares one connection attempt among the callers that need
it (a server that is gone costs them one wait, not one each) and spreads
requests over up to N SFTP channels. :class:`Progress` is the watchdog's
clock: when a request of one operation last got an answer.
"""

from __future__ import annotations

import asyncio
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

from ..errors import StorageError
from .retry import Transient

with warnings.catch_warnings():
    # asyncssh still imports DSA support, which cryptography flags as deprecated
    warnings.simplefilter("ignore")
    import asyncssh
    from asyncssh import SFTPClient, SSHClientConnection

__all__ = ["Progress", "Session"]

T = TypeVar("T")


class Progress:
    """When a request of one operation last got an answer (the watchdog's clock)."""

    def __init__(self) -> None:
        self.last = asyncio.get_running_loop().time()

    def touch(self) -> None:
        """An answer arrived."""
        self.last = asyncio.get_running_loop().time()

    async def __call__(self, request: Awaitable[T]) -> T:
        """Await one request and count its answer as progress."""
        result = await request
        self.touch()
        return result


class Session:
    """The SSH connection and its SFTP channels; used on the loop thread only."""

    def __init__(
        self, connect: Callable[[], Coroutine[Any, Any, SSHClientConnection]], channels: int
    ) -> None:
        # weakly: the storage's finalizer holds the session, and must not keep the storage alive
        self._connect = weakref.WeakMethod(connect)
        self._max = channels
        self._lock: asyncio.Lock | None = None
        self._connecting: asyncio.Future[SSHClientConnection] | None = None
        self.conn: SSHClientConnection | None = None
        self._channels: list[SFTPClient] = []
        self._busy: dict[SFTPClient, int] = {}

    async def _connection(self) -> SSHClientConnection:
        """The open connection. Callers share one attempt to connect, and its
        failure: when the server is gone, they wait for it together, not in turn."""
        if self.conn is not None and not self.conn.is_closed():
            return self.conn
        if self._connecting is None:
            self.conn = None
            self._forget()
            connect = self._connect()
            if connect is None:
                raise StorageError("the SFTP storage was closed")
            self._connecting = asyncio.ensure_future(connect())
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, attempt: asyncio.Future[SSHClientConnection]) -> None:
        self._connecting = None
        if not attempt.cancelled() and attempt.exception() is None:
            self.conn = attempt.result()

    @asynccontextmanager
    async def channel(self) -> AsyncIterator[tuple[SSHClientConnection, SFTPClient]]:
        """The least busy SFTP channel, connecting or opening one when needed."""
        conn = await self._connection()
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # channels are opened one at a time
            if conn is not self.conn:
                raise Transient("SSH connection lost")  # and replaced while we waited
            sftp = min(self._channels, key=self._busy.__getitem__, default=None)
            if sftp is None or (self._busy[sftp] and len(self._channels) < self._max):
                try:
                    # a foreign file whose name is not UTF-8 must not break a listing
                    sftp = await conn.start_sftp_client(path_errors="surrogateescape")
                except asyncssh.ChannelOpenError:
                    if sftp is None:
                        raise
                    self._max = len(self._channels)  # the server allows no more sessions
                else:
                    self._channels.append(sftp)
                    self._busy[sftp] = 0
        self._busy[sftp] = self._busy.get(sftp, 0) + 1
        try:
            yield conn, sftp
        finally:
            if sftp in self._busy:
                self._busy[sftp] -= 1

    def reset(self, conn: SSHClientConnection | None) -> None:
        """Drop ``conn`` (when it is still the current connection): the next use reconnects."""
        if conn is not None and conn is self.conn:
            conn.abort()
            self.conn = None
            self._forget()

    def _forget(self) -> None:
        self._channels.clear()
        self._busy.clear()

    async def close(self) -> None:
        """Close the connection."""
        conn, self.conn = self.conn, None
        self._forget()
        self._lock = self._connecting = None  # both belong to this loop, which ends now
        if conn is not None:
            conn.close()
            with suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 2)
