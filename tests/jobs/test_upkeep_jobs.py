"""Upkeep is a job: forget + prune and a check of a part of the data, through the one queue.

Real repositories made by real backups (small packs, so that a few
megabytes make many packs), the real engine, and restic as the oracle of
what the repository looks like afterwards. The tests wait for the events
the controller publishes, never for time to pass.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from remotesupport import small_packs
from support import FAST_KDF, PASSWORD, write

from desktop_agent.config import AgentConfig, BackupConfig, Config, RepositoryConfig, UpkeepConfig
from desktop_agent.engine import prune as prune_module
from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.check import check, packs_in_subset
from desktop_agent.engine.control import Control
from desktop_agent.engine.ids import BlobType, PackId
from desktop_agent.engine.repository import Repository, hostname
from desktop_agent.engine.storage import FileType, LocalStorage
from desktop_agent.jobs import (
    EventBus,
    JobChanged,
    JobController,
    JobError,
    JobKind,
    JobState,
    UpkeepResult,
    UpkeepSpec,
)
from desktop_agent.jobs.upkeep import run_upkeep
from desktop_agent.protocol import (
    JobId,
    UpkeepCompleted,
    UpkeepFailed,
    UpkeepPaused,
    UpkeepProgress,
    UpkeepResumed,
    UpkeepStarted,
)

__all__ = ["small_packs"]  # the fixture, used by name

NO_KEEP = {f"keep_{r}": 0 for r in ("last", "hourly", "daily", "weekly", "monthly", "yearly")}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def config(tmp_path: Path) -> Config:
    return Config(
        agent=AgentConfig(token="t" * 20),
        repository=RepositoryConfig(path=str(tmp_path / "repo"), password_file=None),
        backup=BackupConfig(sources=(str(tmp_path / "src"),), exclude=(), interval_minutes=0),
        path=tmp_path / "c.toml",
    )


def history(tmp_path: Path, count: int = 5, *, other_host: bool = False) -> Path:
    """``count`` backups of a source that changes between them: each adds files
    to three folders and deletes the previous run's file in one, so forgetting
    old snapshots leaves data no snapshot uses, in packs that are partly used."""
    repo_dir = tmp_path / "repo"
    repo = Repository.init(LocalStorage(repo_dir), PASSWORD, kdf_params=FAST_KDF)
    src = tmp_path / "src"
    rng = random.Random(7)
    for k in range(count):
        for d in range(3):
            write(src / f"d{d}" / f"k{k}.bin", rng.randbytes(150_000))
        if k:
            (src / "d0" / f"k{k - 1}.bin").unlink()
        backup(repo, BackupOptions(sources=[str(src)], helpers=0, workers=2))
    for _ in range(3 if other_host else 0):  # another computer's history: not ours to forget
        backup(repo, BackupOptions(sources=[str(src)], host="elsewhere", helpers=0, workers=2))
    return repo_dir


def packs(repo_dir: Path) -> set[PackId]:
    return {PackId(bytes.fromhex(n)) for n, _ in LocalStorage(repo_dir).list(FileType.PACK)}


class Recorder:
    """Every bus event, and a way to wait for one."""

    def __init__(self, bus: EventBus) -> None:
        self.events: list[object] = []
        self._changed = asyncio.Event()
        bus.subscribe(self._on)

    def _on(self, event: object) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait(self, pred: Callable[[object], bool], timeout: float = 60) -> object:
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
    return lambda e: isinstance(e, UpkeepCompleted | UpkeepFailed) and e.job_id == job_id


class Agentless:
    """A started controller and a recorder of its bus."""

    def __init__(self, tmp_path: Path) -> None:
        self.bus = EventBus()
        self.ctl = JobController(config(tmp_path), self.bus)
        self.rec = Recorder(self.bus)

    async def __aenter__(self) -> Agentless:
        await self.ctl.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ctl.stop()

    async def run(self, spec: UpkeepSpec) -> tuple[JobId, object]:
        job = self.ctl.start_upkeep(spec, origin="scheduler")
        return job, await self.rec.wait(ends(job))


def keep_last(n: int) -> UpkeepSpec:
    return UpkeepSpec.forget(UpkeepConfig(forget=True, **{**NO_KEEP, "keep_last": n}))


# ------------------------------------------------------------------- specs
def test_specs_take_the_configured_policy_and_refuse_what_would_harm() -> None:
    spec = UpkeepSpec.forget(
        UpkeepConfig(forget=True)
    )  # the defaults: 7 daily, 4 weekly, 12 monthly
    assert spec.keep == (("daily", 7), ("weekly", 4), ("monthly", 12))
    assert spec.kind is JobKind.UPKEEP and spec.subset is None
    assert (spec.policy.daily, spec.policy.weekly, spec.policy.monthly) == (7, 4, 12)
    assert "7 daily, 4 weekly, 12 monthly" in spec.describe()
    assert keep_last(2).keep == (("last", 2),)
    with pytest.raises(ValueError, match="keeps nothing"):
        UpkeepSpec.forget(UpkeepConfig(**NO_KEEP))
    with pytest.raises(ValueError, match="unknown keep rule"):
        UpkeepSpec("forget", keep=(("within", 3),))
    assert UpkeepSpec.check(2, 20) == UpkeepSpec("check", subset=(2, 20))
    assert UpkeepSpec.check(2, 20).describe() == "check of the repository, reading 2/20 of the data"
    for n, t in ((0, 3), (4, 3), (1, 257)):
        with pytest.raises(ValueError, match="1 <= n <= t <= 256"):
            UpkeepSpec.check(n, t)
    with pytest.raises(ValueError, match="needs the part"):
        UpkeepSpec("check")
    with pytest.raises(ValueError, match="unknown upkeep task"):
        UpkeepSpec("prune")  # type: ignore[arg-type]


# ------------------------------------------------------------ forget + prune
def test_a_forget_job_keeps_the_last_two_of_five_prunes_and_restic_agrees(
    tmp_path: Path, small_packs: None, restic: Callable[..., Any]
) -> None:
    repo_dir = history(tmp_path, other_host=True)
    before = packs(repo_dir)

    async def scenario() -> tuple[JobId, list[object], UpkeepResult]:
        async with Agentless(tmp_path) as a:
            job, end = await a.run(keep_last(2))
            view = a.ctl.job(job)
            assert view.kind is JobKind.UPKEEP and view.origin == "scheduler"
            assert view.state is JobState.COMPLETED and view.paths is None
            assert isinstance(view.result, UpkeepResult)
            return job, a.rec.about(job), view.result

    job, mine, result = asyncio.run(scenario())
    assert mine[0] == JobChanged(job, None, JobState.QUEUED, JobKind.UPKEEP)
    assert mine[1] == UpkeepStarted(job, "forget")
    changes = [(e.old, e.new) for e in mine if isinstance(e, JobChanged)]
    assert changes == [
        (None, JobState.QUEUED),
        (JobState.QUEUED, JobState.RUNNING),
        (JobState.RUNNING, JobState.COMPLETED),
    ]
    progress = [e for e in mine if isinstance(e, UpkeepProgress)]
    percents = [p.percent for p in progress]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert all(p < 100.0 for p in percents[:-1])
    # prune's work: the packs it repacked
    assert result.prune is not None and result.prune.packs_repacked > 0
    assert progress[-1].files_processed == progress[-1].total_files == result.prune.packs_repacked
    assert (result.forgotten, result.kept) == (3, 2)
    assert result.freed_bytes > 0 and result.prune.packs_deleted > 0
    end = mine[-1]
    assert isinstance(end, UpkeepCompleted) and (end.job_id, end.task) == (job, "forget")
    assert end.summary == result.summary
    assert end.summary.startswith("forgot 3 snapshots (kept 2), pruned ")
    assert end.summary.endswith(" KiB") and "\n" not in end.summary

    listed = json.loads(restic(repo_dir, "snapshots", "--json").stdout)
    mine_left = [s for s in listed if s["hostname"] == hostname()]
    assert len(mine_left) == 2
    assert [s["hostname"] for s in listed if s not in mine_left] == ["elsewhere"] * 3
    restic(repo_dir, "check", "--read-data")
    assert len(packs(repo_dir)) < len(before)
    assert list(LocalStorage(repo_dir).list(FileType.LOCK)) == []


def test_a_forget_job_with_nothing_to_forget_does_not_prune(tmp_path: Path) -> None:
    repo_dir = history(tmp_path, count=2)
    before = packs(repo_dir)

    async def scenario() -> object:
        async with Agentless(tmp_path) as a:
            return (await a.run(keep_last(3)))[1]

    end = asyncio.run(scenario())
    assert isinstance(end, UpkeepCompleted)
    assert end.summary == "forgot no snapshots (kept 2): nothing to prune"
    assert packs(repo_dir) == before


class PauseOnNewPack(Control):
    """Pauses itself at the first checkpoint after a new pack file appeared:
    prune is then in the middle of repacking, its new index not yet written."""

    def __init__(self, repo_dir: Path) -> None:
        super().__init__()
        self.repo_dir = repo_dir
        self.before = packs(repo_dir)
        self.fired = False

    def checkpoint(
        self, *, secondary: bool = False, quiesce: Callable[[], None] | None = None
    ) -> None:
        if not self.fired and packs(self.repo_dir) - self.before:
            self.fired = True
            self.pause()
        super().checkpoint(secondary=secondary, quiesce=quiesce)


def test_a_prune_paused_and_cancelled_while_it_repacks_leaves_a_valid_repository(
    tmp_path: Path,
    small_packs: None,
    monkeypatch: pytest.MonkeyPatch,
    restic: Callable[..., Any],
) -> None:
    repo_dir = history(tmp_path)
    # prune's new packs as small as the backups': several of them while it repacks
    monkeypatch.setattr(prune_module, "PACK_SIZE", 64 * 1024)
    before = packs(repo_dir)
    index_before = {n for n, _ in LocalStorage(repo_dir).list(FileType.INDEX)}

    async def scenario() -> tuple[JobId, list[object], PauseOnNewPack]:
        async with Agentless(tmp_path) as a:
            control: list[PauseOnNewPack] = []

            def swap(event: object) -> None:
                # before the engine starts: the job's control is ours from the first checkpoint
                if isinstance(event, JobChanged) and event.new is JobState.RUNNING:
                    control.append(PauseOnNewPack(repo_dir))
                    a.ctl._jobs[JobId(event.job_id)].control = control[0]

            a.bus.subscribe(swap)
            job = a.ctl.start_upkeep(keep_last(2))
            await a.rec.wait(lambda e: isinstance(e, JobChanged) and e.new is JobState.RUNNING)
            assert await asyncio.to_thread(control[0].wait_paused, 30)
            # the engine has stopped mid-repack: a pause command is confirmed at once
            a.ctl.pause(job, JobKind.UPKEEP)
            await a.rec.wait(lambda e: isinstance(e, UpkeepPaused) and e.job_id == job)
            assert a.ctl.status().status == "paused"
            assert packs(repo_dir) - before  # new packs, listed by no index yet
            assert {n for n, _ in LocalStorage(repo_dir).list(FileType.INDEX)} == index_before
            a.ctl.cancel(job, JobKind.UPKEEP)
            await a.rec.wait(ends(job))
            return job, a.rec.about(job), control[0]

    job, mine, control = asyncio.run(scenario())
    assert control.fired
    assert mine[-1] == UpkeepFailed(job, "cancelled")
    assert [e for e in mine if isinstance(e, UpkeepPaused | UpkeepResumed)] == [UpkeepPaused(job)]
    # nothing was deleted: every pack is still there, the old index still lists them all
    assert before <= packs(repo_dir)
    assert {n for n, _ in LocalStorage(repo_dir).list(FileType.INDEX)} == index_before
    assert list(LocalStorage(repo_dir).list(FileType.LOCK)) == []
    # the forget part had happened: the two newest snapshots are left, complete
    assert len(json.loads(restic(repo_dir, "snapshots", "--json").stdout)) == 2
    restic(repo_dir, "check", "--read-data")
    repo = Repository.open(LocalStorage(repo_dir), PASSWORD)
    found = check(repo, read_data=True)
    assert found.ok, found.errors
    assert found.warnings  # the cancelled prune's new packs: the next prune removes them


# -------------------------------------------------------------------- check
class Recording(LocalStorage):
    """A local storage that remembers every whole pack file read."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.packs_read: list[str] = []

    def load(
        self,
        ftype: FileType,
        name: str,
        offset: int = 0,
        length: int | None = None,
        *,
        max_size: int | None = None,
    ) -> bytes:
        if ftype is FileType.PACK and length is None:
            self.packs_read.append(name)
        return super().load(ftype, name, offset, length, max_size=max_size)


