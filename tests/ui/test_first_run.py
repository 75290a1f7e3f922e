"""The first-run window: a real repository in a fresh folder, its password kept, a first backup."""

from __future__ import annotations

import asyncio
import gc
import stat
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import keyring
import keyring.backends.fail
import pytest
from PySide6.QtGui import QGuiApplication
from uisupport import make_config

from desktop_agent.app import Agent
from desktop_agent.config import load, read_password
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import LocalStorage
from desktop_agent.protocol import BackupCompleted, BackupFailed, BackupStarted
from desktop_agent.ui.bridge import Bridge
from desktop_agent.ui.first_run import FirstRunDialog


@pytest.fixture(autouse=True, scope="module")
def collect_while_qt_lives() -> Iterator[None]:
    """Collect this module's garbage while the QApplication exists.

    Cycles through Qt wrappers left for the interpreter's final collection
    abort it (``bool_dealloc`` in a C extension) after the tests passed.
    """
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def no_os_keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Never touch the machine's keyring: the 'fail' backend, so the password file is used."""
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    previous = keyring.get_keyring()
    keyring.set_keyring(keyring.backends.fail.Keyring())
    yield
    keyring.set_keyring(previous)


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    return tmp_path / "conf" / "repository-password"


@pytest.fixture
def fresh(
    env: None,
    tmp_path: Path,
    source: Path,
    run: Any,
    password_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Agent]:
    """A started agent whose repository does not exist yet; only stored passwords count."""
    monkeypatch.delenv("DESKTOP_AGENT_PASSWORD")
    config = make_config(tmp_path, [source], init=False)
    config = replace(
        config, repository=replace(config.repository, password_file=str(password_file))
    )
    agent = Agent(config, host="127.0.0.1", port=0, schedule=False)
    run(agent.start())
    yield agent
    run(agent.stop())


@pytest.fixture
def dialog(fresh: Agent, qtbot: Any) -> Iterator[tuple[Bridge, FirstRunDialog]]:
    bridge = Bridge(fresh)
    dlg = FirstRunDialog(bridge)
    qtbot.addWidget(dlg)
    dlg.show()
    yield bridge, dlg
    bridge.close()


def until(run: Callable[..., Any], pred: Callable[[], bool], timeout: float = 60) -> None:
    """Let the qasync loop (and so Qt) run until ``pred()`` holds (see test_settings)."""

    async def wait() -> None:
        while not pred():
            await asyncio.sleep(0.01)

    run(wait(), timeout)


def done(task: asyncio.Task[Any] | None) -> Callable[[], bool]:
    return lambda: task is not None and task.done()


def test_creates_a_repository_with_a_generated_password_then_backs_up(
    dialog, run, tmp_path, password_file
):
    bridge, dlg = dialog
    agent = bridge.agent
    assert not agent.controller.repository_exists()
    assert not dlg.isModal() and not dlg.windowIcon().isNull()
    assert dlg.location.text() == str(tmp_path / "repo")  # the configured place
    assert dlg.generate.isChecked() and str(password_file) in dlg.generate.text()
    assert not dlg.password.isEnabled() and not dlg.repeat.isEnabled()
    assert dlg.result_box.isHidden()
    events: list[Any] = []
    agent.bus.subscribe(events.append)

    # another place than configured, chosen with the (non-blocking) folder chooser
    elsewhere = tmp_path / "usb"
    elsewhere.mkdir()
    dlg.choose_button.click()
    assert dlg.chooser is not None and dlg.chooser.isVisible()
    dlg.chooser.selectFile(str(elsewhere))
    dlg.chooser.accept()
    assert dlg.location.text() == str(elsewhere)
    target = elsewhere / "backups"
    dlg.location.setText(str(target))

    dlg.create_button.click()
    assert not dlg.create_button.isEnabled()
    until(run, done(dlg.task))

    assert dlg.error.isHidden(), dlg.error.text()
    assert not dlg.result_box.isHidden()
    password = dlg.generated.text()
    assert len(password) >= 32
    # kept in the password file, privately, and it opens the repository
    assert password_file.read_text() == password + "\n"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    Repository.open(LocalStorage(target), password)
    # the new location is saved and in use, without a restart
    assert load(agent.config.path).repository.path == str(target)
    assert agent.controller.config.repository_path == str(target)
    assert agent.controller.repository_exists()
    assert read_password(agent.config) == password

    dlg.copy_button.click()
    assert QGuiApplication.clipboard().text() == password
    assert dlg.ready.text() == "Ready: the first backup starts when you click Back up now."

    dlg.back_up_button.click()
    until(run, lambda: any(isinstance(e, BackupCompleted | BackupFailed) for e in events))
    assert any(isinstance(e, BackupStarted) for e in events)
    assert any(isinstance(e, BackupCompleted) for e in events), events
    assert not dlg.back_up_button.isEnabled()

    # the password is shown once: gone when the window closes
    dlg.close()
    assert dlg.generated.text() == ""


