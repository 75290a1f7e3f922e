"""Start at login in the tray: the settings switch changes the real XDG entries, and a
start at login opens no window but the first-run one, once per login session."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from uisupport import make_config

from desktop_agent.app import Agent
from desktop_agent.system.autostart import XdgAutostart
from desktop_agent.system.instance import TrayRequest
from desktop_agent.ui.bootstrap import Shell
from desktop_agent.ui.bridge import Bridge
from desktop_agent.ui.schedule_settings import EVERY_MINUTES
from desktop_agent.ui.settings import SettingsDialog


@pytest.fixture(autouse=True, scope="module")
def collect_while_qt_lives() -> Iterator[None]:
    """Collect this module's garbage while the QApplication exists (see test_settings)."""
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def keep_running_without_windows(qapp: Any) -> Iterator[None]:
    """As the tray app does: closing the last window must not stop the loop."""
    before = qapp.quitOnLastWindowClosed()
    qapp.setQuitOnLastWindowClosed(False)
    yield
    qapp.setQuitOnLastWindowClosed(before)


def until(run: Callable[..., Any], pred: Callable[[], bool], timeout: float = 60) -> None:
    """Let the qasync loop (and so Qt) run until ``pred()`` holds (see test_settings)."""

    async def wait() -> None:
        while not pred():
            await asyncio.sleep(0.01)

    run(wait(), timeout)


def done(task: asyncio.Task[Any] | None) -> Callable[[], bool]:
    return lambda: task is not None and task.done()


