"""The job controller: runs backups and restores with pause, resume and cancel.

Lives on the asyncio loop (no Qt). Every job, whatever its kind
(:mod:`.spec`), goes through one queue and runs the real engine on the
controller's own worker thread, one at a time: the agent has one
repository, so a backup, a restore and upkeep (forget + prune, check:
:mod:`.upkeep`) of it never run at once. Every job follows the one state
machine (:mod:`.state`) and takes the same commands (pause, resume, cancel
through the engine's :class:`~desktop_agent.engine.control.Control`).

The engine reports progress from its threads; the controller turns it into
the protocol's nine progress fields on the loop thread, the same way for
every kind: ``percent`` only moves forward and ends at 100,
``bytes_per_second`` is a moving average, ``eta_seconds`` follows from it;
at most 10 events a second and at least one a second while a job runs.
Each kind is reported with its own messages (``backup:*`` for backups,
``restore:*`` for restores, ``upkeep:*`` for upkeep), and every job
announced ends with exactly one terminal message. Everything goes out
through the :class:`~.bus.EventBus`.

Shutdown rule (headless agent and tray alike): queued jobs are dropped and a
running job is cancelled. A cancelled backup keeps what it stored (its packs
are indexed) and writes no snapshot, so the next run continues from there;
a cancelled restore keeps the files it wrote; a cancelled prune stops before
it deletes anything (:mod:`.upkeep`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from desktop_agent.config import Config, ConfigError, read_password, user_cache_dir
from desktop_agent.engine import crypto, watchers
from desktop_agent.engine.backup import BackupOptions, BackupResult, backup, find_parent
from desktop_agent.engine.errors import Cancelled, EngineError, RepositoryNotFound
from desktop_agent.engine.journal import ChangeJournal
from desktop_agent.engine.progress import RATE_WINDOW, Progress
from desktop_agent.engine.repository import Repository, hostname
from desktop_agent.engine.restore import RestoreResult
from desktop_agent.engine.snapshot import Snapshot
from desktop_agent.engine.storage import storage_for
from desktop_agent.protocol import (
    CANCELLED,
    MAX_SKIPPED_LISTED,
    AgentStatus,
    BackupCompleted,
    BackupStarted,
    JobId,
    RestoreCompleted,
    RestoreStarted,
    Skipped,
    UpkeepCompleted,
    UpkeepStarted,
)

from .bus import EventBus, JobChanged
from .job import Job, JobResult, JobView
from .restores import new_restore_folder, run_restore
from .spec import BackupSpec, JobKind, JobSpec, RestoreSpec, UpkeepSpec
from .state import TERMINAL, Action, IllegalTransition, JobState, next_state
from .upkeep import UpkeepResult, run_upkeep

__all__ = ["JobController", "JobError", "RATE_WINDOW"]

log = logging.getLogger(__name__)

MAX_EVENTS_PER_SECOND = 10
_HISTORY = 100  # finished jobs remembered for lookups


class JobError(Exception):
    """A command that cannot be carried out (unknown job, wrong state)."""


class JobController:
    """Queues, runs, pauses, resumes and cancels jobs; reports through the bus."""

    def __init__(
        self,
        config: Config,
        bus: EventBus,
        *,
        clock: Callable[[], float] = time.monotonic,
        cache_root: Path | None = None,
        journal: ChangeJournal | None = None,
    ) -> None:
        self.config = config
        self.bus = bus
        # which folders changed between backups: an hourly backup lists only those
        self.journal = journal if journal is not None else ChangeJournal(watchers.start)
        self._clock = clock
        self._cache_root = cache_root
        self._born = clock()
        self._jobs: dict[JobId, Job] = {}
        self._order: deque[JobId] = deque()
        self._queue: deque[Job] = deque()
        self._wake = asyncio.Event()
        # the one worker of the repository's queue: a job at a time
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job")
        # Short repository work beside the jobs (password checks, finding the
        # snapshot a /ws restore names): it must not wait behind a backup
        # that runs for hours.
        self._checks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-check")
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._current: Job | None = None
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
        # stopping the watcher joins its reader thread: not on the event loop
        await asyncio.to_thread(self.journal.close)

    def update_config(self, config: Config) -> None:
        """Use a new configuration for jobs that start from now on."""
        if config.repository_path != self.config.repository_path:
            self._key = None
        self.config = config

    # -------------------------------------------------------------- queries
    def status(self) -> AgentStatus:
        """The agent as a whole, as ``agent:status`` reports it (restores count too)."""
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
        """Whether the configured repository has been created (blocking: for a
        server, a request that may retry; see :meth:`has_repository`)."""
        return storage_for(self.config).exists()

    async def has_repository(self) -> bool:
        """:meth:`repository_exists`, asked on a worker thread, not the loop's."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._checks, self.repository_exists)

    def current(self) -> JobView | None:
        """The running or paused job (of any kind), if any."""
        job = self._current
        return job.view() if job is not None and job.state not in TERMINAL else None

    def last_finished(self, kind: JobKind | None = None) -> JobView | None:
        """The most recently finished job (of ``kind``, when given)."""
        for job_id in reversed(self._order):
            job = self._jobs[job_id]
            if job.state in TERMINAL and (kind is None or job.kind is kind):
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
    def start_backup(self, paths: Sequence[str] | None = None, *, origin: str = "") -> JobId:
        """Queue a backup (of ``paths``, or the configured sources)."""
        return self._enqueue(BackupSpec(tuple(paths) if paths else None), origin)

    def start_restore(
        self,
        snapshot: Snapshot,
        includes: Sequence[str],
        target: str,
        *,
        origin: str = "",
    ) -> JobId:
        """Queue a restore of ``includes`` (snapshot paths; empty: everything) into ``target``.

        ``target`` is an absolute folder, new or not: existing files are
        never replaced, each one is listed in the result's errors.
        """
        if not target or not os.path.isabs(target):
            raise JobError(f"the restore target must be an absolute path, not {target!r}")
        if snapshot.id is None:
            raise JobError("the snapshot to restore has no id")
        return self._enqueue(RestoreSpec(snapshot, tuple(includes), target), origin)

    async def start_remote_restore(
        self, snapshot: str, paths: Sequence[str] | None = None, *, origin: str = "/ws"
    ) -> JobId:
        """Queue a restore asked for by a backup server, if ``[agent] allow_remote_restore``.

        ``snapshot`` is ``latest``, an id or a unique id prefix; ``paths``
        snapshot paths (None: everything). The files go into a new folder
        made for this restore (:func:`~.restores.new_restore_folder`), never
        an existing one. Raises :class:`JobError` when remote restores are
        off, the snapshot cannot be found, or no folder can be made.
        """
        if not self.config.agent.allow_remote_restore:
            raise JobError(
                "restores from a backup server are off on this agent: "
                "set [agent] allow_remote_restore = true in its configuration to allow them"
            )
        self._check_open()
        loop = asyncio.get_running_loop()

        def prepare() -> tuple[Snapshot, str]:
            snap = self._repository().find_snapshot(snapshot)
            return snap, new_restore_folder(snap.short_id)

        try:
            snap, target = await loop.run_in_executor(self._checks, prepare)
        except (EngineError, ConfigError) as exc:
            raise JobError(f"cannot restore snapshot {snapshot!r}: {exc}") from None
        except OSError as exc:
            raise JobError(f"cannot make a folder to restore into: {exc}") from None
        spec = RestoreSpec(snap, tuple(paths or ()), target, new_folder=True)
        try:
            return self._enqueue(spec, origin)
        except JobError:
            await loop.run_in_executor(None, _rmdir_quietly, target)
            raise

    def start_upkeep(self, spec: UpkeepSpec, *, origin: str = "") -> JobId:
        """Queue repository upkeep: forget + prune, or a check of a part of the data.

        ``UpkeepSpec.forget(config.upkeep)`` or ``UpkeepSpec.check(n, t)``
        (:mod:`.upkeep` does the work). Announced with ``upkeep:started``;
        :class:`JobError` when the agent is shutting down.
        """
        return self._enqueue(spec, origin)

    def pause(self, job_id: str, kind: JobKind | None = None) -> None:
        """Pause a running job; its ``paused`` event follows once it took effect.

        With ``kind`` (the command's), a job of another kind is refused with a
        :class:`JobError` (``job … is a restore, not a backup``); so are an
        unknown job and one that is not running.
        """
        job = self._get(job_id, kind)
        if job.state is not JobState.RUNNING:
            raise JobError(f"job {job_id} is {job.state.value}; only a running job can be paused")
        if job.pause_requested:
            return
        job.pause_requested = True
        job.control.pause()
        self._spawn(self._confirm_pause(job))

    def resume(self, job_id: str, kind: JobKind | None = None) -> None:
        """Resume a paused job."""
        job = self._get(job_id, kind)
        if job.state is JobState.RUNNING and job.pause_requested:
            # The pause has not taken effect yet: let it, then resume at once,
            # so that whoever asked for the pause still sees it confirmed.
            job.resume_requested = True
            return
        if job.state is not JobState.PAUSED:
            raise JobError(f"job {job_id} is {job.state.value}; only a paused job can be resumed")
        self._do_resume(job)

    def _do_resume(self, job: Job) -> None:
        job.pause_requested = False
        job.resume_requested = False
        job.control.resume()
        self._transition(job, Action.RESUME)
        self.bus.publish(job.messages.resumed(job.id))
        # the pause is not slow transfer
        job.rate.restart(self._clock(), job.progress.transferred_bytes if job.progress else 0)

    def cancel(self, job_id: str, kind: JobKind | None = None) -> None:
        """Cancel a job; it ends with its ``failed`` event, error ``cancelled``."""
        job = self._get(job_id, kind)
        if job.state in TERMINAL:
            raise JobError(f"job {job_id} has already {job.state.value}")
        if job.state is JobState.QUEUED:
            self._queue.remove(job)
            self._finish_cancelled(job)
            return
        job.control.cancel()  # the runner reports when the engine has stopped

    def stop_job(self, job_id: str, reason: str) -> None:
        """End a job like :meth:`cancel`, with ``reason`` as its ``failed`` event's error.

        For the scheduler: a backup stopped at its maximum runtime (what it
        stored is kept, as with a cancel, and the next run continues).
        """
        job = self._get(job_id)
        if job.state in TERMINAL:
            raise JobError(f"job {job_id} has already {job.state.value}")
        job.stop_reason = reason
        if job.state is JobState.QUEUED:
            self._queue.remove(job)
            self._finish_cancelled(job)
            return
        job.control.cancel()

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
            Repository.init(storage_for(self.config, path), password)
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
            Repository.open(storage_for(self.config, path), password)

        await loop.run_in_executor(self._checks, check)

    # ------------------------------------------------------------- internals
    def _check_open(self) -> None:
        if self._stopping:
            raise JobError("the agent is shutting down")

    def _enqueue(self, spec: JobSpec, origin: str) -> JobId:
        self._check_open()
        job = Job(JobId(str(uuid.uuid4())), spec, time.time(), origin)
        self._jobs[job.id] = job
        self._order.append(job.id)
        self._forget_old()
        self._queue.append(job)
        log.info("job %s queued: %s", job.id, job.describe())
        self.bus.publish(JobChanged(job.id, None, JobState.QUEUED, job.kind))
        if isinstance(spec, RestoreSpec):
            self.bus.publish(RestoreStarted(job.id, spec.snapshot_id, spec.target))
        elif isinstance(spec, UpkeepSpec):
            self.bus.publish(UpkeepStarted(job.id, spec.task))
        else:
            self.bus.publish(BackupStarted(job.id))
        self._wake.set()
        return job.id

    def _get(self, job_id: str, kind: JobKind | None = None) -> Job:
        job = self._jobs.get(JobId(job_id))
        if job is None:
            raise JobError(f"unknown job_id {job_id!r}")
        if kind is not None and job.kind is not kind:
            raise JobError(f"job {job_id} is {job.kind.noun}, not {kind.noun}")
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

    def _transition(self, job: Job, action: Action) -> None:
        old = job.state
        job.state = next_state(old, action)
        log.info("job %s: %s -> %s", job.id, old.value, job.state.value)
        self.bus.publish(JobChanged(job.id, old, job.state, job.kind))

    def _finish_cancelled(self, job: Job) -> None:
        self._transition(job, Action.CANCELLED)
        job.finished = time.time()
        job.error = job.stop_reason or CANCELLED
        self.bus.publish(job.messages.failed(job.id, job.error))
        spec = job.spec
        if isinstance(spec, RestoreSpec) and spec.new_folder:
            # it never ran: the folder made for it is empty
            self._checks.submit(_rmdir_quietly, spec.target)

    async def _confirm_pause(self, job: Job) -> None:
        while job.pause_requested and job.state is JobState.RUNNING:
            took = await asyncio.to_thread(job.control.wait_paused, 0.5)
            if took and job.pause_requested and job.state is JobState.RUNNING:
                self._transition(job, Action.PAUSE)
                self.bus.publish(job.messages.paused(job.id))
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

    async def _run(self, job: Job) -> None:
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
            self._end(job, Action.CANCELLED, job.stop_reason or CANCELLED)
        except (EngineError, ConfigError) as exc:
            self._end(job, Action.FAIL, str(exc))
        except Exception as exc:  # noqa: BLE001 - a job must end with an event, whatever happens
            log.exception("job %s failed unexpectedly", job.id)
            self._end(job, Action.FAIL, f"internal error: {type(exc).__name__}: {exc}")
        else:
            job.result = result
            if isinstance(result, RestoreResult):
                self._complete_restore(job, result)
            elif isinstance(result, UpkeepResult):
                self._complete_upkeep(job, result)
            else:
                self._complete_backup(job, result)
        finally:
            if self._ticker is not None:
                self._ticker.cancel()
            self._current = None

    def _final_progress(self, job: Job, total: int, files: int) -> None:
        """The last progress event of a completed job: 100%, the final totals."""
        last = job.progress
        if last is None:
            return
        done = replace(
            last,
            percent=100.0,
            transferred_bytes=total,
            total_bytes=total,
            eta_seconds=0,
            current_file=None,
            files_processed=files,
            total_files=files,
        )
        job.progress = done
        self.bus.publish(done)

    def _complete_backup(self, job: Job, result: BackupResult) -> None:
        total = result.summary.total_bytes_processed
        self._final_progress(job, total, result.summary.total_files_processed)
        self._end(job, Action.COMPLETE, None)
        skipped = tuple(Skipped(k.path, k.reason) for k in result.skipped)
        self.bus.publish(BackupCompleted(job.id, total, skipped[:MAX_SKIPPED_LISTED], len(skipped)))

    def _complete_restore(self, job: Job, result: RestoreResult) -> None:
        self._final_progress(job, result.bytes_written, result.files)
        self._end(job, Action.COMPLETE, None)
        if result.errors_total or result.errors:
            log.info(
                "job %s: %d entries not restored, e.g. %s",
                job.id,
                max(result.errors_total, len(result.errors)),
                result.errors[0] if result.errors else "?",
            )
        self.bus.publish(RestoreCompleted(job.id, result.bytes_written))

    def _complete_upkeep(self, job: Job, result: UpkeepResult) -> None:
        self._final_progress(job, result.bytes_processed, result.items_processed)
        self._end(job, Action.COMPLETE, None)
        log.info("job %s: %s", job.id, result.summary)
        self.bus.publish(UpkeepCompleted(job.id, result.task, result.summary))

    def _end(self, job: Job, action: Action, error: str | None) -> None:
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
            self.bus.publish(job.messages.failed(job.id, error))

    # -------------------------------------------------- engine (worker thread)
    def open_repository(self) -> Repository:
        """A fresh Repository of the configured path, for work beside the jobs
        (browsing). Blocking: call it from a worker thread."""
        return self._repository()

    def _repository(self) -> Repository:
        """Open the repository; the key is derived once per path and kept."""
        path = self.config.repository_path
        storage = storage_for(self.config)
        if self._key is not None and self._key[0] == path:
            repo = Repository.open_with_key(storage, self._key[1])
            self._use_index_cache(repo)
            return repo
        if not storage.exists():
            raise RepositoryNotFound(
                f"there is no repository at {storage.location} "
                "(create one with `desktop-agent init`)"
            )
        password = read_password(self.config)
        if not password:
            raise ConfigError(
                "no repository password: set DESKTOP_AGENT_PASSWORD, "
                f"[repository] password_file in {self.config.path}, or the OS keyring"
            )
        repo = Repository.open(storage, password)
        self._key = (path, repo.key)
        self._use_index_cache(repo)
        return repo

    def _use_index_cache(self, repo: Repository) -> None:
        """Every job loads the index from the local cache when it is current."""
        cache_root = self._cache_root or user_cache_dir()
        repo.index_cache_dir = str(cache_root / "repositories" / repo.config.id)

    def _reporter(self, job: Job) -> Callable[[Progress], None]:
        loop = self._loop
        assert loop is not None

        def report(p: Progress) -> None:
            loop.call_soon_threadsafe(self._on_progress, job, p)

        return report

    def _run_engine(self, job: Job) -> JobResult:
        spec = job.spec
        if isinstance(spec, RestoreSpec):
            return run_restore(
                self._repository(),
                spec,
                progress=self._reporter(job),
                control=job.control,
                progress_interval=1.0 / MAX_EVENTS_PER_SECOND,
            )
        if isinstance(spec, UpkeepSpec):
            return run_upkeep(
                self._repository(), spec, progress=self._reporter(job), control=job.control
            )
        return self._run_backup(job, spec)

    def _run_backup(self, job: Job, spec: BackupSpec) -> BackupResult:
        repo = self._repository()
        cache_root = self._cache_root or user_cache_dir()
        options = BackupOptions(
            sources=list(spec.paths) if spec.paths else self.config.expanded_sources(),
            excludes=self.config.backup_excludes(),
            cache_dir=str(cache_root / "repositories" / repo.config.id),
            journal=self.journal,
        )
        return backup(
            repo,
            options,
            progress=self._reporter(job),
            control=job.control,
            progress_interval=1.0 / MAX_EVENTS_PER_SECOND,
        )

    # ------------------------------------------------------ progress (loop)
    def _on_progress(self, job: Job, p: Progress) -> None:
        if job.state in TERMINAL:
            return
        self._publish_progress(job, p)

    def _publish_progress(self, job: Job, p: Progress, *, force: bool = False) -> None:
        now = self._clock()
        rate = job.rate.update(now, p.bytes_done)
        # Until the scan has counted everything the total is not known: a
        # percent of a growing total would race ahead and then have to stop.
        if p.scan_finished and p.bytes_total > 0:
            job.percent = max(job.percent, min(99.9, 100.0 * p.bytes_done / p.bytes_total))
        eta = job.rate.eta(p.bytes_total - p.bytes_done) if p.scan_finished else 0
        job.progress = job.messages.progress(
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

    def _send_progress(self, job: Job, now: float) -> None:
        job.last_sent = now
        job.dirty = False
        if job.progress is not None and job.state is JobState.RUNNING:
            self.bus.publish(job.progress)

    async def _tick(self, job: Job) -> None:
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


def _rmdir_quietly(folder: str) -> None:
    """Remove ``folder`` if it is empty (a restore folder nothing went into)."""
    try:
        os.rmdir(folder)
    except OSError:
        pass
