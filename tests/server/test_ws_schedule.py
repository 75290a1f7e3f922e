"""End to end: a scheduled backup seen by a real /ws client, paused by a real
D-Bus battery change and resumed on AC, and ``schedule:pause`` holding the
next run, with ``agent:status`` saying until when.

The agent runs whole (controller, /ws server, scheduler, the D-Bus condition
providers) against fake UPower, NetworkManager and logind services on a
private dbus-daemon. Only the scheduler's clocks are the test's, so the next
hourly slot comes without waiting an hour.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dbusfakes import FakeLogind, FakeNetworkManager, FakeUPower, private_bus, running
from support import FAST_KDF, PASSWORD, write
from websockets.asyncio.client import ClientConnection, connect

from desktop_agent.app import Agent
from desktop_agent.config import (
    AgentConfig,
    BackupConfig,
    Config,
    RepositoryConfig,
    ScheduleConfig,
    UpkeepConfig,
)
from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import LocalStorage
from desktop_agent.jobs import JobController, JobState
from desktop_agent.jobs.conditions import ConditionHub
from desktop_agent.jobs.scheduler import Scheduler
from desktop_agent.protocol import BackupPaused, BackupProgress

TOKEN = "schedule-test-token-0123456789"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


class Clock:
    """The scheduler's wall and monotonic clocks: real time plus what the test adds."""

    def __init__(self) -> None:
        self.offset = 0.0

    def wall(self) -> float:
        return time.time() + self.offset

    def mono(self) -> float:
        return time.monotonic() + self.offset  # time passing awake, not a sleep


class Client:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []  # every message, in order
        self.unread: list[dict[str, Any]] = []  # those next() passed over

    async def send(self, type_: str, payload: Any) -> None:
        await self.ws.send(json.dumps({"type": type_, "payload": payload}))

    async def next(self, type_: str, timeout: float = 30) -> dict[str, Any]:
        """The payload of the next message of ``type_``, in the order they came
        (the others stay unread for a later call)."""
        for msg in self.unread:
            if msg["type"] == type_:
                self.unread.remove(msg)
                return msg["payload"]  # type: ignore[no-any-return]

        async def read() -> dict[str, Any]:
            while True:
                msg = json.loads(await self.ws.recv())
                self.seen.append(msg)
                if msg["type"] == type_:
                    return msg["payload"]  # type: ignore[no-any-return]
                if msg["type"] == "error":
                    raise AssertionError(f"error from the agent: {msg['payload']}")
                self.unread.append(msg)

        return await asyncio.wait_for(read(), timeout)

    async def status(self) -> dict[str, Any]:
        await self.send("agent:status", None)
        return await self.next("agent:status")


