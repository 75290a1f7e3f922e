"""The controller's progress shaping and commands, on a real engine with real files."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from support import FAST_KDF, PASSWORD, write

from desktop_agent.config import AgentConfig, BackupConfig, Config, RepositoryConfig
from desktop_agent.engine.progress import Progress
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import LocalStorage
from desktop_agent.jobs import EventBus, JobChanged, JobController, JobError, JobState
from desktop_agent.protocol import BackupCompleted, BackupFailed, BackupPaused, BackupProgress


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def config(tmp_path: Path, sources: list[Path], interval: int = 0) -> Config:
    repo = tmp_path / "repo"
    if not repo.exists():
        Repository.init(LocalStorage(repo), PASSWORD, kdf_params=FAST_KDF)
    return Config(
        agent=AgentConfig(token="t" * 20),
        repository=RepositoryConfig(path=str(repo), password_file=None),
        backup=BackupConfig(
            sources=tuple(map(str, sources)), exclude=(), interval_minutes=interval
        ),
        path=tmp_path / "c.toml",
    )


async def collect_until_end(
    bus: EventBus, job_id: str, timeout: float = 60
) -> list[tuple[float, object]]:
    got: list[tuple[float, object]] = []
    done = asyncio.Event()

    def on(event: object) -> None:
        got.append((time.monotonic(), event))
        if isinstance(event, BackupCompleted | BackupFailed) and event.job_id == job_id:
            done.set()

    unsub = bus.subscribe(on)
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        unsub()
    return got


def test_progress_is_shaped_as_the_protocol_promises(tmp_path):
    src = tmp_path / "src"
    for i in range(12):
        write(src / f"f{i}.bin", os.urandom(25 * 1024 * 1024))

    async def scenario() -> list[tuple[float, object]]:
        bus = EventBus()
        ctl = JobController(config(tmp_path, [src]), bus)
        await ctl.start()
        try:
            events: list[tuple[float, object]] = []
            unsub = bus.subscribe(lambda e: events.append((time.monotonic(), e)))
            job = ctl.start_backup()
            await collect_until_end(bus, job)
            unsub()
            return events
        finally:
            await ctl.stop()

    events = asyncio.run(scenario())
    progress = [(t, e) for t, e in events if isinstance(e, BackupProgress)]
    assert len(progress) >= 3
    percents = [e.percent for _, e in progress]
    assert percents == sorted(percents)
    assert percents[-1] == 100.0 and all(p < 100.0 for p in percents[:-1])
    times = [t for t, _ in progress]
    # at most 10 a second (the final 100% may follow the last one closely)
    gaps = [b - a for a, b in zip(times[:-1], times[1:-1], strict=False)]
    assert all(g >= 0.09 for g in gaps), min(gaps)
    assert max(b - a for a, b in zip(times, times[1:], strict=False)) <= 1.2
    moving = [e for _, e in progress[1:-1] if e.transferred_bytes > 0]
    assert moving and all(e.bytes_per_second > 0 for e in moving)
    assert any(e.eta_seconds > 0 for e in moving)
    changes = [e.new for _, e in events if isinstance(e, JobChanged)]
    assert changes == [JobState.QUEUED, JobState.RUNNING, JobState.COMPLETED]


def test_rate_is_a_moving_average_and_eta_follows_it(tmp_path):
    """Drive the shaping with synthetic engine progress and a fake clock."""
    now = [1000.0]
    bus = EventBus()
    ctl = JobController(config(tmp_path, [tmp_path]), bus, clock=lambda: now[0])
    sent: list[BackupProgress] = []
    bus.subscribe(lambda e: sent.append(e) if isinstance(e, BackupProgress) else None)

    async def scenario() -> None:
        await ctl.start()
        job_id = ctl.start_backup()
        job = ctl._jobs[job_id]
        job.state = JobState.RUNNING  # drive it by hand: no engine run here
        job.rate.restart(now[0], 0)
        total = 1000 * 1000 * 1000
        done = 0
        for step in range(1, 31):  # 10 MB/s for 3 s, then 40 MB/s for 3 s
            now[0] += 0.1
            rate = 10e6 if step <= 15 else 40e6
            done += int(rate * 0.1)
            ctl._on_progress(job, Progress(done, total, step, 100, f"/f{step}", scan_finished=True))
        await ctl.stop()

    asyncio.run(scenario())
    mid = sent[14]
    assert 5e6 < mid.bytes_per_second <= 10e6 * 1.01
    last = sent[-1]
    assert 10e6 < last.bytes_per_second < 40e6  # smoothed, moving towards the new rate
    remaining = last.total_bytes - last.transferred_bytes
    assert last.eta_seconds == pytest.approx(remaining / last.bytes_per_second, rel=0.05)


def test_commands_on_unknown_or_finished_jobs_are_refused(tmp_path):
    src = write(tmp_path / "src" / "a.txt", b"a").parent

    async def scenario() -> None:
        bus = EventBus()
        ctl = JobController(config(tmp_path, [src]), bus)
        await ctl.start()
        try:
            with pytest.raises(JobError, match="unknown"):
                ctl.pause("nope")
            job = ctl.start_backup()
            await collect_until_end(bus, job)
            for command in (ctl.pause, ctl.resume, ctl.cancel):
                with pytest.raises(JobError):
                    command(job)
            assert ctl.job(job).state is JobState.COMPLETED
            assert ctl.status().status == "idle"
        finally:
            await ctl.stop()

    asyncio.run(scenario())


def test_a_job_fails_with_a_readable_reason(tmp_path, monkeypatch):
    async def scenario() -> None:
        bus = EventBus()
        cfg = config(tmp_path, [tmp_path / "does-not-exist"])
        ctl = JobController(cfg, bus)
        await ctl.start()
        try:
            job = ctl.start_backup()
            events = await collect_until_end(bus, job)
            failed = [e for _, e in events if isinstance(e, BackupFailed)]
            assert failed and "no backup source exists" in failed[0].error
            monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", "wrong")
            ctl.update_config(config(tmp_path, [tmp_path]))
            ctl._key = None
            job = ctl.start_backup()
            events = await collect_until_end(bus, job)
            failed = [e for _, e in events if isinstance(e, BackupFailed)]
            assert failed and "wrong password" in failed[0].error
        finally:
            await ctl.stop()

    asyncio.run(scenario())


def test_stopping_cancels_the_running_job(tmp_path):
    src = tmp_path / "src"
    for i in range(8):
        write(src / f"f{i}.bin", os.urandom(40 * 1024 * 1024))

    async def scenario() -> None:
        bus = EventBus()
        ctl = JobController(config(tmp_path, [src]), bus)
        await ctl.start()
        ends: list[object] = []
        bus.subscribe(lambda e: ends.append(e) if isinstance(e, BackupFailed) else None)
        job = ctl.start_backup()
        queued = ctl.start_backup()
        while ctl.job(job).progress is None or ctl.job(job).progress.transferred_bytes == 0:
            await asyncio.sleep(0.02)
        await ctl.stop()
        assert ctl.job(job).state is JobState.CANCELLED
        assert ctl.job(queued).state is JobState.CANCELLED
        assert {e.job_id for e in ends} == {job, queued}
        assert all(e.error == "cancelled" for e in ends)

    asyncio.run(scenario())
    assert (
        list(
            LocalStorage(tmp_path / "repo").list(
                __import__("desktop_agent.engine.storage", fromlist=["FileType"]).FileType.LOCK
            )
        )
        == []
    )


def test_pause_takes_effect_quickly(tmp_path):
    src = tmp_path / "src"
    for i in range(10):
        write(src / f"f{i}.bin", os.urandom(30 * 1024 * 1024))

    async def scenario() -> float:
        bus = EventBus()
        ctl = JobController(config(tmp_path, [src]), bus)
        await ctl.start()
        paused = asyncio.Event()
        bus.subscribe(lambda e: paused.set() if isinstance(e, BackupPaused) else None)
        try:
            job = ctl.start_backup()
            while ctl.job(job).progress is None or ctl.job(job).progress.transferred_bytes == 0:
                await asyncio.sleep(0.01)
            t = time.monotonic()
            ctl.pause(job)
            await asyncio.wait_for(paused.wait(), 10)
            latency = time.monotonic() - t
            assert ctl.status().status == "paused"
            ctl.resume(job)
            await collect_until_end(bus, job)
            return latency
        finally:
            await ctl.stop()

    latency = asyncio.run(scenario())
    print(f"pause latency {latency * 1000:.0f} ms")