def test_check_jobs_of_parts_one_two_and_three_of_three_read_every_pack_once(
    tmp_path: Path, small_packs: None
) -> None:
    repo_dir = history(tmp_path)
    every = packs(repo_dir)
    assert len(every) >= 6

    async def scenario() -> list[tuple[UpkeepResult, UpkeepProgress]]:
        out = []
        async with Agentless(tmp_path) as a:
            for n in (1, 2, 3):
                job, end = await a.run(UpkeepSpec.check(n, 3))
                assert end == UpkeepCompleted(
                    job,
                    "check",
                    f"checked {n}/3 of the data: {len(packs_in_subset(every, n, 3))} pack"
                    + ("" if len(packs_in_subset(every, n, 3)) == 1 else "s")
                    + ", no errors",
                )
                result = a.ctl.job(job).result
                assert isinstance(result, UpkeepResult)
                last = [e for e in a.rec.about(job) if isinstance(e, UpkeepProgress)][-1]
                out.append((result, last))
        return out

    results = asyncio.run(scenario())
    for n, (result, last) in enumerate(results, start=1):
        expected = packs_in_subset(every, n, 3)
        assert result.packs == len(every)
        assert result.packs_read == last.files_processed == last.total_files == len(expected)
        sizes = dict(LocalStorage(repo_dir).list(FileType.PACK))
        assert last.transferred_bytes == sum(sizes[p.hex()] for p in expected)
    assert sum(r.packs_read for r, _ in results) == len(every)

    # and which packs: each one exactly once over the three parts
    store = Recording(repo_dir)
    for n in (1, 2, 3):
        run_upkeep(Repository.open(store, PASSWORD), UpkeepSpec.check(n, 3))
    assert sorted(store.packs_read) == sorted(p.hex() for p in every)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x40
    path.write_bytes(bytes(data))


