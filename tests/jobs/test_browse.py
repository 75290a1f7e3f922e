"""The repository browser on real repositories made by real backups."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from support import FAST_KDF, PASSWORD, signature, write

from desktop_agent.config import AgentConfig, BackupConfig, Config, RepositoryConfig
from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.errors import EngineError, NotFound, RepositoryNotFound
from desktop_agent.engine.progress import Progress
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.restore import RestoreResult
from desktop_agent.engine.snapshot import Snapshot
from desktop_agent.engine.storage import FileType, LocalStorage
from desktop_agent.jobs import EventBus, JobController, JobState, JobView
from desktop_agent.jobs.browse import Entry, RepositoryBrowser, split_path
from desktop_agent.protocol import BackupFailed, BackupPaused, RestoreCompleted, RestoreFailed

T = TypeVar("T")
BAD = b"bad\xffname.txt"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def config(tmp_path: Path, sources: list[Path], password_file: Path | None = None) -> Config:
    return Config(
        agent=AgentConfig(token="t" * 20),
        repository=RepositoryConfig(
            path=str(tmp_path / "repo"),
            password_file=str(password_file) if password_file else None,
        ),
        backup=BackupConfig(sources=tuple(map(str, sources)), exclude=(), interval_minutes=0),
        path=tmp_path / "c.toml",
    )


def make_source(root: Path) -> Path:
    write(root / "top.txt", b"top\n" * 100, 1_600_000_000_123_456_789)
    for i in range(6):
        write(root / f"d{i % 2}" / f"f{i}.txt", f"file {i}\n".encode() * 500)
    write(root / "d0" / "sub" / "deep.bin", os.urandom(300_000))
    (root / "empty").mkdir()
    with open(os.fsencode(root / "d1") + b"/" + BAD, "wb") as fh:
        fh.write(b"not utf-8 name\n")
    return root


def snapshot_of(tmp_path: Path, sources: list[Path]) -> Snapshot:
    repo_dir = tmp_path / "repo"
    if not repo_dir.exists():
        Repository.init(LocalStorage(repo_dir), PASSWORD, kdf_params=FAST_KDF)
    repo = Repository.open(LocalStorage(repo_dir), PASSWORD)
    return backup(repo, BackupOptions(sources=[str(s) for s in sources])).snapshot


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 120)

    return asyncio.run(main())


def ignore(_progress: Progress) -> None:
    pass


def by_name(entries: list[Entry]) -> dict[str, Entry]:
    return {e.name: e for e in entries}


async def walk_to(browser: RepositoryBrowser, snap: Snapshot, path: Path) -> list[Entry]:
    """List every folder from the top down to ``path`` (as a user expands them)."""
    current = "/"
    entries = await browser.list_dir(snap, current)
    for comp in split_path(str(path)):
        entry = next(e for e in entries if e.raw_name == comp)
        assert entry.is_dir and entry.has_children
        current = entry.path
        entries = await browser.list_dir(snap, current)
    return entries


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_source(tmp_path / "src")


@pytest.fixture
def browser(tmp_path: Path, source: Path) -> Any:
    snapshot_of(tmp_path, [source])
    b = RepositoryBrowser(JobController(config(tmp_path, [source]), EventBus()))
    yield b
    b.close()


@asynccontextmanager
async def running(browser: RepositoryBrowser) -> AsyncIterator[None]:
    """The browser's controller runs jobs (on the test's loop) inside the block."""
    await browser.controller.start()
    try:
        yield
    finally:
        await browser.controller.stop()


def test_snapshots_newest_first(tmp_path: Path, source: Path, browser: RepositoryBrowser) -> None:
    first = run(browser.snapshots())
    assert len(first) == 1
    write(source / "later.txt", b"later\n")
    second = snapshot_of(tmp_path, [source])
    snaps = run(browser.snapshots())  # a refresh sees the new snapshot
    assert [s.id for s in snaps] == [second.id, first[0].id]
    assert snaps[0].paths == (str(source),)


def test_listing_walks_down_lazily_with_raw_names(
    source: Path, browser: RepositoryBrowser, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[bytes] = []
    threads: set[str] = set()
    real = Repository.load_tree

    def counting(self: Repository, tree_id: bytes) -> Any:
        loads.append(tree_id)
        threads.add(threading.current_thread().name)
        return real(self, tree_id)

    monkeypatch.setattr(Repository, "load_tree", counting)

    async def scenario() -> None:
        (snap,) = await browser.snapshots()
        top = await browser.list_dir(snap, "/")
        assert len(loads) == 1 and browser.is_cached(snap.tree)
        assert [e.path for e in top] == ["/" + split_path(str(source))[0].decode()]

        entries = await walk_to(browser, snap, source)
        names = by_name(entries)
        assert set(names) == {"d0", "d1", "empty", "top.txt"}
        top_txt = names["top.txt"]
        assert top_txt.type == "file" and not top_txt.is_dir and not top_txt.has_children
        assert top_txt.size == 400 and top_txt.mtime_ns == 1_600_000_000_123_456_789
        assert top_txt.path == f"{source}/top.txt"
        assert names["d0"].has_children and names["d0"].path == f"{source}/d0"
        assert names["empty"].is_dir  # it has a (empty) tree

        # nothing below the source has been loaded yet
        depth = len(split_path(str(source)))
        assert len(loads) == depth + 1
        d1 = by_name(await browser.list_dir(snap, names["d1"].path))
        assert len(loads) == depth + 2

        bad = d1["bad\\xffname.txt"]
        assert bad.raw_name == BAD and bad.size == len(b"not utf-8 name\n")
        assert os.fsencode(bad.path) == os.fsencode(source / "d1") + b"/" + BAD

        # listing again (and the same folders on the way) comes from the cache
        again = await browser.list_dir(snap, names["d1"].path)
        assert again == list(d1.values())
        await walk_to(browser, snap, source)
        assert len(loads) == depth + 2

        assert await browser.list_dir(snap, names["empty"].path) == []
        with pytest.raises(NotFound, match="not a folder"):
            await browser.list_dir(snap, top_txt.path)
        with pytest.raises(NotFound, match="not a folder"):
            await browser.list_dir(snap, f"{source}/nope")

    run(scenario())
    assert threads == {"browse_0"}  # never on the loop thread


async def restore_job(
    browser: RepositoryBrowser, snap: Snapshot, includes: list[str], target: Path
) -> JobView:
    """Restore the way the restore window does: a job of the browser's (started) controller."""
    ctl = browser.controller
    ended = asyncio.Event()

    def on_event(e: object) -> None:
        if isinstance(e, RestoreCompleted | RestoreFailed):
            ended.set()

    unsubscribe = ctl.bus.subscribe(on_event)
    try:
        job = ctl.start_restore(snap, includes, str(target))
        await ended.wait()
        return ctl.job(job)
    finally:
        unsubscribe()


