"""What the /ws end-to-end tests share: an agent on a free port, a held job,
sending commands and reading until a message comes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection

from desktop_agent.app import Agent
from desktop_agent.config import Config
from desktop_agent.jobs import JobChanged, JobKind, JobState
from desktop_agent.protocol import JobId

Message = dict[str, Any]


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 120))


class Agented:
    """An agent on 127.0.0.1, a free port, no scheduler, for ``async with``."""

    def __init__(self, config: Config) -> None:
        self.agent = Agent(config, host="127.0.0.1", port=0, schedule=False)

    async def __aenter__(self) -> Agent:
        await self.agent.start()
        return self.agent

    async def __aexit__(self, *exc: object) -> None:
        await self.agent.stop()


def hold_jobs(agent: Agent, kind: JobKind) -> list[str]:
    """Pause every job of ``kind``'s engine the moment it starts (before it
    touches anything). The controller is not told: its job stays *running*
    until a pause command (which then takes effect at once) or a cancel.
    Returns the held job ids."""
    held: list[str] = []

    def on(event: object) -> None:
        if (
            isinstance(event, JobChanged)
            and event.kind is kind
            and event.new is JobState.RUNNING
            and event.old is JobState.QUEUED
        ):
            agent.controller._jobs[JobId(event.job_id)].control.pause()
            held.append(event.job_id)

    agent.bus.subscribe(on)
    return held


async def send(ws: ClientConnection, type_: str, payload: Any) -> None:
    await ws.send(json.dumps({"type": type_, "payload": payload}))


async def until(
    ws: ClientConnection, pred: Callable[[Message], bool], timeout: float = 60
) -> list[Message]:
    """Every message read until (and with) the first that ``pred`` accepts."""
    got: list[Message] = []
    async with asyncio.timeout(timeout):
        while True:
            msg = json.loads(await ws.recv())
            got.append(msg)
            if pred(msg):
                return got


def is_(kind: str, job_id: str | None = None) -> Callable[[Message], bool]:
    return lambda m: (
        m["type"] == kind and (job_id is None or (m["payload"] or {}).get("job_id") == job_id)
    )
