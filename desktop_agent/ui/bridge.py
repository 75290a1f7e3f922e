"""Between the agent and the widgets: bus events in as Qt signals, commands out.

The bridge subscribes to the same :class:`~desktop_agent.jobs.EventBus` as
the /ws server, so the tray sees exactly what a backup server sees. Widgets
never call the engine: they call the bridge, which calls the job
controller. Everything runs on the one qasync loop, so signals are direct.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from desktop_agent.app import Agent
from desktop_agent.config import Config
from desktop_agent.jobs import BusEvent, JobError
from desktop_agent.protocol import CANCELLED, BackupCompleted, BackupFailed

from .model import TrayModel

__all__ = ["Bridge"]

log = logging.getLogger(__name__)


class Bridge(QObject):
    """Qt face of the agent for every window and the tray."""

    changed = Signal()  # the model changed: redraw
    bus_event = Signal(object)  # every bus event, for windows that want detail
    notify = Signal(str, str, bool)  # title, message, is_error
    config_changed = Signal(object)  # a new Config was applied
    failed = Signal(str)  # a command could not be carried out

    def __init__(self, agent: Agent, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.agent = agent
        self.model = TrayModel()
        self.notify_success = agent.config.ui.notify_success
        self._unsubscribe = agent.bus.subscribe(self._on_event)
        self._tasks: set[asyncio.Task[Any]] = set()
        # "Last backup: 5 minutes ago" and the staleness warning age with time
        self._clock = QTimer(self)
        self._clock.setInterval(60_000)
        self._clock.timeout.connect(self.changed)
        self._clock.start()

    @property
    def config(self) -> Config:
        """The configuration in use."""
        return self.agent.config

    def close(self) -> None:
        """Stop listening to the bus."""
        self._unsubscribe()
        self._clock.stop()

    # ------------------------------------------------------------- events
    def _on_event(self, event: BusEvent) -> None:
        self.model.apply(event)
        if isinstance(event, BackupCompleted):
            try:
                view = self.agent.controller.job(event.job_id)
            except JobError:
                view = None
            if view is not None and view.result is not None:
                self.model.note_skipped(len(view.result.skipped))
            if self.notify_success:
                self.notify.emit("Backup complete", self.model.completion_message(), False)
            if self.model.last is not None and self.model.last.skipped:
                self.notify.emit("Some files were skipped", self.model.warning() or "", True)
        elif isinstance(event, BackupFailed) and event.error != CANCELLED:
            self.notify.emit("Backup failed", f"{event.error}\nSee the log for details.", True)
        self.bus_event.emit(event)
        self.changed.emit()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a coroutine on the loop, keeping a reference to its task."""
        task = asyncio.get_event_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def load_history(self) -> None:
        """Find the last backup in the repository (for "Last backup: ...")."""
        when = await self.agent.controller.last_snapshot_time()
        if when is not None and (self.model.last_success or 0) < when:
            self.model.last_success = when
        self.changed.emit()

    # ----------------------------------------------------------- commands
    def _current_id(self) -> str | None:
        return self.model.job_id

    def back_up_now(self) -> None:
        """Start a backup of the configured sources."""
        self._guard(lambda: self.agent.controller.start_backup())

    def pause(self) -> None:
        """Pause the running backup."""
        job_id = self._current_id()
        if job_id is not None:
            self._guard(lambda: self.agent.controller.pause(job_id))

    def resume(self) -> None:
        """Resume the paused backup."""
        job_id = self._current_id()
        if job_id is not None:
            self._guard(lambda: self.agent.controller.resume(job_id))

    def cancel(self) -> None:
        """Cancel the current backup."""
        job_id = self._current_id()
        if job_id is not None:
            self._guard(lambda: self.agent.controller.cancel(job_id))

    def _guard(self, action: Any) -> None:
        try:
            action()
        except JobError as exc:
            log.info("command refused: %s", exc)
            self.failed.emit(str(exc))

    # ------------------------------------------------------------ settings
    def apply_config(self, config: Config) -> None:
        """Use a new (validated, saved) configuration without a restart."""
        self.agent.apply_config(config)
        self.notify_success = config.ui.notify_success
        self.config_changed.emit(config)
        self.changed.emit()