def test_a_folder_that_is_not_empty_is_refused(dialog, run, tmp_path, password_file):
    bridge, dlg = dialog
    full = tmp_path / "full"
    full.mkdir()
    (full / "holiday.jpg").write_bytes(b"not a repository")
    dlg.location.setText(str(full))

    dlg.create_button.click()
    until(run, done(dlg.task))

    assert "exists and is not empty" in dlg.error.text()
    assert dlg.result_box.isHidden()
    assert not password_file.exists()
    assert not bridge.config.path.exists()  # nothing saved
    assert bridge.config.repository_path == str(tmp_path / "repo")
    assert sorted(p.name for p in full.iterdir()) == ["holiday.jpg"]
    assert dlg.create_button.isEnabled() and dlg.location.isEnabled()  # try again


def test_a_typed_password_is_kept_where_the_agent_reads_it(dialog, run, tmp_path, password_file):
    bridge, dlg = dialog
    dlg.generate.setChecked(False)
    assert dlg.password.isEnabled() and dlg.repeat.isEnabled()
    dlg.password.setText("my own passphrase")
    dlg.repeat.setText("my own passfrase")
    dlg.create_button.click()
    assert dlg.task is None and dlg.error.text() == "The two passwords differ."

    dlg.repeat.setText("my own passphrase")
    dlg.create_button.click()
    until(run, done(dlg.task))

    assert dlg.error.isHidden(), dlg.error.text()
    assert dlg.generated_box.isHidden()  # nothing generated to show
    Repository.open(LocalStorage(tmp_path / "repo"), "my own passphrase")
    # no OS keyring here: the password file
    assert password_file.read_text() == "my own passphrase\n"
    assert read_password(bridge.config) == "my own passphrase"
    assert not bridge.config.path.exists()  # the location did not change: nothing to save


def test_an_existing_password_file_is_never_overwritten(dialog, run, tmp_path, password_file):
    bridge, dlg = dialog
    password_file.parent.mkdir()
    password_file.write_text("the password of the repository on the unplugged disk\n")

    dlg.create_button.click()
    until(run, done(dlg.task))

    assert "already exists and holds another password" in dlg.error.text()
    assert password_file.read_text() == "the password of the repository on the unplugged disk\n"
    assert not (tmp_path / "repo").exists()
    assert not bridge.agent.controller.repository_exists()


def test_when_the_password_cannot_be_kept_it_stays_on_screen(dialog, run, tmp_path, password_file):
    bridge, dlg = dialog
    password_file.parent.write_text("a file where the folder should be")

    dlg.create_button.click()
    until(run, done(dlg.task))

    assert "The repository was created, but desktop-agent could not finish" in dlg.error.text()
    assert "cannot write" in dlg.error.text()
    password = dlg.generated.text()
    Repository.open(LocalStorage(tmp_path / "repo"), password)  # the only copy is shown
    assert dlg.back_up_button.isHidden()
    dlg.close()
    assert dlg.generated.text() == password  # not forgotten on close: it was not stored
