"""The schedule in the tray: pauses from the menu, why no backup runs, stale
backups, held and upkeep jobs - a real Agent with its real scheduler, real widgets.

The conditions come from ``agent.hub.update`` (as a provider pushes them);
the scheduler's memory from its state file beside the configuration, written
before the agent starts (as a previous run would have left it).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import shiboken6
from PySide6.QtCore import Qt
from support import write
from uisupport import make_config

from desktop_agent.app import Agent
from desktop_agent.config import Config
from desktop_agent.jobs import JobState, UpkeepSpec
from desktop_agent.jobs.schedule import Verdict
from desktop_agent.jobs.schedulestate import state_path
from desktop_agent.protocol import UpkeepCompleted, UpkeepFailed
from desktop_agent.system.instance import TrayRequest
from desktop_agent.ui.bootstrap import Shell
from desktop_agent.ui.bridge import Bridge
from desktop_agent.ui.main_window import MainWindow
from desktop_agent.ui.model import clock, next_midnight
from desktop_agent.ui.tray import PAUSE_CHOICES, Tray

_made: list[Any] = []


@pytest.fixture(autouse=True)
def _delete_qt_objects(qapp: Any) -> Iterator[None]:
    """Delete the test's Qt objects while the QApplication lives."""
    yield
    while _made:
        obj = _made.pop()
        if isinstance(obj, Bridge):
            obj.close()
        if isinstance(obj, Tray):
            obj.hide()
            shiboken6.delete(obj.menu)
        shiboken6.delete(obj)
    qapp.processEvents()


def scheduled_config(
    tmp_path: Path, source: Path, *, interval: int = 60, **schedule: Any
) -> Config:
    """A configuration with a schedule: no random delay, no scheduled check
    (unless asked), the rest as given."""
    config = make_config(tmp_path, [source])
    return replace(
        config,
        backup=replace(config.backup, interval_minutes=interval),
        schedule=replace(config.schedule, random_delay_minutes=0, **schedule),
        upkeep=replace(config.upkeep, check_subsets=0),
    )


def remember(config: Config, **history: Any) -> None:
    """What a previous run left in the scheduler's state file."""
    state_path(config).write_text(json.dumps(history))


class Harness:
    """An Agent with its scheduler (no OS providers), its Bridge and Tray, and
    the notifications the tray was asked to show."""

    def __init__(self, config: Config) -> None:
        self.agent = Agent(config, host="127.0.0.1", port=0, providers=False)
        # made before the agent starts, as the tray app does
        self.bridge = Bridge(self.agent)
        _made.append(self.bridge)
        self.tray = Tray(
            self.bridge,
            open_progress=lambda: None,
            open_restore=lambda: None,
            open_settings=lambda: None,
            open_log=lambda: None,
            quit_app=lambda: None,
        )
        _made.append(self.tray)
        self.notices: list[tuple[str, str, bool]] = []
        self.bridge.notify.connect(lambda t, m, e: self.notices.append((t, m, e)))
        self.lines: list[str] = []  # every status line the tray showed
        self.bridge.changed.connect(lambda: self.lines.append(self.bridge.model.status_line()))

    @property
    def scheduler(self) -> Any:
        assert self.agent.scheduler is not None
        return self.agent.scheduler

    def menu(self) -> list[str]:
        self.tray.rebuild()
        return [a.text() for a in self.tray.menu.actions() if not a.isSeparator()]

    def icon(self) -> str:
        assert self.tray._shown is not None
        return self.tray._shown[0]

    async def until(self, pred: Callable[[], bool], timeout: float = 60) -> None:
        """Wait until ``pred()`` holds, looking whenever the bridge says something changed."""
        if pred():
            return
        done = asyncio.get_running_loop().create_future()

        def check() -> None:
            if not done.done() and pred():
                done.set_result(None)

        self.bridge.changed.connect(check)
        try:
            async with asyncio.timeout(timeout):
                await done
        finally:
            self.bridge.changed.disconnect(check)