@pytest.fixture
def xdg_dirs(env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Temporary XDG config dirs: (the user's autostart dir, the system's)."""
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "etc-xdg"))
    # the `env` fixture set XDG_CONFIG_HOME to tmp_path / "xdg-config"
    return tmp_path / "xdg-config" / "autostart", tmp_path / "etc-xdg" / "autostart"


def open_settings(
    agent: Agent, qtbot: Any, run: Any, autostart: XdgAutostart | None = None
) -> tuple[Bridge, SettingsDialog]:
    bridge = Bridge(agent)
    dlg = SettingsDialog(bridge, autostart=autostart)
    qtbot.addWidget(dlg)
    dlg.show()
    until(run, done(dlg.autostart_task))
    return bridge, dlg


def keys(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line[:40])


# ------------------------------------------------------------ the settings switch
def test_the_switch_shows_the_state_and_apply_turns_it_on(
    agent: Agent, qtbot: Any, run: Any, xdg_dirs: tuple[Path, Path]
) -> None:
    user_dir, _system_dir = xdg_dirs
    bridge, dlg = open_settings(agent, qtbot, run)  # the platform's own (XDG here)
    switch = dlg.start_at_login
    assert switch.text() == "Start desktop-agent when I log in"
    assert switch.isEnabled() and not switch.isChecked()
    assert not dlg.edited()

    switch.setChecked(True)
    assert dlg.edited()
    dlg.apply_button.click()
    until(run, done(dlg.task))

    assert dlg.error.isHidden(), dlg.error.text()
    entry = user_dir / "desktop-agent.desktop"
    exec_line = keys(entry)["Exec"]
    # this configuration is not the default one: the entry names it
    assert exec_line.endswith(f"--autostart --config {agent.config.path}")
    assert switch.isChecked() and not dlg.edited()
    assert dlg.start_at_login_note.text() == f"Started by {entry}."
    assert dlg.status.text() == "Saved; in use now."
    assert not agent.config.path.exists()  # only start at login changed: no config written
    bridge.close()


def test_with_the_system_entry_unchecking_hides_it(
    agent: Agent, qtbot: Any, run: Any, xdg_dirs: tuple[Path, Path]
) -> None:
    user_dir, system_dir = xdg_dirs
    system_dir.mkdir(parents=True)
    system = system_dir / "desktop-agent.desktop"
    system.write_text("[Desktop Entry]\nType=Application\nExec=desktop-agent --autostart\n")
    bridge, dlg = open_settings(agent, qtbot, run)
    assert dlg.start_at_login.isChecked()
    assert dlg.start_at_login_note.text() == f"Started for every user by {system}."

    dlg.start_at_login.setChecked(False)
    dlg.ok_button.click()
    until(run, done(dlg.task))

    assert not dlg.isVisible(), dlg.error.text()
    assert keys(user_dir / "desktop-agent.desktop")["Hidden"] == "true"
    assert system.exists()
    bridge.close()


def test_reopened_it_shows_a_change_made_elsewhere(
    agent: Agent, qtbot: Any, run: Any, xdg_dirs: tuple[Path, Path]
) -> None:
    bridge, dlg = open_settings(agent, qtbot, run)
    assert not dlg.start_at_login.isChecked()
    dlg.cancel_button.click()
    # `desktop-agent autostart enable` in a terminal meanwhile
    XdgAutostart.from_environment(["desktop-agent", "--autostart"]).enable()
    dlg.show()
    until(run, done(dlg.autostart_task))
    assert dlg.start_at_login.isChecked()
    bridge.close()


def test_a_failure_is_shown_inline_and_the_window_stays(
    agent: Agent, qtbot: Any, run: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    broken = XdgAutostart(blocker / "autostart", [tmp_path / "no-etc"], ["desktop-agent"])
    bridge, dlg = open_settings(agent, qtbot, run, autostart=broken)
    dlg.start_at_login.setChecked(True)
    dlg.schedule.frequency.mode.setCurrentIndex(EVERY_MINUTES)
    dlg.schedule.frequency.every.setValue(45)
    dlg.ok_button.click()
    until(run, done(dlg.task))

    assert dlg.isVisible()
    assert dlg.error.text().startswith(f"cannot write {blocker / 'autostart'}")
    # nothing else was applied either: the edits stay in the form for another try
    assert agent.config.backup.interval_minutes == 0
    assert dlg.schedule.frequency.values(0, "") == (45, "")
    assert dlg.start_at_login.isChecked()
    bridge.close()


# ------------------------------------------------------------ started at login
@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This login session's runtime directory."""
    path = tmp_path / "run-user"
    path.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    return path


def shell_for(config: Any, **kwargs: Any) -> Shell:
    agent = Agent(config, host="127.0.0.1", port=0, schedule=False)
    return Shell(config, agent=agent, **kwargs)


def visible(shell: Shell) -> set[str]:
    return {name for name, win in shell.windows.items() if win.isVisible()}


def test_at_login_without_a_repository_first_run_shows_once_per_session(
    env: None, tmp_path: Path, source: Path, run: Any, runtime: Path
) -> None:
    config = make_config(tmp_path, [source], init=False)

    first = shell_for(config, autostart=True)
    run(first.start())
    try:
        assert visible(first) == {"first_run"}
    finally:
        run(first.stop())

    # a crash and restart, or another login entry, in the same session: nothing opens
    again = shell_for(config, autostart=True)
    run(again.start())
    try:
        assert visible(again) == set()
        # the user starting it by hand still gets it (a later start's request)
        again.present(TrayRequest())
        assert visible(again) == {"first_run"}
    finally:
        run(again.stop())

    # a normal start always shows it
    by_hand = shell_for(config)
    run(by_hand.start())
    try:
        assert "first_run" in visible(by_hand)
    finally:
        run(by_hand.stop())

    # the next login session (a fresh runtime directory): once more
    for marker in (runtime / "desktop-agent").iterdir():
        marker.unlink()
    next_login = shell_for(config, autostart=True)
    run(next_login.start())
    try:
        assert visible(next_login) == {"first_run"}
    finally:
        run(next_login.stop())


def test_at_login_with_a_repository_no_window_opens(
    env: None, tmp_path: Path, source: Path, run: Any, runtime: Path
) -> None:
    config = make_config(tmp_path, [source])
    # --show from the command line does not count at login either
    shell = shell_for(config, autostart=True, show="settings")
    run(shell.start())
    try:
        assert visible(shell) == set()
        shell.present(TrayRequest(autostart=True))  # another login entry fires: still nothing
        assert visible(shell) == set()
        shell.present(TrayRequest(show="settings"))
        assert visible(shell) == {"settings"}
        shell.present(TrayRequest(show="no-such-window"))  # ignored, logged
        assert visible(shell) == {"settings"}
    finally:
        run(shell.stop())


def test_a_later_start_without_show_raises_the_main_window(
    env: None, tmp_path: Path, source: Path, run: Any, runtime: Path
) -> None:
    config = make_config(tmp_path, [source])
    shell = shell_for(config, show="settings")
    run(shell.start())
    try:
        expected = "progress" if shell.has_tray else "main"
        assert "settings" in visible(shell)
        shell.present(TrayRequest())
        assert expected in visible(shell)
    finally:
        run(shell.stop())


def test_a_failed_start_stops_what_it_started(
    env: None, tmp_path: Path, source: Path, run: Any
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = make_config(tmp_path, [source])
        config = replace(
            config, agent=replace(config.agent, listen=f"127.0.0.1:{taken.getsockname()[1]}")
        )
        agent = Agent(config, schedule=False)
        stopped: list[bool] = []
        real_stop = agent.stop

        async def stop() -> None:
            await real_stop()
            stopped.append(True)

        agent.stop = stop  # type: ignore[method-assign]
        shell = Shell(config, agent=agent)
        with pytest.raises(OSError, match="address already in use"):
            run(shell.run())
    assert stopped == [True]  # the job controller it had started is stopped again
    assert visible(shell) == set()
