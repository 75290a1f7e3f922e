"""The settings window: what to back up, when (the schedule and upkeep, in
:mod:`.schedule_settings`), where to, the /ws agent and the backup server it
dials out to, notifications, and whether desktop-agent starts at login.

Nothing here touches the engine: repository work goes through the bridge
(``check_password``), the configuration and the password's storage through
:mod:`desktop_agent.config` (``merge``, ``validate``, ``save``,
``store_password``). A change is validated by the loader's own rules before
it is saved, and applied at once through :meth:`Bridge.apply_config` - no
restart. Start at login is not in the
configuration: the switch shows the operating system's state
(:mod:`desktop_agent.system.autostart`), read when the window opens, and
changes it on Apply like the rest. Errors are shown inline, never in a modal
box, and file, keyring and repository work runs off the loop thread.

The backup server (``[server] url``, docs/protocol.md) is on the Agent tab:
its token is never shown nor written into the configuration; a typed one
is kept with :func:`~desktop_agent.config.secrets.store_dialout_token` on
Apply, and the field's placeholder says where the one in use comes from.
The connection's state follows :attr:`Bridge.server_changed` live.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QHideEvent, QShowEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from desktop_agent.config import (
    PASSWORD_ENV,
    Config,
    ConfigError,
    generate_token,
    merge,
    save,
    store_password,
    validate,
)
from desktop_agent.config.secrets import (
    SERVER_TOKEN_ENV,
    agent_id,
    dialout_token,
    store_dialout_token,
)
from desktop_agent.engine.errors import EngineError
from desktop_agent.system.autostart import (
    Autostart,
    AutostartStatus,
    Source,
    platform_autostart,
)
from desktop_agent.system.errors import AutostartError

from .bridge import Bridge
from .icons import app_icon
from .model import server_state_words
from .schedule_settings import ScheduleTab
from .widgets import (
    ERROR_STYLE,
    ServerCredentials,
    StringList,
    error_label,
    hint,
    open_folder_dialog,
    run_off_loop,
    show_text,
    start_dir,
)

__all__ = ["SettingsDialog"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def _autostart_words(status: AutostartStatus) -> str:
    """The start-at-login state for the settings window: which entry decides."""
    if status.enabled and status.source is Source.SYSTEM:
        return f"Started for every user by {status.entry}."
    if status.enabled:
        return f"Started by {status.entry}."
    if status.system_entry is not None:
        return f"Off for you: {status.entry} hides {status.system_entry}."
    return "Scheduled backups run only while desktop-agent runs."


def token_source(config: Config) -> str:
    """Where the backup server's token in use comes from, in words for the token
    field's placeholder (never the token). Blocking (keyring, file): run off the loop."""
    if os.environ.get(SERVER_TOKEN_ENV, "").strip():
        return f"from {SERVER_TOKEN_ENV} in the environment (used first)"
    if config.server.token_file:
        path = config.resolve_path(config.server.token_file)
        try:
            dialout_token(config)
        except ConfigError:
            return f"the token file {path} cannot be read"
        return f"from the token file {path}"
    if config.server.url and dialout_token(config):
        return "stored (OS keyring or a private file); type a new one to replace it"
    return "none: paste the token the backup server gave you"


def _server_facts(config: Config) -> tuple[str, str]:
    """(where the token comes from, the agent id or why there is none); blocking."""
    try:
        source = token_source(config)
    except ConfigError as exc:
        source = str(exc)
    try:
        ident = agent_id(config)
    except ConfigError as exc:
        ident = str(exc)
    return source, ident