def test_restore_a_folder_and_never_overwrite(
    tmp_path: Path, source: Path, browser: RepositoryBrowser
) -> None:
    out = tmp_path / "out"

    async def scenario() -> tuple[JobView, JobView]:
        async with running(browser):
            (snap,) = await browser.snapshots()
            first = await restore_job(browser, snap, [f"{source}/d1"], out)
            second = await restore_job(browser, snap, [f"{source}/d1"], out)
            return first, second

    first_view, second_view = run(scenario())
    first, second = first_view.result, second_view.result
    assert isinstance(first, RestoreResult) and isinstance(second, RestoreResult)
    restored = out / source.relative_to("/") / "d1"
    assert signature(restored) == signature(source / "d1")
    assert sorted(os.listdir(out / source.relative_to("/"))) == ["d1"]
    assert first.files == 4 and first.errors == ()
    assert first.bytes_written == 3 * len(b"file 0\n" * 500) + len(b"not utf-8 name\n")

    # again into the same place: every file is reported, none replaced
    assert second_view.state is JobState.COMPLETED
    assert second.files == 0 and second.bytes_written == 0
    assert len(second.errors) == 4
    assert all(e.endswith("exists; not overwritten") for e in second.errors)
    assert signature(restored) == signature(source / "d1")


def test_restore_one_file_with_an_undecodable_name(
    tmp_path: Path, source: Path, browser: RepositoryBrowser
) -> None:
    """The entry's path (surrogate escapes) goes back to a restore job unchanged."""
    out = tmp_path / "out"

    async def scenario() -> JobView:
        async with running(browser):
            (snap,) = await browser.snapshots()
            (bad,) = [e for e in await walk_to(browser, snap, source / "d1") if e.raw_name == BAD]
            assert bad.name == "bad\\xffname.txt"  # shown in the one display form
            return await restore_job(browser, snap, [bad.path], out)

    result = run(scenario()).result
    assert isinstance(result, RestoreResult)
    assert result.files == 1 and result.errors == ()
    where = os.fsencode(out / source.relative_to("/") / "d1")
    assert os.listdir(where) == [BAD]
    with open(where + b"/" + BAD, "rb") as fh:
        assert fh.read() == b"not utf-8 name\n"


