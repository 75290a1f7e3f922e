"""The tray icon and its menu.

The icon says at a glance whether backups are fine (idle, running with a
progress ring, paused, warning, error); the tooltip says it in words. The
menu is rebuilt from the current state every time it opens (as Vorta does),
so it never shows a stale "Pause" next to a finished backup. A restore
under way (from the restore window or a backup server) has a line of its
own that opens the restore window, where it can be paused or cancelled;
notifications tell when one starts from elsewhere and when one ends.

Scheduled backups can be paused from the menu (*Pause backups*: for an
hour, until tomorrow, until resumed); while they are, the menu says until
when and offers *Resume backups*. The line under the state says what the
scheduler waits for: the next backup's time, a skip on battery or a
metered network, quiet hours (see docs/architecture.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from PySide6.QtCore import QObject
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QSystemTrayIcon, QWidget

from .bridge import Bridge
from .icons import state_icon
from .model import next_midnight

__all__ = ["PAUSE_CHOICES", "Tray", "pause_menu"]

PAUSE_CHOICES = ("For 1 hour", "Until tomorrow", "Until I resume")


def pause_menu(bridge: Bridge, parent: QWidget) -> QMenu:
    """The *Pause backups* menu: its choices call the bridge (the tray menu's
    submenu, the main window's button menu)."""
    menu = QMenu("Pause backups", parent)
    hour, tomorrow, forever = (menu.addAction(text) for text in PAUSE_CHOICES)
    hour.triggered.connect(lambda: bridge.pause_schedule(60))
    tomorrow.triggered.connect(lambda: bridge.pause_schedule_until(next_midnight(time.time())))
    forever.triggered.connect(lambda: bridge.pause_schedule(None))
    return menu


class Tray(QObject):
    """The system tray icon, driven by the bridge's model."""

    def __init__(
        self,
        bridge: Bridge,
        *,
        open_progress: Callable[[], object],
        open_restore: Callable[[], object],
        open_settings: Callable[[], object],
        open_log: Callable[[], object],
        quit_app: Callable[[], object],
    ) -> None:
        super().__init__(bridge)
        self.bridge = bridge
        self._open_progress = open_progress
        self._open_restore = open_restore
        self._open_settings = open_settings
        self._open_log = open_log
        self._quit = quit_app
        self.icon = QSystemTrayIcon(self)
        self.menu = QMenu()
        # made once, a child of the menu: clear() leaves it alone, deleting the menu deletes it
        self.pause_menu = pause_menu(bridge, self.menu)
        self.menu.aboutToShow.connect(self.rebuild)
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated)
        self.icon.messageClicked.connect(self._notice_clicked)
        self._last_notice_error = False
        self._shown: tuple[str, int] | None = None
        bridge.changed.connect(self.refresh)
        bridge.notify.connect(self.show_notice)
        self.refresh()
        self.rebuild()

    def show(self) -> None:
        """Put the icon in the tray."""
        self.icon.show()

    def hide(self) -> None:
        """Take the icon out of the tray."""
        self.icon.hide()

    # -------------------------------------------------------------- state
    def refresh(self) -> None:
        """Icon and tooltip from the model (icons re-rendered only on change)."""
        model = self.bridge.model
        kind = model.kind()
        shown = (kind, int(model.percent) if kind == "running" else -1)
        if shown != self._shown:
            self._shown = shown
            self.icon.setIcon(state_icon(kind, model.percent))
        self.icon.setToolTip(model.tooltip())

    def rebuild(self) -> None:
        """Recreate the menu from the current state."""
        model = self.bridge.model
        menu = self.menu
        menu.clear()
        status = menu.addAction(model.status_line())
        status.setEnabled(False)
        schedule = model.schedule_line()
        if schedule is not None:
            menu.addAction(schedule).setEnabled(False)
        last = menu.addAction(model.last_backup_line())
        last.setEnabled(False)
        restore = model.restore_line()
        if restore is not None:  # the restore window shows it and has its buttons
            menu.addAction(restore).triggered.connect(self._open_restore)
        menu.addSeparator()
        now = menu.addAction("Back up now")
        now.setEnabled(not model.active and not model.queued)
        now.triggered.connect(self.bridge.back_up_now)
        if model.state is not None and model.kind() == "paused":
            toggle = menu.addAction("Resume")
            toggle.triggered.connect(self.bridge.resume)
        else:
            toggle = menu.addAction("Pause")
            toggle.setEnabled(model.kind() == "running")
            toggle.triggered.connect(self.bridge.pause)
        cancel = menu.addAction("Cancel backup")
        cancel.setEnabled(model.active)
        cancel.triggered.connect(self.bridge.cancel)
        progress = menu.addAction("Show progress...")
        progress.triggered.connect(self._open_progress)
        menu.addSeparator()
        if self.bridge.can_schedule:
            if model.schedule_paused:
                menu.addAction("Resume backups").triggered.connect(self.bridge.resume_schedule)
            else:
                menu.addMenu(self.pause_menu)
            menu.addSeparator()
        menu.addAction("Restore files...").triggered.connect(self._open_restore)
        menu.addAction("Settings...").triggered.connect(self._open_settings)
        menu.addAction("Show log").triggered.connect(self._open_log)
        menu.addSeparator()
        menu.addAction("Quit").triggered.connect(self._quit)

    def action(self, text: str) -> QAction:
        """The menu action with this text, in the menu or a submenu of it
        (rebuilding the menu first)."""
        self.rebuild()
        for act in self.menu.actions():
            if act.text() == text:
                return act
            sub = act.menu()
            if isinstance(sub, QMenu):
                for inner in sub.actions():
                    if inner.text() == text:
                        return inner
        raise KeyError(text)

    # ---------------------------------------------------------- reactions
    def show_notice(self, title: str, message: str, is_error: bool) -> None:
        """A desktop notification through the tray."""
        self._last_notice_error = is_error
        if not self.icon.isVisible() or not QSystemTrayIcon.supportsMessages():
            return
        icon = (
            QSystemTrayIcon.MessageIcon.Critical
            if is_error
            else QSystemTrayIcon.MessageIcon.Information
        )
        self.icon.showMessage(title, message, icon, 10_000)

    def _notice_clicked(self) -> None:
        # a failure notice leads to the log, a completion to the progress window
        if self._last_notice_error:
            self._open_log()
        else:
            self._open_progress()

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (
            QSystemTrayIcon.ActivationReason.Trigger,
            QSystemTrayIcon.ActivationReason.DoubleClick,
        ):
            self._open_progress()
