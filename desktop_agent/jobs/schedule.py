"""When to back up: the scheduler's decisions as pure functions.

Everything here is a function of its arguments: the wall-clock time, what
happened so far (:class:`History`), the configuration
(:class:`~desktop_agent.config.ScheduleConfig`, ``interval_minutes``), the
conditions the providers reported (:class:`~.conditions.Conditions`) and
the situation of the moment (:class:`Moment`). No Qt, no OS calls, no
clock: the :mod:`.scheduler` drives them with a timer, the tests with
simulated time.

The rules (docs/scheduling.md):

* A backup is *due* at its slot: ``interval_minutes`` after the start of the
  last successful backup, or the first ``daily_at`` time after it; with no
  backup at all, at once. The slot moves by a random delay derived from
  the slot itself (the same slot always gets the same delay). Because the
  slot follows the last success, a laptop that slept through five slots
  runs once, not five times.
* After a failed scheduled attempt the next one waits 5, 10, 20... minutes,
  capped at ``max_retry_minutes``.
* After a wake (or a wall-clock jump, which counts the same) a due backup
  waits ``wake_delay_seconds``, and for the network when the repository is
  on a server.
* A due backup that a condition stops (paused for a while, quiet hours, on
  battery, low battery, metered network) is *skipped* with that reason,
  recorded apart from failures. The same conditions pause a scheduled job
  that is running (:func:`blocking_reasons`).
* Upkeep (:func:`upkeep_due`) runs only on AC, unmetered, outside quiet
  hours and when no job runs: forget + prune at most daily after a new
  successful backup, a check of one data subset weekly.
"""

from __future__ import annotations

import enum
import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from desktop_agent.config import ScheduleConfig, UpkeepConfig

from .conditions import Conditions

__all__ = [
    "BACKOFF_BASE",
    "CHECK_EVERY",
    "FORGET_EVERY",
    "Decision",
    "History",
    "Moment",
    "Plan",
    "ScheduleStatus",
    "Verdict",
    "backoff",
    "blocking_reasons",
    "clock_jumped",
    "decide",
    "in_quiet_hours",
    "jitter",
    "next_slot",
    "overran",
    "stale",
    "upkeep_due",
]

BACKOFF_BASE = 5 * 60.0  # the wait after the first failure; doubles with every further one
FORGET_EVERY = 24 * 3600.0  # forget + prune at most daily
CHECK_EVERY = 7 * 24 * 3600.0  # a data subset checked weekly
JUMP_TOLERANCE = 90.0  # wall clock vs monotonic clock drift that counts as a jump (s)


@dataclass(frozen=True)
class Plan:
    """The schedule part of the configuration, as the decisions need it."""

    interval_minutes: int  # 0: no interval (manual, unless daily_at)
    schedule: ScheduleConfig = ScheduleConfig()
    upkeep: UpkeepConfig = UpkeepConfig()
    needs_network: bool = False  # the repository is on a server
    tz: tzinfo | None = None  # for daily_at and quiet hours; None: the machine's local time
    seed: str = ""  # makes the random delay differ between machines

    @property
    def manual(self) -> bool:
        """No automatic backups at all."""
        return self.interval_minutes <= 0 and self.schedule.daily_minute is None


@dataclass(frozen=True)
class History:
    """What happened so far (kept across restarts by :mod:`.schedulestate`).

    Times are wall-clock seconds. ``last_success`` is the start of the last
    backup of the configured sources that completed; ``last_stop`` the start
    of the last scheduled one stopped by the maximum runtime (it counts as
    that slot's run: the next one continues it at the next slot);
    ``last_attempt`` the start of the last scheduled attempt and
    ``failures`` how many scheduled attempts failed in a row since.
    ``paused_until``: scheduled work held until then; ``paused_forever``:
    until the user resumes.
    """

    last_success: float | None = None
    last_attempt: float | None = None
    failures: int = 0
    last_error: str | None = None
    last_stop: float | None = None
    paused_until: float | None = None
    paused_forever: bool = False
    last_forget: float | None = None
    last_check: float | None = None
    check_next: int = 1  # the subset n of the next weekly check (1..t)

    def paused(self, now: float) -> bool:
        """Whether scheduled work is held at ``now``."""
        return self.paused_forever or (self.paused_until is not None and now < self.paused_until)


@dataclass(frozen=True)
class Moment:
    """The situation the decision is taken in (not kept across restarts)."""

    now: float
    conditions: Conditions = Conditions()
    woke_at: float | None = None  # the last wake or wall-clock jump
    busy: bool = False  # a job runs or waits in the queue
    repository: bool = True  # False: the repository does not exist (yet)


class Verdict(enum.Enum):
    """What the scheduler should do now."""

    RUN = "run"  # start the scheduled backup
    WAIT = "wait"  # not yet: not due, settling after a wake, waiting for the network or a job
    SKIP = "skip"  # due, but a condition stops it (recorded, not a failure)
    OFF = "off"  # no automatic backups configured


