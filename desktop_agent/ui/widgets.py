"""Small widgets and helpers the settings and first-run dialogs share.

Folder choosers that do not block the loop, error labels, an editable list
of lines, and :func:`run_off_loop` for file, keyring and repository work
that must not run on the loop thread.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop_agent.config import Config, ConfigError
from desktop_agent.config.location import Location, parse_location
from desktop_agent.config.secrets import (
    REST_PASSWORD,
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    store_server_secret,
)

__all__ = [
    "ERROR_STYLE",
    "ServerCredentials",
    "StringList",
    "error_label",
    "hint",
    "open_folder_dialog",
    "run_off_loop",
    "show_text",
    "start_dir",
]

T = TypeVar("T")

ERROR_STYLE = "color: #c62828;"

# Keyring calls may wait on D-Bus or an unlock prompt; config and password
# files are fsynced. Neither belongs on the loop thread. A plain thread pool,
# not qasync's default executor: its QThreads outlive test loops noisily.
_io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="settings-io")


async def run_off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call (file, keyring) on a worker thread and await it.

    Also from a task that qasync steps while Qt processes events outside
    ``run_forever`` (a window opened before the loop runs): the loop set for
    this thread is used then.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = asyncio.get_event_loop()
    return await loop.run_in_executor(_io, fn, *args)


def open_folder_dialog(
    parent: QWidget, title: str, start: str, chosen: Callable[[str], None]
) -> QFileDialog:
    """Open a folder chooser without blocking (``open()``); ``chosen`` gets the folder.

    The caller keeps the returned dialog: it is the only reference.
    """
    dialog = QFileDialog(parent, title, start)
    dialog.setFileMode(QFileDialog.FileMode.Directory)
    dialog.setOption(QFileDialog.Option.ShowDirsOnly, True)
    dialog.fileSelected.connect(chosen)
    dialog.open()
    return dialog


def start_dir(text: str, config: Config) -> str:
    """Where a folder chooser opens: the folder in ``text`` or its nearest existing parent."""
    path = config.resolve_path(text) if text.strip() else os.path.expanduser("~")
    while path and not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def error_label() -> QLabel:
    """A red, wrapping, selectable label, hidden while empty."""
    label = QLabel()
    label.setStyleSheet(ERROR_STYLE)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.hide()
    return label


def show_text(label: QLabel, text: str) -> None:
    """Set a label's text; hide it while there is none."""
    label.setText(text)
    label.setVisible(bool(text))


