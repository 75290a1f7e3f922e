"""A small reference backup server that agents dial out to (see docs/protocol.md).

It is what the dial-out tests talk to, and an example for anyone building a
server: accept agents over WebSockets at ``/agents``, check
``Authorization: Bearer <token>`` before the upgrade (401 otherwise), read
the agent's first message (``agent:hello`` with its ``agent_id``), and from
then on speak the ``/ws`` protocol with the roles reversed: the agent sends
events, the server sends commands.

Use from a test (on the test's event loop)::

    server = RefServer(token="...")
    await server.start()                      # 127.0.0.1, a free port
    agent = await server.wait_agent("laptop-1")
    await server.send("laptop-1", "backup:start", {})
    done = await agent.wait_for("backup:completed")
    await server.stop(); await server.start()  # the same port again

Or run it alone, printing what agents send::

    python tests/refserver.py --token SECRET --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = ["AgentRecord", "Message", "RefServer"]

PATH = "/agents"

Message = dict[str, Any]  # {"type": ..., "payload": ...}, as it came


@dataclass
class AgentRecord:
    """One agent as the server knows it: its hello and every message it sent
    (over every connection, in order; the hello included)."""

    agent_id: str
    hello: dict[str, Any]
    messages: list[Message] = field(default_factory=list)
    connections: int = 0  # how many times it connected
    connection: ServerConnection | None = None  # the open one, if any
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        """The payloads of every message of ``type_`` so far."""
        return [m["payload"] for m in self.messages if m["type"] == type_]

    async def wait_for(
        self,
        type_: str,
        pred: Callable[[dict[str, Any]], bool] = lambda p: True,
        *,
        after: int = 0,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """The payload of the first message of ``type_`` (from index ``after`` on)
        that ``pred`` accepts, waiting for it if need be."""
        async with asyncio.timeout(timeout):
            while True:
                for m in self.messages[after:]:
                    if m["type"] == type_ and pred(m["payload"]):
                        return m["payload"]  # type: ignore[no-any-return]
                self.changed.clear()
                await self.changed.wait()


class RefServer:
    """Accepts agents at ``ws[s]://host:port/agents``; see the module docstring."""

    def __init__(
        self,
        token: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        on_message: Callable[[AgentRecord, Message], None] | None = None,
    ) -> None:
        self.token = token
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.on_message = on_message
        self.agents: dict[str, AgentRecord] = {}
        self.refused = 0  # upgrade requests answered 401
        self.attempts = 0  # upgrade requests to /agents, refused or not
        self._server: Server | None = None
        self._arrived = asyncio.Event()

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context else "ws"
        return f"{scheme}://{self.host}:{self.port}{PATH}"

    async def start(self) -> None:
        """Listen (on the port of the previous start, if there was one)."""
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._check,
            ssl=self.ssl_context,
            compression=None,
            max_size=64 * 1024,
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    async def stop(self) -> None:
        """Close every agent's connection and stop listening (start() again later)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> RefServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------ commands
    async def send(self, agent_id: str, type_: str, payload: Any = None) -> None:
        """Send a command (``backup:start``, ``backup:pause``...) to a connected agent."""
        connection = self.agents[agent_id].connection
        if connection is None:
            raise LookupError(f"agent {agent_id} is not connected")
        await connection.send(json.dumps({"type": type_, "payload": payload}))

    async def wait_agent(
        self, agent_id: str, *, connections: int = 1, timeout: float = 30.0
    ) -> AgentRecord:
        """The agent's record once it has connected ``connections`` times (and is connected)."""
        async with asyncio.timeout(timeout):
            while True:
                record = self.agents.get(agent_id)
                if (
                    record is not None
                    and record.connections >= connections
                    and record.connection is not None
                ):
                    return record
                self._arrived.clear()
                await self._arrived.wait()

    # ------------------------------------------------------------ serving
    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0] != PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"Not found: the endpoint is {PATH}\n")
        self.attempts += 1
        auth = request.headers.get("Authorization", "")
        offered = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not (offered and hmac.compare_digest(offered.encode(), self.token.encode())):
            self.refused += 1
            return connection.respond(HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        try:
            first = json.loads(await asyncio.wait_for(connection.recv(), 10))
        except (ConnectionClosed, TimeoutError, ValueError):
            return
        payload = first.get("payload") if isinstance(first, dict) else None
        if first.get("type") != "agent:hello" or not isinstance(payload, dict):
            await connection.close(1008, "the first message must be agent:hello")
            return
        agent_id = str(payload.get("agent_id", ""))
        record = self.agents.get(agent_id)
        if record is None:
            record = self.agents[agent_id] = AgentRecord(agent_id, payload)
        record.hello = payload
        record.connections += 1
        record.connection = connection
        self._record(record, first)
        self._arrived.set()
        try:
            async for text in connection:
                try:
                    message = json.loads(text)
                except ValueError:
                    continue
                self._record(record, message)
        except ConnectionClosed:
            pass
        finally:
            if record.connection is connection:
                record.connection = None
            self._arrived.set()

    def _record(self, record: AgentRecord, message: Message) -> None:
        record.messages.append(message)
        record.changed.set()
        if self.on_message is not None:
            self.on_message(record, message)


async def _main(args: argparse.Namespace) -> None:
    def show(record: AgentRecord, message: Message) -> None:
        print(record.agent_id, json.dumps(message), flush=True)

    async with RefServer(args.token, host=args.host, port=args.port, on_message=show) as server:
        print(f"waiting for agents at {server.url}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A reference backup server for dial-out agents")
    parser.add_argument("--token", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    try:
        asyncio.run(_main(parser.parse_args()))
    except KeyboardInterrupt:
        pass