def test_scheduled_backup_paused_by_battery_resumed_on_ac_then_held_by_schedule_pause(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    write(src / "notes.txt", b"yesterday's work\n")
    repo_path = tmp_path / "repo"
    repo = Repository.init(LocalStorage(repo_path), PASSWORD, kdf_params=FAST_KDF)
    backup(repo, BackupOptions(sources=[str(src)]))  # the last backup: a moment ago
    for i in range(24):  # then a day's work: 192 MiB that the next backup must store
        write(src / "work" / f"f{i:02}.bin", os.urandom(8 << 20))
    config = Config(
        agent=AgentConfig(token=TOKEN),
        repository=RepositoryConfig(path=str(repo_path), password_file=None),
        backup=BackupConfig(sources=(str(src),), exclude=(), interval_minutes=60),
        path=tmp_path / "config.toml",
        schedule=ScheduleConfig(random_delay_minutes=0, min_battery_percent=20),
        upkeep=UpkeepConfig(check_subsets=0),
    )
    clock = Clock()

    def scheduler(controller: JobController, hub: ConditionHub) -> Scheduler:
        return Scheduler(
            controller, hub, wall_clock=clock.wall, monotonic=clock.mono, tick_every=3600
        )

    with private_bus(tmp_path) as bus:
        upower = FakeUPower(bus.address, on_battery=False, percent=90.0)
        nm = FakeNetworkManager(bus.address, state=70, metered=2)
        logind = FakeLogind(bus.address)
        with running(upower, nm, logind):
            agent = Agent(
                config, host="127.0.0.1", port=0, system_bus=bus.address, scheduler=scheduler
            )

            async def scenario() -> None:
                await agent.start()
                assert agent.scheduler is not None
                sched = agent.scheduler
                try:
                    url = f"ws://127.0.0.1:{agent.server.port}/ws"
                    headers = {"Authorization": f"Bearer {TOKEN}"}
                    async with connect(url, additional_headers=headers) as ws:
                        c = Client(ws)
                        first = await c.status()
                        while first["last_success"] is None:  # read from the repository
                            await asyncio.sleep(0.05)
                            first = await c.status()
                        # the seed's three fields, then the schedule's
                        assert list(first)[:3] == ["status", "active_jobs", "uptime_secs"]
                        assert first["conditions"] == {
                            "on_battery": False,
                            "battery_percent": 90.0,
                            "metered": False,
                            "network_up": True,
                        }
                        assert first["paused_until"] is None and first["last_success"]
                        assert first["next_backup"] > first["last_success"]

                        # an hour later the scheduled backup starts
                        clock.offset += 61 * 60
                        sched.tick()
                        job = (await c.next("backup:started"))["job_id"]
                        progress = await c.next("backup:progress")
                        assert progress["job_id"] == job
                        # the charger is pulled, the battery at 10 %: it pauses
                        upower.set_device(Percentage=10.0)
                        upower.set_on_battery(True)
                        assert (await c.next("backup:paused"))["job_id"] == job
                        st = await c.status()
                        assert st["status"] == "paused"
                        assert st["conditions"]["on_battery"] is True
                        assert st["schedule"] == {
                            "state": "holding",
                            "reason": "battery at 10 % (below 20 %)",
                        }
                        # paused: nothing to keep sleep from (the lock it held is released)
                        assert [lock.mode for lock in logind.locks] == ["delay"]
                        assert await asyncio.to_thread(logind.wait_until, lambda: not logind.held())
                        # on AC again: it resumes and completes
                        upower.set_on_battery(False)
                        assert (await c.next("backup:resumed"))["job_id"] == job
                        done = await c.next("backup:completed", timeout=120)
                        assert done["job_id"] == job and done["total_bytes"] > 192 << 20

                        # pause the schedule for two hours from the server
                        await c.send("schedule:pause", {"minutes": 120})
                        paused = await c.next("agent:status")
                        until = time.strptime(paused["paused_until"], "%Y-%m-%dT%H:%M:%SZ")
                        expected = clock.wall() + 7200
                        assert abs(_utc(until) - expected) <= 2
                        # the next hourly slot comes: nothing starts
                        clock.offset += 61 * 60
                        decision = sched.tick()
                        assert decision.reason.startswith("paused until")
                        await asyncio.sleep(0.5)
                        st = await c.status()
                        assert (
                            st["active_jobs"] == 0 and st["paused_until"] == paused["paused_until"]
                        )
                        assert st["schedule"]["state"] == "paused"
                        assert not [m for m in c.seen if m["type"] == "backup:started"][1:]
                        # resumed: the held run starts at once
                        await c.send("schedule:resume", {})
                        resumed = await c.next("agent:status")
                        assert resumed["paused_until"] is None
                        second = (await c.next("backup:started"))["job_id"]
                        assert second != job
                        await c.next("backup:completed", timeout=120)
                        bad = {"minutes": -5}
                        await c.send("schedule:pause", bad)
                        with pytest.raises(AssertionError, match="minutes must be more than 0"):
                            await c.next("agent:status")
                finally:
                    await agent.stop()

            asyncio.run(asyncio.wait_for(scenario(), 180))


def _utc(t: time.struct_time) -> float:
    import calendar

    return float(calendar.timegm(t))


def test_sleep_during_a_backup_releases_the_delay_lock_only_once_it_paused(
    tmp_path: Path, restic: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """The real scheduler and logind provider: PrepareForSleep(true) while a backup
    runs; the delay lock goes after the backup's pause (which indexed what it
    stored) and well within logind's 5 s; after the wake it resumes and completes."""
    src = tmp_path / "src"
    for i in range(24):
        write(src / f"f{i:02}.bin", os.urandom(8 << 20))
    repo_path = tmp_path / "repo"
    Repository.init(LocalStorage(repo_path), PASSWORD, kdf_params=FAST_KDF)
    config = Config(
        agent=AgentConfig(token=TOKEN),
        repository=RepositoryConfig(path=str(repo_path), password_file=None),
        backup=BackupConfig(sources=(str(src),), exclude=(), interval_minutes=60),
        path=tmp_path / "config.toml",
        upkeep=UpkeepConfig(check_subsets=0),
    )
    with private_bus(tmp_path) as bus:
        logind = FakeLogind(bus.address)
        with running(logind):
            agent = Agent(config, host="127.0.0.1", port=0, system_bus=bus.address)
            paused_at: list[float] = []
            sleep_sent: list[float] = []

            def on(event: object) -> None:
                if isinstance(event, BackupPaused):
                    paused_at.append(time.monotonic())

            agent.bus.subscribe(on)

            async def scenario() -> None:
                await agent.start()  # no backup yet: the scheduler starts one
                try:
                    while not any(
                        isinstance(j.progress, BackupProgress) and j.progress.transferred_bytes
                        for j in agent.controller.jobs()
                    ):
                        await asyncio.sleep(0.01)
                    lock = await asyncio.to_thread(logind.wait_for_lock, "delay")
                    sleep_sent.append(await asyncio.to_thread(logind.prepare_for_sleep, True))
                    released = await asyncio.to_thread(
                        logind.wait_until, lambda: lock.released_at is not None
                    )
                    assert released
                    (job,) = agent.controller.jobs()
                    assert job.state is JobState.PAUSED and paused_at
                    assert paused_at[0] <= lock.released_at  # type: ignore[operator]
                    assert lock.released_at - sleep_sent[0] < 5.0  # type: ignore[operator]
                    # the machine sleeps, then wakes: the job resumes, the lock is taken again
                    count = len(logind.locks)
                    await asyncio.to_thread(logind.prepare_for_sleep, False)
                    # taken again (the resumed backup may finish and give it back first)
                    await asyncio.to_thread(logind.wait_for_lock, "delay", after=count, held=False)
                    while agent.controller.job(job.id).state is not JobState.COMPLETED:
                        assert agent.controller.job(job.id).state is not JobState.FAILED
                        await asyncio.sleep(0.05)
                finally:
                    await agent.stop()

            asyncio.run(asyncio.wait_for(scenario(), 120))
    assert logind.held() == []
    assert "no errors were found" in restic(repo_path, "check", "--read-data").stdout