def test_browse_while_a_backup_is_paused(tmp_path: Path, source: Path) -> None:
    """Browsing has its own thread: a backup holding the controller's does not block it."""
    snapshot_of(tmp_path, [source])
    big = tmp_path / "bigsrc"
    for i in range(4):
        write(big / f"b{i}.bin", os.urandom(32 * 1024 * 1024))

    async def scenario() -> None:
        bus = EventBus()
        ctl = JobController(config(tmp_path, [big]), bus)
        browser = RepositoryBrowser(ctl)
        paused = asyncio.Event()
        failed = asyncio.Event()
        bus.subscribe(lambda e: paused.set() if isinstance(e, BackupPaused) else None)
        bus.subscribe(lambda e: failed.set() if isinstance(e, BackupFailed) else None)
        await ctl.start()
        try:
            job = ctl.start_backup()
            while ctl.job(job).state is not JobState.RUNNING:
                await asyncio.sleep(0.01)
            ctl.pause(job)
            await asyncio.wait_for(paused.wait(), 60)
            (snap,) = await asyncio.wait_for(browser.snapshots(), 30)
            entries = await asyncio.wait_for(walk_to(browser, snap, source), 30)
            assert "top.txt" in by_name(entries)
            assert ctl.job(job).state is JobState.PAUSED
            ctl.cancel(job)
            await asyncio.wait_for(failed.wait(), 60)
        finally:
            browser.close()
            await ctl.stop()

    run(scenario())


def test_errors_are_engine_errors(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no repository at all
    b = RepositoryBrowser(JobController(config(tmp_path, [source]), EventBus()))
    with pytest.raises(RepositoryNotFound):
        run(b.snapshots())
    b.close()

    # a configuration problem (an empty password file) arrives as an EngineError too
    snapshot_of(tmp_path, [source])
    empty = tmp_path / "pw"
    empty.write_text("")
    monkeypatch.delenv("DESKTOP_AGENT_PASSWORD")
    b = RepositoryBrowser(JobController(config(tmp_path, [source], empty), EventBus()))
    with pytest.raises(EngineError, match="first line is empty"):
        run(b.snapshots())
    b.close()
    with pytest.raises(EngineError, match="closed"):
        run(b.snapshots())


def test_a_tree_newer_than_the_index_is_found(tmp_path: Path, source: Path) -> None:
    """list_dir of a snapshot made after the browser read the index reopens the repository."""
    snapshot_of(tmp_path, [source])
    b = RepositoryBrowser(JobController(config(tmp_path, [source]), EventBus()))
    try:
        run(b.snapshots())
        write(source / "new" / "n.txt", b"new\n")
        newer = snapshot_of(tmp_path, [source])
        entries = run(walk_to(b, newer, source))
        assert "new" in by_name(entries)

        # and the lock a restore takes is gone afterwards
        async def restore_newer() -> JobView:
            async with running(b):
                return await restore_job(b, newer, [f"{source}/new"], tmp_path / "o")

        view = run(restore_newer())
        assert view.state is JobState.COMPLETED
        storage = LocalStorage(tmp_path / "repo")
        assert list(storage.list(FileType.LOCK)) == []
    finally:
        b.close()
