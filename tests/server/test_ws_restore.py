"""Restore jobs over /ws: a real agent on a real port, real clients, real backups.

A restore is held at its first checkpoint (the engine's Control, paused
from a bus subscriber the moment the job starts) where a test needs it
running but not finished: the commands then always land before the first
byte is written, without depending on how fast the machine is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import FAST_KDF, PASSWORD, signature, write
from websockets.asyncio.client import ClientConnection, connect
from wssupport import Agented, hold_jobs, is_, run, send, until

from desktop_agent.config import AgentConfig, BackupConfig, Config, RepositoryConfig
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import FileType, LocalStorage
from desktop_agent.jobs import JobKind
from desktop_agent.protocol import JobId, RestoreProgress
from desktop_agent.server.ws import _Client

TOKEN = "test-token-abcdefghijklmnop"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROGRESS_FIELDS = {
    "job_id": str,
    "percent": float,
    "transferred_bytes": int,
    "total_bytes": int,
    "bytes_per_second": int,
    "eta_seconds": int,
    "current_file": (str, type(None)),
    "files_processed": int,
    "total_files": int,
}


@pytest.fixture(autouse=True)
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / "Downloads").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return home


def make_config(tmp_path: Path, sources: list[Path], *, allow: bool) -> Config:
    repo = tmp_path / "repo"
    if not repo.exists():
        Repository.init(LocalStorage(repo), PASSWORD, kdf_params=FAST_KDF)
    return Config(
        agent=AgentConfig(token=TOKEN, allow_remote_restore=allow),
        repository=RepositoryConfig(path=str(repo), password_file=None),
        backup=BackupConfig(sources=tuple(str(s) for s in sources), exclude=(), interval_minutes=0),
        path=tmp_path / "config.toml",
    )


def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for i in range(15):
        write(src / f"d{i % 3}" / f"f{i}.txt", f"file {i}\n".encode() * 2000)
    write(src / "blob.bin", os.urandom(3 * 1024 * 1024))
    return src


def data_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def ended(job_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: (
        m["type"] in ("restore:completed", "restore:failed", "backup:completed", "backup:failed")
        and m["payload"]["job_id"] == job_id
    )


async def back_up(ws: ClientConnection) -> str:
    await send(ws, "backup:start", {})
    job = (await until(ws, is_("backup:started")))[-1]["payload"]["job_id"]
    assert (await until(ws, ended(job)))[-1]["type"] == "backup:completed"
    return str(job)


def test_restore_start_is_refused_unless_allowed(tmp_path: Path, home: Path) -> None:
    src = source(tmp_path)

    async def scenario() -> None:
        async with Agented(make_config(tmp_path, [src], allow=False)) as agent:
            async with connect(agent.server.url, additional_headers=AUTH) as ws:
                async with connect(agent.server.url, additional_headers=AUTH) as other:
                    await back_up(ws)
                    await until(other, is_("backup:completed"))
                    await send(ws, "restore:start", {"snapshot": "latest"})
                    reply = (await until(ws, is_("error")))[-1]["payload"]
                    assert reply["request_type"] == "restore:start"
                    assert "[agent] allow_remote_restore = true" in reply["message"]
                    # nothing started, nothing told to the others, nothing made
                    await send(other, "agent:status", None)
                    status = (await until(other, is_("agent:status")))[-1]["payload"]
                    assert status["active_jobs"] == 0
                    assert agent.controller.jobs()[-1].kind is JobKind.BACKUP
        assert os.listdir(home / "Downloads") == []

    run(scenario)


def test_a_restore_asked_for_over_ws_runs_as_a_job_into_a_new_folder(
    tmp_path: Path, home: Path
) -> None:
    src = source(tmp_path)
    total = data_bytes(src)

    async def scenario() -> None:
        async with Agented(make_config(tmp_path, [src], allow=True)) as agent:
            async with connect(agent.server.url, additional_headers=AUTH) as ws:
                async with connect(agent.server.url, additional_headers=AUTH) as watcher:
                    await back_up(ws)
                    snap = Repository.open(LocalStorage(tmp_path / "repo"), PASSWORD).find_snapshot(
                        "latest"
                    )
                    assert snap.id is not None
                    await send(ws, "restore:start", {"snapshot": "latest"})
                    started = (await until(ws, is_("restore:started")))[-1]
                    job = started["payload"]["job_id"]
                    target = Path(started["payload"]["target"])
                    assert started["payload"] == {
                        "job_id": job,
                        "snapshot": snap.id.hex(),
                        "target": str(target),
                    }
                    assert target.parent == home / "Downloads"
                    assert target.name.startswith(f"desktop-agent restore {snap.short_id} ")
                    events = await until(ws, ended(job))
                    seen = await until(watcher, ended(job))
                    assert [m for m in seen if m["type"] == "restore:started"] == [started]

                    # a second one never reuses the folder
                    await send(ws, "restore:start", {"snapshot": snap.id.hex()[:8]})
                    again = (await until(ws, is_("restore:started")))[-1]["payload"]
                    await until(ws, ended(again["job_id"]))
        assert events[-1] == {
            "type": "restore:completed",
            "payload": {"job_id": job, "total_bytes": total},
        }
        progress = [m["payload"] for m in events if m["type"] == "restore:progress"]
        assert progress
        for p in progress:
            assert set(p) == set(PROGRESS_FIELDS)  # exactly the nine fields
            for key, kind in PROGRESS_FIELDS.items():
                assert isinstance(p[key], kind), (key, p[key])
        percents = [p["percent"] for p in progress]
        assert percents == sorted(percents) and percents[-1] == 100.0
        assert progress[-1]["transferred_bytes"] == progress[-1]["total_bytes"] == total
        assert not [m for m in events if m["type"].startswith("backup:")]
        assert again["target"] != str(target)
        for folder in (target, Path(again["target"])):
            assert signature(folder / src.relative_to("/")) == signature(src)
        assert list(LocalStorage(tmp_path / "repo").list(FileType.LOCK)) == []

    run(scenario)


def test_restore_commands_pause_resume_and_cancel_restores_only(tmp_path: Path, home: Path) -> None:
    src = source(tmp_path)

    async def scenario() -> None:
        async with Agented(make_config(tmp_path, [src], allow=True)) as agent:
            held = hold_jobs(agent, JobKind.RESTORE)
            async with connect(agent.server.url, additional_headers=AUTH) as ws:
                backup_job = await back_up(ws)
                await send(ws, "restore:start", {"snapshot": "latest"})
                job = (await until(ws, is_("restore:started")))[-1]["payload"]["job_id"]
                await until(ws, is_("restore:progress", job))
                assert held == [job]

                # a command of the other kind is an error, to the sender only
                await send(ws, "backup:pause", {"job_id": job})
                err = (await until(ws, is_("error")))[-1]["payload"]
                assert err == {
                    "message": f"job {job} is a restore, not a backup",
                    "request_type": "backup:pause",
                }
                await send(ws, "restore:cancel", {"job_id": backup_job})
                err = (await until(ws, is_("error")))[-1]["payload"]
                assert "is a backup, not a restore" in err["message"]

                await send(ws, "restore:pause", {"job_id": job})
                await until(ws, is_("restore:paused", job))
                await send(ws, "agent:status", None)
                status = (await until(ws, is_("agent:status")))[-1]["payload"]
                assert status["status"] == "paused" and status["active_jobs"] == 1
                await send(ws, "restore:pause", {"job_id": job})  # already paused
                assert (
                    "only a running job"
                    in (await until(ws, is_("error")))[-1]["payload"]["message"]
                )
                await send(ws, "restore:resume", {"job_id": job})
                rest = await until(ws, ended(job))
                assert rest[0] == {"type": "restore:resumed", "payload": {"job_id": job}}
                assert rest[-1]["type"] == "restore:completed"

                # cancelled while paused: restore:failed "cancelled", the empty folder goes
                await send(ws, "restore:start", {"snapshot": "latest"})
                started = (await until(ws, is_("restore:started")))[-1]["payload"]
                second = started["job_id"]
                await until(ws, is_("restore:progress", second))
                await send(ws, "restore:pause", {"job_id": second})
                await until(ws, is_("restore:paused", second))
                await send(ws, "restore:cancel", {"job_id": second})
                end = await until(ws, ended(second))
                assert end[-1] == {
                    "type": "restore:failed",
                    "payload": {"job_id": second, "error": "cancelled"},
                }
                assert not Path(started["target"]).exists()
                await send(ws, "restore:cancel", {"job_id": second})
                assert "already" in (await until(ws, is_("error")))[-1]["payload"]["message"]

                # one queue: a restore asked for while a backup runs waits for it
                write(src / "later.bin", os.urandom(1024 * 1024))
                await send(ws, "backup:start", {})
                await send(ws, "restore:start", {"snapshot": "latest"})
                seen = await until(ws, is_("restore:started"))
                third = seen[-1]["payload"]["job_id"]
                backup2 = next(m for m in seen if m["type"] == "backup:started")["payload"]
                seen += await until(ws, is_("restore:progress", third))
                kinds = [(m["type"], (m["payload"] or {}).get("job_id")) for m in seen]
                assert kinds.index(("backup:completed", backup2["job_id"])) < kinds.index(
                    ("restore:progress", third)
                )
                await send(ws, "restore:cancel", {"job_id": third})
                await until(ws, ended(third))

    run(scenario)


def test_every_restore_started_ends_once_even_when_the_agent_stops(tmp_path: Path) -> None:
    src = source(tmp_path)

    async def scenario() -> None:
        agented = Agented(make_config(tmp_path, [src], allow=True))
        agent = await agented.__aenter__()
        stopped = False
        try:
            hold_jobs(agent, JobKind.RESTORE)
            async with connect(agent.server.url, additional_headers=AUTH) as ws:
                await back_up(ws)
                for _ in range(3):
                    await send(ws, "restore:start", {"snapshot": "latest"})
                ids: list[str] = []

                def three(m: dict[str, Any]) -> bool:
                    if m["type"] == "restore:started":
                        ids.append(m["payload"]["job_id"])
                    return len(ids) == 3

                await until(ws, three)
                await until(ws, is_("restore:progress", ids[0]))  # running (held), two queued
                await agented.__aexit__(None, None, None)
                stopped = True
                rest: list[dict[str, Any]] = []
                try:
                    while True:
                        rest.append(json.loads(await ws.recv()))
                except Exception:  # noqa: BLE001 - the agent closed the connection
                    pass
            for job in ids:
                ends = [m for m in rest if ended(job)(m)]
                assert ends == [
                    {"type": "restore:failed", "payload": {"job_id": job, "error": "cancelled"}}
                ]
        finally:
            if not stopped:
                await agented.__aexit__(None, None, None)

    run(scenario)


def test_restore_progress_waiting_for_a_slow_client_is_merged_per_job() -> None:
    c = _Client(ws=None, limit=10)  # type: ignore[arg-type]
    for i in range(50):
        assert c.offer(RestoreProgress(JobId("r"), float(i), i, 100, 0, 0, None, 0, 0))
    out = []
    while (e := c.next()) is not None:
        out.append(e)
    assert out == [RestoreProgress(JobId("r"), 49.0, 49, 100, 0, 0, None, 0, 0)]
