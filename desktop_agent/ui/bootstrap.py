"""The tray application: QApplication + qasync, started once, here.

One loop hosts the job controller, the /ws server and the widgets. Quit (or
SIGTERM/SIGINT) stops the agent by the same rule as the headless agent: a
running backup is cancelled (what it stored is kept, no snapshot, the lock
is released), queued ones are dropped.

One instance per configuration: the first start takes the instance lock
before it binds anything and listens for later starts
(:mod:`desktop_agent.ui.instance`); a later tray start hands its request
(``--show``) to it and exits 0; a tray start while a headless agent runs on
the configuration exits 1. A start that fails says why in one line (the
caller prints it) and exits 1: no modal box, nothing left hanging.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import qasync
from PySide6.QtCore import QObject, QSocketNotifier, QTimer
from PySide6.QtWidgets import QApplication, QSystemTrayIcon, QWidget

from desktop_agent.app import Agent
from desktop_agent.config import Config
from desktop_agent.system.errors import AlreadyRunning
from desktop_agent.system.instance import (
    InstanceLock,
    TrayRequest,
    bind_failure,
    instance_key,
    server_name,
)
from desktop_agent.system.session import first_time_this_session

from .bridge import Bridge
from .icons import app_icon
from .instance import RequestServer, send_request
from .netinfo import NetworkWatch
from .progress_window import ProgressWindow
from .tray import Tray

__all__ = ["SHOWABLE", "Shell", "TrayError", "run_tray"]

log = logging.getLogger(__name__)

# The windows a request (``--show``, or a later start's) may name.
SHOWABLE = ("progress", "restore", "settings", "log", "main")
# How long a later start tries to reach a first one that is still starting.
HANDOVER_TIMEOUT = 15.0


class TrayError(Exception):
    """The tray app could not start (one line for the user; exit status 1)."""


class Shell(QObject):
    """Owns the agent, the bridge, the tray (or the main window) and the windows."""

    def __init__(
        self,
        config: Config,
        *,
        agent: Agent | None = None,
        log_path: str | None = None,
        show: str | None = None,
        autostart: bool = False,
    ) -> None:
        super().__init__()
        self.agent = agent or Agent(config)
        self.bridge = Bridge(self.agent, self)
        self.log_path = log_path
        self.show_at_start = show
        self.autostart = autostart
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
        # metered and online, as Qt knows them (the headless agent has D-Bus providers only)
        self.network = NetworkWatch(self.agent.hub, self)

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
        log.info("showing the %s window", name)
        return win

    def present(self, request: TrayRequest) -> None:
        """Answer a later start: show the window it names, or the one that fits.

        Nothing named: the first-run window while there is no repository,
        else the progress window (the main window without a tray). A later
        start from the login entry shows nothing: this one already runs.
        """
        log.info(
            "a later start asked for %s%s",
            request.show or "the main window",
            " (at login: nothing to show)" if request.autostart else "",
        )
        if request.autostart:
            return
        if request.show is not None:
            if request.show in SHOWABLE:
                self.open(request.show)
            else:
                log.warning("no window called %r", request.show)
        elif self.bridge.has_repository is False:  # as found at start, or since
            self.open("first_run")
        else:
            self.open("progress" if self.has_tray else "main")

    def _first_run_wanted(self) -> bool:
        """Whether to show the first-run window now that there is no repository.

        Always when started by hand. Started at login, once per login
        session at most: a crash and restart, or another login entry, in
        the same session shows nothing more (the tray says what is missing).
        """
        if not self.autostart:
            return True
        name = f"first-run-{instance_key(self.agent.config.path)}"
        if first_time_this_session(name):
            return True
        log.info("started at login without a repository: the first-run window was shown before")
        return False

    # -------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start the agent, then show the tray (or the main window).

        Started at login (``autostart``) nothing opens but the first-run
        window, once per session (see :meth:`_first_run_wanted`).
        """
        if self.agent.scheduler is not None:
            self.network.start()  # before the scheduler's first decision
        await self.agent.start()
        self.bridge.attach_dialout()  # Agent.start made it: the tray and settings follow it now
        self.bridge.spawn(self.bridge.load_history())
        if self.has_tray:
            self.tray.show()
        elif self.autostart:
            log.warning("no system tray on this desktop: start desktop-agent to see its window")
        else:
            log.warning("no system tray on this desktop: showing the main window instead")
            self.open("main")
        # the schedule's state, now that the icon (or window) can show it and the
        # notification of backups too old can pop up
        self.bridge.sync_schedule()
        if not await self.bridge.check_repository():
            if self._first_run_wanted():
                self.open("first_run")
        elif self.show_at_start and not self.autostart:
            self.open(self.show_at_start)

    def quit(self) -> None:
        """Ask the application to stop (the loop finishes the shutdown)."""
        self.quitting.set()

    async def stop(self) -> None:
        """Close windows, stop the agent (cancelling a running backup), hide the tray."""
        for win in self.windows.values():
            win.close()
        self.tray.hide()
        self.network.close()
        await self.agent.stop()
        await self.bridge.aclose()

    async def run(self) -> None:
        """Start, wait for Quit, stop. A failed start stops what it started, then raises."""
        try:
            await self.start()
        except BaseException:
            await self._abandon()
            raise
        await self.quitting.wait()
        await self.stop()

    async def _abandon(self) -> None:
        """Undo a start that failed half way (the controller may run, the port not)."""
        for win in self.windows.values():
            win.close()
        self.tray.hide()
        self.network.close()
        try:
            await self.agent.stop()
        except Exception:  # noqa: BLE001 - the start's own error is the one to report
            log.exception("stopping after a failed start")
        await self.bridge.aclose()


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