# ------------------------------------------------------------ the dialog
class SettingsDialog(QDialog):
    """Backup, Schedule, Repository, Agent and Notifications tabs; Apply / OK / Cancel.

    Non-modal. Apply builds a new :class:`Config`, validates it with the
    loader's rules (an error shows in red at the bottom and nothing is
    saved), saves it atomically and applies it to the running agent.
    """

    def __init__(
        self,
        bridge: Bridge,
        parent: QWidget | None = None,
        *,
        autostart: Autostart | None = None,
    ) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.autostart = autostart or platform_autostart(bridge.config.path)
        self.autostart_task: asyncio.Task[Any] | None = None  # reading the state
        self._autostart_on: bool | None = None  # the state read; None: not (yet) known
        self.setWindowTitle("Settings - desktop-agent")
        self.setWindowIcon(app_icon())
        self.setModal(False)
        self.setMinimumWidth(560)
        self.chooser: QFileDialog | None = None  # the open folder chooser, if any
        self.task: asyncio.Task[Any] | None = None  # the running Apply
        self.password_task: asyncio.Task[Any] | None = None
        self.server_task: asyncio.Task[Any] | None = None  # reading token source, agent id
        self._token = ""
        self._loaded = bridge.config  # what the form was filled from
        self._stale = False

        self.tabs = QTabWidget()
        self.tabs.addTab(self._backup_tab(), "Backup")
        self.schedule = ScheduleTab()
        self.tabs.addTab(self.schedule, "Schedule")
        self.tabs.addTab(self._repository_tab(), "Repository")
        self.tabs.addTab(self._agent_tab(), "Agent")
        self.tabs.addTab(self._notifications_tab(), "Notifications")

        self.error = error_label()
        self.error.setObjectName("error")
        self.status = QLabel()
        self.status.setObjectName("status")
        self.status.setWordWrap(True)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok
            | QDialogButtonBox.StandardButton.Apply
            | QDialogButtonBox.StandardButton.Cancel
        )
        self.ok_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.apply_button = self.buttons.button(QDialogButtonBox.StandardButton.Apply)
        self.cancel_button = self.buttons.button(QDialogButtonBox.StandardButton.Cancel)
        # bound methods, not lambdas: PySide would keep a lambda (and so self) alive
        self.ok_button.clicked.connect(self._ok_clicked)
        self.apply_button.clicked.connect(self._apply_clicked)
        self.cancel_button.clicked.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(self.error)
        layout.addWidget(self.status)
        layout.addWidget(self.buttons)
        self.load(bridge.config)
        bridge.config_changed.connect(self._config_changed)
        bridge.server_changed.connect(self.show_server_state)

    # ---------------------------------------------------------- tabs
    def _backup_tab(self) -> QWidget:
        tab = QWidget()
        self.sources = StringList("Add folder...", add=self.choose_source)
        self.excludes = StringList("Add")
        form = QFormLayout(tab)
        form.addRow("Folders to back up:", self.sources)
        form.addRow("Leave out:", self.excludes)
        form.addRow(
            "",
            hint('restic --exclude patterns: "*.tmp", "**/.cache"; "*" stays within a folder.'),
        )
        self.start_at_login = QCheckBox("Start desktop-agent when I log in")
        self.start_at_login.setEnabled(False)  # until the state is read
        self.start_at_login_note = hint("")
        self.start_at_login_note.setObjectName("start_at_login_note")
        self.start_at_login_note.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextSelectableByMouse
        )
        form.addRow("", self.start_at_login)
        form.addRow("", self.start_at_login_note)
        return tab

    def _repository_tab(self) -> QWidget:
        tab = QWidget()
        self.location = QLineEdit()
        self.location.setPlaceholderText("/media/usb/backup")
        self.choose_location_button = QPushButton("Choose...")
        self.choose_location_button.clicked.connect(self.choose_location)
        row = QHBoxLayout()
        row.addWidget(self.location, 1)
        row.addWidget(self.choose_location_button)

        self.new_password = QLineEdit()
        self.new_password.setEchoMode(QLineEdit.EchoMode.Password)
        self.repeat_password = QLineEdit()
        self.repeat_password.setEchoMode(QLineEdit.EchoMode.Password)
        self.store_password_button = QPushButton("Check and store password")
        self.store_password_button.clicked.connect(self.store_new_password)
        self.password_error = error_label()
        self.password_error.setObjectName("password_error")
        self.password_status = QLabel()
        self.password_status.setObjectName("password_status")
        self.password_status.setWordWrap(True)
        self.password_where = hint("")
        self.env_note = hint(
            f"{PASSWORD_ENV} is set in this program's environment: it is used before "
            "any stored password."
        )
        self.env_note.setVisible(bool(os.environ.get(PASSWORD_ENV)))
        button_row = QHBoxLayout()
        button_row.addStretch(1)
        button_row.addWidget(self.store_password_button)

        form = QFormLayout(tab)
        form.addRow("Location:", row)
        form.addRow(
            "",
            hint(
                "A folder, ideally on another disk, or a server in restic's syntax: "
                "rest:https://host:8000/path, sftp:user@host:/path, "
                "s3:https://host/bucket/prefix."
            ),
        )
        # a server's credentials: stored on Apply (keyring or a 0600 file), never in the file
        self.credentials = ServerCredentials(form)
        self.location.textChanged.connect(self.credentials.follow)
        form.addRow(QLabel("<b>Change stored password</b>"))
        form.addRow(
            hint(
                "desktop-agent reads the repository password from the OS keyring or its "
                "password file. This does not re-key the repository: enter the password "
                "the repository was created with. It is checked by opening the "
                "repository before it is stored."
            )
        )
        form.addRow(self.password_where)
        form.addRow("Password:", self.new_password)
        form.addRow("Repeat:", self.repeat_password)
        form.addRow(button_row)
        form.addRow(self.password_error)
        form.addRow(self.password_status)
        form.addRow(self.env_note)
        return tab

    def _agent_tab(self) -> QWidget:
        tab = QWidget()
        self.listen = QLineEdit()
        self.listen.setPlaceholderText("127.0.0.1:8080")
        self.token = QLineEdit()
        self.token.setReadOnly(True)
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.show_token_button = QPushButton("Show")
        self.show_token_button.setCheckable(True)
        self.show_token_button.toggled.connect(self._show_token)
        self.copy_token_button = QPushButton("Copy")
        self.copy_token_button.clicked.connect(self.copy_token)
        self.regenerate_button = QPushButton("Regenerate")
        self.regenerate_button.clicked.connect(self.regenerate_token)
        token_row = QHBoxLayout()
        token_row.addWidget(self.token, 1)
        for button in (self.show_token_button, self.copy_token_button, self.regenerate_button):
            token_row.addWidget(button)
        self.token_note = hint(
            "A new token: connected backup servers keep their connection, but need the "
            "new token to connect again. It takes effect when you click Apply."
        )
        self.token_note.hide()
        self.origins = StringList("Add")

        form = QFormLayout(tab)
        form.addRow("Listen on:", self.listen)
        form.addRow(
            "",
            hint("host:port of the /ws endpoint; 127.0.0.1 accepts this machine only."),
        )
        form.addRow("Access token:", token_row)
        form.addRow("", self.token_note)
        form.addRow("Allowed origins:", self.origins)
        form.addRow(
            "",
            hint(
                'Browser pages allowed to connect, e.g. "https://backup.example.com"; '
                "none: no browser may connect."
            ),
        )
        self.allow_remote_restore = QCheckBox("Let the backup server restore files here")
        form.addRow("", self.allow_remote_restore)
        form.addRow(
            "",
            hint(
                "Restores it asks for always go into a new folder in Downloads (never over "
                "existing files), and desktop-agent tells you when one starts."
            ),
        )
        form.addRow(self._server_group())
        return tab

    def _server_group(self) -> QGroupBox:
        group = QGroupBox("Backup server")
        self.server_url = QLineEdit()
        self.server_url.setPlaceholderText("wss://backup.example.com/agents")
        self.server_token = QLineEdit()
        self.server_token.setEchoMode(QLineEdit.EchoMode.Password)
        self.agent_id = QLineEdit()
        self.agent_id.setReadOnly(True)
        self.server_state = QLabel()
        self.server_state.setObjectName("server_state")
        self.server_state.setWordWrap(True)
        self.server_state.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form = QFormLayout(group)
        form.addRow(
            hint(
                "desktop-agent connects to this server itself, so that it can be reached "
                "behind a router or firewall. Empty: off."
            )
        )
        form.addRow("Backup server:", self.server_url)
        form.addRow("Access token:", self.server_token)
        form.addRow("Agent id:", self.agent_id)
        form.addRow("State:", self.server_state)
        return group

    def _notifications_tab(self) -> QWidget:
        tab = QWidget()
        self.notify_success = QCheckBox("Notify me when a backup completes")
        layout = QVBoxLayout(tab)
        layout.addWidget(self.notify_success)
        layout.addWidget(hint("Failed backups are always shown."))
        layout.addStretch(1)
        return tab

    # ---------------------------------------------------------- values
    def load(self, config: Config) -> None:
        """Show ``config``'s values, discarding edits."""
        self._loaded = config
        self.sources.set_values(config.backup.sources)
        self.excludes.set_values(config.backup.exclude)
        self.schedule.load(config)
        self.location.setText(config.repository.path)
        self.credentials.clear()
        self.credentials.follow(config.repository.path)
        self.listen.setText(config.agent.listen)
        self._set_token(config.agent.token)
        self.token_note.hide()
        self.origins.set_values(config.agent.allowed_origins)
        self.allow_remote_restore.setChecked(config.agent.allow_remote_restore)
        self.notify_success.setChecked(config.ui.notify_success)
        self.server_url.setText(config.server.url)
        self.server_token.clear()
        self.read_server_facts(config)
        self.show_server_state()
        self.new_password.clear()
        self.repeat_password.clear()
        file = config.password_file_path
        if file is None:
            where = "It is stored in the OS keyring (no password file is configured)."
        else:
            where = (
                f"It is stored in the password file {file} if that exists (it is read "
                "first), otherwise in the OS keyring, or in that file when there is no keyring."
            )
        self.password_where.setText(where)
        show_text(self.password_error, "")
        self.password_status.clear()
        show_text(self.error, "")
        self.status.clear()
        self._stale = False
        self.read_autostart()

    # ---------------------------------------------------------- the backup server
    def read_server_facts(self, config: Config) -> None:
        """Read where the token comes from and the agent id (in the background)."""
        if self.server_task is not None and not self.server_task.done():
            self.server_task.cancel()
        self.server_token.setPlaceholderText("")
        self.server_task = self.bridge.spawn(self._read_server_facts(config))

    async def _read_server_facts(self, config: Config) -> None:
        try:
            source, ident = await run_off_loop(_server_facts, config)
        except Exception as exc:  # noqa: BLE001 - shown in place, logged with its traceback
            log.exception("reading the backup server's token and agent id failed")
            source, ident = f"cannot tell: {exc}", ""
        self.server_token.setPlaceholderText(source)
        self.agent_id.setText(ident)
        self.agent_id.setCursorPosition(0)

    def show_server_state(self) -> None:
        """The dial-out connection's state, as the bridge last heard it."""
        model = self.bridge.model
        state = model.server_state if model.server_url else "off"
        self.server_state.setText(server_state_words(state, model.server_error))
        bad = state in ("refused", "unreachable")
        self.server_state.setStyleSheet(ERROR_STYLE if bad else "")

    # ---------------------------------------------------------- start at login
    def read_autostart(self) -> None:
        """Read whether desktop-agent starts at login (in the background) and show it."""
        if self.autostart_task is not None and not self.autostart_task.done():
            return
        self.start_at_login.setEnabled(False)
        self.autostart_task = self.bridge.spawn(self._read_autostart())

    async def _read_autostart(self) -> None:
        try:
            status = await run_off_loop(self.autostart.status)
        except AutostartError as exc:
            self._autostart_on = None
            self.start_at_login_note.setText(f"Cannot tell whether it starts at login: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - shown inline, logged with its traceback
            log.exception("reading the start-at-login state failed")
            self._autostart_on = None
            self.start_at_login_note.setText(f"Cannot tell whether it starts at login: {exc}")
            return
        self._show_autostart(status)

    def _show_autostart(self, status: AutostartStatus) -> None:
        self._autostart_on = status.enabled
        self.start_at_login.setChecked(status.enabled)
        self.start_at_login.setEnabled(True)
        self.start_at_login_note.setText(_autostart_words(status))

    def _autostart_wanted(self) -> bool | None:
        """The new start-at-login state to apply, or None when it is unchanged (or unknown)."""
        if self._autostart_on is None or not self.start_at_login.isEnabled():
            return None
        wanted = self.start_at_login.isChecked()
        return None if wanted == self._autostart_on else wanted

    def _form(self, base: Config) -> Config:
        """``base`` with every value the form shows."""
        base = self.schedule.form(base)
        return replace(
            base,
            agent=replace(
                base.agent,
                listen=self.listen.text().strip(),
                token=self._token,
                allowed_origins=self.origins.values(),
                allow_remote_restore=self.allow_remote_restore.isChecked(),
            ),
            repository=replace(base.repository, path=self.location.text().strip()),
            backup=replace(
                base.backup,
                sources=self.sources.values(),
                exclude=self.excludes.values(),
            ),
            ui=replace(base.ui, notify_success=self.notify_success.isChecked()),
            server=replace(base.server, url=self.server_url.text().strip()),
        )

    def edited(self) -> bool:
        """Whether anything was typed or changed since the form was filled."""
        typed = bool(
            self.new_password.text()
            or self.repeat_password.text()
            or self.credentials.typed()
            or self.server_token.text()
        )
        return (
            typed
            or self._autostart_wanted() is not None
            or self._form(self._loaded) != self._loaded
        )

    def build(self) -> Config:
        """The configuration in use with this window's edits (not validated yet).

        Only what was edited here comes from the form: a change applied
        elsewhere while the window was open (the first-run window moving
        the repository, say) is kept, not reverted to what the form showed.
        """
        return merge(self._loaded, self._form(self._loaded), self.bridge.config)

    def _config_changed(self, config: Config) -> None:
        if not self.edited():
            self.load(config)

    # ---------------------------------------------------------- apply
    def _ok_clicked(self) -> None:
        self.apply(close=True)

    def _apply_clicked(self) -> None:
        self.apply(close=False)

    def apply(self, *, close: bool = False) -> None:
        """Validate, then save and apply in the background; ``close`` when it worked."""
        if self.task is not None and not self.task.done():
            return
        show_text(self.error, "")
        self.status.clear()
        if self.new_password.text() or self.repeat_password.text():
            show_text(
                self.error,
                'The new password is not stored yet: click "Check and store password" '
                "on the Repository tab, or clear the password fields.",
            )
            return
        try:
            checked = validate(self.build())
        except ConfigError as exc:
            show_text(self.error, str(exc))
            return
        start_at_login = self._autostart_wanted()
        credentials = self.credentials.typed()
        server_token = self.server_token.text().strip()
        if "\n" in server_token or "\r" in server_token:
            show_text(self.error, "The backup server's access token must be a single line.")
            return
        if server_token and not checked.server.url:
            show_text(self.error, "Enter the backup server's address for the access token.")
            return
        if (
            checked == self.bridge.config
            and start_at_login is None
            and not credentials
            and not server_token
        ):
            if close:
                self.accept()
            else:
                self.status.setText("Nothing changed.")
            return
        self._busy(True)
        config = None if checked == self.bridge.config else checked
        self.task = self.bridge.spawn(
            self._save_and_apply(config, start_at_login, close, checked, credentials, server_token)
        )

    async def _save_and_apply(
        self,
        config: Config | None,
        start_at_login: bool | None,
        close: bool,
        checked: Config | None = None,
        credentials: list[tuple[str, str]] | None = None,
        server_token: str = "",
    ) -> None:
        # start at login first: when it fails nothing is changed, and the form keeps the edits
        try:
            if start_at_login is not None:
                change = self.autostart.enable if start_at_login else self.autostart.disable
                status = await run_off_loop(change)
                log.info("start at login: %s", status.describe())
                self._show_autostart(status)
            stored = ""
            if credentials and checked is not None:
                stored = await run_off_loop(ServerCredentials.store, checked, credentials)
                self.credentials.clear()
                log.info(
                    "server credentials for %s stored in %s",
                    checked.repository_location.display(),
                    stored,
                )
            token_where = ""
            if server_token and checked is not None:
                # before the configuration is applied: the restarted connection reads it
                token_where = await run_off_loop(store_dialout_token, checked, server_token)
                self.server_token.clear()
                log.info("backup server token stored in %s", token_where)
            if config is not None:
                await run_off_loop(save, config)
        except (ConfigError, AutostartError) as exc:
            show_text(self.error, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - shown inline, logged with its traceback
            log.exception("saving the settings failed")
            show_text(self.error, f"Could not save the settings: {exc}")
            return
        finally:
            self._busy(False)
        previous = self.bridge.config.server
        if config is not None:
            self.bridge.apply_config(config)
            log.info("settings saved to %s and applied", config.path)
            self.load(config)
        if token_where and (config is None or config.server == previous):
            self.bridge.redial()  # [server] did not change: apply_config did not reconnect
            self.read_server_facts(self.bridge.config)
        self.status.setText(
            "Saved; in use now."
            + (f" Server credentials are in {stored}." if stored else "")
            + (f" The backup server's token is in {token_where}." if token_where else "")
            + _shadowed(self.bridge.config, token_where)
        )
        if close:
            self.accept()

    def _busy(self, busy: bool) -> None:
        for button in (self.ok_button, self.apply_button):
            button.setEnabled(not busy)

    # ---------------------------------------------------------- folders
    def _choose(self, title: str, start: str, chosen: Callable[[str], None]) -> None:
        if self.chooser is not None:
            self.chooser.deleteLater()
        self.chooser = open_folder_dialog(self, title, start, chosen)

    def choose_source(self) -> None:
        """Add a folder to back up (chooser opens without blocking)."""
        current = self.sources.list.currentItem()
        start = start_dir(current.text() if current else "", self.bridge.config)
        self._choose("Add a folder to back up", start, self._source_chosen)

    def _source_chosen(self, folder: str) -> None:
        if folder:
            self.sources.append(os.path.normpath(folder))

    def choose_location(self) -> None:
        """Choose the repository folder (chooser opens without blocking)."""
        start = start_dir(self.location.text(), self.bridge.config)
        self._choose("Repository folder", start, self._location_chosen)

    def _location_chosen(self, folder: str) -> None:
        if folder:
            self.location.setText(os.path.normpath(folder))

    # ---------------------------------------------------------- token
    def _set_token(self, token: str) -> None:
        self._token = token
        self.token.setText(token)

    def _show_token(self, shown: bool) -> None:
        self.token.setEchoMode(QLineEdit.EchoMode.Normal if shown else QLineEdit.EchoMode.Password)
        self.show_token_button.setText("Hide" if shown else "Show")

    def copy_token(self) -> None:
        """Put the token (as shown, maybe not applied yet) on the clipboard."""
        QGuiApplication.clipboard().setText(self._token)
        self.status.setText("Token copied to the clipboard.")

    def regenerate_token(self) -> None:
        """A fresh random token; used once applied."""
        self._set_token(generate_token())
        self.token_note.show()

    # ---------------------------------------------------------- password
    def store_new_password(self) -> None:
        """Check the typed password against the repository, then store it."""
        if self.password_task is not None and not self.password_task.done():
            return
        show_text(self.password_error, "")
        self.password_status.clear()
        password = self.new_password.text()
        if not password:
            show_text(self.password_error, "Enter the repository password.")
            return
        if password != self.repeat_password.text():
            show_text(self.password_error, "The two passwords differ.")
            return
        location = self.location.text().strip()
        if not location:
            show_text(self.password_error, "Enter the repository location first.")
            return
        path = self.bridge.config.resolve_path(location)
        self.store_password_button.setEnabled(False)
        self.password_status.setText("Opening the repository with this password...")
        self.password_task = self.bridge.spawn(self._check_and_store(path, password))

    async def _check_and_store(self, path: str, password: str) -> None:
        try:
            await self.bridge.check_password(path, password)
            where = await run_off_loop(store_password, self.bridge.config, path, password)
        except (EngineError, ConfigError) as exc:
            self.password_status.clear()
            show_text(self.password_error, str(exc))
        except Exception as exc:  # noqa: BLE001 - shown inline, logged with its traceback
            log.exception("storing the repository password failed")
            self.password_status.clear()
            show_text(self.password_error, f"Could not store the password: {exc}")
        else:
            self.new_password.clear()
            self.repeat_password.clear()
            self.password_status.setText(f"The password opens the repository; stored in {where}.")
        finally:
            self.store_password_button.setEnabled(True)

    # ---------------------------------------------------------- Qt
    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt's name
        """Show the configuration in use when reopened after Cancel or OK."""
        if self._stale:
            self.load(self.bridge.config)
        super().showEvent(event)

    def hideEvent(self, event: QHideEvent) -> None:  # noqa: N802 - Qt's name
        """Edits not applied are dropped once the window closes."""
        if not event.spontaneous():
            self._stale = True
        super().hideEvent(event)


def _shadowed(config: Config, stored: str) -> str:
    """A word when a token just stored is not the one used (the environment or
    ``token_file`` comes first)."""
    if not stored:
        return ""
    if os.environ.get(SERVER_TOKEN_ENV, "").strip():
        return f" {SERVER_TOKEN_ENV} in the environment is used before it."
    if config.server.token_file:
        return f" The token file {config.resolve_path(config.server.token_file)} is read first."
    return ""
