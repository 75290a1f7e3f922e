"""The job controller: runs backups with pause, resume and cancel.

Lives on the asyncio loop (no Qt). Jobs run the real engine on the
controller's own thread pool, one at a time per repository (later jobs
queue). The engine reports progress from its threads; the controller turns
it into the protocol's ``backup:progress`` on the loop thread: ``percent``
only moves forward and ends at 100, ``bytes_per_second`` is a moving
average, ``eta_seconds`` follows from it; at most 10 events a second and at
least one a second while a job runs. Everything goes out through the
:class:`~.bus.EventBus`.

Shutdown rule (headless agent and tray alike): queued jobs are dropped and a
running job is cancelled. A cancelled backup keeps what it stored (its packs
are indexed) and writes no snapshot, so the next run continues from there.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from desktop_agent.config import Config, ConfigError, read_password, user_cache_dir
from desktop_agent.engine import crypto
from desktop_agent.engine.backup import BackupOptions, BackupResult, backup, find_parent
from desktop_agent.engine.control import Control
from desktop_agent.engine.errors import Cancelled, EngineError, RepositoryNotFound
from desktop_agent.engine.progress import RATE_WINDOW, Progress, RateEstimator
from desktop_agent.engine.repository import Repository, hostname
from desktop_agent.engine.storage import open_storage
from desktop_agent.protocol import (
    CANCELLED,
    MAX_SKIPPED_LISTED,
    AgentStatus,
    BackupCompleted,
    BackupFailed,
    BackupPaused,
    BackupProgress,
    BackupResumed,
    BackupStarted,
    JobId,
    Skipped,
)

from .bus import EventBus, JobChanged
from .state import TERMINAL, Action, IllegalTransition, JobState, next_state

__all__ = ["JobController", "JobError", "JobView", "RATE_WINDOW"]

log = logging.getLogger(__name__)

MAX_EVENTS_PER_SECOND = 10
_HISTORY = 100  # finished jobs remembered for lookups


class JobError(Exception):
    """A command that cannot be carried out (unknown job, wrong state)."""


@dataclass(frozen=True)
class JobView:
    """What consumers may know about a job."""

    id: JobId
    state: JobState
    paths: tuple[str, ...] | None
    created: float  # wall clock
    started: float | None = None
    finished: float | None = None
    progress: BackupProgress | None = None
    error: str | None = None
    result: BackupResult | None = None


@dataclass
class _Job:
    id: JobId
    paths: tuple[str, ...] | None
    created: float
    state: JobState = JobState.QUEUED
    control: Control = field(default_factory=Control)
    started: float | None = None
    finished: float | None = None
    progress: BackupProgress | None = None
    error: str | None = None
    result: BackupResult | None = None
    pause_requested: bool = False
    resume_requested: bool = False  # a resume that arrived before the pause took effect
    # progress bookkeeping (loop thread only)
    last_sent: float = 0.0
    dirty: bool = False
    rate: RateEstimator = field(default_factory=RateEstimator)
    percent: float = 0.0

    def view(self) -> JobView:
        return JobView(
            self.id,
            self.state,
            self.paths,
            self.created,
            self.started,
            self.finished,
            self.progress,
            self.error,
            self.result,
        )


class JobController:
    """Starts, pauses, resumes and cancels backup jobs; reports through the bus."""

    def __init__(
        self,
        config: Config,
        bus: EventBus,
        *,
        clock: Callable[[], float] = time.monotonic,
        cache_root: Path | None = None,
    ) -> None:
        self.config = config
        self.bus = bus
        self._clock = clock
        self._cache_root = cache_root
        self._born = clock()
        self._jobs: dict[JobId, _Job] = {}
        self._order: deque[JobId] = deque()
        self._queue: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job")
        # Password checks must not queue behind a backup that runs for hours.
        self._checks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-check")
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._current: _Job | None = None
        self._key: tuple[str, crypto.Key] | None = None  # (repository path, master key)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start running queued jobs."""
        self._loop = asyncio.get_running_loop()
        self._runner = self._loop.create_task(self._run_queue(), name="job-runner")

    async def stop(self, *, timeout: float = 60.0) -> None:
        """Drop queued jobs, cancel the running one, wait for it to end."""
        self._stopping = True
        for job in list(self._queue):
            self._finish_cancelled(job)
        self._queue.clear()
        if self._current is not None and self._current.state not in TERMINAL:
            self._current.control.cancel()
        self._wake.set()
        if self._runner is not None:
            try:
                await asyncio.wait_for(self._runner, timeout)
            except (TimeoutError, asyncio.CancelledError):
                self._runner.cancel()
        for task in list(self._tasks):
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._checks.shutdown(wait=False, cancel_futures=True)

    def update_config(self, config: Config) -> None:
        """Use a new configuration for jobs that start from now on."""
        if config.repository_path != self.config.repository_path:
            self._key = None
        self.config = config

    # -------------------------------------------------------------- queries
    def status(self) -> AgentStatus:
        """The agent as a whole, as ``agent:status`` reports it."""
        active = [j for j in self._jobs.values() if j.state not in TERMINAL]
        if any(j.state is JobState.PAUSED for j in active):
            status = "paused"  # queued jobs wait behind the paused one
        elif active:
            status = "running"  # running, or about to
        else:
            status = "idle"
        return AgentStatus(status, len(active), int(self._clock() - self._born))

    def jobs(self) -> list[JobView]:
        """Every known job, oldest first."""
        return [self._jobs[i].view() for i in self._order]

    def job(self, job_id: str) -> JobView:
        """One job; :class:`JobError` if unknown."""
        return self._get(job_id).view()

    def repository_exists(self) -> bool:
        """Whether the configured repository has been created."""
        return open_storage(self.config.repository_path).exists()

    def current(self) -> JobView | None:
        """The running or paused job, if any."""
        job = self._current
        return job.view() if job is not None and job.state not in TERMINAL else None

    def last_finished(self) -> JobView | None:
        """The most recently finished job."""
        for job_id in reversed(self._order):
            job = self._jobs[job_id]
            if job.state in TERMINAL:
                return job.view()
        return None

    async def last_snapshot_time(self) -> float | None:
        """Wall-clock time of the latest snapshot of this host and sources, if any."""
        assert self._loop is not None

        def find() -> float | None:
            repo = self._repository()
            parent = find_parent(repo, self.config.expanded_sources(), hostname())
            return parent.time_ns / 1e9 if parent is not None else None

        try:
            return await self._loop.run_in_executor(self._executor, find)
        except (EngineError, ConfigError) as exc:
            log.info("no previous backup found: %s", exc)
            return None

    # ------------------------------------------------------------- commands
    def start_backup(self, paths: Sequence[str] | None = None) -> JobId:
        """Queue a backup (of ``paths``, or the configured sources)."""
        if self._stopping:
            raise JobError("the agent is shutting down")
        job = _Job(JobId(str(uuid.uuid4())), tuple(paths) if paths else None, time.time())
        self._jobs[job.id] = job
        self._order.append(job.id)
        self._forget_old()
        self._queue.append(job)
        log.info(
            "job %s queued (%s)", job.id, "sources" if job.paths is None else ", ".join(job.paths)
        )
        self.bus.publish(JobChanged(job.id, None, JobState.QUEUED))
        self.bus.publish(BackupStarted(job.id))
        self._wake.set()
        return job.id

    def pause(self, job_id: str) -> None:
        """Pause a running job; ``backup:paused`` follows once it took effect."""
        job = self._get(job_id)
        if job.state is not JobState.RUNNING:
            raise JobError(f"job {job_id} is {job.state.value}; only a running job can be paused")
        if job.pause_requested:
            return
        job.pause_requested = True
        job.control.pause()
        self._spawn(self._confirm_pause(job))

    def resume(self, job_id: str) -> None:
        """Resume a paused job."""
        job = self._get(job_id)
        if job.state is JobState.RUNNING and job.pause_requested:
            # The pause has not taken effect yet: let it, then resume at once,
            # so that whoever asked for the pause still sees backup:paused.
            job.resume_requested = True
            return
        if job.state is not JobState.PAUSED:
            raise JobError(f"job {job_id} is {job.state.value}; only a paused job can be resumed")
        self._do_resume(job)

    def _do_resume(self, job: _Job) -> None:
        job.pause_requested = False
        job.resume_requested = False
        job.control.resume()
        self._transition(job, Action.RESUME)
        self.bus.publish(BackupResumed(job.id))
        # the pause is not slow transfer
        job.rate.restart(self._clock(), job.progress.transferred_bytes if job.progress else 0)

    def cancel(self, job_id: str) -> None:
        """Cancel a job; it ends with ``backup:failed`` and error ``cancelled``."""
        job = self._get(job_id)
        if job.state in TERMINAL:
            raise JobError(f"job {job_id} has already {job.state.value}")
        if job.state is JobState.QUEUED:
            self._queue.remove(job)
            self._finish_cancelled(job)
            return
        job.control.cancel()  # the runner reports when the engine has stopped

    async def create_repository(self, path: str, password: str) -> None:
        """Create an empty repository in ``path`` (an absolute path; new or empty folder).

        Runs on the job thread, so it never overlaps a backup. Raises the
        engine's errors: :class:`~desktop_agent.engine.errors.RepositoryExists`
        (also for a folder that is not empty), ``StorageError``, and
        ``EngineError`` for an empty password. Where the password is kept is
        the caller's business.
        """
        loop = asyncio.get_running_loop()

        def init() -> None:
            Repository.init(open_storage(path), password)
            log.info("created a repository at %s", path)

        await loop.run_in_executor(self._executor, init)

    async def check_password(self, path: str, password: str) -> None:
        """Open the repository in ``path`` with ``password``; raise if it does not open.

        Raises ``WrongPassword``, ``RepositoryNotFound`` or another
        ``EngineError``. Nothing is stored or cached: the caller decides
        where to keep a password that works.
        """
        loop = asyncio.get_running_loop()

        def check() -> None:
            Repository.open(open_storage(path), password)

        await loop.run_in_executor(self._checks, check)

    # ------------------------------------------------------------- internals
    def _get(self, job_id: str) -> _Job:
        job = self._jobs.get(JobId(job_id))
        if job is None:
            raise JobError(f"unknown job_id {job_id!r}")
        return job

    def _forget_old(self) -> None:
        while len(self._order) > _HISTORY:
            old = self._jobs[self._order[0]]
            if old.state not in TERMINAL:
                break
            del self._jobs[self._order.popleft()]

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _transition(self, job: _Job, action: Action) -> None:
        old = job.state
        job.state = next_state(old, action)
        log.info("job %s: %s -> %s", job.id, old.value, job.state.value)
        self.bus.publish(JobChanged(job.id, old, job.state))

    def _finish_cancelled(self, job: _Job) -> None:
        self._transition(job, Action.CANCELLED)
        job.finished = time.time()
        job.error = CANCELLED
        self.bus.publish(BackupFailed(job.id, CANCELLED))

    async def _confirm_pause(self, job: _Job) -> None:
        while job.pause_requested and job.state is JobState.RUNNING:
            took = await asyncio.to_thread(job.control.wait_paused, 0.5)
            if took and job.pause_requested and job.state is JobState.RUNNING:
                self._transition(job, Action.PAUSE)
                self.bus.publish(BackupPaused(job.id))
                if job.resume_requested:
                    self._do_resume(job)
                return

    async def _run_queue(self) -> None:
        assert self._loop is not None
        while not self._stopping or self._queue:
            if not self._queue:
                self._wake.clear()
                if self._stopping:
                    return
                await self._wake.wait()
                continue
            job = self._queue.popleft()
            if job.state is not JobState.QUEUED:
                continue
            await self._run(job)

    async def _run(self, job: _Job) -> None:
        assert self._loop is not None
        self._current = job
        job.started = time.time()
        job.rate.restart(self._clock(), 0)
        self._transition(job, Action.START)
        self._publish_progress(job, Progress(0, 0, 0, 0, ""), force=True)
        self._ticker = self._loop.create_task(self._tick(job), name="progress-ticker")
        try:
            result = await self._loop.run_in_executor(self._executor, self._run_engine, job)
        except Cancelled:
            self._end(job, Action.CANCELLED, CANCELLED)
        except (EngineError, ConfigError) as exc:
            self._end(job, Action.FAIL, str(exc))
        except Exception as exc:  # noqa: BLE001 - a job must end with an event, whatever happens
            log.exception("job %s failed unexpectedly", job.id)
            self._end(job, Action.FAIL, f"internal error: {type(exc).__name__}: {exc}")
        else:
            job.result = result
            total = result.summary.total_bytes_processed
            last = job.progress
            if last is not None:
                done = replace(
                    last,
                    percent=100.0,
                    transferred_bytes=total,
                    total_bytes=total,
                    eta_seconds=0,
                    current_file=None,
                    files_processed=result.summary.total_files_processed,
                    total_files=result.summary.total_files_processed,
                )
                job.progress = done
                self.bus.publish(done)
            self._end(job, Action.COMPLETE, None)
            skipped = tuple(Skipped(k.path, k.reason) for k in result.skipped)
            self.bus.publish(
                BackupCompleted(job.id, total, skipped[:MAX_SKIPPED_LISTED], len(skipped))
            )
        finally:
            if self._ticker is not None:
                self._ticker.cancel()
            self._current = None

    def _end(self, job: _Job, action: Action, error: str | None) -> None:
        job.pause_requested = False
        job.resume_requested = False
        try:
            self._transition(job, action)
        except IllegalTransition:
            log.error("job %s: cannot %s from %s", job.id, action.value, job.state.value)
            return
        job.finished = time.time()
        job.error = error
        if error is not None:
            log.info("job %s ended: %s", job.id, error)
            self.bus.publish(BackupFailed(job.id, error))

    # -------------------------------------------------- engine (worker thread)
    def open_repository(self) -> Repository:
        """A fresh Repository of the configured path, for work beside the jobs
        (browsing, restoring). Blocking: call it from a worker thread."""
        return self._repository()

    def _repository(self) -> Repository:
        """Open the repository; the key is derived once per path and kept."""
        path = self.config.repository_path
        storage = open_storage(path)
        if self._key is not None and self._key[0] == path:
            return Repository.open_with_key(storage, self._key[1])
        if not storage.exists():
            raise RepositoryNotFound(
                f"there is no repository at {path} (create one with `desktop-agent init`)"
            )
        password = read_password(self.config)
        if not password:
            raise ConfigError(
                "no repository password: set DESKTOP_AGENT_PASSWORD, "
                f"[repository] password_file in {self.config.path}, or the OS keyring"
            )
        repo = Repository.open(storage, password)
        self._key = (path, repo.key)
        return repo

    def _run_engine(self, job: _Job) -> BackupResult:
        repo = self._repository()
        cache_root = self._cache_root or user_cache_dir()
        options = BackupOptions(
            sources=list(job.paths) if job.paths else self.config.expanded_sources(),
            excludes=self.config.backup_excludes(),
            cache_dir=str(cache_root / "repositories" / repo.config.id),
        )
        loop = self._loop
        assert loop is not None

        def report(p: Progress) -> None:
            loop.call_soon_threadsafe(self._on_progress, job, p)

        return backup(
            repo,
            options,
            progress=report,
            control=job.control,
            progress_interval=1.0 / MAX_EVENTS_PER_SECOND,
        )

    # ------------------------------------------------------ progress (loop)
    def _on_progress(self, job: _Job, p: Progress) -> None:
        if job.state in TERMINAL:
            return
        self._publish_progress(job, p)

    def _publish_progress(self, job: _Job, p: Progress, *, force: bool = False) -> None:
        now = self._clock()
        rate = job.rate.update(now, p.bytes_done)
        # Until the scan has counted everything the total is not known: a
        # percent of a growing total would race ahead and then have to stop.
        if p.scan_finished and p.bytes_total > 0:
            job.percent = max(job.percent, min(99.9, 100.0 * p.bytes_done / p.bytes_total))
        eta = job.rate.eta(p.bytes_total - p.bytes_done) if p.scan_finished else 0
        job.progress = BackupProgress(
            job_id=job.id,
            percent=round(job.percent, 2),
            transferred_bytes=p.bytes_done,
            total_bytes=max(p.bytes_total, p.bytes_done),
            bytes_per_second=int(rate),
            eta_seconds=eta,
            current_file=p.current_file or None,
            files_processed=p.files_done,
            total_files=max(p.files_total, p.files_done),
        )
        if force or now - job.last_sent >= 1.0 / MAX_EVENTS_PER_SECOND:
            self._send_progress(job, now)
        else:
            job.dirty = True

    def _send_progress(self, job: _Job, now: float) -> None:
        job.last_sent = now
        job.dirty = False
        if job.progress is not None and job.state is JobState.RUNNING:
            self.bus.publish(job.progress)

    async def _tick(self, job: _Job) -> None:
        """Send held-back progress, and at least one event a second while running."""
        interval = 1.0 / MAX_EVENTS_PER_SECOND
        while job.state not in TERMINAL:
            await asyncio.sleep(interval)
            if job.state is not JobState.RUNNING:
                continue
            now = self._clock()
            if job.dirty and now - job.last_sent >= interval:
                self._send_progress(job, now)
            elif now - job.last_sent >= 1.0 and job.progress is not None:
                # nothing new for a second (a big file in one chunk...): the
                # rate decays so that the ETA stays honest
                rate = job.rate.decay(now)
                job.progress = replace(job.progress, bytes_per_second=int(rate))
                self._send_progress(job, now)