def _unroute_signals() -> None:
    """The default handlers again: after the loop, SIGTERM must end the process."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler)


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


def _first_or_hand_over(lock: InstanceLock, name: str, request: TrayRequest) -> bool:
    """Take the instance lock (True), or hand ``request`` to the tray that has it (False).

    A first tray that is still starting may not listen yet: the handover is
    tried again until :data:`HANDOVER_TIMEOUT`; if that one ends meanwhile,
    this start takes its place. Raises :class:`AlreadyRunning` when a
    headless agent runs on the configuration, :class:`TrayError` when the
    running tray does not answer.
    """
    deadline = time.monotonic() + HANDOVER_TIMEOUT
    while True:
        try:
            lock.acquire("tray")
            return True
        except AlreadyRunning as running:
            if running.mode == "headless":
                raise running.explained(
                    "a headless agent uses this configuration; stop it to use the tray app, "
                    "or start the tray with another --config"
                ) from None
            if send_request(name, request):
                log.info("handed the request to the running tray app (pid %s)", running.pid)
                return False
            if time.monotonic() > deadline:
                who = f" (pid {running.pid})" if running.pid is not None else ""
                raise TrayError(
                    f"desktop-agent is already running{who} but does not answer; "
                    "quit it (or end that process) and start again"
                ) from None
        # the first one is between taking the lock and listening: a moment
        time.sleep(0.1)


def run_tray(
    config: Config,
    *,
    log_path: str | None = None,
    show: str | None = None,
    autostart: bool = False,
) -> int:
    """Run the tray application until Quit; returns the exit status.

    A later start on the same configuration hands ``show`` to the running
    one and returns 0. Raises :class:`AlreadyRunning` (a headless agent has
    the configuration) or :class:`TrayError` (the start failed; one line).
    """
    app = QApplication.instance() or QApplication(sys.argv)
    assert isinstance(app, QApplication)
    lock = InstanceLock(config.path)
    name = server_name(config.path)
    if not _first_or_hand_over(lock, name, TrayRequest(show=show, autostart=autostart)):
        return 0
    try:
        return _run_first(app, config, name, log_path=log_path, show=show, autostart=autostart)
    finally:
        lock.release()


def _run_first(
    app: QApplication,
    config: Config,
    name: str,
    *,
    log_path: str | None,
    show: str | None,
    autostart: bool,
) -> int:
    app.setApplicationName("desktop-agent")
    app.setApplicationDisplayName("desktop-agent")
    app.setWindowIcon(app_icon())
    app.setQuitOnLastWindowClosed(False)
    loop = qasync.QEventLoop(app)
    # plain threads for to_thread(): a QThread still alive at exit aborts the process
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="loop")
    loop.set_default_executor(pool)
    asyncio.set_event_loop(loop)
    shell = Shell(config, log_path=log_path, show=show, autostart=autostart)
    requests = RequestServer(name, shell.present)
    requests.listen()
    keep = (_route_signals(shell), _collect_on_this_thread(shell))
    try:
        with loop:
            loop.run_until_complete(shell.run())
    except OSError as exc:
        log.error("could not start: %s", exc)
        message = bind_failure(exc, config.path) or f"could not start: {exc.strerror or exc}"
        raise TrayError(message) from None
    finally:
        requests.close()
        _unroute_signals()
        del keep
        pool.shutdown(wait=False, cancel_futures=True)
    return 0
