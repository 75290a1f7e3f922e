"""The scheduler: drives the decisions of :mod:`.schedule` with a timer and events.

It starts scheduled backups and upkeep jobs through the controller, pauses
a scheduled job while a condition stops it (battery, metered network, quiet
hours, the pause the user asked for) and resumes it when the condition
clears, pauses any running job before the machine sleeps (the pause
indexes what is stored) and resumes it after the wake, stops a scheduled
backup at its maximum runtime, and asks for the sleep inhibitor lock a
running job needs. Conditions come from the :class:`~.conditions.ConditionHub`;
it never asks the operating system itself.

Each step (:meth:`Scheduler.tick`) is synchronous: the timer calls it at
least every ``tick_every`` seconds and at the time the decision can next
change; conditions, wakes and job ends call it at once. A wall clock that
moved differently from the monotonic clock between two ticks (the machine
slept; the clock was set) counts as a wake. Tests drive ``tick`` with
simulated clocks. See docs/scheduling.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from collections.abc import Callable
from datetime import tzinfo
from pathlib import Path

from desktop_agent.engine.errors import EngineError

from .bus import BusEvent, JobChanged, ScheduleChanged
from .conditions import ConditionHub, Conditions, Inhibit
from .controller import JobController, JobError
from .schedule import (
    Decision,
    Moment,
    Plan,
    ScheduleStatus,
    Verdict,
    blocking_reasons,
    clock_jumped,
    decide,
    overran,
    stale,
    upkeep_due,
)
from .schedulestate import load_history, save_history, state_path
from .spec import BackupSpec, JobKind, UpkeepSpec
from .state import TERMINAL, JobState

__all__ = ["ORIGIN", "Scheduler"]

log = logging.getLogger(__name__)

ORIGIN = "scheduler"  # the origin of the jobs the scheduler starts
SLEEP_READY_TIMEOUT = 3.5  # seconds a running job gets to pause before sleep (logind waits 5)


class Scheduler:
    """Scheduled backups and upkeep for a :class:`JobController`."""

    def __init__(
        self,
        controller: JobController,
        hub: ConditionHub | None = None,
        *,
        state_file: Path | None = None,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        tz: tzinfo | None = None,
        tick_every: float = 30.0,
        seed: str | None = None,
    ) -> None:
        self.controller = controller
        self.hub = hub if hub is not None else ConditionHub()
        self._state_file = state_file if state_file is not None else state_path(controller.config)
        self._wall = wall_clock
        self._mono = monotonic
        self._tz = tz
        self.tick_every = tick_every
        self._seed = seed if seed is not None else socket.gethostname()
        self.history = load_history(self._state_file)
        self._task: asyncio.Task[None] | None = None
        self._poke = asyncio.Event()
        self._last_reading: tuple[float, float] | None = None
        self._woke_at: float | None = None
        self._sleeping = False
        self._started: dict[str, float] = {}  # job id -> wall time it started running
        self._overran: set[str] = set()
        # job id -> (the conditions, in words) the scheduler paused it for
        self._held: dict[str, tuple[frozenset[str], str]] = {}
        self._overridden: dict[str, frozenset[str]] = {}  # reasons a user resumed a job past
        self._decision: Decision | None = None
        self._skip_logged: str | None = None
        self._status: ScheduleStatus | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self._resuming: str | None = None
        self.repository_known = True  # False while the repository does not exist (yet)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start on the running loop: listen to jobs and conditions, run the timer."""
        self._unsubscribe.append(self.controller.bus.subscribe(self._on_event))
        self._unsubscribe.append(self.hub.listen(self._on_conditions))
        self.hub.on_sleep(self.before_sleep)
        self.hub.on_wake(self.after_wake)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        """Stop deciding (jobs are the controller's to stop)."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.hub.want_inhibit(Inhibit.NONE)

    async def _run(self) -> None:
        await self.learn_last_success()
        while True:
            if not self.repository_known or self._decision is None:
                await self._look_for_repository()
            try:
                decision = self.tick()
            except Exception:  # noqa: BLE001 - the schedule must survive a bad step
                log.exception("the scheduler failed to decide")
                decision = None
            timeout = self.tick_every
            if decision is not None and decision.recheck is not None:
                timeout = max(1.0, min(timeout, decision.recheck - self._wall()))
            self._poke.clear()
            try:
                # not wait_for: on 3.11 it can swallow a cancel that comes with the wake-up
                async with asyncio.timeout(timeout):
                    await self._poke.wait()
            except TimeoutError:
                pass

    async def _look_for_repository(self) -> None:
        try:
            known = await self.controller.has_repository()
        except (EngineError, OSError) as exc:
            log.info("cannot tell whether the repository exists: %s", exc)
            return  # unknown: let a backup try, and fail with the reason
        if known and not self.repository_known:
            await self.learn_last_success()
        self.repository_known = known

    async def learn_last_success(self) -> None:
        """Take the last success from the repository's snapshots (the state file
        may be new, or the backups were made by the CLI)."""
        try:
            found = await self.controller.last_snapshot_time()
        except (EngineError, OSError) as exc:
            log.info("no previous backup found: %s", exc)
            return
        if found is not None and (self.history.last_success or 0.0) < found:
            self._remember(last_success=found)

    # -------------------------------------------------------------- queries
    @property
    def plan(self) -> Plan:
        """The configuration's schedule as the decisions need it."""
        config = self.controller.config
        return Plan(
            interval_minutes=config.backup.interval_minutes,
            schedule=config.schedule,
            upkeep=config.upkeep,
            needs_network=config.repository_location.remote,
            tz=self._tz,
            seed=self._seed,
        )

    def status(self) -> ScheduleStatus:
        """What the scheduler decided last and holds now."""
        if self._status is None:
            self._status = self._make_status(self._decide())
        return self._status

    def status_fields(self) -> dict[str, object]:
        """The optional ``agent:status`` fields: ``next_backup``, ``last_success``,
        ``paused_until`` (RFC 3339 or null), ``conditions``, and ``schedule``
        (the state in a word and why)."""
        s = self.status()
        return {
            "next_backup": _rfc3339(s.next_backup),
            "last_success": _rfc3339(s.last_success),
            "paused_until": _rfc3339(s.paused_until),
            "paused_indefinitely": s.paused_forever,
            "conditions": s.conditions.to_json(),
            "schedule": {"state": _state_word(s), "reason": s.held or s.reason},
        }

    # ------------------------------------------------------------- commands
    def pause(self, minutes: float | None) -> None:
        """Hold scheduled work for ``minutes`` (None: until :meth:`resume`)."""
        if minutes is None:
            self._remember(paused_forever=True, paused_until=None)
            log.info("scheduled backups paused until resumed")
        else:
            until = self._wall() + max(0.0, minutes) * 60
            self._remember(paused_forever=False, paused_until=until)
            log.info("scheduled backups paused for %g minutes", minutes)
        self.tick()

    def pause_until(self, until: float) -> None:
        """Hold scheduled work until the wall-clock time ``until``."""
        self.pause((until - self._wall()) / 60)

    def resume(self) -> None:
        """Release a pause of scheduled work."""
        self._remember(paused_forever=False, paused_until=None)
        log.info("scheduled backups resumed")
        self.tick()

    # ------------------------------------------------------------- the step
    def tick(self) -> Decision:
        """One step: notice a wake, hold or release the current job, stop an
        overrun, start what is due, tell everyone what was decided."""
        now = self._wall()
        self._notice_jump(now)
        if self.history.paused_until is not None and not self.history.paused(now):
            self._remember(paused_until=None)  # the pause ran out
        self._manage_current(now)
        decision = self._decide()
        if decision.verdict is Verdict.RUN:
            self._start_backup(now)
            decision = self._decide()
        elif decision.verdict is Verdict.SKIP:
            if decision.reason != self._skip_logged:
                log.info("scheduled backup skipped: %s", decision.reason)
                self._skip_logged = decision.reason
        if decision.verdict is not Verdict.SKIP:
            self._skip_logged = None
        if decision.verdict is not Verdict.RUN:
            self._maybe_upkeep(now)
        self._want_inhibit()
        self._publish(decision)
        return decision

    def _decide(self) -> Decision:
        now = self._wall()
        moment = Moment(now, self.hub.current, self._woke_at, self._busy())
        if not self.repository_known:
            moment = dataclasses.replace(moment, repository=False)
        return decide(self.history, moment, self.plan)

    def _busy(self) -> bool:
        return self.controller.status().active_jobs > 0

    def _notice_jump(self, now: float) -> None:
        mono = self._mono()
        last, self._last_reading = self._last_reading, (now, mono)
        if last is not None and clock_jumped(last[0], last[1], now, mono):
            log.info("the clock jumped (the computer slept, or the time was set): a wake")
            self._woke(now)

    def _start_backup(self, now: float) -> None:
        try:
            job_id = self.controller.start_backup(origin=ORIGIN)
        except JobError as exc:
            log.warning("scheduled backup not started: %s", exc)
            return
        self._remember(last_attempt=now)
        self._woke_at = None  # the wake's catch-up run has started: one, not two
        log.info("scheduled backup started: job %s", job_id)

    def _maybe_upkeep(self, now: float) -> None:
        moment = Moment(now, self.hub.current, self._woke_at, self._busy())
        task = upkeep_due(self.history, moment, self.plan)
        if task is None or self._sleeping:
            return
        name, n, t = task
        config = self.controller.config
        try:
            spec = UpkeepSpec.forget(config.upkeep) if name == "forget" else UpkeepSpec.check(n, t)
            job_id = self.controller.start_upkeep(spec, origin=ORIGIN)
        except (JobError, ValueError) as exc:
            log.warning("scheduled upkeep not started: %s", exc)
            return
        # noted as started: a failing upkeep is tried again after the same period, not at once
        if name == "forget":
            self._remember(last_forget=now)
        else:
            self._remember(last_check=now, check_next=n % t + 1)
        log.info("scheduled upkeep started: %s (job %s)", name, job_id)

    # ------------------------------------------------- the job that runs now
    def _manage_current(self, now: float) -> None:
        current = self.controller.current()
        if current is None:
            return
        job_id = str(current.id)
        reasons: dict[str, str] = {}
        if self._sleeping:
            reasons["sleep"] = "the computer is going to sleep"
        scheduled = current.origin == ORIGIN
        if scheduled:
            conditions = self.hub.current
            reasons.update(blocking_reasons(now, self.history, conditions, self.plan))
            if current.kind is JobKind.UPKEEP:  # upkeep runs only on AC and unmetered networks
                if conditions.on_battery:
                    reasons["battery"] = reasons.get("battery", "on battery")
                if conditions.metered:
                    reasons["metered"] = "on a metered network"
        words = "; ".join(reasons.values())
        new = set(reasons) - self._overridden.get(job_id, frozenset())
        if current.state is JobState.RUNNING and new and job_id not in self._held:
            try:
                self.controller.pause(job_id)
            except JobError as exc:
                log.info("could not pause job %s: %s", job_id, exc)
                return
            self._held[job_id] = (frozenset(reasons), words)
            log.info("%s paused: %s", current.kind.value, words)
        elif current.state is JobState.PAUSED and job_id in self._held:
            if not reasons:
                del self._held[job_id]
                self._overridden.pop(job_id, None)
                log.info("%s resumed: nothing holds it any more", current.kind.value)
                self._resuming = job_id
                try:
                    self.controller.resume(job_id)
                finally:
                    self._resuming = None
            else:
                self._held[job_id] = (frozenset(reasons), words)
        if (
            scheduled
            and current.kind is JobKind.BACKUP
            and job_id not in self._overran
            and job_id in self._started
            and overran(self._started[job_id], now, self.plan)
        ):
            self._overran.add(job_id)
            minutes = self.plan.schedule.max_runtime_minutes
            log.info("scheduled backup %s reached the maximum runtime of %d min", job_id, minutes)
            self.controller.stop_job(
                job_id,
                f"stopped after the maximum runtime of {minutes} min; "
                "the next backup continues from here",
            )

    def _want_inhibit(self) -> None:
        current = self.controller.current()
        # before sleep the lock stays until the job has paused (and indexed what
        # it stored): only then is it no longer RUNNING
        if current is None or current.state is not JobState.RUNNING:
            self.hub.want_inhibit(Inhibit.NONE)
        elif self.plan.schedule.keep_awake:
            self.hub.want_inhibit(Inhibit.BLOCK)
        else:
            self.hub.want_inhibit(Inhibit.DELAY)

    # ---------------------------------------------------------- sleep/wake
    async def before_sleep(self) -> None:
        """The machine is about to sleep: pause the running job and wait (a few
        seconds at most) until the pause took effect, which indexes what it stored."""
        self._sleeping = True
        self.tick()
        current = self.controller.current()
        if current is None or str(current.id) not in self._held:
            return
        deadline = time.monotonic() + SLEEP_READY_TIMEOUT
        while time.monotonic() < deadline:
            view = self.controller.current()
            if view is None or view.state is not JobState.RUNNING:
                return
            await asyncio.sleep(0.02)
        log.warning("the running job did not pause before sleep")

    def after_wake(self) -> None:
        """The machine woke up: resume what sleep paused, let a missed backup
        run once after the wake delay."""
        self._woke(self._wall())
        self.tick()

    def _woke(self, now: float) -> None:
        self._sleeping = False
        self._woke_at = now
        self._last_reading = (now, self._mono())

    # ------------------------------------------------------------- events
    def _on_conditions(self, _conditions: Conditions) -> None:
        self.tick()

    def _on_event(self, event: BusEvent) -> None:
        if not isinstance(event, JobChanged):
            return
        job_id = str(event.job_id)
        if event.new is JobState.RUNNING and event.old is JobState.QUEUED:
            self._started[job_id] = self._wall()
        if event.old is JobState.PAUSED and event.new is JobState.RUNNING:
            held = self._held.pop(job_id, None)
            if held is not None and self._resuming != job_id:
                # the scheduler paused it and someone resumed it: that wins over
                # the reasons there were; only a new reason pauses it again
                self._overridden[job_id] = held[0]
                log.info("job %s resumed by hand while %s", job_id, held[1])
        self._want_inhibit()
        if event.new not in TERMINAL:
            self._status = None
            return
        # the job's error is set right after this event: look at it a moment later
        asyncio.get_running_loop().call_soon(self._job_ended, job_id, event)
        self._poke.set()  # the next job may be due; let the timer look at once

    def _job_ended(self, job_id: str, event: JobChanged) -> None:
        started = self._started.pop(job_id, None)
        self._held.pop(job_id, None)
        self._overridden.pop(job_id, None)
        overran_ = job_id in self._overran
        self._overran.discard(job_id)
        if event.kind is not JobKind.BACKUP:
            return
        try:
            view = self.controller.job(job_id)
        except JobError:
            return
        if not isinstance(view.spec, BackupSpec) or view.spec.paths is not None:
            return  # a backup of other paths is not the configured backup
        when = started if started is not None else self._wall()
        if event.new is JobState.COMPLETED:
            self._remember(last_success=when, failures=0, last_error=None)
        elif view.origin == ORIGIN:
            if overran_:
                self._remember(last_stop=when)
            else:
                self._remember(
                    failures=self.history.failures + 1,
                    last_error=view.error,
                )
                log.info(
                    "scheduled backup failed (%d in a row): %s", self.history.failures, view.error
                )

    # ------------------------------------------------------------- plumbing
    def _remember(self, **changes: object) -> None:
        new = dataclasses.replace(self.history, **changes)  # type: ignore[arg-type]
        if new != self.history:
            self.history = new
            self._status = None
            save_history(self._state_file, new)

    def _make_status(self, decision: Decision) -> ScheduleStatus:
        h = self.history
        now = self._wall()
        current = self.controller.current()
        holding = self._held.get(str(current.id)) if current is not None else None
        held = holding[1] if holding is not None else None
        return ScheduleStatus(
            verdict=decision.verdict,
            reason=decision.reason,
            next_backup=decision.next_backup,
            last_success=h.last_success,
            paused_until=h.paused_until if h.paused(now) else None,
            paused_forever=h.paused_forever,
            conditions=self.hub.current,
            failures=h.failures,
            last_error=h.last_error,
            stale=stale(h, now, self.plan),
            held=held,
        )

    def _publish(self, decision: Decision) -> None:
        self._decision = decision
        status = self._make_status(decision)
        if status != self._status:
            self._status = status
            self.controller.bus.publish(ScheduleChanged(status))


def _rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _state_word(s: ScheduleStatus) -> str:
    if s.paused:
        return "paused"
    if s.held:
        return "holding"
    if s.failures:
        return "failing"
    return {
        Verdict.OFF: "manual",
        Verdict.SKIP: "skipping",
        Verdict.RUN: "running",
        Verdict.WAIT: "waiting",
    }[s.verdict]