def data_pack(repo_dir: Path) -> PackId:
    """A pack holding file data (not trees): only reading it finds its damage."""
    repo = Repository.open(LocalStorage(repo_dir), PASSWORD)
    _names, listed = repo.load_index()
    return next(p for p, blobs in listed.items() if all(b.type is BlobType.DATA for b in blobs))


def test_a_check_job_that_reads_a_damaged_pack_fails_with_one_line_naming_it(
    tmp_path: Path, small_packs: None
) -> None:
    repo_dir = history(tmp_path)
    bad = data_pack(repo_dir)
    flip_a_byte(repo_dir / "data" / bad.hex()[:2] / bad.hex())
    t = 3
    n = bad[0] % t + 1
    other = n % t + 1  # a part without the damaged pack

    async def scenario() -> tuple[object, object, JobState, str | None]:
        async with Agentless(tmp_path) as a:
            job, failed = await a.run(UpkeepSpec.check(n, t))
            view = a.ctl.job(job)
            _, fine = await a.run(UpkeepSpec.check(other, t))
            return failed, fine, view.state, view.error

    failed, fine, state, error = asyncio.run(scenario())
    assert isinstance(failed, UpkeepFailed) and state is JobState.FAILED
    assert failed.error == error
    assert failed.error.startswith(f"check of {n}/{t} of the data found 1 error: pack {bad.hex()}")
    assert "content does not match its name" in failed.error
    assert "\n" not in failed.error and len(failed.error) <= 600
    # the part without it reads clean: a subset check reads only its own packs
    assert isinstance(fine, UpkeepCompleted) and fine.summary.endswith("no errors")


