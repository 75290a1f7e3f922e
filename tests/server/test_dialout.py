"""Dial-out: a whole agent connects to a reference backup server (tests/refserver.py)
over real sockets and is, over that link, the same endpoint as on /ws.

Backups are held at their first checkpoint (the engine's Control, paused by
a bus subscriber the moment the job runs) where a test needs one running:
commands then always land while it runs, however fast the machine is.
Backoff values are small, so reconnections take fractions of a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from refserver import RefServer
from support import FAST_KDF, PASSWORD, write
from tlsca import make_ca
from websockets.asyncio.client import connect

from desktop_agent.app import Agent
from desktop_agent.config import AgentConfig, BackupConfig, Config, RepositoryConfig
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import LocalStorage
from desktop_agent.jobs import JobChanged, JobKind, JobState
from desktop_agent.protocol import BackupCompleted, JobId
from desktop_agent.server import dialout as dialout_module
from desktop_agent.server.dialout import DialOut, DialOutSettings, default_hello, is_loopback_host

WS_TOKEN = "local-ws-token-0123456789abcdef"
SERVER_TOKEN = "server-token-fedcba9876543210"
AGENT_ID = "laptop-7"
LOGGER = "desktop_agent.server.dialout"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def make_config(tmp_path: Path) -> Config:
    src, repo = tmp_path / "src", tmp_path / "repo"
    for i in range(6):
        write(src / f"d{i % 2}" / f"f{i}.txt", f"file {i}\n".encode() * 500)
    Repository.init(LocalStorage(repo), PASSWORD, kdf_params=FAST_KDF)
    return Config(
        agent=AgentConfig(token=WS_TOKEN),
        repository=RepositoryConfig(path=str(repo), password_file=None),
        backup=BackupConfig(sources=(str(src),), exclude=(), interval_minutes=0),
        path=tmp_path / "config.toml",
    )


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


@asynccontextmanager
async def running_agent(tmp_path: Path) -> AsyncIterator[Agent]:
    agent = Agent(make_config(tmp_path), host="127.0.0.1", port=0, schedule=False)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()


@asynccontextmanager
async def dialing(agent: Agent, url: str, **kwargs: Any) -> AsyncIterator[DialOut]:
    settings = DialOutSettings(
        url=url,
        token=kwargs.pop("token", SERVER_TOKEN),
        agent_id=AGENT_ID,
        ca_file=kwargs.pop("ca_file", None),
        allow_insecure=kwargs.pop("allow_insecure", False),
    )
    options: dict[str, Any] = {"backoff_base": 0.05, "backoff_cap": 0.3, "open_timeout": 5.0}
    options.update(kwargs)
    dial = DialOut(agent.server, settings, hello=default_hello(), **options)
    states: list[str] = []
    dial.on_state = states.append
    dial.states = states  # type: ignore[attr-defined]
    dial.start()
    try:
        yield dial
    finally:
        await dial.stop()
    assert dial.state == "off"


def hold_backups(agent: Agent) -> list[str]:
    """Pause every backup's engine the moment it starts; returns the held job ids."""
    held: list[str] = []

    def on(event: object) -> None:
        if (
            isinstance(event, JobChanged)
            and event.kind is JobKind.BACKUP
            and event.new is JobState.RUNNING
            and event.old is JobState.QUEUED
        ):
            agent.controller._jobs[JobId(event.job_id)].control.pause()
            held.append(event.job_id)

    agent.bus.subscribe(on)
    return held


async def until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