@dataclass(frozen=True)
class Decision:
    """A verdict, why, and when to look again.

    ``next_backup`` is when the next scheduled backup is expected (the slot,
    or the end of the backoff; None when manual or paused until the user
    resumes). ``recheck`` is when the decision can change by time alone
    (None: only an event, such as a condition or a job ending, changes it).
    """

    verdict: Verdict
    reason: str
    next_backup: float | None = None
    recheck: float | None = None


@dataclass(frozen=True)
class ScheduleStatus:
    """What the scheduler tells the tray and ``agent:status``.

    ``held`` says why the current job is paused by the scheduler (a
    condition, the pause the user asked for, sleep); None when it is not.
    ``stale``: the last success is older than ``stale_after_days``.
    """

    verdict: Verdict
    reason: str
    next_backup: float | None = None
    last_success: float | None = None
    paused_until: float | None = None
    paused_forever: bool = False
    conditions: Conditions = Conditions()
    failures: int = 0
    last_error: str | None = None
    stale: bool = False
    held: str | None = None

    @property
    def paused(self) -> bool:
        """Whether the user paused scheduled backups (for a while or until resumed)."""
        return self.paused_forever or self.paused_until is not None


# ----------------------------------------------------------------- time bits
def _local(ts: float, tz: tzinfo | None) -> datetime:
    return datetime.fromtimestamp(ts, tz) if tz is not None else datetime.fromtimestamp(ts)


def _minute_of_day(ts: float, tz: tzinfo | None) -> float:
    t = _local(ts, tz)
    return t.hour * 60 + t.minute + t.second / 60


def _at_minute(day: datetime, minute: int) -> float:
    """The timestamp of ``minute`` after midnight on ``day``'s date, in ``day``'s zone."""
    midnight = day.replace(hour=0, minute=0, second=0, microsecond=0)
    local = midnight + timedelta(minutes=minute)
    # datetime arithmetic is wall-clock arithmetic: re-normalize across DST changes
    return local.timestamp()


def clock_text(ts: float, tz: tzinfo | None = None, now: float | None = None) -> str:
    """``ts`` as the user reads it: ``14:05`` on the day of ``now``, ``Tue 14:05`` otherwise."""
    when = _local(ts, tz)
    if now is not None and _local(now, tz).date() == when.date():
        return when.strftime("%H:%M")
    return when.strftime("%a %H:%M")


