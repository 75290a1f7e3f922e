"""The main window (no system tray): real backups from its buttons, state in its labels.

Clicks happen inside coroutines run on the qasync loop, as they would in the
app: the job controller's tasks need the loop to be running (see
``test_clicks_run_while_the_loop_runs``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt
from support import write

from desktop_agent.jobs import BusEvent, JobState
from desktop_agent.protocol import CANCELLED, BackupCompleted, BackupFailed, BackupStarted
from desktop_agent.ui.bridge import Bridge
from desktop_agent.ui.main_window import NOTE, MainWindow


class Harness:
    """A shown MainWindow over a Bridge to the real agent, with what it asked for."""

    def __init__(self, agent: Any, qtbot: Any) -> None:
        self.events: list[BusEvent] = []
        # before the bridge: an event is recorded by the time the bridge says "changed"
        agent.bus.subscribe(self.events.append)
        self.bridge = Bridge(agent)
        self.opened: list[str] = []
        self.quits = 0
        self.win = MainWindow(self.bridge, open_window=self.opened.append, quit_app=self._quit)
        qtbot.addWidget(self.win)
        self.win.show()
        qtbot.waitExposed(self.win)
        self.qtbot = qtbot

    def _quit(self) -> None:
        self.quits += 1

    def click(self, button: Any) -> None:
        assert button.isEnabled(), button.text()
        self.qtbot.mouseClick(button, Qt.MouseButton.LeftButton)

    async def until(self, pred: Callable[[], bool], timeout: float = 60) -> None:
        """Wait for ``pred`` to hold, checking whenever the bridge says the model changed."""
        if pred():
            return
        done = asyncio.get_running_loop().create_future()

        def check() -> None:
            if pred() and not done.done():
                done.set_result(None)

        self.bridge.changed.connect(check)  # after the window's own refresh
        try:
            async with asyncio.timeout(timeout):
                await done
        finally:
            self.bridge.changed.disconnect(check)


def texts(h: Harness) -> dict[str, bool]:
    w = h.win
    return {
        b.text(): b.isEnabled()
        for b in (w.start_button, w.pause_button, w.cancel_button)
        if b.isVisible()
    }


def test_back_up_now_runs_a_real_backup(agent, run, qtbot):
    h = Harness(agent, qtbot)
    h.bridge.notify_success = True  # the default of [ui] notify_success
    assert h.win.note.text() == NOTE
    assert h.win.status.text() == "Needs attention: no backup yet"
    assert h.win.last.text() == "Last backup: never"
    assert not h.win.bar.isVisible()
    assert texts(h) == {"Back up now": True, "Pause": False, "Cancel": False}
    assert h.win.icon.pixmap().size().width() == 64
    assert h.win._shown == ("warning", -1)

    async def scenario() -> None:
        h.click(h.win.start_button)
        assert any(isinstance(e, BackupStarted) for e in h.events)
        await h.until(lambda: h.win.status.text() == "Backups are up to date")

    run(scenario())
    assert any(isinstance(e, BackupCompleted) for e in h.events)
    assert h.win.last.text() == "Last backup: just now"
    assert h.win._shown == ("idle", -1)
    assert not h.win.bar.isVisible()
    assert texts(h) == {"Back up now": True, "Pause": False, "Cancel": False}
    # no tray to pop the notification up: the window shows it
    assert h.win.notice.isVisible() and h.win.notice.text().startswith("Backup complete: ")
    assert len(list(agent.controller.jobs())) == 1


def test_pause_resume_cancel(agent, run, qtbot, source):
    write(source / "big.bin", os.urandom(150 * 1024 * 1024))
    h = Harness(agent, qtbot)
    model = h.bridge.model

    async def scenario() -> None:
        h.click(h.win.start_button)
        await h.until(lambda: model.progress is not None and model.progress.transferred_bytes > 0)
        assert h.win.bar.isVisible()
        assert h.win.status.text().startswith("Backing up: ")
        assert texts(h) == {"Back up now": False, "Pause": True, "Cancel": True}
        assert h.win._shown is not None and h.win._shown[0] == "running"

        h.click(h.win.pause_button)
        await h.until(lambda: h.win.pause_button.text() == "Resume")
        current = agent.controller.current()
        assert current is not None and current.state is JobState.PAUSED
        assert h.win.status.text().startswith("Paused at ")
        assert texts(h) == {"Back up now": False, "Resume": True, "Cancel": True}
        assert h.win._shown == ("paused", -1)

        h.click(h.win.pause_button)
        await h.until(lambda: h.win.pause_button.text() == "Pause")
        current = agent.controller.current()
        assert current is not None and current.state is JobState.RUNNING
        assert texts(h) == {"Back up now": False, "Pause": True, "Cancel": True}

        h.click(h.win.cancel_button)
        await h.until(lambda: not model.active)

    run(scenario())
    failed = [e for e in h.events if isinstance(e, BackupFailed)]
    assert len(failed) == 1 and failed[0].error == CANCELLED
    assert not any(isinstance(e, BackupCompleted) for e in h.events)
    assert not h.win.bar.isVisible()
    assert texts(h) == {"Back up now": True, "Pause": False, "Cancel": False}
    assert h.win.last.text() == "Last backup: never"  # a cancelled backup is no backup
    assert not h.win.notice.isVisible()  # cancelling is not a failure to report


def test_clicks_run_while_the_loop_runs(agent, run, qtbot):
    # After one backup the controller is still usable: its runner waited on
    # the running loop (a click handled outside it would break the runner).
    h = Harness(agent, qtbot)

    async def twice() -> None:
        for n in (1, 2):
            h.click(h.win.start_button)
            await h.until(
                lambda n=n: (
                    sum(isinstance(e, BackupCompleted) for e in h.events) == n
                    and not h.bridge.model.active
                )
            )

    run(twice())
    assert h.win.status.text() == "Backups are up to date"


def test_buttons_open_windows_and_closing_quits(agent, qtbot):
    h = Harness(agent, qtbot)
    for button, name in [
        (h.win.progress_button, "progress"),
        (h.win.restore_button, "restore"),
        (h.win.settings_button, "settings"),
        (h.win.log_button, "log"),
    ]:
        h.click(button)
        assert h.opened[-1] == name
    assert h.quits == 0
    h.click(h.win.quit_button)
    assert h.quits == 1
    assert h.win.close()
    assert h.quits == 2


def test_refused_commands_are_shown(agent, qtbot):
    h = Harness(agent, qtbot)
    h.bridge.failed.emit("job x is completed; only a running job can be paused")
    assert h.win.notice.isVisible()
    assert h.win.notice.text() == "job x is completed; only a running job can be paused"