def test_upkeep_queues_behind_a_backup_and_refuses_commands_of_other_kinds(tmp_path: Path) -> None:
    history(tmp_path, count=2)
    write(tmp_path / "src" / "new.bin", os.urandom(300_000))

    async def scenario() -> tuple[list[object], JobId, JobId]:
        async with Agentless(tmp_path) as a:
            backup_job = a.ctl.start_backup()
            job = a.ctl.start_upkeep(UpkeepSpec.check(1, 1))
            assert a.ctl.status().active_jobs == 2
            with pytest.raises(JobError, match=f"job {job} is an upkeep job, not a backup"):
                a.ctl.cancel(job, JobKind.BACKUP)
            with pytest.raises(JobError, match="is a backup, not an upkeep job"):
                a.ctl.pause(backup_job, JobKind.UPKEEP)
            with pytest.raises(JobError, match="only a running job"):
                a.ctl.pause(job, JobKind.UPKEEP)  # it waits behind the backup
            await a.rec.wait(ends(job))
            return a.rec.events, backup_job, job

    events, backup_job, job = asyncio.run(scenario())
    order = [
        (type(e).__name__, e.job_id)
        for e in events
        if isinstance(e, UpkeepProgress | UpkeepCompleted) or type(e).__name__ == "BackupCompleted"
    ]
    assert order.index(("BackupCompleted", backup_job)) < order.index(("UpkeepProgress", job))
    end = next(e for e in events if ends(job)(e))
    assert isinstance(end, UpkeepCompleted) and end.summary.startswith("checked 1/1 of the data: ")
