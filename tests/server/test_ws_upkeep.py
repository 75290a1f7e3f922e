"""Upkeep jobs over /ws: a real agent on a real port, real clients, real repositories.

The agent starts upkeep itself (here: the test calls the controller, as the
scheduler does); clients watch it and pause, resume or cancel it with
``upkeep:*`` commands. An upkeep job is held at its first checkpoint (the
engine's Control, paused from a bus subscriber the moment the job starts)
where a test needs it running but not finished, so the commands always land
before it has changed anything, however fast the machine is.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import FAST_KDF, PASSWORD, write
from websockets.asyncio.client import connect
from wssupport import Agented, hold_jobs, is_, run, send, until

from desktop_agent.config import AgentConfig, BackupConfig, Config, RepositoryConfig, UpkeepConfig
from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import FileType, LocalStorage
from desktop_agent.jobs import JobKind, UpkeepSpec
from desktop_agent.protocol import JobId, UpkeepProgress
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
KEEP_LAST_2 = UpkeepConfig(
    forget=True, keep_last=2, keep_hourly=0, keep_daily=0, keep_weekly=0, keep_monthly=0
)


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def make_config(tmp_path: Path, snapshots: int) -> Config:
    """A repository with ``snapshots`` backups of a source that changes between them."""
    repo_dir = tmp_path / "repo"
    repo = Repository.init(LocalStorage(repo_dir), PASSWORD, kdf_params=FAST_KDF)
    src = tmp_path / "src"
    rng = random.Random(3)
    for k in range(snapshots):
        for d in range(3):
            write(src / f"d{d}" / f"k{k}.bin", rng.randbytes(100_000))
        if k:
            (src / "d0" / f"k{k - 1}.bin").unlink()
        backup(repo, BackupOptions(sources=[str(src)], helpers=0, workers=2))
    return Config(
        agent=AgentConfig(token=TOKEN),
        repository=RepositoryConfig(path=str(repo_dir), password_file=None),
        backup=BackupConfig(sources=(str(src),), exclude=(), interval_minutes=0),
        path=tmp_path / "config.toml",
    )


def ended(job_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: (
        m["type"] in ("upkeep:completed", "upkeep:failed") and m["payload"]["job_id"] == job_id
    )


def snapshot_count(restic: Callable[..., Any], repo: Path) -> int:
    return len(json.loads(restic(repo, "snapshots", "--json").stdout))


def test_upkeep_is_watched_paused_resumed_and_cancelled_over_ws(
    tmp_path: Path, restic: Callable[..., Any]
) -> None:
    config = make_config(tmp_path, snapshots=5)
    repo_dir = Path(config.repository_path)

    async def scenario() -> None:
        async with Agented(config) as agent:
            held = hold_jobs(agent, JobKind.UPKEEP)
            async with connect(agent.server.url, additional_headers=AUTH) as ws:
                async with connect(agent.server.url, additional_headers=AUTH) as watcher:
                    # the agent decides: no client can start upkeep
                    await send(ws, "upkeep:start", {})
                    err = (await until(ws, is_("error")))[-1]["payload"]
                    assert err["request_type"] == "upkeep:start"
                    assert "the agent starts upkeep on its own" in err["message"]

                    job = agent.controller.start_upkeep(
                        UpkeepSpec.forget(KEEP_LAST_2), origin="scheduler"
                    )
                    started = {
                        "type": "upkeep:started",
                        "payload": {"job_id": job, "task": "forget"},
                    }
                    assert (await until(ws, is_("upkeep:started")))[-1] == started
                    assert (await until(watcher, is_("upkeep:started")))[-1] == started
                    await until(ws, is_("upkeep:progress", job))
                    assert held == [job]

                    # a command of another kind is an error, to the sender only
                    await send(ws, "backup:pause", {"job_id": job})
                    err = (await until(ws, is_("error")))[-1]["payload"]
                    assert err == {
                        "message": f"job {job} is an upkeep job, not a backup",
                        "request_type": "backup:pause",
                    }
                    await send(ws, "restore:cancel", {"job_id": job})
                    err = (await until(ws, is_("error")))[-1]["payload"]
                    assert err["message"] == f"job {job} is an upkeep job, not a restore"

                    await send(ws, "upkeep:pause", {"job_id": job})
                    await until(ws, is_("upkeep:paused", job))
                    await send(ws, "agent:status", None)
                    status = (await until(ws, is_("agent:status")))[-1]["payload"]
                    assert status["status"] == "paused" and status["active_jobs"] == 1
                    await send(ws, "upkeep:resume", {"job_id": job})
                    rest = await until(ws, ended(job))
                    seen = await until(watcher, ended(job))
        assert rest[0] == {"type": "upkeep:resumed", "payload": {"job_id": job}}
        assert [m["type"] for m in seen if m["type"] in ("upkeep:paused", "upkeep:resumed")] == [
            "upkeep:paused",
            "upkeep:resumed",
        ]
        end = rest[-1]
        assert end["type"] == "upkeep:completed" and seen[-1] == end
        assert set(end["payload"]) == {"job_id", "task", "summary"}
        assert end["payload"]["task"] == "forget"
        assert end["payload"]["summary"].startswith("forgot 3 snapshots (kept 2), pruned ")
        progress = [m["payload"] for m in seen if m["type"] == "upkeep:progress"]
        assert progress
        for p in progress:
            assert set(p) == set(PROGRESS_FIELDS)  # exactly the nine fields
            for key, kind in PROGRESS_FIELDS.items():
                assert isinstance(p[key], kind), (key, p[key])
        percents = [p["percent"] for p in progress]
        assert percents == sorted(percents) and percents[-1] == 100.0
        assert not [m for m in seen if m["type"].split(":")[0] in ("backup", "restore")]

    run(scenario)
    assert snapshot_count(restic, repo_dir) == 2
    restic(repo_dir, "check", "--read-data")


def test_upkeep_cancel_ends_the_job_and_leaves_the_repository_as_it_was(
    tmp_path: Path, restic: Callable[..., Any]
) -> None:
    config = make_config(tmp_path, snapshots=4)
    repo_dir = Path(config.repository_path)
    files_before = sorted(p.relative_to(repo_dir) for p in repo_dir.rglob("*") if p.is_file())

    async def scenario() -> None:
        async with Agented(config) as agent:
            hold_jobs(agent, JobKind.UPKEEP)
            async with connect(agent.server.url, additional_headers=AUTH) as ws:
                forget = agent.controller.start_upkeep(UpkeepSpec.forget(KEEP_LAST_2))
                check = agent.controller.start_upkeep(UpkeepSpec.check(1, 2))
                await until(ws, is_("upkeep:progress", forget))
                # queued: cancelled at once; running (held, then paused): once the engine stops
                await send(ws, "upkeep:cancel", {"job_id": check})
                assert (await until(ws, ended(check)))[-1] == {
                    "type": "upkeep:failed",
                    "payload": {"job_id": check, "error": "cancelled"},
                }
                await send(ws, "upkeep:pause", {"job_id": forget})
                await until(ws, is_("upkeep:paused", forget))
                await send(ws, "upkeep:cancel", {"job_id": forget})
                assert (await until(ws, ended(forget)))[-1] == {
                    "type": "upkeep:failed",
                    "payload": {"job_id": forget, "error": "cancelled"},
                }
                await send(ws, "upkeep:cancel", {"job_id": forget})
                err = (await until(ws, is_("error")))[-1]["payload"]
                assert err == {
                    "message": f"job {forget} has already cancelled",
                    "request_type": "upkeep:cancel",
                }
                assert agent.controller.status().active_jobs == 0

    run(scenario)
    files_after = sorted(p.relative_to(repo_dir) for p in repo_dir.rglob("*") if p.is_file())
    assert files_after == files_before  # no lock left, nothing forgotten, nothing pruned
    assert list(LocalStorage(repo_dir).list(FileType.LOCK)) == []
    assert snapshot_count(restic, repo_dir) == 4
    restic(repo_dir, "check", "--read-data")


def test_upkeep_progress_waiting_for_a_slow_client_is_merged_per_job() -> None:
    c = _Client(ws=None, limit=10)  # type: ignore[arg-type]
    for i in range(50):
        assert c.offer(UpkeepProgress(JobId("u"), float(i), i, 100, 0, 0, None, 0, 0))
    out = []
    while (e := c.next()) is not None:
        out.append(e)
    assert out == [UpkeepProgress(JobId("u"), 49.0, 49, 100, 0, 0, None, 0, 0)]
