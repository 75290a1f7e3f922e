"""The backup server in the settings window and the tray: its address saved,
its token stored but never in the file, the agent id shown, and the
connection's state followed live from a real dial-out to a reference server."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import keyring
import keyring.backends.fail
import pytest
from refserver import RefServer

from desktop_agent.config import ServerConfig, load
from desktop_agent.config.secrets import SERVER_TOKEN_ENV, agent_id, dialout_token
from desktop_agent.ui.bridge import Bridge
from desktop_agent.ui.settings import SettingsDialog
from desktop_agent.ui.tray import Tray

SERVER_TOKEN = "dial-out-secret-0123456789"


@pytest.fixture(autouse=True, scope="module")
def collect_while_qt_lives() -> Iterator[None]:
    """Collect this module's Qt garbage while the QApplication exists."""
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def no_os_keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Never touch the machine's keyring (tokens go to a private file) nor its token."""
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.delenv(SERVER_TOKEN_ENV, raising=False)
    previous = keyring.get_keyring()
    keyring.set_keyring(keyring.backends.fail.Keyring())
    yield
    keyring.set_keyring(previous)


@pytest.fixture
def dialog(agent: Any, qtbot: Any) -> Iterator[tuple[Bridge, SettingsDialog]]:
    bridge = Bridge(agent)
    dlg = SettingsDialog(bridge)
    qtbot.addWidget(dlg)
    dlg.show()
    dlg.tabs.setCurrentIndex(3)
    yield bridge, dlg
    bridge.close()


def until(run: Callable[..., Any], pred: Callable[[], bool], timeout: float = 20) -> None:
    """Let the qasync loop (and so Qt) run until ``pred()`` holds."""

    async def wait() -> None:
        while not pred():
            await asyncio.sleep(0.01)

    run(wait(), timeout)


def done(task: asyncio.Task[Any] | None) -> Callable[[], bool]:
    return lambda: task is not None and task.done()


def test_the_server_fields_round_trip_and_the_token_stays_out_of_the_file(dialog, run):
    bridge, dlg = dialog
    assert dlg.tabs.tabText(dlg.tabs.currentIndex()) == "Agent"
    until(run, done(dlg.server_task))
    assert dlg.server_url.text() == ""
    assert dlg.server_state.text() == "Off"
    assert dlg.server_token.echoMode() is dlg.server_token.EchoMode.Password
    assert dlg.server_token.placeholderText().startswith("none")
    ident = dlg.agent_id.text()
    assert ident and ident == agent_id(bridge.config)  # made once, then the same
    assert dlg.agent_id.isReadOnly()

    # a bad address: the loader's words, inline; nothing saved nor stored
    dlg.server_url.setText("https://backup.example.com/agents")
    dlg.server_token.setText(SERVER_TOKEN)
    dlg.apply_button.click()
    assert dlg.task is None and not dlg.error.isHidden()
    assert "[server] url" in dlg.error.text() and "ws:// or wss://" in dlg.error.text()
    assert SERVER_TOKEN not in dlg.error.text()
    assert not bridge.config.path.exists()

    url = "wss://backup.example.com/agents"
    dlg.server_url.setText(url)
    dlg.apply_button.click()
    until(run, done(dlg.task))

    assert dlg.error.isHidden(), dlg.error.text()
    text = bridge.config.path.read_text()
    assert load(bridge.config.path).server.url == url == bridge.config.server.url
    assert SERVER_TOKEN not in text
    assert dialout_token(bridge.config) == SERVER_TOKEN  # kept in a 0600 file, found again
    assert "The backup server's token is in the private file" in dlg.status.text()
    assert SERVER_TOKEN not in dlg.status.text()
    assert dlg.server_token.text() == ""  # never shown again
    until(run, done(dlg.server_task))
    assert dlg.server_token.placeholderText().startswith("stored")
    assert dlg.agent_id.text() == ident

    # the environment comes first, and the placeholder says so
    run(asyncio.sleep(0))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SERVER_TOKEN_ENV, "from-the-environment")
        dlg.read_server_facts(bridge.config)
        until(run, done(dlg.server_task))
        assert SERVER_TOKEN_ENV in dlg.server_token.placeholderText()
        assert "from-the-environment" not in dlg.server_token.placeholderText()

    # emptied: off again
    dlg.server_url.setText("")
    dlg.apply_button.click()
    until(run, done(dlg.task))
    assert load(bridge.config.path).server.url == ""
    assert dlg.server_state.text() == "Off"


def test_the_state_line_and_the_tooltip_follow_the_connection(
    agent, qtbot, run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    server = RefServer(token=SERVER_TOKEN)
    run(server.start())
    monkeypatch.setenv(SERVER_TOKEN_ENV, SERVER_TOKEN)
    config = replace(agent.config, server=ServerConfig(url=server.url))
    bridge = Bridge(agent)
    tray = Tray(
        bridge,
        open_progress=lambda: None,
        open_restore=lambda: None,
        open_settings=lambda: None,
        open_log=lambda: None,
        quit_app=lambda: None,
    )
    dlg = SettingsDialog(bridge)
    qtbot.addWidget(dlg)
    dlg.show()
    states: list[str] = []
    bridge.server_changed.connect(lambda: states.append(bridge.model.server_state))
    dialout = None
    try:
        assert dlg.server_state.text() == "Off"

        async def configure() -> None:
            bridge.apply_config(config)  # the settings window's Apply does this

        run(configure())  # the agent dials the new [server] url at once
        dialout = agent.dialout
        assert dialout is not None
        assert "Backup server: " in tray.icon.toolTip()
        until(run, lambda: dlg.server_state.text() == "Connected")
        assert "Connecting…" not in dlg.server_state.text()
        assert states[-2:] == ["connecting", "connected"]
        assert tray.icon.toolTip().splitlines()[-1] == "Backup server: connected"
        assert dlg.server_state.styleSheet() == ""
        run(server.wait_agent(agent_id(config)))

        # the server goes away: unreachable, with the reason
        run(server.stop())
        until(run, lambda: dlg.server_state.text().startswith("Unreachable: "))
        assert "the backup server at ws://127.0.0.1" in dlg.server_state.text()
        assert dlg.server_state.styleSheet().startswith("color: #c62828")
        tip = tray.icon.toolTip().splitlines()[-1]
        assert tip.startswith("Backup server: not reachable (") and tip.endswith(")")
        assert SERVER_TOKEN not in tip

        # back, but with another token: refused
        server.token = "another-token-entirely"
        run(server.start())
        dialout.reconnect_now()
        until(run, lambda: dlg.server_state.text().startswith("Refused: "))
        assert "refused the token (401 Unauthorized)" in dlg.server_state.text()
        assert tray.icon.toolTip().splitlines()[-1] == "Backup server: refused the token"
        assert SERVER_TOKEN not in tray.icon.toolTip() + dlg.server_state.text()
        assert server.refused >= 1

        # stopped (the agent closing it, or [server] emptied): off
        run(dialout.stop())
        until(run, lambda: dlg.server_state.text() == "Off")
        assert tray.icon.toolTip().splitlines()[-1] == "Backup server: not connected"
    finally:
        if dialout is not None:
            run(dialout.stop())
        run(server.stop())
        bridge.close()
        tray.hide()
    assert dialout.on_state is None  # the bridge let go of it