@pytest.fixture
def harness(env: None, run: Any) -> Iterator[Callable[..., Harness]]:
    """Start a Harness; ``conditions``: what a provider reported before the
    scheduler's first decision."""
    made: list[Harness] = []

    def start(config: Config, **conditions: Any) -> Harness:
        h = Harness(config)
        made.append(h)
        if conditions:
            h.agent.hub.update("test", **conditions)
        run(h.agent.start())
        h.bridge.sync_schedule()  # as the tray app does once its icon shows
        return h

    yield start
    for h in made:
        run(h.agent.stop())


def status(h: Harness) -> Any:
    s = h.bridge.model.schedule
    assert s is not None
    return s


def test_pause_backups_from_the_menu(harness, run, tmp_path, source):
    config = scheduled_config(tmp_path, source)
    last = time.time() - 600
    remember(config, last_success=last)
    h = harness(config)

    async def scenario() -> None:
        await h.until(lambda: status(h).verdict is Verdict.WAIT)
        menu = h.menu()
        assert menu[:3] == [
            "Backups are up to date",
            f"Next backup at {clock(last + 3600, time.time())}",
            "Last backup: 10 minutes ago",
        ]
        assert "Pause backups" in menu and "Resume backups" not in menu
        assert [a.text() for a in h.tray.pause_menu.actions()] == list(PAUSE_CHOICES)
        assert h.icon() == "idle"

        h.tray.action("For 1 hour").trigger()
        await h.until(lambda: status(h).paused)
        until = h.scheduler.history.paused_until
        assert until == pytest.approx(time.time() + 3600, abs=5)
        menu = h.menu()
        assert menu[0] == f"Backups paused until {clock(until, time.time())}"
        # the next backup comes when the pause ends: said once
        assert menu[1] == "Last backup: 10 minutes ago"
        assert "Resume backups" in menu and "Pause backups" not in menu
        assert menu[0] in h.tray.icon.toolTip()
        assert h.tray.action("Back up now").isEnabled()  # by hand it still works

        h.tray.action("Resume backups").trigger()
        await h.until(lambda: not status(h).paused)
        assert h.menu()[0] == "Backups are up to date"

        h.tray.action("Until tomorrow").trigger()
        await h.until(lambda: status(h).paused)
        assert h.scheduler.history.paused_until == pytest.approx(next_midnight(time.time()), abs=2)
        assert h.menu()[0] == "Backups paused until tomorrow 00:00"
        h.tray.action("Resume backups").trigger()
        await h.until(lambda: not status(h).paused)

        h.tray.action("Until I resume").trigger()
        await h.until(lambda: status(h).paused_forever)
        assert h.menu()[:2] == ["Backups paused until you resume", "Last backup: 10 minutes ago"]
        # kept across restarts, by the scheduler
        assert json.loads(state_path(config).read_text())["paused_forever"] is True
        h.tray.action("Resume backups").trigger()
        await h.until(lambda: not status(h).paused)

    run(scenario())
    assert h.agent.controller.jobs() == []  # pausing and resuming started nothing
    assert h.notices == []


def test_no_scheduler_no_pause_menu(agent, run):
    """The headless-style agent without a scheduler: no pause choices, no schedule line."""
    bridge = Bridge(agent)
    _made.append(bridge)
    tray = Tray(
        bridge,
        open_progress=lambda: None,
        open_restore=lambda: None,
        open_settings=lambda: None,
        open_log=lambda: None,
        quit_app=lambda: None,
    )
    _made.append(tray)
    assert agent.scheduler is None and not bridge.can_schedule
    tray.rebuild()
    texts = [a.text() for a in tray.menu.actions()]
    assert "Pause backups" not in texts and "Resume backups" not in texts
    assert bridge.model.schedule_line() is None
    bridge.pause_schedule(60)  # nothing to pause: no error either
    bridge.resume_schedule()


