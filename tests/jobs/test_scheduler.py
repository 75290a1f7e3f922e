"""The scheduler driving the real controller and engine, with simulated clocks.

The wall and monotonic clocks the scheduler reads are the test's; each step
is an explicit ``tick()`` (or a condition, wake or job end that causes one),
so nothing waits for time to pass: only for the real backups to run.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC
from pathlib import Path

import pytest
from support import FAST_KDF, PASSWORD, write

from desktop_agent.config import (
    AgentConfig,
    BackupConfig,
    Config,
    RepositoryConfig,
    ScheduleConfig,
    UpkeepConfig,
)
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import FileType, LocalStorage
from desktop_agent.jobs import EventBus, JobChanged, JobController, JobKind, JobState
from desktop_agent.jobs.bus import ScheduleChanged
from desktop_agent.jobs.conditions import ConditionHub, Inhibit
from desktop_agent.jobs.schedule import Verdict
from desktop_agent.jobs.scheduler import Scheduler
from desktop_agent.protocol import (
    BackupCompleted,
    BackupFailed,
    BackupPaused,
    BackupProgress,
    BackupResumed,
    UpkeepCompleted,
    UpkeepPaused,
    UpkeepResumed,
)

MIN = 60.0
HOUR = 3600.0
T0 = 1_796_634_000.0  # Monday 2026-12-07 09:00 UTC


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


class Clocks:
    """The wall and monotonic clocks the scheduler sees."""

    def __init__(self) -> None:
        self.wall = T0
        self.mono = 1000.0

    def run(self, seconds: float) -> None:
        """Time passes while the machine is awake."""
        self.wall += seconds
        self.mono += seconds

    def sleep(self, seconds: float) -> None:
        """The machine is suspended: the monotonic clock stands still."""
        self.wall += seconds


def make_config(tmp_path: Path, src: Path, **schedule: object) -> Config:
    repo = tmp_path / "repo"
    if not repo.exists():
        Repository.init(LocalStorage(repo), PASSWORD, kdf_params=FAST_KDF)
    return Config(
        agent=AgentConfig(token="t" * 20),
        repository=RepositoryConfig(path=str(repo), password_file=None),
        backup=BackupConfig(sources=(str(src),), exclude=(), interval_minutes=60),
        path=tmp_path / "c.toml",
        schedule=ScheduleConfig(**{"random_delay_minutes": 0, **schedule}),  # type: ignore[arg-type]
        upkeep=UpkeepConfig(check_subsets=0),  # upkeep has its own tests
    )


class Rig:
    """A controller, a hub and a scheduler on simulated clocks, and what the bus carried."""

    def __init__(self, config: Config, state: Path) -> None:
        self.clocks = Clocks()
        self.bus = EventBus()
        self.events: list[object] = []
        self.bus.subscribe(self.events.append)
        self.controller = JobController(config, self.bus)
        self.hub = ConditionHub()
        self.state = state
        self.scheduler = self.new_scheduler()

    def new_scheduler(self) -> Scheduler:
        return Scheduler(
            self.controller,
            self.hub,
            state_file=self.state,
            wall_clock=lambda: self.clocks.wall,
            monotonic=lambda: self.clocks.mono,
            tz=UTC,
            tick_every=24 * HOUR,  # the test ticks; the timer would only tick after a job
            seed="test",
        )

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.events if isinstance(e, kind)]

    async def until(self, test: Callable[[], bool], timeout: float = 30) -> None:
        async def poll() -> None:
            while not test():
                await asyncio.sleep(0.01)

        await asyncio.wait_for(poll(), timeout)

    async def ended(self, count: int) -> None:
        await self.until(lambda: len(self.of(BackupCompleted) + self.of(BackupFailed)) >= count)

    def jobs(self) -> list:  # type: ignore[type-arg]
        return self.controller.jobs()


def run(scenario: Callable[[Rig], Awaitable[None]], config: Config, tmp_path: Path) -> None:
    async def main() -> None:
        rig = Rig(config, tmp_path / "state.json")
        await rig.controller.start()
        rig.scheduler.start()
        try:
            await asyncio.wait_for(scenario(rig), 60)
        except TimeoutError:
            for task in asyncio.all_tasks():
                task.print_stack()
            raise
        finally:
            await rig.scheduler.stop()
            await rig.controller.stop(timeout=10)

    asyncio.run(main())


def small_source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for i in range(5):
        write(src / f"f{i}.txt", f"file {i}\n".encode() * 100)
    return src


def big_source(tmp_path: Path, files: int = 12, size: int = 6 << 20) -> Path:
    src = tmp_path / "big"
    for i in range(files):
        write(src / f"f{i}.bin", os.urandom(size))
    return src


def test_due_at_once_then_hourly_and_one_catch_up_after_sleep(tmp_path: Path) -> None:
    config = make_config(tmp_path, small_source(tmp_path), wake_delay_seconds=60)

    async def scenario(rig: Rig) -> None:
        await rig.ended(1)  # no backup yet: the first tick starts one
        (first,) = rig.jobs()
        assert first.origin == "scheduler" and first.state is JobState.COMPLETED
        assert rig.scheduler.history.last_success == T0
        status = rig.scheduler.status()
        assert status.verdict is Verdict.WAIT and status.next_backup == T0 + HOUR
        assert rig.scheduler.tick().verdict is Verdict.WAIT
        # the lid closes for five hours: five slots pass unseen
        rig.clocks.run(10 * MIN)
        rig.scheduler.tick()
        rig.clocks.sleep(5 * HOUR)
        woke = rig.clocks.wall
        d = rig.scheduler.tick()  # the clock jumped: a wake
        assert d.verdict is Verdict.WAIT and d.reason == "the computer just woke up"
        rig.scheduler.after_wake()  # logind says so too, a moment later
        rig.clocks.run(60)
        assert rig.scheduler.tick().verdict is Verdict.WAIT  # 60 s after the second signal
        rig.clocks.run(1)
        rig.scheduler.tick()
        await rig.ended(2)
        # more signals of the same wake start nothing more
        rig.scheduler.after_wake()
        rig.clocks.run(120)
        rig.scheduler.after_wake()
        rig.clocks.run(120)
        assert rig.scheduler.tick().verdict is Verdict.WAIT
        await asyncio.sleep(0.2)
        assert len(rig.jobs()) == 2
        assert rig.scheduler.history.last_success == woke + 61

    run(scenario, config, tmp_path)


def test_battery_pauses_a_scheduled_backup_and_ac_resumes_it(tmp_path: Path) -> None:
    config = make_config(tmp_path, big_source(tmp_path, files=20))

    async def scenario(rig: Rig) -> None:
        unplugged = False

        def on(event: object) -> None:
            nonlocal unplugged
            # the charger is pulled the moment the scheduled backup starts
            if isinstance(event, JobChanged) and event.new is JobState.RUNNING and not unplugged:
                unplugged = True
                rig.hub.update("test", on_battery=True, battery_percent=12.0)

        rig.bus.subscribe(on)
        await rig.until(lambda: bool(rig.of(BackupPaused)))
        (job,) = rig.jobs()
        status = rig.scheduler.status()
        assert status.held == "battery at 12 % (below 20 %)"
        assert rig.controller.job(job.id).state is JobState.PAUSED
        assert rig.hub.inhibit is Inhibit.NONE  # nothing runs: sleep is welcome
        # the user resumes it by hand: that wins, the same reason does not pause it again
        rig.controller.resume(job.id)
        await rig.until(lambda: len(rig.of(BackupResumed)) == 1)
        rig.hub.update("test", battery_percent=11.0)
        assert rig.controller.job(job.id).state is JobState.RUNNING
        assert rig.hub.inhibit is Inhibit.DELAY
        # a new reason does: the connection turns metered
        rig.hub.update("test", metered=True)
        await rig.until(lambda: len(rig.of(BackupPaused)) == 2)
        assert "on a metered network" in (rig.scheduler.status().held or "")
        # AC and an unmetered network: it resumes and completes
        rig.hub.update("test", on_battery=False, metered=False)
        await rig.ended(1)
        assert rig.of(BackupCompleted)[0].job_id == job.id
        assert len(rig.of(BackupResumed)) == 2
        assert rig.scheduler.history.failures == 0

    run(scenario, config, tmp_path)


def test_a_skip_is_recorded_apart_from_failures_and_a_users_backup_is_not_held(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, small_source(tmp_path), skip_on_metered=True)

    async def scenario(rig: Rig) -> None:
        await rig.ended(1)
        rig.hub.update("test", metered=True)
        rig.clocks.run(HOUR)
        d = rig.scheduler.tick()
        assert d.verdict is Verdict.SKIP and d.reason == "on a metered network"
        assert rig.scheduler.history.failures == 0 and len(rig.jobs()) == 1
        changed = [e.status for e in rig.of(ScheduleChanged)]
        assert changed[-1].verdict is Verdict.SKIP and changed[-1].reason == d.reason
        # a backup the user starts runs whatever the conditions
        job = rig.controller.start_backup(origin="tray")
        await rig.ended(2)
        assert rig.controller.job(job).state is JobState.COMPLETED
        assert not rig.of(BackupPaused)
        # it counts as the hour's backup: nothing is due now
        rig.hub.update("test", metered=False)
        assert rig.scheduler.tick().verdict is Verdict.WAIT

    run(scenario, config, tmp_path)


def test_maximum_runtime_stops_a_backup_and_the_next_run_continues(tmp_path: Path) -> None:
    config = make_config(tmp_path, big_source(tmp_path, files=20), max_runtime_minutes=30)
    repo = LocalStorage(tmp_path / "repo")

    async def scenario(rig: Rig) -> None:
        held: list[str] = []

        def on(event: object) -> None:
            # hold the first run where it is, once packs are stored (the pause indexes them)
            if isinstance(event, BackupProgress) and event.transferred_bytes >= 40 << 20:
                if not held:
                    held.append(event.job_id)
                    rig.controller.pause(event.job_id)

        rig.bus.subscribe(on)
        await rig.until(lambda: bool(rig.of(BackupPaused)))
        (job,) = rig.jobs()
        indexed = len(list(repo.list(FileType.INDEX)))
        assert indexed >= 2  # the repository's first index, and the pause's
        rig.clocks.run(30 * MIN)
        rig.scheduler.tick()
        await rig.ended(1)
        (failed,) = rig.of(BackupFailed)
        assert failed.error.startswith("stopped after the maximum runtime of 30 min")
        h = rig.scheduler.history
        assert h.last_stop == T0 and h.failures == 0 and h.last_success is None
        assert not list(repo.list(FileType.SNAPSHOT))
        # the stopped run was the 09:00 slot's: the next one comes at 10:00
        assert rig.scheduler.tick().verdict is Verdict.WAIT
        rig.clocks.run(30 * MIN)
        rig.scheduler.tick()
        await rig.ended(2)
        (done,) = rig.of(BackupCompleted)
        result = rig.controller.job(done.job_id).result
        assert result is not None
        total = result.summary.total_bytes_processed
        assert result.summary.data_added < total - (20 << 20)  # the stored part was not re-sent

    run(scenario, config, tmp_path)


def test_sleep_pauses_the_running_job_releases_the_lock_and_wake_resumes(tmp_path: Path) -> None:
    config = make_config(tmp_path, big_source(tmp_path, files=20))
    levels: list[Inhibit] = []

    async def scenario(rig: Rig) -> None:
        rig.hub.on_inhibit(levels.append)
        sleeping: list[asyncio.Task[None]] = []

        def on(event: object) -> None:
            # the lid closes as soon as the backup is under way
            if isinstance(event, BackupProgress) and event.transferred_bytes and not sleeping:
                assert rig.hub.inhibit is Inhibit.DELAY
                sleeping.append(asyncio.ensure_future(rig.hub.before_sleep()))

        rig.bus.subscribe(on)
        await rig.until(lambda: bool(sleeping))
        await sleeping[0]  # returns once the pause took effect
        (job,) = rig.jobs()
        assert rig.controller.job(job.id).state is JobState.PAUSED
        assert rig.hub.inhibit is Inhibit.NONE
        assert rig.scheduler.status().held == "the computer is going to sleep"
        rig.clocks.sleep(2 * HOUR)
        rig.hub.after_wake()
        await rig.ended(1)
        assert rig.controller.job(job.id).state is JobState.COMPLETED
        assert levels[:4] == [Inhibit.NONE, Inhibit.DELAY, Inhibit.NONE, Inhibit.DELAY]
        assert rig.hub.inhibit is Inhibit.NONE  # idle again

    run(scenario, config, tmp_path)


def test_keep_awake_asks_for_a_block_lock(tmp_path: Path) -> None:
    config = make_config(tmp_path, big_source(tmp_path, files=4), keep_awake=True)

    async def scenario(rig: Rig) -> None:
        seen: list[Inhibit] = []
        rig.hub.on_inhibit(seen.append)
        await rig.ended(1)
        assert Inhibit.BLOCK in seen and Inhibit.DELAY not in seen
        assert rig.hub.inhibit is Inhibit.NONE

    run(scenario, config, tmp_path)


def test_a_pause_is_kept_across_restarts_and_holds_the_schedule(tmp_path: Path) -> None:
    config = make_config(tmp_path, small_source(tmp_path))

    async def scenario(rig: Rig) -> None:
        await rig.ended(1)
        rig.scheduler.pause(120)
        assert rig.scheduler.status().paused_until == T0 + 120 * MIN
        fields = rig.scheduler.status_fields()
        assert fields["paused_until"] == "2026-12-07T11:00:00Z"
        assert fields["last_success"] == "2026-12-07T09:00:00Z"
        # the agent restarts
        await rig.scheduler.stop()
        rig.scheduler = rig.new_scheduler()
        rig.scheduler.start()
        rig.clocks.run(HOUR + MIN)
        d = rig.scheduler.tick()
        assert d.verdict is Verdict.SKIP and d.reason == "paused until 11:00"
        rig.scheduler.pause(None)
        rig.clocks.run(HOUR)
        d = rig.scheduler.tick()
        assert d.reason == "paused until you resume"
        assert rig.scheduler.status_fields()["paused_indefinitely"] is True
        rig.scheduler.resume()
        await rig.ended(2)
        assert rig.scheduler.status_fields()["paused_until"] is None

    run(scenario, config, tmp_path)


def test_failures_back_off_and_a_missing_repository_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = small_source(tmp_path)
    config = make_config(tmp_path, src)
    config = replace(config, repository=replace(config.repository, path=str(tmp_path / "not-yet")))

    async def scenario(rig: Rig) -> None:
        await rig.until(lambda: rig.scheduler._decision is not None)
        assert rig.scheduler.tick().reason.startswith("no repository yet")
        assert rig.jobs() == []
        # the repository appears, with another password than the agent has
        Repository.init(LocalStorage(tmp_path / "not-yet"), "other", kdf_params=FAST_KDF)
        rig.scheduler.repository_known = True
        rig.scheduler.tick()
        await rig.ended(1)
        h = rig.scheduler.history
        assert h.failures == 1 and "password" in (h.last_error or "")
        d = rig.scheduler.tick()
        assert d.verdict is Verdict.WAIT and d.next_backup == T0 + 5 * MIN
        rig.clocks.run(5 * MIN)
        rig.scheduler.tick()
        await rig.ended(2)
        assert rig.scheduler.history.failures == 2
        assert rig.scheduler.tick().next_backup == T0 + 5 * MIN + 10 * MIN
        assert rig.scheduler.status_fields()["schedule"] == {
            "state": "failing",
            "reason": "retrying at 09:15",
        }

    run(scenario, config, tmp_path)


def test_scheduled_upkeep_runs_on_ac_only_and_pauses_when_unplugged(tmp_path: Path) -> None:
    config = make_config(tmp_path, small_source(tmp_path))
    config = replace(config, upkeep=UpkeepConfig(check_subsets=4))

    async def scenario(rig: Rig) -> None:
        rig.hub.update("test", on_battery=True, battery_percent=90.0)  # fine for a backup
        await rig.ended(1)
        await asyncio.sleep(0.1)
        kinds = [j.kind for j in rig.jobs()]
        assert kinds == [JobKind.BACKUP]  # no upkeep on battery
        unplug: list[str] = []

        def on(event: object) -> None:
            # the charger is pulled the moment the check starts
            if isinstance(event, JobChanged) and event.kind is JobKind.UPKEEP and not unplug:
                if event.new is JobState.RUNNING:
                    unplug.append(event.job_id)
                    rig.hub.update("test", on_battery=True)

        rig.bus.subscribe(on)
        rig.hub.update("test", on_battery=False)  # on AC: the weekly check starts
        await rig.until(lambda: bool(rig.of(UpkeepPaused)))
        (check,) = [j for j in rig.jobs() if j.kind is JobKind.UPKEEP]
        assert check.origin == "scheduler" and rig.scheduler.status().held == "on battery"
        rig.hub.update("test", on_battery=False)
        await rig.until(lambda: bool(rig.of(UpkeepCompleted)))
        assert rig.of(UpkeepResumed) and rig.scheduler.history.check_next == 2
        # a week later, the next part
        rig.clocks.run(7 * 24 * HOUR)
        rig.scheduler.tick()
        await rig.until(lambda: len(rig.of(UpkeepCompleted)) == 2)
        assert rig.scheduler.history.check_next == 3

    run(scenario, config, tmp_path)
