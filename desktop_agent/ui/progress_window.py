"""The progress window: what the running backup is doing, with its buttons."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop_agent.termtext import human_bytes

from .bridge import Bridge
from .icons import app_icon
from .model import eta_words

__all__ = ["ProgressWindow"]


class ProgressWindow(QWidget):
    """Bar, percent, speed, ETA, current file, files done/total; Pause/Resume/Cancel."""

    def __init__(self, bridge: Bridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.setWindowTitle("Backup progress - desktop-agent")
        self.setWindowIcon(app_icon())
        self.setMinimumWidth(480)

        self.status = QLabel()
        self.status.setObjectName("status")
        font = self.status.font()
        font.setPointSizeF(font.pointSizeF() * 1.2)
        font.setBold(True)
        self.status.setFont(font)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(True)
        self.percent = QLabel()
        self.speed = QLabel()
        self.eta = QLabel()
        self.files = QLabel()
        self.bytes = QLabel()
        self.current = QLabel()
        self.current.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.current.setMinimumWidth(200)
        self.last = QLabel()

        grid = QGridLayout()
        for row, (name, widget) in enumerate(
            [
                ("Speed", self.speed),
                ("Time left", self.eta),
                ("Files", self.files),
                ("Data", self.bytes),
                ("Current file", self.current),
            ]
        ):
            label = QLabel(name + ":")
            label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop)
            grid.addWidget(label, row, 0)
            grid.addWidget(widget, row, 1)
        grid.setColumnStretch(1, 1)

        self.start_button = QPushButton("Back up now")
        self.pause_button = QPushButton("Pause")
        self.cancel_button = QPushButton("Cancel")
        self.start_button.clicked.connect(bridge.back_up_now)
        self.pause_button.clicked.connect(self._toggle_pause)
        self.cancel_button.clicked.connect(bridge.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addStretch(1)
        buttons.addWidget(self.pause_button)
        buttons.addWidget(self.cancel_button)

        layout = QVBoxLayout(self)
        layout.addWidget(self.status)
        layout.addWidget(self.bar)
        layout.addLayout(grid)
        layout.addWidget(self.last)
        layout.addLayout(buttons)

        bridge.changed.connect(self.refresh)
        self.refresh()

    def _toggle_pause(self) -> None:
        if self.bridge.model.kind() == "paused":
            self.bridge.resume()
        else:
            self.bridge.pause()

    def refresh(self) -> None:
        """Show the model's state."""
        if not self.isVisible() and self.status.text():
            return  # nothing to redraw while hidden
        model = self.bridge.model
        self.status.setText(model.status_line())
        p = model.progress
        active = model.active
        self.bar.setEnabled(active)
        self.bar.setValue(
            int(model.percent * 10) if active else (1000 if model.last_success else 0)
        )
        self.bar.setFormat(f"{model.percent:.1f}%" if active else "")
        if p is not None and active:
            self.speed.setText(f"{human_bytes(p.bytes_per_second)}/s")
            self.eta.setText(eta_words(p.eta_seconds) or "estimating...")
            self.files.setText(f"{p.files_processed:,} of {p.total_files:,}")
            self.bytes.setText(
                f"{human_bytes(p.transferred_bytes)} of {human_bytes(p.total_bytes)}"
            )
            self._show_path(p.current_file or "")
        else:
            for label in (self.speed, self.eta, self.files, self.bytes, self.current):
                label.setText("-")
        self.last.setText(model.last_backup_line())
        self.start_button.setEnabled(not active)
        self.pause_button.setEnabled(active)
        self.pause_button.setText("Resume" if model.kind() == "paused" else "Pause")
        self.cancel_button.setEnabled(active)

    def _show_path(self, path: str) -> None:
        # long paths lose their middle, not their file name
        width = max(200, self.current.width())
        metrics = self.current.fontMetrics()
        self.current.setText(metrics.elidedText(path, Qt.TextElideMode.ElideMiddle, width))
        self.current.setToolTip(path)

    def showEvent(self, event: object) -> None:  # noqa: N802 - Qt's name
        """Redraw on show (nothing is drawn while hidden)."""
        self.refresh()
        super().showEvent(event)  # type: ignore[arg-type]
