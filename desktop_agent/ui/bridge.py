"""Between the agent and the widgets: bus events in as Qt signals, commands out.

The bridge subscribes to the same :class:`~desktop_agent.jobs.EventBus` as
the /ws server, so the tray sees exactly what a backup server sees. It is
the only thing windows talk to: they never call the engine nor the job
controller, they call the bridge, which calls the controller (jobs,
repository creation, password checks), the scheduler (pause scheduled
backups for a while, resume them) or the repository browser (snapshots and
folders, read-only, on its own thread). Everything runs on the one qasync
loop, so signals are direct.

The dial-out connection to the backup server (``Agent.dialout``, None while
``[server] url`` is empty) reports its state through ``on_state``; the
bridge turns that into :attr:`Bridge.server_changed` on the Qt thread and
keeps it in the model, for the tray's tooltip and the settings window.

Notifications: a failed backup or upkeep job, a completed backup (if
wanted), restores, and backups that are too old - once per such episode,
until a backup succeeds again (see docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from PySide6.QtCore import QObject, QTimer, Signal

from desktop_agent.app import Agent
from desktop_agent.config import Config, ConfigError
from desktop_agent.engine.backup import BackupResult
from desktop_agent.engine.errors import EngineError
from desktop_agent.engine.restore import RestoreResult
from desktop_agent.engine.snapshot import Snapshot
from desktop_agent.jobs import BusEvent, JobError, JobKind, JobState, JobView, UpkeepSpec
from desktop_agent.jobs.browse import Entry, RepositoryBrowser
from desktop_agent.jobs.bus import ScheduleChanged
from desktop_agent.protocol import (
    CANCELLED,
    BackupCompleted,
    BackupFailed,
    RestoreCompleted,
    RestoreFailed,
    RestoreStarted,
    UpkeepFailed,
)
from desktop_agent.termtext import clean, human_bytes

from .model import UPKEEP_WORDS, TrayModel

__all__ = ["Bridge", "DialOutView", "TRAY"]

log = logging.getLogger(__name__)

TRAY = "tray"  # the origin of jobs started here


class DialOutView(Protocol):
    """What the bridge uses of the agent's dial-out connection
    (:class:`desktop_agent.server.dialout.DialOut`)."""

    @property
    def state(self) -> str:
        """``off``, ``connecting``, ``connected``, ``refused`` or ``unreachable``."""
        ...

    last_error: str | None
    on_state: Callable[[str], None] | None

    def reconnect_now(self) -> None:
        """Skip the wait before the next attempt."""


class Bridge(QObject):
    """Qt face of the agent for every window and the tray."""

    changed = Signal()  # the model changed: redraw
    bus_event = Signal(object)  # every bus event, for windows that want detail
    notify = Signal(str, str, bool)  # title, message, is_error
    config_changed = Signal(object)  # a new Config was applied
    failed = Signal(str)  # a command could not be carried out
    server_changed = Signal()  # the dial-out connection's state (model.server_*) changed
    # DialOut.on_state, which may be called on another thread: queued to this one
    _dialout_state = Signal(str)

    def __init__(self, agent: Agent, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.agent = agent
        self.model = TrayModel(stale_after=_stale_after(agent.config))
        self.notify_success = agent.config.ui.notify_success
        self._stale_told = False  # the "no backup for N days" notice of this episode was shown
        if agent.scheduler is not None:
            self.model.apply_schedule(agent.scheduler.status())
        self._unsubscribe = agent.bus.subscribe(self._on_event)
        self._tasks: set[asyncio.Task[Any]] = set()
        # whether the repository exists, once check_repository() has asked
        self.has_repository: bool | None = None
        self._browser: RepositoryBrowser | None = None
        # "Last backup: 5 minutes ago" and the staleness warning age with time
        self._clock = QTimer(self)
        self._clock.setInterval(60_000)
        self._clock.timeout.connect(self.changed)
        self._clock.start()
        self._dialout: DialOutView | None = None  # the one whose on_state is ours
        self._chained: Callable[[str], None] | None = None  # its on_state before ours
        self._dialout_state.connect(self._dialout_state_changed)
        self._clock.timeout.connect(self.attach_dialout)  # in case it was replaced unseen
        self.attach_dialout()

    @property
    def config(self) -> Config:
        """The configuration in use."""
        return self.agent.config

    def close(self) -> None:
        """Stop listening to the bus; cancel the tasks it runs; let the browser's thread end."""
        self._unsubscribe()
        self._clock.stop()
        self._detach_dialout()
        for task in self._tasks:
            task.cancel()
        if self._browser is not None:
            self._browser.close()
            self._browser = None

    async def aclose(self) -> None:
        """:meth:`close`, then wait until its tasks have ended (none is left pending)."""
        self.close()
        tasks = list(self._tasks)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------- events
    def _on_event(self, event: BusEvent) -> None:
        self.model.apply(event)
        if isinstance(event, BackupCompleted):
            view = self.job(event.job_id)
            if view is not None and isinstance(view.result, BackupResult):
                self.model.note_skipped(len(view.result.skipped))
            if self.notify_success:
                self.notify.emit("Backup complete", self.model.completion_message(), False)
            if self.model.last is not None and self.model.last.skipped:
                self.notify.emit("Some files were skipped", self.model.warning() or "", True)
        elif isinstance(event, BackupFailed) and event.error != CANCELLED:
            if self._stopped(event.job_id):
                # stopped at the maximum runtime: not a failure, the next one continues
                self.notify.emit("Backup stopped", event.error, False)
            else:
                self.notify.emit("Backup failed", f"{event.error}\nSee the log for details.", True)
        elif isinstance(event, UpkeepFailed) and event.error != CANCELLED:
            if not self._stopped(event.job_id):
                self._upkeep_failed(event)
        elif isinstance(event, RestoreStarted | RestoreCompleted | RestoreFailed):
            self._restore_notice(event)
        elif isinstance(event, ScheduleChanged):
            self.check_health()
        self.bus_event.emit(event)
        self.changed.emit()

    def _stopped(self, job_id: str) -> bool:
        """Whether a job that ended with an error was stopped (cancelled), not failed."""
        view = self.job(job_id)
        return view is not None and view.state is JobState.CANCELLED

    def _upkeep_failed(self, event: UpkeepFailed) -> None:
        view = self.job(event.job_id)
        task = view.spec.task if view is not None and isinstance(view.spec, UpkeepSpec) else ""
        words = UPKEEP_WORDS.get(task, "Repository upkeep")
        self.notify.emit(
            "Repository upkeep failed",
            f"{words}: {event.error}\nSee the log for details.",
            True,
        )

    def check_health(self) -> None:
        """Notify once when backups became too old (why: the pause, the skip, the
        failure); the next notice comes after a backup succeeded and they aged again."""
        notice = self.model.stale_notice()
        if notice is None:
            if self.model.schedule is not None and not self.model.stale():
                self._stale_told = False
            return
        if self._stale_told:
            return
        self._stale_told = True
        log.info("%s: %s", *notice)
        self.notify.emit(notice[0], notice[1], True)

    def sync_schedule(self) -> None:
        """Take the scheduler's status now (not waiting for its next change) and
        say whether backups are too old; the tray calls it once it is shown."""
        if self.agent.scheduler is None:
            return
        self.model.apply_schedule(self.agent.scheduler.status())
        self.check_health()
        self.changed.emit()

    def _restore_notice(self, event: RestoreStarted | RestoreCompleted | RestoreFailed) -> None:
        """Tell the user about restores: files appear on their computer, whoever asked."""
        view = self.job(event.job_id)
        if view is None or view.restore is None:
            return
        spec = view.restore
        if isinstance(event, RestoreStarted):
            if view.origin != TRAY:  # the restore window shows its own
                self.notify.emit(
                    "Restoring files",
                    f"A backup server is restoring files of snapshot {spec.snapshot.short_id} "
                    f"into {clean(spec.target)}",
                    False,
                )
        elif isinstance(event, RestoreCompleted):
            result = view.result
            files = problems = 0
            if isinstance(result, RestoreResult):
                files, problems = result.files, max(result.errors_total, len(result.errors))
            text = (
                f"{files:,} file{'s' if files != 1 else ''} ({human_bytes(event.total_bytes)}) "
                f"restored into {clean(spec.target)}"
            )
            if problems:
                text += f"; {problems:,} could not be restored (see the restore window)"
            self.notify.emit("Files restored", text, bool(problems))
        elif event.error != CANCELLED:
            self.notify.emit(
                "Restore failed", f"{clean(event.error)}\nInto {clean(spec.target)}.", True
            )

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

    # ---------------------------------------------------------- queries
    def job(self, job_id: str) -> JobView | None:
        """What the agent knows about a job; None when it is unknown (or forgotten)."""
        try:
            return self.agent.controller.job(job_id)
        except JobError:
            return None

    def active_restore(self) -> JobView | None:
        """The newest restore job that has not ended (queued, running or paused)."""
        for view in reversed(self.agent.controller.jobs()):
            if view.kind is JobKind.RESTORE and view.state in _ACTIVE:
                return view
        return None

    async def check_repository(self) -> bool:
        """Whether the configured repository has been created, asked off the loop
        thread (a server may be slow or gone); remembered in :attr:`has_repository`.

        When it cannot be told (the server is out of reach) the answer is
        True: a missing network is no reason to offer a new repository.
        """
        try:
            self.has_repository = await self.agent.controller.has_repository()
        except (EngineError, ConfigError) as exc:
            log.warning("cannot tell whether the repository exists: %s", exc)
            self.has_repository = None
            return True
        return self.has_repository

    # ------------------------------------------- the repository (read-only)
    def _browse(self) -> RepositoryBrowser:
        if self._browser is None:
            self._browser = RepositoryBrowser(self.agent.controller)
        return self._browser

    async def snapshots(self) -> list[Snapshot]:
        """Every snapshot, newest first (read afresh); raises ``EngineError``."""
        return await self._browse().snapshots()

    async def list_dir(self, snapshot: Snapshot, path: str) -> list[Entry]:
        """The entries of folder ``path`` of ``snapshot``; raises ``EngineError``."""
        return await self._browse().list_dir(snapshot, path)

    async def target_state(self, path: str) -> str:
        """Why restoring into ``path`` needs care ("" when it is new or empty)."""
        return await self._browse().target_state(path)

    async def create_repository(self, path: str, password: str) -> None:
        """Create an empty repository in ``path`` (the engine's errors are raised)."""
        await self.agent.controller.create_repository(path, password)
        self.has_repository = True

    async def check_password(self, path: str, password: str) -> None:
        """Open the repository in ``path`` with ``password``; raise if it does not open."""
        await self.agent.controller.check_password(path, password)

    # ----------------------------------------------------------- commands
    def _current_id(self) -> str | None:
        return self.model.job_id

    def back_up_now(self) -> None:
        """Start a backup of the configured sources."""
        self._guard(lambda: self.agent.controller.start_backup(origin=TRAY))

    def pause(self) -> None:
        """Pause the running backup."""
        job_id = self._current_id()
        if job_id is not None:
            self.pause_job(job_id)

    def resume(self) -> None:
        """Resume the paused backup."""
        job_id = self._current_id()
        if job_id is not None:
            self.resume_job(job_id)

    def cancel(self) -> None:
        """Cancel the current backup."""
        job_id = self._current_id()
        if job_id is not None:
            self.cancel_job(job_id)

    def start_restore(self, snapshot: Snapshot, includes: Sequence[str], target: str) -> str:
        """Queue a restore job; returns its id. Raises :class:`JobError` when refused.

        The job is the agent's like any other: /ws clients see it
        (``restore:started``...), and its progress comes back as bus events.
        """
        job_id = self.agent.controller.start_restore(snapshot, includes, target, origin=TRAY)
        return str(job_id)

    def pause_job(self, job_id: str) -> None:
        """Pause a running job (backup or restore); its ``paused`` event confirms it."""
        self._guard(lambda: self.agent.controller.pause(job_id))

    def resume_job(self, job_id: str) -> None:
        """Resume a paused job."""
        self._guard(lambda: self.agent.controller.resume(job_id))

    def cancel_job(self, job_id: str) -> None:
        """Cancel a job; it ends with its ``failed`` event, error ``cancelled``."""
        self._guard(lambda: self.agent.controller.cancel(job_id))

    # ----------------------------------------------------------- schedule
    @property
    def can_schedule(self) -> bool:
        """Whether the agent has a scheduler (scheduled backups can be paused)."""
        return self.agent.scheduler is not None

    def pause_schedule(self, minutes: float | None) -> None:
        """Hold scheduled backups and upkeep for ``minutes`` (None: until resumed);
        a scheduled job that runs pauses too. Backing up by hand still works."""
        scheduler = self.agent.scheduler
        if scheduler is not None:
            scheduler.pause(minutes)

    def pause_schedule_until(self, until: float) -> None:
        """Hold scheduled backups until the wall-clock time ``until``."""
        scheduler = self.agent.scheduler
        if scheduler is not None:
            scheduler.pause_until(until)

    def resume_schedule(self) -> None:
        """Release the pause of scheduled backups."""
        scheduler = self.agent.scheduler
        if scheduler is not None:
            scheduler.resume()

    def _guard(self, action: Callable[[], object]) -> None:
        try:
            action()
        except JobError as exc:
            log.info("command refused: %s", exc)
            self.failed.emit(str(exc))

    # ------------------------------------------------------ the backup server
    @property
    def dialout(self) -> DialOutView | None:
        """The agent's dial-out connection; None when ``[server] url`` is empty."""
        found: DialOutView | None = getattr(self.agent, "dialout", None)
        return found

    def attach_dialout(self) -> None:
        """Follow the agent's current dial-out connection (a new one after a
        ``[server]`` change) and show its state."""
        dialout = self.dialout
        if dialout is not self._dialout:
            self._detach_dialout()
            if dialout is not None:
                self._chained = dialout.on_state
                dialout.on_state = self._on_dialout_state
                self._dialout = dialout
        self._show_dialout()

    def _detach_dialout(self) -> None:
        dialout, self._dialout = self._dialout, None
        if dialout is not None and dialout.on_state == self._on_dialout_state:
            dialout.on_state = self._chained
        self._chained = None

    def _on_dialout_state(self, state: str) -> None:
        # called by the DialOut, maybe off the Qt thread: only pass it on
        if self._chained is not None:
            self._chained(state)
        self._dialout_state.emit(state)

    def _dialout_state_changed(self, _state: str) -> None:
        self.attach_dialout()

    def _show_dialout(self) -> None:
        dialout = self._dialout
        url = self.config.server.url
        state, error = ("off", None) if dialout is None else (dialout.state, dialout.last_error)
        model = self.model
        if (model.server_url, model.server_state, model.server_error) == (url, state, error):
            return
        model.apply_server(url, state, error)
        self.server_changed.emit()
        self.changed.emit()

    def redial(self) -> None:
        """Connect to the backup server again with a newly stored token (the
        configuration did not change, so :meth:`apply_config` would not)."""
        restart = getattr(self.agent, "restart_dialout", None)
        if callable(restart):
            restart()
            self.attach_dialout()
        elif self._dialout is not None:
            self._dialout.reconnect_now()

    # ------------------------------------------------------------ settings
    def apply_config(self, config: Config) -> None:
        """Use a new (validated, saved) configuration without a restart."""
        self.agent.apply_config(config)
        self.notify_success = config.ui.notify_success
        self.model.stale_after = _stale_after(config)
        self.attach_dialout()
        self.config_changed.emit(config)
        self.changed.emit()


def _stale_after(config: Config) -> float:
    """``[schedule] stale_after_days`` in seconds (0: never)."""
    return config.schedule.stale_after_days * 86400.0


_ACTIVE = (JobState.QUEUED, JobState.RUNNING, JobState.PAUSED)
