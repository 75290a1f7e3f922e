"""The tray application: QApplication + qasync, started once, here.

One loop hosts the job controller, the /ws server and the widgets. Quit (or
SIGTERM/SIGINT) stops the agent by the same rule as the headless agent: a
running backup is cancelled (what it stored is kept, no snapshot, the lock
is released), queued ones are dropped.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import qasync
from PySide6.QtCore import QObject, QSocketNotifier, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox, QSystemTrayIcon, QWidget

from desktop_agent.app import Agent
from desktop_agent.config import Config

from .bridge import Bridge
from .icons import app_icon
from .progress_window import ProgressWindow
from .tray import Tray

__all__ = ["Shell", "run_tray"]

log = logging.getLogger(__name__)


class Shell(QObject):
    """Owns the agent, the bridge, the tray (or the main window) and the windows."""

    def __init__(
        self,
        config: Config,
        *,
        agent: Agent | None = None,
        log_path: str | None = None,
        show: str | None = None,
    ) -> None:
        super().__init__()
        self.agent = agent or Agent(config)
        self.bridge = Bridge(self.agent, self)
        self.log_path = log_path
        self.show_at_start = show
        self.windows: dict[str, QWidget] = {}
        self.quitting = asyncio.Event()
        self.tray = Tray(
            self.bridge,
            open_progress=lambda: self.open("progress"),
            open_restore=lambda: self.open("restore"),
            open_settings=lambda: self.open("settings"),
            open_log=lambda: self.open("log"),
            quit_app=self.quit,
        )
        self.has_tray = QSystemTrayIcon.isSystemTrayAvailable()

    # ---------------------------------------------------------- windows
    def window(self, name: str) -> QWidget:
        """The window ``name``, created on first use."""
        win = self.windows.get(name)
        if win is None:
            win = self._make(name)
            self.windows[name] = win
        return win

    def _make(self, name: str) -> QWidget:
        if name == "progress":
            return ProgressWindow(self.bridge)
        if name == "settings":
            from .settings import SettingsDialog

            return SettingsDialog(self.bridge)
        if name == "restore":
            from .restore import RestoreWindow

            return RestoreWindow(self.bridge)
        if name == "log":
            from .log_viewer import LogViewer

            return LogViewer(self.log_path)
        if name == "first_run":
            from .first_run import FirstRunDialog

            return FirstRunDialog(self.bridge)
        if name == "main":
            from .main_window import MainWindow

            return MainWindow(self.bridge, open_window=self.open, quit_app=self.quit)
        raise KeyError(name)

    def open(self, name: str) -> QWidget:
        """Show (and raise) a window."""
        win = self.window(name)
        win.show()
        win.raise_()
        win.activateWindow()
        return win

    # -------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start the agent, then show the tray (or the main window)."""
        await self.agent.start()
        self.bridge.spawn(self.bridge.load_history())
        if self.has_tray:
            self.tray.show()
        else:
            log.warning("no system tray on this desktop: showing the main window instead")
            self.open("main")
        if not self.agent.controller.repository_exists():
            self.open("first_run")
        elif self.show_at_start:
            self.open(self.show_at_start)

    def quit(self) -> None:
        """Ask the application to stop (the loop finishes the shutdown)."""
        self.quitting.set()

    async def stop(self) -> None:
        """Close windows, stop the agent (cancelling a running backup), hide the tray."""
        for win in self.windows.values():
            win.close()
        self.tray.hide()
        await self.agent.stop()
        self.bridge.close()

    async def run(self) -> None:
        """Start, wait for Quit, stop."""
        await self.start()
        await self.quitting.wait()
        await self.stop()


def _route_signals(shell: Shell) -> Any:
    """SIGTERM/SIGINT quit cleanly even while Qt's loop is in C code."""
    rsock, wsock = socket.socketpair()
    rsock.setblocking(False)
    wsock.setblocking(False)
    signal.set_wakeup_fd(wsock.fileno())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    notifier = QSocketNotifier(rsock.fileno(), QSocketNotifier.Type.Read)

    def woke() -> None:
        try:
            rsock.recv(64)
        except OSError:
            pass
        shell.quit()

    notifier.activated.connect(woke)
    return (rsock, wsock, notifier)  # keep them alive


def _collect_on_this_thread(parent: QObject) -> QTimer:
    """Run the cycle collector from the Qt thread only.

    Backups allocate heavily in worker threads; an automatic collection there
    could destroy a garbage QObject off its thread, which Qt cannot do safely
    (its timers would later fire at freed memory). Young generations are
    collected every few seconds, everything once a minute.
    """
    gc.disable()
    ticks = [0]

    def collect() -> None:
        ticks[0] += 1
        gc.collect(2 if ticks[0] % 12 == 0 else 0)

    timer = QTimer(parent)
    timer.setInterval(5_000)
    timer.timeout.connect(collect)
    timer.start()
    return timer


def run_tray(config: Config, *, log_path: str | None = None, show: str | None = None) -> int:
    """Run the tray application until Quit; returns the exit status."""
    app = QApplication.instance() or QApplication(sys.argv)
    assert isinstance(app, QApplication)
    app.setApplicationName("desktop-agent")
    app.setApplicationDisplayName("desktop-agent")
    app.setWindowIcon(app_icon())
    app.setQuitOnLastWindowClosed(False)
    loop = qasync.QEventLoop(app)
    # plain threads for to_thread(): a QThread still alive at exit aborts the process
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="loop")
    loop.set_default_executor(pool)
    asyncio.set_event_loop(loop)
    shell = Shell(config, log_path=log_path, show=show)
    keep = (_route_signals(shell), _collect_on_this_thread(shell))
    try:
        with loop:
            loop.run_until_complete(shell.run())
    except OSError as exc:
        QMessageBox.critical(None, "desktop-agent", f"desktop-agent could not start: {exc}")
        return 1
    finally:
        del keep
        pool.shutdown(wait=False, cancel_futures=True)
    return 0
