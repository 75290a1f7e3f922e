"""The scheduler: when a backup is due, against a fake wall clock.

``due()`` is checked directly on a stand-in controller (no engine, no
waiting); one test runs the real controller and engine end to end, waiting
for the events a scheduled backup publishes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support import FAST_KDF, PASSWORD, write

from desktop_agent.config import AgentConfig, BackupConfig, Config, RepositoryConfig
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import LocalStorage
from desktop_agent.jobs import (
    BackupSpec,
    EventBus,
    JobController,
    JobKind,
    JobState,
    JobView,
    RestoreSpec,
)
from desktop_agent.jobs.scheduler import RETRY_AFTER, Scheduler
from desktop_agent.protocol import AgentStatus, BackupCompleted, JobId

HOUR = 3600.0


@dataclass
class FakeController:
    """The part of a JobController the scheduler uses."""

    interval_minutes: int = 60
    active: int = 0
    finished: list[JobView] = field(default_factory=list)
    snapshot_time: float | None = None
    started: list[str] = field(default_factory=list)
    wake: asyncio.Event | None = None

    @property
    def config(self) -> Any:
        return type("C", (), {"backup": BackupConfig(interval_minutes=self.interval_minutes)})

    def status(self) -> AgentStatus:
        return AgentStatus("running" if self.active else "idle", self.active, 0)

    def last_finished(self, kind: JobKind | None = None) -> JobView | None:
        for view in reversed(self.finished):
            if kind is None or view.kind is kind:
                return view
        return None

    async def last_snapshot_time(self) -> float | None:
        return self.snapshot_time

    def start_backup(self, paths: Any = None, *, origin: str = "") -> JobId:
        self.started.append(origin)
        if self.wake is not None:
            self.wake.set()
        return JobId(f"job{len(self.started)}")


def ended(state: JobState, at: float, kind: JobKind = JobKind.BACKUP) -> JobView:
    spec: Any = BackupSpec() if kind is JobKind.BACKUP else RestoreSpec(None, (), "/x")  # type: ignore[arg-type]
    return JobView(JobId("j"), state, None, at - 10, at - 10, at, spec=spec)


def scheduler(ctl: FakeController, now: list[float]) -> Scheduler:
    return Scheduler(ctl, check_every=0.01, wall_clock=lambda: now[0])  # type: ignore[arg-type]


def test_no_interval_means_never() -> None:
    now = [1e9]
    assert not scheduler(FakeController(interval_minutes=0), now).due()


def test_never_backed_up_is_due_at_once_but_not_while_a_job_runs() -> None:
    now = [1e9]
    ctl = FakeController()
    sched = scheduler(ctl, now)
    assert sched.due()
    ctl.active = 1  # a backup, or a restore: one queue, the backup waits its turn
    assert not sched.due()


def test_due_again_an_interval_after_the_last_success() -> None:
    now = [1e9]
    ctl = FakeController(finished=[ended(JobState.COMPLETED, 1e9 - 59 * 60)])
    sched = scheduler(ctl, now)
    assert not sched.due()
    assert sched.last_success == 1e9 - 59 * 60
    now[0] += 60  # an hour since then
    assert sched.due()


def test_a_failed_backup_is_retried_after_ten_minutes_not_at_every_check() -> None:
    now = [1e9]
    ctl = FakeController(
        interval_minutes=24 * 60,
        finished=[
            ended(JobState.COMPLETED, 1e9 - 2 * 24 * HOUR),
            ended(JobState.FAILED, 1e9 - 60),
        ],
    )
    sched = scheduler(ctl, now)
    assert not sched.due()
    now[0] += RETRY_AFTER - 60
    assert sched.due()


def test_a_short_interval_retries_sooner_than_ten_minutes() -> None:
    now = [1e9]
    ctl = FakeController(interval_minutes=2, finished=[ended(JobState.FAILED, 1e9)])
    sched = scheduler(ctl, now)
    assert not sched.due()
    now[0] += 2 * 60
    assert sched.due()


def test_a_restore_is_neither_a_backup_success_nor_a_failed_attempt() -> None:
    now = [1e9]
    ctl = FakeController(
        finished=[
            ended(JobState.COMPLETED, 1e9 - 2 * HOUR),
            ended(JobState.COMPLETED, 1e9 - 60, JobKind.RESTORE),
        ]
    )
    sched = scheduler(ctl, now)
    assert sched.due()  # the backup is two hours old; the restore does not count
    ctl.finished.append(ended(JobState.FAILED, 1e9 - 30, JobKind.RESTORE))
    assert sched.due()  # nor does a failed restore delay the backup


def test_the_repository_says_when_the_last_backup_was() -> None:
    """At start the scheduler asks for the newest snapshot; a recent one is not redone."""
    now = [1e9]

    async def scenario() -> None:
        ctl = FakeController(snapshot_time=1e9 - 30 * 60, wake=asyncio.Event())
        sched = scheduler(ctl, now)
        sched.start()
        try:
            async with asyncio.timeout(10):
                while sched.last_success is None:
                    await asyncio.sleep(0.01)
            assert ctl.started == [] and not sched.due()
            now[0] += 30 * 60
            assert ctl.wake is not None
            await asyncio.wait_for(ctl.wake.wait(), 10)  # the next check starts it
            assert ctl.started == ["scheduler"]
        finally:
            await sched.stop()

    asyncio.run(scenario())


# ------------------------------------------------------------ end to end
@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_scheduler_starts_a_backup_when_due(tmp_path: Path) -> None:
    src = write(tmp_path / "src" / "a.txt", b"a").parent
    repo = tmp_path / "repo"
    Repository.init(LocalStorage(repo), PASSWORD, kdf_params=FAST_KDF)
    config = Config(
        agent=AgentConfig(token="t" * 20),
        repository=RepositoryConfig(path=str(repo), password_file=None),
        backup=BackupConfig(sources=(str(src),), exclude=(), interval_minutes=60),
        path=tmp_path / "c.toml",
    )
    wall = [time.time()]

    async def scenario() -> None:
        bus = EventBus()
        ctl = JobController(config, bus)
        await ctl.start()
        sched = Scheduler(ctl, check_every=0.05, wall_clock=lambda: wall[0])
        try:
            completed = asyncio.Event()
            bus.subscribe(lambda e: completed.set() if isinstance(e, BackupCompleted) else None)
            sched.start()  # no backup yet: one is due at once
            await asyncio.wait_for(completed.wait(), 30)
            completed.clear()
            (first,) = ctl.jobs()
            assert first.origin == "scheduler" and first.kind is JobKind.BACKUP
            assert not sched.due()  # not due again within the hour
            wall[0] += 61 * 60  # the laptop slept for an hour
            assert sched.due()
            await asyncio.wait_for(completed.wait(), 30)
            assert len(ctl.jobs()) == 2
        finally:
            await sched.stop()
            await ctl.stop()

    asyncio.run(scenario())