def jitter(slot: float, plan: Plan) -> float:
    """The random delay (seconds) of the run at ``slot``: a hash of the slot and
    the machine's seed, so that it is the same on every evaluation."""
    span = plan.schedule.random_delay_minutes * 60
    if span <= 0:
        return 0.0
    digest = hashlib.sha256(f"{plan.seed}:{int(slot)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (span + 1) * 1.0


def next_slot(after: float | None, now: float, plan: Plan) -> float | None:
    """When the backup following one started at ``after`` is due (before the
    random delay); None when manual. With nothing before: ``now``."""
    if plan.manual:
        return None
    if after is None:
        return now
    daily = plan.schedule.daily_minute
    if daily is None:
        return after + plan.interval_minutes * 60
    day = _local(after, plan.tz)
    slot = _at_minute(day, daily)
    if slot <= after:
        slot = _at_minute(day + timedelta(days=1), daily)
    return slot


def backoff(failures: int, plan: Plan) -> float:
    """Seconds to wait after ``failures`` failed attempts in a row (0 for none)."""
    if failures <= 0:
        return 0.0
    cap = plan.schedule.max_retry_minutes * 60
    return float(min(cap, BACKOFF_BASE * math.pow(2, min(failures - 1, 30))))


def in_quiet_hours(now: float, plan: Plan) -> float | None:
    """The end of the quiet hours ``now`` is in (a timestamp), or None."""
    window = plan.schedule.quiet_window
    if window is None:
        return None
    start, end = window
    minute = _minute_of_day(now, plan.tz)
    inside = start <= minute < end if start < end else minute >= start or minute < end
    if not inside:
        return None
    today = _local(now, plan.tz)
    stop = _at_minute(today, end)
    if stop <= now:
        stop = _at_minute(today + timedelta(days=1), end)
    return stop


def blocking_reasons(
    now: float, history: History, conditions: Conditions, plan: Plan
) -> dict[str, str]:
    """Why scheduled work may not run at ``now``: condition -> the words for it
    (``{"battery": "battery at 15 % (below 20 %)"}``; empty: nothing stops it).

    The same reasons stop a due backup from starting (a skip) and pause a
    scheduled job that is running; it resumes once there are none. The keys
    ("paused", "quiet", "battery", "metered") name the condition whatever the
    numbers in the words. Unknown conditions (no provider) stop nothing.
    """
    reasons: dict[str, str] = {}
    if history.paused_forever:
        reasons["paused"] = "paused until you resume"
    elif history.paused(now):
        assert history.paused_until is not None
        reasons["paused"] = f"paused until {clock_text(history.paused_until, plan.tz, now)}"
    quiet_end = in_quiet_hours(now, plan)
    if quiet_end is not None:
        reasons["quiet"] = f"quiet hours until {clock_text(quiet_end, plan.tz, now)}"
    s = plan.schedule
    if conditions.on_battery:
        percent = conditions.battery_percent
        if s.skip_on_battery:
            reasons["battery"] = "on battery"
        elif percent is not None and percent < s.min_battery_percent:
            reasons["battery"] = f"battery at {percent:.0f} % (below {s.min_battery_percent} %)"
    if s.skip_on_metered and conditions.metered:
        reasons["metered"] = "on a metered network"
    return reasons


def decide(history: History, moment: Moment, plan: Plan) -> Decision:
    """Whether to start a scheduled backup now, and if not, why and until when."""
    now = moment.now
    if plan.manual:
        return Decision(Verdict.OFF, "backups run only when you start them")
    base = max(
        (t for t in (history.last_success, history.last_stop) if t is not None), default=None
    )
    slot = next_slot(base, now, plan)
    assert slot is not None
    # no backup yet: due at once (a delay drawn from "now" would move with it)
    due = slot + jitter(slot, plan) if base is not None else slot
    retrying = history.failures > 0 and history.last_attempt is not None
    if retrying:
        assert history.last_attempt is not None
        due = max(due, history.last_attempt + backoff(history.failures, plan))
    if now < due:
        if history.paused_forever:
            return Decision(Verdict.WAIT, "paused until you resume", None, due)
        expected = max(due, history.paused_until or 0.0) if history.paused(now) else due
        why = "retrying" if retrying else "next backup"
        text = clock_text(expected, plan.tz, now)
        return Decision(Verdict.WAIT, f"{why} at {text}", expected, due)
    if moment.busy:
        return Decision(Verdict.WAIT, "waiting for the running job", now, None)
    if not moment.repository:
        return Decision(Verdict.WAIT, "no repository yet (create one to start backing up)")
    reasons = blocking_reasons(now, history, moment.conditions, plan)
    if reasons:
        recheck = _recheck_after_skip(now, history, plan)
        return Decision(
            Verdict.SKIP,
            "; ".join(reasons.values()),
            None if history.paused_forever else recheck,
            recheck,
        )
    if moment.woke_at is not None:
        settled = moment.woke_at + plan.schedule.wake_delay_seconds
        if now < settled:
            return Decision(Verdict.WAIT, "the computer just woke up", settled, settled)
    if plan.needs_network and moment.conditions.network_up is False:
        return Decision(Verdict.WAIT, "waiting for the network", now, None)
    return Decision(Verdict.RUN, "due", now, None)


def _recheck_after_skip(now: float, history: History, plan: Plan) -> float | None:
    """A skip caused by time (a pause, quiet hours) ends at a known time."""
    ends = []
    if history.paused(now) and history.paused_until is not None and not history.paused_forever:
        ends.append(history.paused_until)
    quiet_end = in_quiet_hours(now, plan)
    if quiet_end is not None:
        ends.append(quiet_end)
    return min(ends) if ends else None


def overran(started: float, now: float, plan: Plan) -> bool:
    """Whether a scheduled backup started at ``started`` has run past the maximum runtime."""
    limit = plan.schedule.max_runtime_minutes
    return limit > 0 and now - started >= limit * 60


def stale(history: History, now: float, plan: Plan) -> bool:
    """Whether the last successful backup is older than ``stale_after_days``
    (never when that is 0; with no backup at all, never stale: there is
    nothing to be late with, the first run is due at once)."""
    days = plan.schedule.stale_after_days
    if days <= 0 or history.last_success is None:
        return False
    return now - history.last_success > days * 86400


def upkeep_due(history: History, moment: Moment, plan: Plan) -> tuple[str, int, int] | None:
    """The upkeep task to run now, if any: ``("forget", 0, 0)`` or
    ``("check", n, t)`` (read data subset n of t).

    Only when no job runs, nothing holds scheduled work, on AC (or no
    battery known) and not metered (or not known), and only after at least
    one successful backup.
    """
    now = moment.now
    if moment.busy or history.last_success is None:
        return None
    c = moment.conditions
    if c.on_battery or c.metered:
        return None
    if moment.woke_at is not None and now < moment.woke_at + plan.schedule.wake_delay_seconds:
        return None  # just woke: the missed backup goes first
    if plan.needs_network and c.network_up is False:
        return None
    if history.paused(now) or in_quiet_hours(now, plan) is not None:
        return None
    up = plan.upkeep
    if up.forget and (
        history.last_forget is None
        or (
            history.last_success > history.last_forget and now - history.last_forget >= FORGET_EVERY
        )
    ):
        return ("forget", 0, 0)
    if up.check_subsets > 0 and (
        history.last_check is None or now - history.last_check >= CHECK_EVERY
    ):
        n = history.check_next if 1 <= history.check_next <= up.check_subsets else 1
        return ("check", n, up.check_subsets)
    return None


def clock_jumped(prev_wall: float, prev_mono: float, wall: float, mono: float) -> bool:
    """Whether the wall clock moved differently from the monotonic clock
    between two readings: the machine slept (the monotonic clock stops
    during suspend on Linux and macOS) or the clock was set. Either counts
    as a wake."""
    return abs((wall - prev_wall) - (mono - prev_mono)) > JUMP_TOLERANCE
