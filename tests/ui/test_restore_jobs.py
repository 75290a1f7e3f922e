"""Restores are jobs, seen alike by a backup server and the tray (the issue's acceptance test).

One real agent (repository, controller, /ws on a real port) and the tray's
bridge, tray icon and restore window on the one qasync loop, offscreen; a
real websockets client. A restore started in the restore window and one
started with ``restore:start`` are both seen by the client as
``restore:started`` / ``restore:progress`` / ``restore:completed``, and each
is paused, resumed and cancelled over /ws and from the tray. ``restore:start``
is refused with an ``error`` when the configuration does not allow it.

Every restore is held at its first checkpoint by the engine's Control (paused
from a bus subscriber when the job starts), so the commands land before the
first byte is written, on any machine. Waiting is for events and states,
never for time.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import shiboken6
from PySide6.QtCore import QModelIndex, Qt
from support import signature, write
from uisupport import TOKEN, make_config
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from desktop_agent.app import Agent
from desktop_agent.engine.restore import RestoreResult
from desktop_agent.jobs import JobChanged, JobKind, JobState
from desktop_agent.jobs.browse import split_path
from desktop_agent.protocol import JobId
from desktop_agent.ui.bridge import Bridge
from desktop_agent.ui.restore import RestoreWindow
from desktop_agent.ui.tray import Tray

AUTH = {"Authorization": f"Bearer {TOKEN}"}
NINE = {
    "job_id",
    "percent",
    "transferred_bytes",
    "total_bytes",
    "bytes_per_second",
    "eta_seconds",
    "current_file",
    "files_processed",
    "total_files",
}
Message = dict[str, Any]


async def wait_for(pred: Callable[[], Any], timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


class Client:
    """A /ws client that reads everything in the background and waits in order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.got: list[Message] = []
        self.cursor = 0
        self._new = asyncio.Event()
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for text in self.ws:
                self.got.append(json.loads(text))
                self._new.set()
        except ConnectionClosed:
            pass

    async def send(self, type_: str, payload: Any) -> None:
        await self.ws.send(json.dumps({"type": type_, "payload": payload}))

    async def next(self, pred: Callable[[Message], bool], timeout: float = 60) -> Message:
        """The first message from the cursor on that matches; the cursor moves past it."""
        async with asyncio.timeout(timeout):
            while True:
                for i in range(self.cursor, len(self.got)):
                    if pred(self.got[i]):
                        self.cursor = i + 1
                        return self.got[i]
                self._new.clear()
                await self._new.wait()


def is_(kind: str, job_id: str | None = None) -> Callable[[Message], bool]:
    return lambda m: (
        m["type"] == kind and (job_id is None or (m["payload"] or {}).get("job_id") == job_id)
    )


def hold_restores(agent: Agent) -> None:
    """Pause each restore's engine as it starts: it waits at its first checkpoint
    (before writing anything) for a pause, resume or cancel command."""

    def on(event: object) -> None:
        if (
            isinstance(event, JobChanged)
            and event.kind is JobKind.RESTORE
            and event.new is JobState.RUNNING
            and event.old is JobState.QUEUED
        ):
            agent.controller._jobs[JobId(event.job_id)].control.pause()

    agent.bus.subscribe(on)


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / "Downloads").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def remote_agent(env: None, home: Path, tmp_path: Path, source: Path, run: Any) -> Iterator[Agent]:
    """A started agent whose configuration allows restores from /ws."""
    write(source / "blob.bin", os.urandom(2 * 1024 * 1024))
    config = make_config(tmp_path, [source], allow_remote_restore=True)
    a = Agent(config, host="127.0.0.1", port=0, schedule=False)
    run(a.start())
    yield a
    run(a.stop())


@pytest.fixture
def tray(remote_agent: Agent, qtbot: Any, run: Any) -> Iterator[tuple[Bridge, Tray, RestoreWindow]]:
    bridge = Bridge(remote_agent)
    opened: list[str] = []
    icon = Tray(
        bridge,
        open_progress=lambda: opened.append("progress"),
        open_restore=lambda: opened.append("restore"),
        open_settings=lambda: opened.append("settings"),
        open_log=lambda: opened.append("log"),
        quit_app=lambda: opened.append("quit"),
    )
    window = RestoreWindow(bridge)
    qtbot.addWidget(window)
    window.show()
    run(wait_for(lambda: "No backups yet" in window.snapshot_status.text()))
    yield bridge, icon, window
    window.close()
    run(wait_for(lambda: not bridge._tasks))
    bridge.close()
    icon.hide()
    shiboken6.delete(icon.menu)
    shiboken6.delete(icon)


