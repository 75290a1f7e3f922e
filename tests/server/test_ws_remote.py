"""The agent with a repository on a server: /ws jobs against a REST server (real HTTP).

The configuration names ``rest:http://user@127.0.0.1:PORT/repo``; the REST
password is the one the settings window would have stored (a 0600 file
here: no keyring), never in the configuration. A backup and a restore go
through the controller and are seen over /ws as for a local repository.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keyring
import keyring.backends.fail
import pytest
from restserver import RestServer
from support import FAST_KDF, PASSWORD, signature, write
from websockets.asyncio.client import connect

from desktop_agent.app import Agent
from desktop_agent.config import AgentConfig, BackupConfig, Config, RepositoryConfig
from desktop_agent.config.secrets import REST_PASSWORD, store_server_secret
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import FileType, storage_for

TOKEN = "remote-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("RESTIC_REST_USERNAME", "RESTIC_REST_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    previous = keyring.get_keyring()
    keyring.set_keyring(keyring.backends.fail.Keyring())
    yield
    keyring.set_keyring(previous)


def test_backup_and_restore_jobs_over_ws_with_a_rest_repository(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(10):
        write(src / f"d{i % 2}" / f"f{i}.txt", f"line {i}\n".encode() * 3000)
    write(src / "blob.bin", os.urandom(3 * 1024 * 1024))
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())

    with RestServer(tmp_path / "server", user="anna", password="s3cret-pass") as server:
        location = f"rest:http://anna@127.0.0.1:{server.port}/laptop"
        config = Config(
            agent=AgentConfig(token=TOKEN, allow_remote_restore=True),
            repository=RepositoryConfig(path=location, password_file=None),
            backup=BackupConfig(sources=(str(src),), exclude=(), interval_minutes=0),
            path=tmp_path / "config.toml",
        )
        where = store_server_secret(
            config, REST_PASSWORD, config.repository_location, "s3cret-pass"
        )
        assert where.startswith("the private file ")
        assert "s3cret" not in location
        Repository.init(storage_for(config), PASSWORD, kdf_params=FAST_KDF)
        home = tmp_path / "home"
        (home / "Downloads").mkdir(parents=True)
        agent = Agent(config, host="127.0.0.1", port=0, schedule=False)

        async def scenario() -> list[dict[str, Any]]:
            got: list[dict[str, Any]] = []

            async def until(ws: Any, type_: str) -> dict[str, Any]:
                while True:
                    msg = json.loads(await ws.recv())
                    got.append(msg)
                    if msg["type"] == type_ or msg["type"].endswith(":failed"):
                        return msg

            await agent.start()
            try:
                async with connect(agent.server.url, additional_headers=AUTH) as ws:
                    await ws.send(json.dumps({"type": "backup:start", "payload": {}}))
                    end = await until(ws, "backup:completed")
                    assert end["type"] == "backup:completed", end
                    assert end["payload"]["total_bytes"] == total
                    await ws.send(
                        json.dumps({"type": "restore:start", "payload": {"snapshot": "latest"}})
                    )
                    end = await until(ws, "restore:completed")
                    assert end["type"] == "restore:completed", end
                    assert end["payload"]["total_bytes"] == total
            finally:
                await agent.stop()
            return got

        old_home = os.environ.get("HOME")
        os.environ["HOME"] = str(home)
        try:
            got = asyncio.run(asyncio.wait_for(scenario(), 120))
        finally:
            if old_home is not None:
                os.environ["HOME"] = old_home
        # the data went to the server (with the stored password), not to a local folder
        assert server.count("POST", "/laptop/data/") > 0
        assert server.count("POST", "/laptop/snapshots/", status=200) == 1
        assert list(storage_for(config).list(FileType.SNAPSHOT))
        progress = [m for m in got if m["type"] == "backup:progress"]
        assert progress and progress[-1]["payload"]["percent"] == 100.0
        started = next(m for m in got if m["type"] == "restore:started")["payload"]
        target = Path(started["target"])
        assert target.parent == home / "Downloads"
        assert signature(target / src.relative_to("/")) == signature(src)
        # nothing of the password in what the agent sent or logged to the client
        assert "s3cret" not in json.dumps(got)
