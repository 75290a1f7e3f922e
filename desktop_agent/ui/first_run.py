"""The first-run window: create the repository, keep its password, back up.

Shown when the configured repository does not exist. The repository is
created through the bridge (the job controller's worker thread); the
password is written only after the repository exists, so a failed attempt
never overwrites a password file, and an existing password file that holds
another password is never replaced (it may belong to a repository on a disk
that is just not plugged in): :mod:`desktop_agent.config.secrets` decides.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from dataclasses import replace
from typing import Any

from PySide6.QtGui import QGuiApplication, QHideEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop_agent.config import (
    PASSWORD_ENV,
    Config,
    ConfigError,
    password_storage_problem,
    save,
    store_password,
    validate,
    write_password_file,
)
from desktop_agent.engine.errors import EngineError

from .bridge import Bridge
from .icons import app_icon
from .widgets import (
    ServerCredentials,
    error_label,
    hint,
    open_folder_dialog,
    run_off_loop,
    show_text,
    start_dir,
)

__all__ = ["FirstRunDialog", "generate_password"]

log = logging.getLogger(__name__)


def generate_password() -> str:
    """A strong random repository password (192 bits, URL-safe, one line)."""
    return secrets.token_urlsafe(24)


class FirstRunDialog(QDialog):
    """Location, password (typed or generated), Create repository, Back up now.

    Non-modal; every slow step runs in the background and errors show
    inline in red.
    """

    def __init__(self, bridge: Bridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.setWindowTitle("Set up backups - desktop-agent")
        self.setWindowIcon(app_icon())
        self.setModal(False)
        self.setMinimumWidth(560)
        self.chooser: QFileDialog | None = None
        self.task: asyncio.Task[Any] | None = None
        self.created = False
        self.stored = False  # the password is kept where the agent reads it
        config = bridge.config
        file = config.password_file_path

        intro = QLabel(
            "desktop-agent needs a repository: a folder, ideally on another disk, or a "
            "backup server, where "
            "your backups are stored encrypted, in restic's format. Choose where it goes "
            "and its password - without the password nobody, not even you, can restore "
            "the backups."
        )
        intro.setWordWrap(True)

        self.location = QLineEdit(config.repository_path)
        self.location.setPlaceholderText("/media/usb/backup or rest:https://host:8000/laptop")
        self.choose_button = QPushButton("Choose...")
        self.choose_button.clicked.connect(self.choose_location)
        location_row = QHBoxLayout()
        location_row.addWidget(self.location, 1)
        location_row.addWidget(self.choose_button)

        if file is not None:
            self.generate = QCheckBox(
                f"Generate a strong password and keep it in the password file ({file})"
            )
            self.generate.setChecked(True)
        else:
            self.generate = QCheckBox(
                "Generate a strong password (not available: no password file is configured)"
            )
            self.generate.setEnabled(False)
        self.generate.toggled.connect(self._update_fields)
        self.password = QLineEdit()
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.repeat = QLineEdit()
        self.repeat.setEchoMode(QLineEdit.EchoMode.Password)
        self.env_note = QLabel(
            f"{PASSWORD_ENV} is set in this program's environment: desktop-agent uses it "
            "before any stored password, so it must be the repository's password."
        )
        self.env_note.setWordWrap(True)
        self.env_note.setVisible(bool(os.environ.get(PASSWORD_ENV)))

        self.error = error_label()
        self.error.setObjectName("error")
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.create_button = QPushButton("Create repository")
        self.create_button.setDefault(True)
        self.create_button.clicked.connect(self.create_repository)
        create_row = QHBoxLayout()
        create_row.addWidget(self.status, 1)
        create_row.addWidget(self.create_button)

        # shown once the repository exists
        self.result_box = QWidget()
        self.generated = QLineEdit()
        self.generated.setReadOnly(True)
        self.copy_button = QPushButton("Copy")
        self.copy_button.clicked.connect(self.copy_password)
        generated_row = QHBoxLayout()
        generated_row.setContentsMargins(0, 0, 0, 0)
        generated_row.addWidget(self.generated, 1)
        generated_row.addWidget(self.copy_button)
        self.generated_box = QWidget()
        generated_layout = QVBoxLayout(self.generated_box)
        generated_layout.setContentsMargins(0, 0, 0, 0)
        generated_layout.addWidget(QLabel("The repository password:"))
        generated_layout.addLayout(generated_row)
        keep = QLabel(
            "Keep a copy of this password somewhere safe (a password manager, or on "
            "paper): if this computer is lost, the backups cannot be restored without it."
        )
        keep.setWordWrap(True)
        generated_layout.addWidget(keep)
        self.ready = QLabel("Ready: the first backup starts when you click Back up now.")
        self.ready.setWordWrap(True)
        self.back_up_button = QPushButton("Back up now")
        self.back_up_button.clicked.connect(self.back_up_now)
        ready_row = QHBoxLayout()
        ready_row.setContentsMargins(0, 0, 0, 0)
        ready_row.addWidget(self.ready, 1)
        ready_row.addWidget(self.back_up_button)
        result_layout = QVBoxLayout(self.result_box)
        result_layout.setContentsMargins(0, 0, 0, 0)
        result_layout.addWidget(self.generated_box)
        result_layout.addLayout(ready_row)
        self.result_box.hide()

        form = QFormLayout()
        form.addRow("Location:", location_row)
        form.addRow(
            "",
            hint(
                "Or a server in restic's syntax: rest:https://host:8000/path, "
                "sftp:user@host:/path, s3:https://host/bucket/prefix."
            ),
        )
        self.credentials = ServerCredentials(form)
        self.location.textChanged.connect(self.credentials.follow)
        self.credentials.follow(self.location.text())
        form.addRow(self.generate)
        form.addRow("Password:", self.password)
        form.addRow("Repeat:", self.repeat)
        form.addRow(self.env_note)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addWidget(self.error)
        layout.addLayout(create_row)
        layout.addWidget(self.result_box)
        layout.addStretch(1)
        self._update_fields()

    # ---------------------------------------------------------- form
    def _update_fields(self) -> None:
        typed = not self.generate.isChecked() and not self.created
        self.password.setEnabled(typed)
        self.repeat.setEnabled(typed)

    def choose_location(self) -> None:
        """Choose the repository folder (chooser opens without blocking)."""
        if self.chooser is not None:
            self.chooser.deleteLater()
        start = start_dir(self.location.text(), self.bridge.config)
        self.chooser = open_folder_dialog(self, "Repository folder", start, self._chosen)

    def _chosen(self, folder: str) -> None:
        if folder:
            self.location.setText(os.path.normpath(folder))

    def _new_config(self, location: str) -> Config:
        """The configuration with this location (itself when unchanged); validated."""
        config = self.bridge.config
        candidate = validate(replace(config, repository=replace(config.repository, path=location)))
        if candidate.repository_path == config.repository_path:
            return config
        return candidate

    # ---------------------------------------------------------- create
    def create_repository(self) -> None:
        """Check the form, then create the repository in the background."""
        if self.created or (self.task is not None and not self.task.done()):
            return
        show_text(self.error, "")
        location = self.location.text().strip()
        if not location:
            show_text(self.error, "Enter the folder or the server for the repository.")
            return
        generated = self.generate.isChecked()
        if generated:
            password = generate_password()
        else:
            password = self.password.text()
            if not password:
                show_text(self.error, "Enter a password, or let desktop-agent generate one.")
                return
            if password != self.repeat.text():
                show_text(self.error, "The two passwords differ.")
                return
        try:
            config = self._new_config(location)
        except ConfigError as exc:
            show_text(self.error, str(exc))
            return
        self._set_busy(True)
        self.status.setText("Creating the repository...")
        self.task = self.bridge.spawn(self._create(config, password, generated))

    def _set_busy(self, busy: bool) -> None:
        for widget in (self.location, self.choose_button, self.generate, self.create_button):
            widget.setEnabled(not busy)
        if busy:
            self.password.setEnabled(False)
            self.repeat.setEnabled(False)
        else:
            self.generate.setEnabled(self.bridge.config.password_file_path is not None)
            self._update_fields()

    async def _create(self, config: Config, password: str, generated: bool) -> None:
        path = config.repository_path
        file = config.password_file_path
        try:
            problem = await run_off_loop(
                lambda: password_storage_problem(file, password, generated=generated)
            )
            if problem is not None:
                raise ConfigError(problem)
            typed = self.credentials.typed()
            if typed:  # the server needs them to create the repository
                await run_off_loop(ServerCredentials.store, config, typed)
                self.credentials.clear()
            await self.bridge.create_repository(path, password)
        except (EngineError, ConfigError) as exc:
            show_text(self.error, str(exc))
            self.status.clear()
            self._set_busy(False)
            return
        except Exception as exc:  # noqa: BLE001 - shown inline, logged with its traceback
            log.exception("creating the repository failed")
            show_text(self.error, f"Could not create the repository: {exc}")
            self.status.clear()
            self._set_busy(False)
            return
        self.created = True
        self.status.setText(f"Created the repository at {config.repository_location.display()}.")
        if generated:
            # shown before storing it: if storing fails, this is the only copy
            self.generated.setText(password)
        self.generated_box.setVisible(generated)
        try:
            if generated:
                assert file is not None
                await run_off_loop(write_password_file, file, password)
            else:
                await run_off_loop(store_password, config, path, password)
            if config != self.bridge.config:
                await run_off_loop(save, config)
                self.bridge.apply_config(config)
        except Exception as exc:  # noqa: BLE001 - the repository exists: say what is missing
            if not isinstance(exc, ConfigError | OSError):
                log.exception("storing the password or the configuration failed")
            show_text(
                self.error,
                f"The repository was created, but desktop-agent could not finish: {exc}",
            )
            self.ready.setText("Fix this, then back up from the tray.")
            self.back_up_button.hide()
            self.result_box.show()
            return
        log.info("first run: repository created at %s", path)
        self.stored = True
        self.result_box.show()
        self.back_up_button.setFocus()

    # ---------------------------------------------------------- after
    def copy_password(self) -> None:
        """Put the generated password on the clipboard."""
        QGuiApplication.clipboard().setText(self.generated.text())
        self.status.setText("Password copied to the clipboard.")

    def back_up_now(self) -> None:
        """Start the first backup (the tray shows its progress)."""
        self.bridge.back_up_now()
        self.back_up_button.setEnabled(False)
        self.ready.setText("The first backup has started; the tray icon shows its progress.")

    def hideEvent(self, event: QHideEvent) -> None:  # noqa: N802 - Qt's name
        """Forget the shown password once the window closes (if it was stored)."""
        if self.stored and not event.spontaneous():
            self.generated.clear()
            self.generated_box.hide()
        super().hideEvent(event)