async def tick(window: RestoreWindow, path: Path) -> None:
    """Tick ``path`` in the window's tree (waiting for the folders on the way)."""
    model = window.model
    index = QModelIndex()
    for comp in split_path(str(path)):
        parent = index
        await wait_for(lambda p=parent: model.is_loaded(p))  # type: ignore[misc]
        for row in range(model.rowCount(parent)):
            candidate = model.index(row, 0, parent)
            entry = model.entry(candidate)
            if entry is not None and entry.raw_name == comp:
                index = candidate
                break
        else:
            raise AssertionError(f"{comp!r} not listed")
    model.setData(index, Qt.CheckState.Checked, Qt.ItemDataRole.CheckStateRole)


def menu_texts(tray: Tray) -> list[str]:
    tray.rebuild()
    return [a.text() for a in tray.menu.actions() if not a.isSeparator()]


def test_restores_from_the_tray_and_from_ws_are_jobs_both_sides_control(
    remote_agent: Agent,
    tray: tuple[Bridge, Tray, RestoreWindow],
    source: Path,
    home: Path,
    tmp_path: Path,
    run: Any,
) -> None:
    bridge, icon, window = tray
    hold_restores(remote_agent)
    notices: list[tuple[str, str, bool]] = []
    bridge.notify.connect(lambda t, m, e: notices.append((t, m, e)))
    outcomes: list[Any] = []
    window.restore_finished.connect(outcomes.append)
    total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())

    async def scenario() -> None:
        async with connect(remote_agent.server.url, additional_headers=AUTH) as ws:
            client = Client(ws)
            await client.send("backup:start", {})
            await client.next(is_("backup:completed"))
            await wait_for(lambda: "1 snapshot" in window.snapshot_status.text())
            await tick(window, source)
            snap = window.selected_snapshot()
            assert snap is not None and snap.id is not None
            counter = iter(range(100))

            async def from_tray() -> tuple[str, Path]:
                target = tmp_path / f"out{next(counter)}"
                window.target.setText(str(target))
                await wait_for(window.restore_button.isEnabled)
                window.restore_button.click()
                started = (await client.next(is_("restore:started")))["payload"]
                assert started["target"] == str(target)
                assert started["snapshot"] == snap.id.hex()  # type: ignore[union-attr]
                return started["job_id"], target

            async def from_ws() -> tuple[str, Path]:
                await client.send("restore:start", {"snapshot": "latest"})
                started = (await client.next(is_("restore:started")))["payload"]
                target = Path(started["target"])
                assert target.parent == home / "Downloads"
                # the tray tells the user, naming the folder
                await wait_for(lambda: any(str(target) in n[1] for n in notices))
                assert ("Restoring files", False) in [(n[0], n[2]) for n in notices]
                return started["job_id"], target

            async def running(job: str) -> None:
                first = (await client.next(is_("restore:progress", job)))["payload"]
                assert set(first) == NINE
                # the window shows the job, whoever started it, with its buttons
                await wait_for(lambda: window.job_id == job and window.pause_button.isEnabled())
                assert window.cancel_button.isEnabled()

            async def completes(job: str, target: Path) -> None:
                seen_from = client.cursor
                end = await client.next(
                    lambda m: (
                        m["payload"].get("job_id") == job
                        and (m["type"] in ("restore:completed", "restore:failed"))
                    )
                )
                assert end == {
                    "type": "restore:completed",
                    "payload": {"job_id": job, "total_bytes": total},
                }
                progress = [
                    m["payload"] for m in client.got[seen_from:] if is_("restore:progress", job)(m)
                ]
                assert progress and all(set(p) == NINE for p in progress)
                assert progress[-1]["percent"] == 100.0
                assert signature(target / source.relative_to("/")) == signature(source)
                await wait_for(lambda: window.job_id is None and outcomes)
                result = outcomes.pop()
                assert isinstance(result, RestoreResult) and result.errors == ()
                assert window.status.text() == "Restore finished."
                await wait_for(
                    lambda: any(n[0] == "Files restored" and str(target) in n[1] for n in notices)
                )

            async def cancelled(job: str) -> None:
                end = await client.next(
                    lambda m: (
                        m["payload"].get("job_id") == job
                        and (m["type"] in ("restore:completed", "restore:failed"))
                    )
                )
                assert end == {
                    "type": "restore:failed",
                    "payload": {"job_id": job, "error": "cancelled"},
                }
                await wait_for(lambda: window.job_id is None and outcomes)
                assert outcomes.pop() == "cancelled"
                assert window.status.text() == "Restore cancelled."

            for start in (from_tray, from_ws):
                # paused over /ws, resumed from the tray
                job, target = await start()
                await running(job)
                assert any(line.startswith("Restoring files") for line in menu_texts(icon))
                await client.send("restore:pause", {"job_id": job})
                await client.next(is_("restore:paused", job))
                await wait_for(lambda: window.pause_button.text() == "Resume")
                assert "Restore paused at 0%" in menu_texts(icon)
                await client.send("agent:status", None)
                status = (await client.next(is_("agent:status")))["payload"]
                assert status["status"] == "paused" and status["active_jobs"] == 1
                window.pause_button.click()
                await client.next(is_("restore:resumed", job))
                await completes(job, target)

                # paused from the tray, resumed over /ws
                job, target = await start()
                await running(job)
                window.pause_button.click()
                await client.next(is_("restore:paused", job))
                await wait_for(lambda: window.status.text() == "Restore paused.")
                await client.send("restore:resume", {"job_id": job})
                await client.next(is_("restore:resumed", job))
                await completes(job, target)

                # cancelled over /ws
                job, target = await start()
                await running(job)
                await client.send("restore:cancel", {"job_id": job})
                await cancelled(job)

                # cancelled from the tray
                job, target = await start()
                await running(job)
                window.cancel_button.click()
                await cancelled(job)
                if start is from_ws:
                    assert not target.exists()  # nothing went in: the new folder is gone

            # not allowed any more: refused, naming the key; nothing starts
            config = bridge.config
            bridge.apply_config(
                replace(config, agent=replace(config.agent, allow_remote_restore=False))
            )
            await client.send("restore:start", {"snapshot": "latest"})
            error = (await client.next(is_("error")))["payload"]
            assert error["request_type"] == "restore:start"
            assert "allow_remote_restore" in error["message"]
            await client.send("agent:status", None)
            assert (await client.next(is_("agent:status")))["payload"]["active_jobs"] == 0

            # every restore:started ended with exactly one restore:completed or restore:failed
            started = [m["payload"]["job_id"] for m in client.got if is_("restore:started")(m)]
            assert len(started) == 8
            for job in started:
                ends = [
                    m
                    for m in client.got
                    if m["type"] in ("restore:completed", "restore:failed")
                    and m["payload"]["job_id"] == job
                ]
                assert len(ends) == 1, job
                # and nothing of a backup's vocabulary about a restore
                assert not [
                    m
                    for m in client.got
                    if m["type"].startswith("backup:") and (m["payload"] or {}).get("job_id") == job
                ]
            client.reader.cancel()

    run(scenario(), 300)
    assert not [n for n in notices if n[0] == "Restore failed"]


