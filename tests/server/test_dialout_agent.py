"""The agent as users run it dials out: ``desktop-agent --headless`` with
``[server] url`` set connects to a reference backup server on a real port,
says hello with its stable agent id and takes a backup command over that
link; a new configuration redials at once (in-process agent)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from refserver import RefServer
from support import FAST_KDF, PASSWORD, free_port, write

from desktop_agent.app import Agent
from desktop_agent.config import ServerConfig, load
from desktop_agent.config.secrets import SERVER_TOKEN_ENV
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import LocalStorage

SERVER_TOKEN = "server-side-token-0123456789"


def write_config(tmp_path: Path, server_url: str) -> Path:
    src = tmp_path / "src"
    for i in range(5):
        write(src / f"f{i}.txt", f"file {i}\n".encode() * 500)
    repo = tmp_path / "repo"
    Repository.init(LocalStorage(repo), PASSWORD, kdf_params=FAST_KDF)
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[agent]\nlisten = "127.0.0.1:{free_port()}"\ntoken = "agent-side-token-0123456789"\n'
        f'[repository]\npath = "{repo}"\npassword_file = ""\n'
        f'[backup]\nsources = ["{src}"]\nexclude = []\ninterval_minutes = 0\n'
        f'[server]\nurl = "{server_url}"\n'
    )
    os.chmod(cfg, 0o600)
    return cfg


def test_the_headless_agent_dials_out_says_hello_and_takes_commands(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with RefServer(SERVER_TOKEN) as server:
            cfg = write_config(tmp_path, server.url)
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(tmp_path / "home"),
                "XDG_CACHE_HOME": str(tmp_path / "cache"),
                "DESKTOP_AGENT_PASSWORD": PASSWORD,
                SERVER_TOKEN_ENV: SERVER_TOKEN,
            }
            proc = subprocess.Popen(
                [sys.executable, "-m", "desktop_agent", "--config", str(cfg), "--headless"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                ident = await _agent_id(tmp_path / "config-agent-id")
                record = await server.wait_agent(ident)
                assert record.messages[0]["type"] == "agent:hello"
                hello = record.hello
                assert hello["agent_id"] == ident and hello["hostname"] and hello["os"]
                # the status follows the hello, maybe a moment after the record is made
                await record.wait_for("agent:status")
                assert record.messages[1]["type"] == "agent:status"
                await server.send(ident, "backup:start", {})
                started = await record.wait_for("backup:started")
                done = await record.wait_for(
                    "backup:completed", lambda p: p["job_id"] == started["job_id"]
                )
                assert done["total_bytes"] == sum(len(f"file {i}\n") * 500 for i in range(5))
                await server.send(ident, "backup:pause", {"job_id": "nope"})
                error = await record.wait_for("error")
                assert "unknown job_id" in error["message"]
            finally:
                proc.send_signal(signal.SIGTERM)
                out, _ = await asyncio.to_thread(proc.communicate, timeout=30)
            assert proc.returncode == 0, out
            assert SERVER_TOKEN not in out  # the credential never reaches the log

    asyncio.run(asyncio.wait_for(scenario(), 90))


async def _agent_id(path: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        await asyncio.sleep(0.05)
    raise AssertionError(f"no agent id in {path}")


def test_a_new_server_setting_redials_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(SERVER_TOKEN_ENV, SERVER_TOKEN)

    async def scenario() -> None:
        async with RefServer(SERVER_TOKEN) as first, RefServer(SERVER_TOKEN) as second:
            config = load(write_config(tmp_path, first.url))
            agent = Agent(config, host="127.0.0.1", port=0, schedule=False)
            await agent.start()
            try:
                assert agent.dialout is not None
                ident = (tmp_path / "config-agent-id").read_text().strip()
                await first.wait_agent(ident)
                assert agent.dialout.state == "connected"
                # the user points the agent at another server: it goes there now
                agent.apply_config(replace(config, server=ServerConfig(url=second.url)))
                await second.wait_agent(ident)
                assert agent.dialout.state == "connected"
                # turned off: no connection out at all
                agent.apply_config(replace(config, server=ServerConfig(url="")))
                assert agent.dialout is None
            finally:
                await agent.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_network_coming_up_or_a_wake_dials_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backoff after failures may be minutes; a network that comes up (or a
    wake) skips it."""
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(SERVER_TOKEN_ENV, SERVER_TOKEN)

    async def scenario() -> None:
        server = RefServer(SERVER_TOKEN, port=free_port())  # not listening yet
        config = load(write_config(tmp_path, server.url))
        agent = Agent(config, host="127.0.0.1", port=0, schedule=False)
        await agent.start()
        try:
            dialout = agent.dialout
            assert dialout is not None
            dialout.backoff_base = dialout.backoff_cap = 600.0  # the next try in 5-10 minutes
            while dialout.state != "unreachable":
                await asyncio.sleep(0.01)
            await server.start()
            ident = (tmp_path / "config-agent-id").read_text().strip()
            agent.hub.update("networkmanager", network_up=False)
            await asyncio.sleep(0.3)
            assert ident not in server.agents  # still waiting out the backoff
            began = time.monotonic()
            agent.hub.update("networkmanager", network_up=True)
            await server.wait_agent(ident, timeout=10)
            assert time.monotonic() - began < 5
            # and a wake does the same
            await server.stop()
            while dialout.state == "connected":
                await asyncio.sleep(0.01)
            await server.start()
            await asyncio.sleep(0.3)
            assert server.agents[ident].connection is None
            agent.hub.after_wake()
            await server.wait_agent(ident, connections=2, timeout=10)
        finally:
            await agent.stop()
            await server.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))
