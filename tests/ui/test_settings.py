"""The settings window against a real agent: values in, validated config out, applied live."""

from __future__ import annotations

import asyncio
import gc
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import keyring
import keyring.backend
import keyring.backends.fail
import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QDialog, QLineEdit
from support import PASSWORD
from uisupport import TOKEN
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from desktop_agent.config import KEYRING_SERVICE, load, read_password
from desktop_agent.protocol import BackupCompleted, BackupFailed
from desktop_agent.ui.bridge import Bridge
from desktop_agent.ui.schedule_settings import EVERY_MINUTES, MANUAL
from desktop_agent.ui.settings import SettingsDialog


class MemoryKeyring(keyring.backend.KeyringBackend):
    """A keyring backend that keeps passwords in a dict (the real API, no OS store)."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.passwords.pop((service, username), None)


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
def dialog(agent: Any, qtbot: Any) -> Iterator[tuple[Bridge, SettingsDialog]]:
    bridge = Bridge(agent)
    dlg = SettingsDialog(bridge)
    qtbot.addWidget(dlg)
    dlg.show()
    yield bridge, dlg
    bridge.close()


def until(run: Callable[..., Any], pred: Callable[[], bool], timeout: float = 60) -> None:
    """Let the qasync loop (and so Qt) run until ``pred()`` holds.

    qtbot.waitUntil spins Qt but does not make the asyncio loop *running*,
    so coroutines would fail with "no running event loop"; this does both.
    """

    async def wait() -> None:
        while not pred():
            await asyncio.sleep(0.01)

    run(wait(), timeout)


def done(task: asyncio.Task[Any] | None) -> Callable[[], bool]:
    return lambda: task is not None and task.done()


def every_minutes(dlg: SettingsDialog, minutes: int) -> None:
    """Choose "Every N minutes" and type N, as a user would."""
    dlg.schedule.frequency.mode.setCurrentIndex(EVERY_MINUTES)
    dlg.schedule.frequency.every.setValue(minutes)


def with_password_file(bridge: Bridge, monkeypatch: pytest.MonkeyPatch, file: Path) -> None:
    """Only the stored password counts (no environment variable), kept in ``file``."""
    monkeypatch.delenv("DESKTOP_AGENT_PASSWORD")
    config = bridge.config
    bridge.apply_config(
        replace(config, repository=replace(config.repository, password_file=str(file)))
    )


def test_shows_the_configuration_in_use(dialog, source, tmp_path):
    bridge, dlg = dialog
    assert dlg.windowTitle() == "Settings - desktop-agent"
    assert not dlg.isModal() and not dlg.windowIcon().isNull()
    assert [dlg.tabs.tabText(i) for i in range(dlg.tabs.count())] == [
        "Backup",
        "Schedule",
        "Repository",
        "Agent",
        "Notifications",
    ]
    assert dlg.sources.values() == (str(source),)
    assert dlg.excludes.values() == ()
    frequency = dlg.schedule.frequency
    assert frequency.mode.currentIndex() == MANUAL
    assert frequency.mode.currentText() == "Only when I start it"
    assert not frequency.every.isVisible() and not frequency.at.isVisible()
    assert dlg.location.text() == str(tmp_path / "repo")
    assert dlg.listen.text() == "127.0.0.1:8080"
    assert dlg.token.text() == TOKEN
    assert dlg.token.echoMode() is QLineEdit.EchoMode.Password
    dlg.show_token_button.click()
    assert dlg.token.echoMode() is QLineEdit.EchoMode.Normal
    assert dlg.show_token_button.text() == "Hide"
    assert dlg.origins.values() == ()
    assert not dlg.allow_remote_restore.isChecked()
    assert dlg.notify_success.isChecked()
    assert dlg.error.isHidden()


def test_apply_saves_the_file_and_the_agent_uses_it_at_once(dialog, run, source, tmp_path):
    bridge, dlg = dialog
    agent = bridge.agent
    more = tmp_path / "more"
    more.mkdir()

    dlg.sources.add_button.click()
    chooser = dlg.chooser
    # open(), not exec(): window-modal, and the loop keeps running meanwhile
    assert chooser is not None and chooser.isVisible()
    assert chooser.windowModality() is Qt.WindowModality.WindowModal
    chooser.selectFile(str(more))
    chooser.accept()
    assert dlg.sources.values() == (str(source), str(more))
    dlg.sources.list.setCurrentRow(0)
    dlg.sources.remove_button.click()
    assert dlg.sources.values() == (str(more),)
    dlg.excludes.add_empty()
    dlg.excludes.list.item(0).setText("*.iso")
    dlg.excludes.add_empty()  # left blank: dropped
    every_minutes(dlg, 30)
    dlg.origins.add_empty()
    dlg.origins.list.item(0).setText("HTTPS://Backup.Example.com:443/")
    dlg.allow_remote_restore.setChecked(True)
    dlg.notify_success.setChecked(False)

    dlg.apply_button.click()
    until(run, done(dlg.task))

    assert dlg.error.isHidden(), dlg.error.text()
    saved = load(agent.config.path)
    assert saved.backup.sources == (str(more),)
    assert saved.backup.exclude == ("*.iso",)
    assert saved.backup.interval_minutes == 30
    assert saved.agent.allowed_origins == ("https://backup.example.com",)  # as the loader does
    assert saved.agent.allow_remote_restore is True
    assert saved.ui.notify_success is False
    assert stat.S_IMODE(os.stat(agent.config.path).st_mode) == 0o600
    # no restart: the running parts use it
    assert agent.controller.config == saved and agent.config == saved
    assert agent.controller.config.expanded_sources() == [str(more)]
    assert agent.server.config.allowed_origins == ("https://backup.example.com",)
    assert bridge.notify_success is False
    assert dlg.origins.values() == ("https://backup.example.com",)  # shows what is in use
    assert dlg.status.text().startswith("Saved")

    # OK with nothing changed just closes
    dlg.ok_button.click()
    assert not dlg.isVisible() and dlg.result() == QDialog.DialogCode.Accepted


def test_an_invalid_value_is_shown_inline_and_nothing_is_saved(dialog, run):
    bridge, dlg = dialog
    before = bridge.config
    dlg.listen.setText("127.0.0.1:99999")
    every_minutes(dlg, 5)

    dlg.ok_button.click()

    assert dlg.task is None  # nothing started
    assert dlg.isVisible()  # OK did not close
    assert not dlg.error.isHidden()
    assert "[agent] listen: port 99999 is out of range 1-65535" in dlg.error.text()
    assert dlg.error.styleSheet().startswith("color: #c62828")
    assert not before.path.exists()
    assert bridge.config is before and bridge.agent.controller.config is before

    # a typed but unstored password blocks Apply too, with a word on what to do
    dlg.listen.setText("127.0.0.1:8080")
    dlg.new_password.setText("something")
    dlg.apply_button.click()
    assert "not stored yet" in dlg.error.text()
    assert not before.path.exists()

    # Cancel drops the edits: reopened, the window shows the configuration in use
    dlg.new_password.clear()
    dlg.cancel_button.click()
    assert not dlg.isVisible()
    dlg.show()
    assert dlg.listen.text() == "127.0.0.1:8080"
    assert dlg.schedule.frequency.mode.currentIndex() == MANUAL
    assert dlg.error.isHidden()


def test_a_change_made_elsewhere_meanwhile_is_kept(dialog, run, tmp_path):
    bridge, dlg = dialog
    moved = replace(
        bridge.config,
        repository=replace(bridge.config.repository, path=str(tmp_path / "usb")),
    )
    bridge.apply_config(moved)  # as the first-run window does
    assert dlg.location.text() == str(tmp_path / "usb")  # nothing edited here: follows
    every_minutes(dlg, 15)
    bridge.apply_config(replace(moved, backup=replace(moved.backup, exclude=("*.iso",))))
    assert dlg.schedule.frequency.every.value() == 15  # an edit is never thrown away

    dlg.apply_button.click()
    until(run, done(dlg.task))

    saved = load(bridge.config.path)
    assert saved.backup.interval_minutes == 15
    assert saved.backup.exclude == ("*.iso",)  # not reverted to what the form showed
    assert saved.repository.path == str(tmp_path / "usb")


def test_a_regenerated_token_replaces_the_old_one_for_ws_clients(dialog, run):
    bridge, dlg = dialog
    agent = bridge.agent
    dlg.regenerate_button.click()
    new = dlg.token.text()
    assert new != TOKEN and len(new) >= 40
    assert not dlg.token_note.isHidden()
    assert agent.server.config.token == TOKEN  # only once applied
    dlg.copy_token_button.click()
    assert QGuiApplication.clipboard().text() == new

    dlg.apply_button.click()
    until(run, done(dlg.task))

    assert dlg.error.isHidden(), dlg.error.text()
    assert agent.server.config.token == new
    assert load(agent.config.path).agent.token == new

    async def clients() -> None:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                agent.server.url, additional_headers={"Authorization": f"Bearer {TOKEN}"}
            ):
                pass
        assert refused.value.response.status_code == 401
        async with connect(
            agent.server.url, additional_headers={"Authorization": f"Bearer {new}"}
        ) as ws:
            await ws.send('{"type": "agent:status", "payload": null}')
            assert "agent:status" in str(await ws.recv())

    run(clients())


def test_a_wrong_password_is_refused_and_nothing_is_stored(dialog, run, tmp_path, monkeypatch):
    bridge, dlg = dialog
    file = tmp_path / "secret" / "repository-password"
    with_password_file(bridge, monkeypatch, file)

    dlg.new_password.setText(PASSWORD)
    dlg.repeat_password.setText(PASSWORD + "x")
    dlg.store_password_button.click()
    assert dlg.password_task is None
    assert dlg.password_error.text() == "The two passwords differ."

    dlg.repeat_password.setText("not the password")
    dlg.new_password.setText("not the password")
    dlg.store_password_button.click()
    assert not dlg.store_password_button.isEnabled()  # while the repository is opened
    until(run, done(dlg.password_task))

    assert "wrong password for the repository" in dlg.password_error.text()
    assert dlg.password_status.text() == ""
    assert dlg.store_password_button.isEnabled()
    assert not file.exists() and not file.parent.exists()
    assert read_password(bridge.config) is None
    assert dlg.new_password.text() == "not the password"  # left to correct


def test_the_right_password_is_stored_and_backups_use_it(dialog, run, tmp_path, monkeypatch):
    bridge, dlg = dialog
    file = tmp_path / "secret" / "repository-password"
    with_password_file(bridge, monkeypatch, file)
    assert read_password(bridge.config) is None  # nothing yet: a backup would fail

    dlg.new_password.setText(PASSWORD)
    dlg.repeat_password.setText(PASSWORD)
    dlg.store_password_button.click()
    until(run, done(dlg.password_task))

    assert dlg.password_error.isHidden(), dlg.password_error.text()
    assert f"stored in the password file {file}" in dlg.password_status.text()
    assert file.read_text() == PASSWORD + "\n"
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert dlg.new_password.text() == "" and dlg.repeat_password.text() == ""
    assert read_password(bridge.config) == PASSWORD

    events: list[Any] = []
    bridge.agent.bus.subscribe(events.append)
    bridge.back_up_now()
    until(run, lambda: any(isinstance(e, BackupCompleted | BackupFailed) for e in events))
    assert any(isinstance(e, BackupCompleted) for e in events), events


def test_the_password_goes_to_the_os_keyring_when_there_is_one(dialog, run, tmp_path, monkeypatch):
    bridge, dlg = dialog
    file = tmp_path / "secret" / "repository-password"
    with_password_file(bridge, monkeypatch, file)
    backend = MemoryKeyring()
    keyring.set_keyring(backend)

    dlg.new_password.setText(PASSWORD)
    dlg.repeat_password.setText(PASSWORD)
    dlg.store_password_button.click()
    until(run, done(dlg.password_task))

    assert dlg.password_error.isHidden(), dlg.password_error.text()
    assert "stored in the OS keyring" in dlg.password_status.text()
    assert backend.passwords == {(KEYRING_SERVICE, bridge.config.repository_path): PASSWORD}
    assert not file.exists()
    assert read_password(bridge.config) == PASSWORD


def test_a_server_location_takes_its_credentials_to_the_keyring_not_the_file(dialog, run):
    bridge, dlg = dialog
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    dlg.tabs.setCurrentIndex(1)
    form, fields = dlg.credentials.form, dlg.credentials

    dlg.location.setText("sftp:me@nas:/volume1/restic")
    assert not form.isRowVisible(fields.password) and not form.isRowVisible(fields.access_key)
    assert "known_hosts" in fields.note.text()
    dlg.location.setText("rest:https://me@backup.example:8000/laptop")
    assert form.isRowVisible(fields.password) and not form.isRowVisible(fields.secret_key)
    dlg.location.setText("s3:https://minio.example:9000/backups/laptop")
    assert form.isRowVisible(fields.access_key) and form.isRowVisible(fields.secret_key)
    assert not form.isRowVisible(fields.password)
    fields.access_key.setText("AKIAEXAMPLE")
    fields.secret_key.setText("wJalrXUtnFEMI-secret")

    dlg.apply_button.click()
    until(run, done(dlg.task))

    assert dlg.error.isHidden(), dlg.error.text()
    assert "Server credentials are in the OS keyring" in dlg.status.text()
    where = "https://minio.example:9000/backups"
    assert backend.passwords == {
        (KEYRING_SERVICE, f"s3-access-key:{where}"): "AKIAEXAMPLE",
        (KEYRING_SERVICE, f"s3-secret-key:{where}"): "wJalrXUtnFEMI-secret",
    }
    text = bridge.config.path.read_text()
    assert "s3:https://minio.example:9000/backups/laptop" in text
    assert "AKIAEXAMPLE" not in text and "wJalr" not in text
    assert bridge.config.repository_location.bucket == "backups"
    assert fields.access_key.text() == "" and fields.secret_key.text() == ""

    # a REST password typed into the URL is refused, not saved in clear
    dlg.location.setText("rest:https://me:hunter2@backup.example:8000/laptop")
    dlg.apply_button.click()
    assert "holds a password in clear" in dlg.error.text() and "hunter2" not in dlg.error.text()
    assert "hunter2" not in bridge.config.path.read_text()
