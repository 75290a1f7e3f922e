"""The log window: the tail of the agent's log file, followed while it is open.

The file is read incrementally (only what was appended since the last read)
and never kept open, so the logging handler can rotate it on every
platform. Following costs nothing while the window is hidden: the file
watcher and the fallback timer only run while it is visible.
"""

from __future__ import annotations

import os
import re
from collections import deque
from pathlib import Path
from typing import BinaryIO

from PySide6.QtCore import QFileSystemWatcher, Qt, QTimer, QUrl
from PySide6.QtGui import QDesktopServices, QFont, QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop_agent.config import user_log_dir
from desktop_agent.logsetup import LOG_NAME

from .icons import app_icon

__all__ = ["LogViewer", "MAX_LINES"]

MAX_LINES = 2000  # lines kept and shown
_MAX_READ = 1 << 20  # bytes read at once at most: more than MAX_LINES of any real log
_SETTLE_MS = 150  # a burst of writes is read once
_POLL_MS = 2000  # only when the file cannot be watched, and only while visible
# "2024-05-01 12:00:00,123 WARNING name: message" (logsetup's format)
_HEADER = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ([A-Z]+) ")
_SERIOUS = frozenset({"WARNING", "ERROR", "CRITICAL"})

LEVELS = ("All", "Warnings and errors")

_Ident = tuple[int, int]  # (device, inode): which file the path named when last read