def test_the_tray_says_why_no_backup_runs(harness, run, tmp_path, source):
    config = scheduled_config(tmp_path, source)
    before = time.time() - 2 * 3600
    remember(config, last_success=before)  # due
    h = harness(config, on_battery=True, battery_percent=15.0)

    async def scenario() -> None:
        await h.until(lambda: status(h).verdict is Verdict.SKIP)
        assert h.menu()[0] == "Backup skipped: battery at 15 % (below 20 %)"
        assert "Backup skipped: battery at 15 % (below 20 %)" in h.tray.icon.toolTip()

        h.agent.hub.update("test", on_battery=False, metered=True)
        await h.until(lambda: "metered" in status(h).reason)
        assert h.menu()[0] == "Backup skipped: on a metered network"

        # nothing stops it any more: the due backup runs, then the next one is an hour on
        h.agent.hub.update("test", metered=False)
        await h.until(lambda: h.bridge.model.active)
        # the scheduler took the success (its last backup is this one)
        await h.until(lambda: status(h).last_success > before)
        s = status(h)
        assert s.next_backup is not None and s.last_success is not None
        assert h.menu()[:3] == [
            "Backups are up to date",
            f"Next backup at {clock(s.next_backup, time.time())}",
            "Last backup: just now",
        ]

    run(scenario())
    assert any(line.startswith("Backing up") for line in h.lines)
    assert h.icon() == "idle"
    assert h.agent.controller.jobs()[0].origin == "scheduler"


def test_a_scheduled_backup_held_on_battery(harness, run, tmp_path, source):
    for i in range(3):
        write(source / f"big{i}.bin", os.urandom(40 * 1024 * 1024))
    config = scheduled_config(tmp_path, source, skip_on_battery=True)
    h = harness(config)  # no backup yet: the scheduler starts one at once
    model = h.bridge.model

    async def scenario() -> None:
        await h.until(lambda: model.progress is not None and model.progress.transferred_bytes > 0)
        h.agent.hub.update("test", on_battery=True)
        await h.until(lambda: model.state is JobState.PAUSED and status(h).held is not None)
        assert h.menu()[0] == "Backup paused: on battery"
        assert h.icon() == "paused"
        h.agent.hub.update("test", on_battery=False)  # back on AC: it goes on by itself
        await h.until(lambda: model.state is JobState.RUNNING)
        await h.until(lambda: not model.active)

    run(scenario())
    assert model.last is not None and model.last.ok
    assert h.icon() == "idle"


def test_stale_backups_warn_once(harness, run, tmp_path, source):
    config = scheduled_config(tmp_path, source, interval=0)  # only by hand
    remember(config, last_success=time.time() - 5 * 86400 - 60)
    h = harness(config)

    async def scenario() -> None:
        await h.until(lambda: h.bridge.model.schedule is not None and status(h).stale)
        assert h.icon() == "warning"
        assert h.menu()[:3] == [
            "Needs attention: the last backup is 5 days old",
            "Backups run only when you start them",
            "Last backup: 5 days ago",
        ]
        assert h.notices == [
            (
                "No backup for 5 days",
                "Backups run only when you start them: choose Back up now.",
                True,
            )
        ]
        # more changes of the schedule's state: still the one notification
        h.agent.hub.update("test", metered=True)
        await h.until(lambda: status(h).conditions.metered is True)
        h.bridge.sync_schedule()
        assert len(h.notices) == 1

        h.tray.action("Back up now").trigger()
        await h.until(lambda: not status(h).stale)

    run(scenario())
    assert h.icon() == "idle"
    assert [n[0] for n in h.notices] == ["No backup for 5 days", "Backup complete"]


def test_a_failing_schedule_says_why_in_the_stale_notice(harness, run, tmp_path, source):
    config = scheduled_config(tmp_path, source)
    remember(
        config,
        last_success=time.time() - 4 * 86400,
        last_attempt=time.time() - 60,
        failures=3,
        last_error="the backup disk is full",
    )
    h = harness(config)

    async def scenario() -> None:
        await h.until(lambda: h.bridge.model.schedule is not None and status(h).stale)
        await h.until(lambda: bool(h.notices))

    run(scenario())
    assert h.notices == [
        ("No backup for 4 days", "The last backup failed: the backup disk is full", True)
    ]
    menu = h.menu()
    assert menu[0] == "Last backup failed: the backup disk is full"
    assert menu[1].startswith("Retrying at ")
    assert h.icon() == "error"


