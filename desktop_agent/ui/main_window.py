"""The main window: the tray menu as a window, for desktops without a system tray.

It shows what the tray icon and its menu would (the state icon, the state
in words, the schedule, the last backup, the progress) with the same
commands - *Pause backups* included - and the notifications the tray would
pop up. Closing it quits desktop-agent, since
nothing else would be left on screen to reach the agent with.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .bridge import Bridge
from .icons import app_icon, state_icon
from .tray import pause_menu

__all__ = ["MainWindow", "NOTE"]

NOTE = (
    "Your desktop has no system tray, so desktop-agent shows this window instead. "
    "Closing it quits desktop-agent (backups in progress are cancelled safely)."
)
ICON_SIZE = 64


class MainWindow(QMainWindow):
    """State, progress and the tray menu's commands in a window; closing it quits."""

    def __init__(
        self,
        bridge: Bridge,
        *,
        open_window: Callable[[str], object],
        quit_app: Callable[[], None],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self._open_window = open_window
        self._quit_app = quit_app
        self._shown: tuple[str, int] | None = None  # icon drawn for (kind, percent)
        self.setWindowTitle("desktop-agent")
        self.setWindowIcon(app_icon())
        self.setMinimumWidth(460)

        self.note = QLabel(NOTE)
        self.note.setObjectName("note")
        self.note.setWordWrap(True)
        self.note.setFrameShape(QFrame.Shape.StyledPanel)
        self.note.setMargin(6)

        self.icon = QLabel()
        self.icon.setFixedSize(ICON_SIZE, ICON_SIZE)
        self.status = QLabel()
        self.status.setObjectName("status")
        self.status.setWordWrap(True)
        font = self.status.font()
        font.setPointSizeF(font.pointSizeF() * 1.2)
        font.setBold(True)
        self.status.setFont(font)
        self.schedule = QLabel()
        self.schedule.setObjectName("schedule")
        self.schedule.setWordWrap(True)
        self.last = QLabel()
        self.last.setObjectName("last")
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(True)
        # notifications have nowhere else to go without a tray
        self.notice = QLabel()
        self.notice.setObjectName("notice")
        self.notice.setWordWrap(True)
        self.notice.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.notice.hide()

        self.start_button = QPushButton("Back up now")
        self.pause_button = QPushButton("Pause")
        self.cancel_button = QPushButton("Cancel")
        self.progress_button = QPushButton("Show progress...")
        self.restore_button = QPushButton("Restore files...")
        self.settings_button = QPushButton("Settings...")
        self.log_button = QPushButton("Show log")
        self.quit_button = QPushButton("Quit")
        # scheduled backups: a menu of pauses, or Resume while paused
        self.schedule_button = QPushButton("Pause backups")
        self.pause_menu = pause_menu(bridge, self)
        self.schedule_button.clicked.connect(self._resume_schedule)
        self.start_button.clicked.connect(bridge.back_up_now)
        self.pause_button.clicked.connect(self._toggle_pause)
        self.cancel_button.clicked.connect(bridge.cancel)
        self.progress_button.clicked.connect(lambda: self._open_window("progress"))
        self.restore_button.clicked.connect(lambda: self._open_window("restore"))
        self.settings_button.clicked.connect(lambda: self._open_window("settings"))
        self.log_button.clicked.connect(lambda: self._open_window("log"))
        self.quit_button.clicked.connect(self._quit_app)

        words = QVBoxLayout()
        words.addWidget(self.status)
        words.addWidget(self.schedule)
        words.addWidget(self.last)
        words.addStretch(1)
        state = QHBoxLayout()
        state.addWidget(self.icon, 0, Qt.AlignmentFlag.AlignTop)
        state.addLayout(words, 1)

        backup = QHBoxLayout()
        backup.addWidget(self.start_button)
        backup.addStretch(1)
        backup.addWidget(self.pause_button)
        backup.addWidget(self.cancel_button)
        more = QGridLayout()
        for i, button in enumerate(
            (self.progress_button, self.restore_button, self.settings_button, self.log_button)
        ):
            more.addWidget(button, i // 2, i % 2)
        end = QHBoxLayout()
        end.addWidget(self.schedule_button)
        end.addStretch(1)
        end.addWidget(self.quit_button)

        body = QWidget()
        layout = QVBoxLayout(body)
        layout.addWidget(self.note)
        layout.addLayout(state)
        layout.addWidget(self.bar)
        layout.addWidget(self.notice)
        layout.addLayout(backup)
        layout.addLayout(more)
        layout.addStretch(1)
        layout.addLayout(end)
        self.setCentralWidget(body)

        bridge.changed.connect(self.refresh)
        bridge.notify.connect(self.show_notice)
        bridge.failed.connect(lambda message: self.show_notice("", message, True))
        self.refresh()

    # ------------------------------------------------------------ commands
    def _toggle_pause(self) -> None:
        if self.bridge.model.kind() == "paused":
            self.bridge.resume()
        else:
            self.bridge.pause()

    def _resume_schedule(self) -> None:
        # clicked while it has no menu: it says "Resume backups"
        if self.bridge.model.schedule_paused:
            self.bridge.resume_schedule()

    # -------------------------------------------------------------- views
    def refresh(self) -> None:
        """Show the model's state; enable the commands as the tray menu does."""
        model = self.bridge.model
        kind = model.kind()
        shown = (kind, int(model.percent) if kind == "running" else -1)
        if shown != self._shown:  # icons are rendered only when they change
            self._shown = shown
            self.icon.setPixmap(state_icon(kind, model.percent).pixmap(ICON_SIZE, ICON_SIZE))
            self.icon.setToolTip(kind)
        self.status.setText(model.status_line())
        schedule = model.schedule_line()
        self.schedule.setText(schedule or "")
        self.schedule.setVisible(schedule is not None)
        self.last.setText(model.last_backup_line())
        self.schedule_button.setVisible(self.bridge.can_schedule)
        paused = model.schedule_paused
        self.schedule_button.setText("Resume backups" if paused else "Pause backups")
        # None takes the menu away (the stubs do not say so)
        self.schedule_button.setMenu(None if paused else self.pause_menu)  # type: ignore[arg-type]
        active = model.active
        self.bar.setVisible(active)
        self.bar.setValue(int(model.percent * 10) if active else 0)
        self.bar.setFormat(f"{model.percent:.1f}%")
        job_paused = kind == "paused"
        self.start_button.setEnabled(not active and not model.queued)
        self.pause_button.setText("Resume" if job_paused else "Pause")
        self.pause_button.setEnabled(job_paused or kind == "running")
        self.cancel_button.setEnabled(active)

    def show_notice(self, title: str, message: str, is_error: bool) -> None:
        """The latest notification, in the window (there is no tray to pop it up)."""
        text = message if not title or message.startswith(title) else f"{title}: {message}"
        self.notice.setText(text.replace("\n", " "))
        self.notice.setStyleSheet("color: #c0392b;" if is_error else "")
        self.notice.show()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt's name
        """Closing the only window quits desktop-agent."""
        event.accept()
        self._quit_app()
