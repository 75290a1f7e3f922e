"""Restores are jobs: one queue with backups, one state machine, restore:* events.

Real repositories made by real backups, the real engine; the tests wait for
the events the controller publishes, never for time to pass.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import FAST_KDF, PASSWORD, signature, write

from desktop_agent.config import AgentConfig, BackupConfig, Config, RepositoryConfig
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.restore import RestoreResult
from desktop_agent.engine.snapshot import Snapshot
from desktop_agent.engine.storage import FileType, LocalStorage
from desktop_agent.jobs import (
    EventBus,
    JobChanged,
    JobController,
    JobError,
    JobKind,
    JobState,
)
from desktop_agent.jobs.restores import FOLDER_PREFIX, new_restore_folder
from desktop_agent.protocol import (
    BackupCompleted,
    BackupFailed,
    BackupPaused,
    BackupProgress,
    JobId,
    RestoreCompleted,
    RestoreFailed,
    RestorePaused,
    RestoreProgress,
    RestoreResumed,
    RestoreStarted,
)


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return home


def config(tmp_path: Path, sources: list[Path], *, remote: bool = False) -> Config:
    repo = tmp_path / "repo"
    if not repo.exists():
        Repository.init(LocalStorage(repo), PASSWORD, kdf_params=FAST_KDF)
    return Config(
        agent=AgentConfig(token="t" * 20, allow_remote_restore=remote),
        repository=RepositoryConfig(path=str(repo), password_file=None),
        backup=BackupConfig(sources=tuple(map(str, sources)), exclude=(), interval_minutes=0),
        path=tmp_path / "c.toml",
    )


class Recorder:
    """Every bus event, and a way to wait for one."""

    def __init__(self, bus: EventBus) -> None:
        self.events: list[object] = []
        self._changed = asyncio.Event()
        self.unsubscribe = bus.subscribe(self._on)

    def _on(self, event: object) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait(self, pred: Callable[[object], bool], timeout: float = 120) -> object:
        async with asyncio.timeout(timeout):
            seen = 0
            while True:
                for event in self.events[seen:]:
                    if pred(event):
                        return event
                seen = len(self.events)
                self._changed.clear()
                await self._changed.wait()

    def about(self, job_id: str) -> list[object]:
        return [e for e in self.events if getattr(e, "job_id", None) == job_id]


def ends(job_id: str) -> Callable[[object], bool]:
    return lambda e: (
        isinstance(e, RestoreCompleted | RestoreFailed | BackupCompleted | BackupFailed)
        and e.job_id == job_id
    )


async def backed_up(ctl: JobController, rec: Recorder) -> Snapshot:
    job = ctl.start_backup()
    end = await rec.wait(ends(job))
    assert isinstance(end, BackupCompleted), end
    repo = Repository.open(LocalStorage(Path(ctl.config.repository_path)), PASSWORD)
    return repo.find_snapshot("latest")


def small_source(root: Path) -> Path:
    for i in range(12):
        write(root / f"d{i % 3}" / f"f{i}.txt", f"file {i}\n".encode() * 3000)
    write(root / "blob.bin", os.urandom(2 * 1024 * 1024))
    return root


def written(root: Path) -> list[tuple[str, int, int]]:
    """Every file under ``root`` with its size and allocated blocks."""
    out = []
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out.append((str(p), st.st_size, st.st_blocks))
    return out


def data_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_a_restore_is_a_job_with_restore_events_and_shaped_progress(tmp_path: Path) -> None:
    src = small_source(tmp_path / "src")
    out = tmp_path / "out"

    async def scenario() -> tuple[Recorder, JobId, JobController]:
        bus = EventBus()
        ctl = JobController(config(tmp_path, [src]), bus)
        rec = Recorder(bus)
        await ctl.start()
        try:
            snap = await backed_up(ctl, rec)
            job = ctl.start_restore(snap, [], str(out), origin="tray")
            # announced at once, counted as an active job
            assert rec.events[-1] == RestoreStarted(job, snap.id.hex(), str(out))  # type: ignore[union-attr]
            assert ctl.status().active_jobs == 1 and ctl.status().status == "running"
            view = ctl.job(job)
            assert view.kind is JobKind.RESTORE and view.state is JobState.QUEUED
            assert view.restore is not None and view.restore.target == str(out)
            assert view.origin == "tray" and view.paths is None
            await rec.wait(ends(job))
            return rec, job, ctl
        finally:
            await ctl.stop()

    rec, job, ctl = asyncio.run(scenario())
    mine = rec.about(job)
    assert not [e for e in mine if type(e).__name__.startswith("Backup")]  # restore:* only
    changes = [(e.old, e.new, e.kind) for e in mine if isinstance(e, JobChanged)]
    assert changes == [
        (None, JobState.QUEUED, JobKind.RESTORE),
        (JobState.QUEUED, JobState.RUNNING, JobKind.RESTORE),
        (JobState.RUNNING, JobState.COMPLETED, JobKind.RESTORE),
    ]
    progress = [e for e in mine if isinstance(e, RestoreProgress)]
    assert progress and not any(isinstance(e, BackupProgress) for e in mine)
    percents = [p.percent for p in progress]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert all(p < 100.0 for p in percents[:-1])
    total = data_bytes(src)
    last = progress[-1]
    assert last.transferred_bytes == last.total_bytes == total
    assert last.files_processed == last.total_files == 13
    assert last.eta_seconds == 0 and last.current_file is None
    assert mine[-1] == RestoreCompleted(job, total)
    # progress of the job comes before its end, nothing after it
    assert mine.index(last) < mine.index(mine[-1])
    result = ctl.job(job).result
    assert isinstance(result, RestoreResult) and result.errors == () and result.files == 13
    assert signature(out / src.relative_to("/")) == signature(src)
    assert list(LocalStorage(tmp_path / "repo").list(FileType.LOCK)) == []


def test_backups_and_restores_share_one_queue(tmp_path: Path) -> None:
    """A restore queued behind a backup starts only once the backup has ended,
    and a backup queued behind a restore waits for it: never two at once."""
    src = small_source(tmp_path / "src")

    async def scenario() -> list[object]:
        bus = EventBus()
        ctl = JobController(config(tmp_path, [src]), bus)
        rec = Recorder(bus)
        await ctl.start()
        try:
            snap = await backed_up(ctl, rec)
            write(src / "more.bin", os.urandom(1024 * 1024))
            first = ctl.start_backup()
            restore = ctl.start_restore(snap, [], str(tmp_path / "out"))
            second = ctl.start_backup()
            assert ctl.status().active_jobs == 3
            await rec.wait(ends(second))
            return [e for e in rec.events if getattr(e, "job_id", None) in (first, restore, second)]
        finally:
            await ctl.stop()

    events = asyncio.run(scenario())
    running: str | None = None
    order = []
    for e in events:
        if isinstance(e, JobChanged) and e.new is JobState.RUNNING:
            assert running is None, "two jobs ran at once"
            running = e.job_id
            order.append(e.kind)
        elif isinstance(e, JobChanged) and e.new in (JobState.COMPLETED, JobState.FAILED):
            assert running == e.job_id
            running = None
    assert order == [JobKind.BACKUP, JobKind.RESTORE, JobKind.BACKUP]
    assert [type(e).__name__ for e in events if "Completed" in type(e).__name__] == [
        "BackupCompleted",
        "RestoreCompleted",
        "BackupCompleted",
    ]


def test_pause_resume_and_cancel_a_restore_mid_way(tmp_path: Path) -> None:
    """The same commands as backups, through the engine's Control: a pause taken
    once bytes are being written holds the restore, resume finishes it; a
    cancel ends the job with restore:failed "cancelled"."""
    src = tmp_path / "big"
    for i in range(5):
        write(src / f"f{i}.bin", os.urandom(32 * 1024 * 1024))

    async def scenario() -> None:
        bus = EventBus()
        ctl = JobController(config(tmp_path, [src]), bus)
        rec = Recorder(bus)
        await ctl.start()
        try:
            snap = await backed_up(ctl, rec)
            job = ctl.start_restore(snap, [], str(tmp_path / "one"))

            def pause_once_writing(e: object) -> None:
                if isinstance(e, RestoreProgress) and e.job_id == job and e.transferred_bytes:
                    unsubscribe()
                    ctl.pause(job)

            unsubscribe = bus.subscribe(pause_once_writing)
            await rec.wait(lambda e: isinstance(e, RestorePaused) and e.job_id == job)
            view = ctl.job(job)
            assert view.state is JobState.PAUSED and ctl.status().status == "paused"
            assert view.progress is not None and 0 < view.progress.percent < 100
            # paused means paused: no worker writes a byte until resumed
            before = written(tmp_path / "one")
            await asyncio.sleep(1.0)  # a window to watch, not a wait for a condition
            assert written(tmp_path / "one") == before
            # the commands know their kind: a restore is not a backup
            with pytest.raises(JobError, match="is a restore, not a backup"):
                ctl.resume(job, JobKind.BACKUP)
            with pytest.raises(JobError, match="only a running job can be paused"):
                ctl.pause(job, JobKind.RESTORE)
            ctl.resume(job, JobKind.RESTORE)
            end = await rec.wait(ends(job))
            assert end == RestoreCompleted(job, data_bytes(src))
            kinds = [type(e) for e in rec.about(job)]
            assert kinds.index(RestorePaused) < kinds.index(RestoreResumed)
            assert BackupPaused not in kinds
            assert signature(tmp_path / "one" / src.relative_to("/")) == signature(src)

            # cancelled while it writes: restore:failed "cancelled", what was written stays
            job = ctl.start_restore(snap, [], str(tmp_path / "two"))

            def cancel_once_writing(e: object) -> None:
                if isinstance(e, RestoreProgress) and e.job_id == job and e.transferred_bytes:
                    unsubscribe2()
                    ctl.cancel(job, JobKind.RESTORE)

            unsubscribe2 = bus.subscribe(cancel_once_writing)
            end = await rec.wait(ends(job))
            assert end == RestoreFailed(job, "cancelled")
            assert ctl.job(job).state is JobState.CANCELLED
            assert [e for e in rec.about(job) if isinstance(e, RestoreCompleted)] == []
            with pytest.raises(JobError, match="already cancelled"):
                ctl.cancel(job)
            assert ctl.status().status == "idle"
        finally:
            await ctl.stop()

    asyncio.run(scenario())
    assert list(LocalStorage(tmp_path / "repo").list(FileType.LOCK)) == []


def test_a_queued_restore_is_cancelled_at_once_and_stopping_ends_every_restore(
    tmp_path: Path,
) -> None:
    src = small_source(tmp_path / "src")

    async def scenario() -> None:
        bus = EventBus()
        ctl = JobController(config(tmp_path, [src]), bus)
        rec = Recorder(bus)
        await ctl.start()
        snap = await backed_up(ctl, rec)
        gate = asyncio.Event()
        # hold the first restore at its first checkpoint: the others stay queued
        held = ctl.start_restore(snap, [], str(tmp_path / "a"))

        def hold(e: object) -> None:
            if isinstance(e, JobChanged) and e.job_id == held and e.new is JobState.RUNNING:
                ctl._jobs[held].control.pause()
                gate.set()

        bus.subscribe(hold)
        queued = ctl.start_restore(snap, [], str(tmp_path / "b"))
        dropped = ctl.start_restore(snap, [], str(tmp_path / "c"))
        await asyncio.wait_for(gate.wait(), 60)
        with pytest.raises(JobError, match="queued; only a running job can be paused"):
            ctl.pause(queued)
        ctl.cancel(queued)
        assert rec.events[-1] == RestoreFailed(queued, "cancelled")
        await ctl.stop()  # the held one is cancelled, the queued one dropped
        for job in (held, queued, dropped):
            ended = [e for e in rec.about(job) if isinstance(e, RestoreCompleted | RestoreFailed)]
            assert ended == [RestoreFailed(job, "cancelled")]
        with pytest.raises(JobError, match="shutting down"):
            ctl.start_restore(snap, [], str(tmp_path / "d"))

    asyncio.run(scenario())
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_a_restore_that_cannot_run_fails_with_a_reason(tmp_path: Path) -> None:
    src = small_source(tmp_path / "src")

    async def scenario() -> None:
        bus = EventBus()
        ctl = JobController(config(tmp_path, [src]), bus)
        rec = Recorder(bus)
        await ctl.start()
        try:
            snap = await backed_up(ctl, rec)
            job = ctl.start_restore(snap, ["/no/such/path"], str(tmp_path / "out"))
            end = await rec.wait(ends(job))
            assert isinstance(end, RestoreFailed) and "/no/such/path" in end.error
            assert ctl.job(job).state is JobState.FAILED
            with pytest.raises(JobError, match="absolute path"):
                ctl.start_restore(snap, [], "relative/target")
        finally:
            await ctl.stop()

    asyncio.run(scenario())


# ------------------------------------------------- restores asked for over /ws
def test_a_remote_restore_needs_the_switch(tmp_path: Path) -> None:
    async def scenario() -> None:
        bus = EventBus()
        ctl = JobController(config(tmp_path, [tmp_path]), bus)
        await ctl.start()
        try:
            with pytest.raises(JobError, match=r"\[agent\] allow_remote_restore = true"):
                await ctl.start_remote_restore("latest")
            assert ctl.jobs() == []
        finally:
            await ctl.stop()

    asyncio.run(scenario())


def test_a_remote_restore_goes_into_a_new_folder_every_time(tmp_path: Path, _env: Path) -> None:
    src = small_source(tmp_path / "src")
    downloads = _env / "Downloads"
    downloads.mkdir()

    async def scenario() -> None:
        bus = EventBus()
        ctl = JobController(config(tmp_path, [src], remote=True), bus)
        rec = Recorder(bus)
        await ctl.start()
        try:
            snap = await backed_up(ctl, rec)
            assert snap.id is not None
            targets = []
            for ref in ("latest", snap.id.hex()[:10], snap.id.hex()):
                job = await ctl.start_remote_restore(ref, origin="/ws")
                started = next(e for e in rec.about(job) if isinstance(e, RestoreStarted))
                assert started.snapshot == snap.id.hex()
                targets.append(started.target)
                assert ctl.job(job).origin == "/ws"
                assert await rec.wait(ends(job)) == RestoreCompleted(job, data_bytes(src))
            assert len(set(targets)) == 3
            for target in targets:
                assert Path(target).parent == downloads
                assert Path(target).name.startswith(f"{FOLDER_PREFIX} {snap.short_id} 20")
                assert signature(Path(target) / src.relative_to("/")) == signature(src)

            # some paths only
            job = await ctl.start_remote_restore("latest", [f"{src}/d1"])
            await rec.wait(ends(job))
            target = Path(ctl.job(job).restore.target)  # type: ignore[union-attr]
            assert os.listdir(target / src.relative_to("/")) == ["d1"]

            # an unknown snapshot: refused, no job, no folder
            before = sorted(os.listdir(downloads))
            with pytest.raises(JobError, match="cannot restore snapshot 'ffffffff'"):
                await ctl.start_remote_restore("ffffffff")
            # paths not in the snapshot: the job fails, its (empty) folder goes again
            job = await ctl.start_remote_restore("latest", ["/not/there"])
            end = await rec.wait(ends(job))
            assert isinstance(end, RestoreFailed)
            assert sorted(os.listdir(downloads)) == before
        finally:
            await ctl.stop()

    asyncio.run(scenario())


def test_new_restore_folders_are_new_and_unique(tmp_path: Path, _env: Path) -> None:
    when = time.mktime((2024, 5, 1, 14, 3, 22, 0, 0, -1))
    first = new_restore_folder("abcd1234", base=tmp_path, now=when)
    assert first == str(tmp_path / "desktop-agent restore abcd1234 2024-05-01 14-03-22")
    second = new_restore_folder("abcd1234", base=tmp_path, now=when)
    assert second == first + " (2)"
    assert os.listdir(first) == [] and os.stat(second).st_mode & 0o777 == 0o700
    # no downloads folder: the home folder
    home_one = new_restore_folder("abcd1234")
    assert Path(home_one).parent == _env
    with pytest.raises(FileNotFoundError):
        new_restore_folder("abcd1234", base=tmp_path / "missing")