def test_upkeep_jobs_in_the_tray(harness, run, tmp_path, source):
    config = scheduled_config(tmp_path, source, interval=0)
    h = harness(config)
    controller = h.agent.controller
    events: list[Any] = []
    h.agent.bus.subscribe(events.append)

    async def scenario() -> None:
        h.tray.action("Back up now").trigger()
        await h.until(lambda: h.bridge.model.last is not None)
        h.lines.clear()
        controller.start_upkeep(UpkeepSpec.check(1, 1), origin="scheduler")
        await h.until(lambda: h.bridge.model.upkeep is not None)
        # a backup asked for meanwhile waits for it, and runs after it
        assert h.tray.action("Back up now").isEnabled()
        h.tray.action("Back up now").trigger()
        await h.until(lambda: any(isinstance(e, UpkeepCompleted) for e in events))
        await h.until(lambda: not h.bridge.model.active and not h.bridge.model.queued)

    run(scenario())
    assert any(line.startswith("Checking the repository… ") for line in h.lines), h.lines
    assert "Backups are up to date" == h.lines[-1]
    assert [n[0] for n in h.notices] == ["Backup complete", "Backup complete"]
    backups = [v for v in controller.jobs() if v.kind.value == "backup"]
    assert len(backups) == 2 and all(v.state is JobState.COMPLETED for v in backups)

    # a check that finds damage: one notification, an error one
    for path in (tmp_path / "repo" / "data").rglob("*"):
        if not path.is_file():
            continue
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        os.chmod(path, 0o600)
        path.write_bytes(bytes(data))

    async def damaged() -> None:
        controller.start_upkeep(UpkeepSpec.check(1, 1))
        await h.until(lambda: any(isinstance(e, UpkeepFailed) for e in events))

    run(damaged())
    failed = [n for n in h.notices if n[0] == "Repository upkeep failed"]
    assert len(failed) == 1 and failed[0][2]
    assert failed[0][1].startswith("Checking the repository: ")
    assert h.bridge.model.upkeep is None


@pytest.fixture
def keep_running_without_windows(qapp: Any) -> Iterator[None]:
    """As the tray app does: closing the last window must not stop the loop."""
    before = qapp.quitOnLastWindowClosed()
    qapp.setQuitOnLastWindowClosed(False)
    yield
    qapp.setQuitOnLastWindowClosed(before)


def test_the_tray_app_starts_the_qt_network_provider(
    env, run, tmp_path, source, keep_running_without_windows
):
    config = scheduled_config(tmp_path, source, interval=0)
    remember(config, last_success=time.time() - 3 * 86400 - 60)
    agent = Agent(config, host="127.0.0.1", port=0, providers=False)
    shell = Shell(config, agent=agent)
    _made.append(shell.bridge)
    notices: list[str] = []
    shell.bridge.notify.connect(lambda title, _m, _e: notices.append(title))
    run(shell.start())
    try:
        # the app took the schedule's state once shown: backups are too old
        assert notices == ["No backup for 3 days"]
        sources = agent.hub.sources()
        if shell.network.features:
            assert set(sources["qt"]) == set(shell.network.features)
        else:
            assert "qt" not in sources
        shell.present(TrayRequest(show="settings"))
        assert shell.windows["settings"].isVisible()
    finally:
        run(shell.stop())
    assert shell.network.features == ()  # stopped with the app


def test_the_main_window_pauses_backups_too(harness, run, tmp_path, source, qtbot):
    """Without a system tray the main window has the same pause choices."""
    config = scheduled_config(tmp_path, source)
    last = time.time() - 600
    remember(config, last_success=last)
    h = harness(config)
    win = MainWindow(h.bridge, open_window=lambda _name: None, quit_app=lambda: None)
    qtbot.addWidget(win)
    win.show()

    async def scenario() -> None:
        await h.until(lambda: status(h).verdict is Verdict.WAIT)
        assert win.schedule_button.text() == "Pause backups"
        assert win.schedule_button.menu() is win.pause_menu
        assert win.schedule.text() == f"Next backup at {clock(last + 3600, time.time())}"
        win.pause_menu.actions()[PAUSE_CHOICES.index("Until I resume")].trigger()
        await h.until(lambda: win.schedule_button.text() == "Resume backups")
        assert win.status.text() == "Backups paused until you resume"
        assert win.schedule_button.menu() is None
        qtbot.mouseClick(win.schedule_button, Qt.MouseButton.LeftButton)
        await h.until(lambda: win.schedule_button.text() == "Pause backups")

    run(scenario())
    assert not h.scheduler.history.paused_forever