class LogViewer(QWidget):
    """The last lines of the agent's log, with a text filter and a level filter."""

    def __init__(self, log_path: str | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.path = Path(log_path) if log_path else user_log_dir() / LOG_NAME
        self.setWindowTitle("Log - desktop-agent")
        self.setWindowIcon(app_icon())
        self.resize(900, 520)

        self._lines: deque[tuple[str, bool]] = deque(maxlen=MAX_LINES)  # (text, serious)
        self._serious = False  # level of the last record: traceback lines inherit it
        self._ident: _Ident | None = None
        self._offset = 0  # bytes of the current file already read (whole lines only)
        self._missing = True
        self._following = False
        self._needle = ""
        self._only_serious = False

        self.message = QLabel()
        self.message.setObjectName("message")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self._filter_changed)
        self.level = QComboBox()
        self.level.addItems(list(LEVELS))
        self.level.currentIndexChanged.connect(self._filter_changed)
        self.view = QPlainTextEdit()
        self.view.setReadOnly(True)
        self.view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.view.setMaximumBlockCount(MAX_LINES)
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        mono.setStyleHint(QFont.StyleHint.TypeWriter)  # if that family is not installed
        mono.setFixedPitch(True)
        self.view.setFont(mono)
        self.open_folder_button = QPushButton("Open log folder")
        self.open_folder_button.clicked.connect(self.open_folder)
        self.copy_button = QPushButton("Copy all")
        self.copy_button.setToolTip("Copy the lines shown to the clipboard")
        self.copy_button.clicked.connect(self.copy_all)

        filters = QHBoxLayout()
        filters.addWidget(self.filter, 1)
        filters.addWidget(self.level)
        buttons = QHBoxLayout()
        buttons.addWidget(self.open_folder_button)
        buttons.addStretch(1)
        buttons.addWidget(self.copy_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.message)
        layout.addLayout(filters)
        layout.addWidget(self.view, 1)
        layout.addLayout(buttons)

        self._watcher = QFileSystemWatcher(self)
        self._watcher.fileChanged.connect(self._soon)
        self._watcher.directoryChanged.connect(self._soon)
        self._settle = QTimer(self)
        self._settle.setSingleShot(True)
        self._settle.setInterval(_SETTLE_MS)
        self._settle.timeout.connect(self.catch_up)
        self._poll = QTimer(self)
        self._poll.setInterval(_POLL_MS)
        self._poll.timeout.connect(self.catch_up)

        self.catch_up()

    # ------------------------------------------------------------ reading
    def catch_up(self) -> None:
        """Read what was appended (or the new file after a rotation) and show it."""
        lines = self._read_new()
        if lines:
            self._add(lines)
        self._update_status()
        if self._following:
            self._watch()

    def _read_new(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                ident = (st.st_dev, st.st_ino)
                data = b""
                if self._ident is not None and ident != self._ident:
                    # rotated: the rest of the old file first, then the new one from the start
                    data = self._drain_rotated()
                    self._offset = 0
                    self._rewatch_file()
                elif st.st_size < self._offset:
                    self._offset = 0  # truncated in place
                self._ident = ident
                self._missing = False
                if st.st_size > self._offset:
                    chunk, self._offset = _read_lines(f, self._offset, st.st_size)
                    data += chunk
        except OSError:
            self._missing = True
            return []
        if not data:
            return []
        text = data.decode("utf-8", errors="replace")
        return [line.removesuffix("\r") for line in text.split("\n")[:-1]]

    def _drain_rotated(self) -> bytes:
        """What was written to the old file after the last read (RotatingFileHandler's ``.1``)."""
        old = self.path.with_name(self.path.name + ".1")
        try:
            with open(old, "rb") as f:
                st = os.fstat(f.fileno())
                if (st.st_dev, st.st_ino) != self._ident or st.st_size <= self._offset:
                    return b""
                return _read_lines(f, self._offset, st.st_size)[0]
        except OSError:
            return b""

    def _add(self, lines: list[str]) -> None:
        parsed: list[tuple[str, bool]] = []
        for line in lines:
            header = _HEADER.match(line)
            if header is not None:
                self._serious = header.group(1) in _SERIOUS
            parsed.append((line, self._serious))
        parsed = parsed[-MAX_LINES:]
        self._lines.extend(parsed)
        shown = [text for text, serious in parsed if self._matches(text, serious)]
        if shown:
            bar = self.view.verticalScrollBar()
            at_end = bar.value() >= bar.maximum()
            self.view.appendPlainText("\n".join(shown))
            if at_end:  # follow the end unless the user scrolled up to read
                bar.setValue(bar.maximum())

    # ---------------------------------------------------------- following
    def _soon(self, _path: str = "") -> None:
        if not self._settle.isActive():
            self._settle.start()

    def _watch(self) -> None:
        """Watch the file (and its folder, for the file that replaces it); poll if we cannot."""
        file, folder = str(self.path), str(self.path.parent)
        watched = set(self._watcher.files()) | set(self._watcher.directories())
        wanted = [p for p in (file, folder) if p not in watched and os.path.exists(p)]
        if wanted:
            self._watcher.addPaths(wanted)
        files, folders = self._watcher.files(), self._watcher.directories()
        covered = file in files or (self._missing and folder in folders)
        if covered:
            self._poll.stop()
        elif not self._poll.isActive():
            self._poll.start()

    def _rewatch_file(self) -> None:
        # a watch follows the inode, which is now the rotated file
        if str(self.path) in self._watcher.files():
            self._watcher.removePath(str(self.path))

    def _unwatch(self) -> None:
        paths = self._watcher.files() + self._watcher.directories()
        if paths:
            self._watcher.removePaths(paths)
        self._settle.stop()
        self._poll.stop()

    @property
    def following(self) -> bool:
        """Whether the window is watching the file (only while visible)."""
        return self._following

    def showEvent(self, event: object) -> None:  # noqa: N802 - Qt's name
        """Catch up and follow the file while the window is visible."""
        self._following = True
        self.catch_up()
        super().showEvent(event)  # type: ignore[arg-type]

    def hideEvent(self, event: object) -> None:  # noqa: N802 - Qt's name
        """Stop watching: a hidden window costs nothing."""
        self._following = False
        self._unwatch()
        super().hideEvent(event)  # type: ignore[arg-type]

    # ------------------------------------------------------------ filters
    def _matches(self, text: str, serious: bool) -> bool:
        if self._only_serious and not serious:
            return False
        return not self._needle or self._needle in text.casefold()

    def _filter_changed(self, *_: object) -> None:
        self._needle = self.filter.text().casefold()
        self._only_serious = self.level.currentIndex() == 1
        self.view.setPlainText(
            "\n".join(text for text, serious in self._lines if self._matches(text, serious))
        )
        bar = self.view.verticalScrollBar()
        bar.setValue(bar.maximum())
        self._update_status()

    # -------------------------------------------------------------- views
    def _update_status(self) -> None:
        if self._missing:
            words = f"No log yet at {self.path}"
            self.message.setText(words)
            self.view.setPlaceholderText(words)
        else:
            self.message.setText(str(self.path))
            filtered = bool(self._needle) or self._only_serious
            self.view.setPlaceholderText(
                "No lines match the filter" if filtered and self._lines else "The log is empty"
            )
        self.open_folder_button.setEnabled(self.path.parent.is_dir())

    def shown_lines(self) -> list[str]:
        """The lines on screen (after filtering)."""
        text = self.view.toPlainText()
        return text.split("\n") if text else []

    def open_folder(self) -> None:
        """Open the folder holding the log in the file manager."""
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.path.parent)))

    def copy_all(self) -> None:
        """Put the lines shown on the clipboard."""
        QGuiApplication.clipboard().setText(self.view.toPlainText())


def _read_lines(f: BinaryIO, start: int, end: int) -> tuple[bytes, int]:
    """Whole lines of ``f`` from ``start`` (at most the last ``_MAX_READ`` bytes before ``end``).

    Returns the bytes and the offset to continue from; an unfinished last
    line is left for the next read.
    """
    skipped = end - start > _MAX_READ
    if skipped:
        start = end - _MAX_READ
    f.seek(start)
    data = f.read(end - start)
    cut = data.rfind(b"\n") + 1
    body = data[:cut]
    if skipped:  # started mid-line
        body = body[body.find(b"\n") + 1 :]
    return body, start + cut