def test_a_window_restore_waits_behind_a_backup_and_is_cancelled_while_queued(
    agent: Agent, qtbot: Any, source: Path, tmp_path: Path, run: Any
) -> None:
    """One queue: the restore shows that it waits; Cancel ends it before it ran."""
    bridge = Bridge(agent)
    window = RestoreWindow(bridge)
    qtbot.addWidget(window)
    window.show()
    events: list[object] = []
    agent.bus.subscribe(events.append)
    outcomes: list[Any] = []
    window.restore_finished.connect(outcomes.append)
    ctl = agent.controller

    def hold_backups(event: object) -> None:
        if (
            isinstance(event, JobChanged)
            and event.kind is JobKind.BACKUP
            and event.new is JobState.RUNNING
            and len(ctl.jobs()) > 1
        ):
            ctl._jobs[JobId(event.job_id)].control.pause()

    agent.bus.subscribe(hold_backups)

    async def scenario() -> None:
        first = ctl.start_backup()
        await wait_for(lambda: ctl.job(first).state is JobState.COMPLETED)
        await wait_for(lambda: "1 snapshot" in window.snapshot_status.text())
        await tick(window, source)
        backup = ctl.start_backup()  # held at its first checkpoint
        await wait_for(lambda: ctl.job(backup).state is JobState.RUNNING)
        window.target.setText(str(tmp_path / "out"))
        await wait_for(window.restore_button.isEnabled)
        window.restore_button.click()
        await wait_for(lambda: window.job_id is not None)
        job = window.job_id
        assert job is not None and ctl.job(job).state is JobState.QUEUED
        assert window.status.text().startswith("Waiting for the running job")
        assert not window.pause_button.isEnabled() and window.cancel_button.isEnabled()
        assert not window.restore_button.isEnabled()
        window.cancel_button.click()
        await wait_for(lambda: outcomes)
        assert outcomes == ["cancelled"] and window.job_id is None
        assert ctl.job(job).state is JobState.CANCELLED
        assert ctl.job(backup).state is JobState.RUNNING  # the backup was not touched
        ctl.cancel(backup)
        await wait_for(lambda: ctl.job(backup).state is JobState.CANCELLED)

    try:
        run(scenario())
    finally:
        window.close()
        run(wait_for(lambda: not bridge._tasks))
        bridge.close()
    assert not (tmp_path / "out").exists()  # it never ran