def job_is(job_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda p: p.get("job_id") == job_id


# ------------------------------------------------------------------ the link
def test_agent_dials_in_says_hello_and_runs_a_backup_for_the_server(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with RefServer(SERVER_TOKEN) as ref, running_agent(tmp_path) as agent:
            async with dialing(agent, ref.url) as dial:
                rec = await ref.wait_agent(AGENT_ID)
                assert dial.state == "connected" and dial.last_error is None
                assert dial.states[:2] == ["connecting", "connected"]
                # hello first, then the current status
                assert rec.messages[0]["type"] == "agent:hello"
                hello = rec.messages[0]["payload"]
                assert hello["agent_id"] == AGENT_ID
                assert set(hello) == {"agent_id", "hostname", "version", "os"}
                assert all(isinstance(v, str) and v for v in hello.values())
                status = await rec.wait_for("agent:status")
                assert rec.messages[1]["type"] == "agent:status"
                assert status["status"] == "idle"

                # /ws keeps working beside the link, and sees the same events
                auth = {"Authorization": f"Bearer {WS_TOKEN}"}
                async with connect(agent.server.url, additional_headers=auth) as ws:
                    await until(lambda: len(agent.server.clients) == 2)
                    await ref.send(AGENT_ID, "backup:start", {})
                    started = await rec.wait_for("backup:started")
                    job = started["job_id"]
                    await rec.wait_for("backup:progress", job_is(job))
                    done = await rec.wait_for("backup:completed", job_is(job))
                    assert done["total_bytes"] > 0
                    seen = []
                    while not seen or seen[-1]["type"] != "backup:completed":
                        seen.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
                    assert {"type": "backup:started", "payload": started} in seen

                # commands are answered like on /ws: errors to the sender
                await ref.send(AGENT_ID, "backup:pause", {"job_id": job})
                err = await rec.wait_for("error")
                assert err["request_type"] == "backup:pause"
                assert "only a running job" in err["message"]
                statuses = len(rec.of_type("agent:status"))
                await ref.send(AGENT_ID, "agent:status", None)
                await until(lambda: len(rec.of_type("agent:status")) == statuses + 1)
                assert rec.of_type("agent:status")[-1]["status"] == "idle"
                await ref.send(AGENT_ID, "no:such", {})
                unknown = await rec.wait_for("error", lambda p: p is not err)
                assert "unknown message type" in unknown["message"]

    run(scenario)


def test_pause_resume_and_cancel_over_the_link(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with RefServer(SERVER_TOKEN) as ref, running_agent(tmp_path) as agent:
            held = hold_backups(agent)
            async with dialing(agent, ref.url):
                rec = await ref.wait_agent(AGENT_ID)
                await ref.send(AGENT_ID, "backup:start", {})
                job = (await rec.wait_for("backup:started"))["job_id"]
                await until(lambda: held == [job])
                await ref.send(AGENT_ID, "backup:pause", {"job_id": job})
                await rec.wait_for("backup:paused", job_is(job))
                await ref.send(AGENT_ID, "agent:status", None)
                status = await rec.wait_for("agent:status", lambda p: p["status"] == "paused")
                assert status["active_jobs"] == 1
                await ref.send(AGENT_ID, "backup:resume", {"job_id": job})
                await rec.wait_for("backup:resumed", job_is(job))
                await rec.wait_for("backup:completed", job_is(job))

                await ref.send(AGENT_ID, "backup:start", {})
                second = (await rec.wait_for("backup:started", lambda p: p["job_id"] != job))[
                    "job_id"
                ]
                await until(lambda: held == [job, second])
                await ref.send(AGENT_ID, "backup:cancel", {"job_id": second})
                failed = await rec.wait_for("backup:failed", job_is(second))
                assert failed == {"job_id": second, "error": "cancelled"}

    run(scenario)


def test_server_restart_mid_backup_reconnects_and_gets_the_outcome_resent(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with RefServer(SERVER_TOKEN) as ref, running_agent(tmp_path) as agent:
            held = hold_backups(agent)
            ended = asyncio.Event()
            agent.bus.subscribe(lambda e: ended.set() if isinstance(e, BackupCompleted) else None)
            async with dialing(agent, ref.url) as dial:
                rec = await ref.wait_agent(AGENT_ID)
                port = ref.port
                await ref.send(AGENT_ID, "backup:start", {})
                job = (await rec.wait_for("backup:started"))["job_id"]
                await until(lambda: held == [job])

                await ref.stop()
                await until(lambda: dial.state in ("unreachable", "connecting"))
                assert agent.server.clients == set()  # nothing queued for the lost link
                # the job goes on without the server, and ends while it is away
                agent.controller._jobs[JobId(job)].control.resume()
                await asyncio.wait_for(ended.wait(), 20)
                assert not rec.of_type("backup:completed")
                await asyncio.sleep(0.3)  # a few failed attempts (the port is closed)

                before = len(rec.messages)
                await ref.start()
                assert ref.port == port
                restarted = time.monotonic()
                await ref.wait_agent(AGENT_ID, connections=2)
                # the backoff is capped at 0.3 s: the next attempt comes soon
                assert time.monotonic() - restarted < 3.0
                assert dial.state == "connected"
                again = rec.messages[before:]
                await rec.wait_for("backup:completed", job_is(job), after=before)
                again = rec.messages[before:]
                assert [m["type"] for m in again[:3]] == [
                    "agent:hello",
                    "agent:status",
                    "backup:completed",
                ]
                assert again[1]["payload"]["status"] == "idle"
                # resent once (the server may see an outcome twice: it dedupes by job_id)
                assert len(rec.of_type("backup:completed")) == 1

    run(scenario)


def test_a_wrong_token_is_refused_backed_off_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-token-not-the-servers-0000"

    async def scenario() -> None:
        async with RefServer(SERVER_TOKEN) as ref, running_agent(tmp_path) as agent:
            async with dialing(agent, ref.url, token=wrong) as dial:
                await until(lambda: ref.refused >= 1)
                first = time.monotonic()
                await until(lambda: ref.refused >= 5)
                elapsed = time.monotonic() - first
                assert dial.state == "refused"
                assert dial.last_error is not None and "401" in dial.last_error
                # refusals are retried at the cap (0.15 to 0.3 s apart), not at once
                assert elapsed >= 4 * 0.15, elapsed
                assert ref.agents == {}

    run(scenario)
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "refused the token (401" in warnings[0].getMessage()
    assert wrong not in caplog.text and SERVER_TOKEN not in caplog.text


# ------------------------------------------------------------------ TLS
def test_wss_with_the_test_ca_as_ca_file(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")

    async def scenario() -> None:
        ref = RefServer(SERVER_TOKEN, ssl_context=ca.server_context())
        async with ref, running_agent(tmp_path) as agent:
            assert ref.url.startswith("wss://127.0.0.1:")
            async with dialing(agent, ref.url, ca_file=str(ca.ca_cert)) as dial:
                rec = await ref.wait_agent(AGENT_ID)
                assert dial.state == "connected"
                await ref.send(AGENT_ID, "agent:status", None)
                await rec.wait_for("agent:status", after=2)

    run(scenario)


def test_an_untrusted_certificate_is_refused_with_a_clear_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = make_ca(tmp_path / "ca")

    async def scenario() -> None:
        ref = RefServer(SERVER_TOKEN, ssl_context=ca.server_context())
        async with ref, running_agent(tmp_path) as agent:
            async with dialing(agent, ref.url) as dial:  # system trust store only
                await until(lambda: dial.last_error is not None)
                await asyncio.sleep(0.5)  # and it stays so, attempt after attempt
                assert dial.state == "unreachable"
                assert "is not trusted" in dial.last_error
                assert "ca_file" in dial.last_error
                assert ref.attempts == 0 and ref.agents == {}  # no request got through TLS

    run(scenario)
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "\n" not in warnings[0].getMessage()


def test_plain_ws_to_a_non_loopback_host_is_refused_without_connecting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    async def fake_connect(url: str, **kwargs: Any) -> Any:
        calls.append(url)
        raise OSError("no route to host")

    monkeypatch.setattr(dialout_module, "connect", fake_connect)

    async def scenario() -> None:
        async with running_agent(tmp_path) as agent:
            async with dialing(agent, "ws://192.0.2.10:8080/agents") as dial:
                await until(lambda: dial.state == "refused")
                await asyncio.sleep(0.2)
                assert calls == []
                assert dial.last_error is not None and "without TLS" in dial.last_error
            # allow_insecure lets it try (and fail on the network, here)
            async with dialing(agent, "ws://192.0.2.10:8080/agents", allow_insecure=True) as dial:
                await until(lambda: len(calls) >= 2)
                assert dial.state in ("unreachable", "connecting")

    run(scenario)
    refusals = [r for r in caplog.records if r.name == LOGGER and "without TLS" in r.getMessage()]
    assert len(refusals) == 1


def test_reconnect_now_skips_the_backoff_wait(tmp_path: Path) -> None:
    async def scenario() -> None:
        ref = RefServer(SERVER_TOKEN)
        await ref.start()
        await ref.stop()  # a port that was just free: nobody listens
        async with running_agent(tmp_path) as agent:
            # the first wait is up to 100 s, the next ones longer
            async with dialing(agent, ref.url, backoff_base=100.0, backoff_cap=300.0) as dial:
                await until(lambda: dial.state == "unreachable")
                await asyncio.sleep(0.1)
                await ref.start()
                dial.reconnect_now()
                await ref.wait_agent(AGENT_ID, timeout=5)
                assert dial.state == "connected"
            await ref.stop()

    run(scenario)


def test_loopback_hosts() -> None:
    for host in ("localhost", "127.0.0.1", "127.9.8.7", "::1", "[::1]", "LOCALHOST"):
        assert is_loopback_host(host), host
    for host in ("192.0.2.1", "example.org", "::ffff:192.0.2.1", "10.0.0.1", "127.0.0.1.nip.io"):
        assert not is_loopback_host(host), host


def test_use_server_makes_the_link_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with RefServer(SERVER_TOKEN) as ref, running_agent(tmp_path) as agent:
            async with dialing(agent, ref.url, backoff_base=100.0) as dial:
                rec = await ref.wait_agent(AGENT_ID)
                await dial.use_server(agent.server)
                await ref.wait_agent(AGENT_ID, connections=2, timeout=5)
                assert [m["type"] for m in rec.messages].count("agent:hello") == 2

    run(scenario)