class StringList(QWidget):
    """An editable list of lines with Add / Edit / Remove.

    ``add`` replaces the default Add (a new empty line, edited in place),
    e.g. with a folder chooser. Blank lines are dropped by :meth:`values`.
    """

    def __init__(
        self,
        add_text: str = "Add",
        add: Callable[[], None] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.list = QListWidget()
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.add_button = QPushButton(add_text)
        self.edit_button = QPushButton("Edit")
        self.remove_button = QPushButton("Remove")
        self.add_button.clicked.connect(add or self.add_empty)
        self.edit_button.clicked.connect(self.edit_current)
        self.remove_button.clicked.connect(self.remove_selected)
        self.list.itemSelectionChanged.connect(self._update_buttons)
        buttons = QVBoxLayout()
        for button in (self.add_button, self.edit_button, self.remove_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        self._update_buttons()

    def _update_buttons(self) -> None:
        selected = bool(self.list.selectedItems())
        self.edit_button.setEnabled(len(self.list.selectedItems()) == 1)
        self.remove_button.setEnabled(selected)

    def _item(self, text: str) -> QListWidgetItem:
        item = QListWidgetItem(text)
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
        return item

    def set_values(self, values: Iterable[str]) -> None:
        """Replace the lines."""
        self.list.clear()
        for value in values:
            self.list.addItem(self._item(value))
        self._update_buttons()

    def values(self) -> tuple[str, ...]:
        """The lines, stripped, without blank ones, in order."""
        out = []
        for row in range(self.list.count()):
            text = self.list.item(row).text().strip()
            if text:
                out.append(text)
        return tuple(out)

    def append(self, text: str) -> None:
        """Add a line (unless it is already there) and select it."""
        for row in range(self.list.count()):
            if self.list.item(row).text() == text:
                self.list.setCurrentRow(row)
                return
        self.list.addItem(self._item(text))
        self.list.setCurrentRow(self.list.count() - 1)

    def add_empty(self) -> None:
        """Add an empty line and start editing it."""
        item = self._item("")
        self.list.addItem(item)
        self.list.setCurrentItem(item)
        self.list.editItem(item)

    def edit_current(self) -> None:
        """Edit the selected line in place."""
        item = self.list.currentItem()
        if item is not None:
            self.list.editItem(item)

    def remove_selected(self) -> None:
        """Remove the selected lines."""
        for item in self.list.selectedItems():
            self.list.takeItem(self.list.row(item))
        self._update_buttons()


def hint(text: str) -> QLabel:
    """A wrapping explanation in a slightly smaller font."""
    label = QLabel(text)
    label.setWordWrap(True)
    font = label.font()
    font.setPointSizeF(font.pointSizeF() * 0.9)
    label.setFont(font)
    return label


class ServerCredentials:
    """The credential fields of a server location, for a QFormLayout.

    Which fields show follows the location typed (:meth:`follow`): a REST
    password when the URL names a user, S3's two keys, nothing for SFTP (it
    uses SSH keys and ``known_hosts``) or a folder; a note says where the
    secrets go. :meth:`store` keeps what was typed with
    :func:`desktop_agent.config.secrets.store_server_secret` (the OS
    keyring, else a 0600 file), never in the configuration.
    """

    NOTES = {
        "rest-user": "The REST server's password goes to the OS keyring (or a private file), "
        "never into the configuration; RESTIC_REST_PASSWORD overrides it.",
        "rest": "Put the user name into the URL (rest:https://user@host/...) if the server "
        "asks for one.",
        "s3": "The keys go to the OS keyring (or a private file), never into the "
        "configuration; AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY override them.",
        "sftp": "Uses your SSH keys and agent. The server's host key must be in "
        "~/.ssh/known_hosts: connect once with ssh to accept it.",
    }

    def __init__(self, form: QFormLayout) -> None:
        self.form = form
        self.note = hint("")
        self.note.setObjectName("server_note")
        self.password = QLineEdit()
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.access_key = QLineEdit()
        self.secret_key = QLineEdit()
        self.secret_key.setEchoMode(QLineEdit.EchoMode.Password)
        for field in self.fields():
            field.setPlaceholderText("leave empty to keep what is stored")
        form.addRow("", self.note)
        form.addRow("Server password:", self.password)
        form.addRow("Access key ID:", self.access_key)
        form.addRow("Secret access key:", self.secret_key)
        self.follow("")

    def fields(self) -> tuple[QLineEdit, QLineEdit, QLineEdit]:
        return (self.password, self.access_key, self.secret_key)

    def follow(self, text: str) -> None:
        """Show the fields and the note for the location ``text``."""
        try:
            location: Location | None = parse_location(text.strip()) if text.strip() else None
        except ConfigError:
            location = None
        scheme = location.scheme if location is not None else "local"
        rest_user = scheme == "rest" and location is not None and bool(location.user)
        self.form.setRowVisible(self.password, rest_user)
        self.form.setRowVisible(self.access_key, scheme == "s3")
        self.form.setRowVisible(self.secret_key, scheme == "s3")
        key = "rest-user" if rest_user else scheme
        show_text(self.note, self.NOTES.get(key, ""))

    def typed(self) -> list[tuple[str, str]]:
        """(kind, secret) of the visible fields that were filled in."""
        kinds = (REST_PASSWORD, S3_ACCESS_KEY, S3_SECRET_KEY)
        return [
            (kind, w.text())
            for kind, w in zip(kinds, self.fields(), strict=True)
            if w.text() and self.form.isRowVisible(w)
        ]

    def clear(self) -> None:
        for field in self.fields():
            field.clear()

    @staticmethod
    def store(config: Config, typed: list[tuple[str, str]]) -> str:
        """Keep ``typed`` for the configuration's location (blocking: run off the loop);
        returns where they went, in words ("" when nothing was typed)."""
        location = config.repository_location
        where = ""
        for kind, secret in typed:
            where = store_server_secret(config, kind, location, secret)
        return where