@pytest.fixture
def windows_may_close(qapp: Any) -> Iterator[None]:
    """As in the app (ui/bootstrap.py): closing the last window does not quit the loop."""
    before = qapp.quitOnLastWindowClosed()
    qapp.setQuitOnLastWindowClosed(False)
    yield
    qapp.setQuitOnLastWindowClosed(before)


def test_the_window_stops_its_own_restore_on_close_and_shows_one_from_a_server(
    remote_agent: Agent,
    qtbot: Any,
    source: Path,
    tmp_path: Path,
    run: Any,
    windows_may_close: None,
) -> None:
    hold_restores(remote_agent)
    bridge = Bridge(remote_agent)
    ctl = remote_agent.controller

    def new_window() -> RestoreWindow:
        window = RestoreWindow(bridge)
        qtbot.addWidget(window)
        window.show()
        return window

    async def scenario() -> None:
        first = ctl.start_backup()
        await wait_for(lambda: ctl.job(first).state is JobState.COMPLETED)
        window = new_window()
        await wait_for(lambda: "1 snapshot" in window.snapshot_status.text())
        await tick(window, source)
        window.target.setText(str(tmp_path / "out"))
        await wait_for(window.restore_button.isEnabled)
        window.restore_button.click()
        await wait_for(lambda: window.job_id is not None and window.pause_button.isEnabled())
        own = window.job_id
        assert own is not None
        window.close()  # as before restores were jobs: closing stops it
        await wait_for(lambda: ctl.job(own).state is JobState.CANCELLED)

        # a restore from a backup server: a window opened afterwards shows it...
        remote = await ctl.start_remote_restore("latest")
        await wait_for(lambda: ctl.job(remote).state is JobState.RUNNING)
        later = new_window()
        assert later.job_id == remote
        assert "started by a backup server" in later.result.text()
        await wait_for(later.pause_button.isEnabled)
        # ...and closing it leaves the restore alone: it is not the window's
        later.close()
        assert ctl.job(remote).state is JobState.RUNNING
        later.show()  # reopened, it shows it again
        assert later.job_id == remote
        later.pause_button.click()
        await wait_for(lambda: ctl.job(remote).state is JobState.PAUSED)
        assert later.pause_button.text() == "Resume"
        later.pause_button.click()
        await wait_for(lambda: ctl.job(remote).state is JobState.COMPLETED)
        await wait_for(lambda: later.job_id is None)
        later.close()

    try:
        run(scenario())
    finally:
        run(wait_for(lambda: not bridge._tasks))
        bridge.close()
