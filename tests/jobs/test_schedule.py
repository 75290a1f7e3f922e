"""The scheduler's decisions (jobs/schedule.py) through simulated time: no waiting.

Each test builds the history, the moment and the plan the pure functions
decide from, and walks a simulated clock through laptop days: sleep and
wake, clock jumps, missed slots, failures, quiet hours, pauses.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from desktop_agent.config import ScheduleConfig, UpkeepConfig
from desktop_agent.jobs.conditions import Conditions
from desktop_agent.jobs.schedule import (
    History,
    Moment,
    Plan,
    Verdict,
    backoff,
    blocking_reasons,
    clock_jumped,
    decide,
    in_quiet_hours,
    jitter,
    next_slot,
    overran,
    stale,
    upkeep_due,
)

MIN = 60.0
NOTHING_KNOWN = Conditions()
HOUR = 3600.0
DAY = 86400.0
T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC).timestamp()  # a Monday, 09:00 UTC


def plan(interval: int = 60, **schedule: object) -> Plan:
    return Plan(
        interval_minutes=interval,
        schedule=ScheduleConfig(**schedule),  # type: ignore[arg-type]
        tz=UTC,
        seed="laptop-1",
    )


def walk(
    history: History,
    p: Plan,
    start: float,
    end: float,
    *,
    step: float = MIN,
    woke_at: float | None = None,
    conditions: Conditions = NOTHING_KNOWN,
    outcome: str = "success",
    asleep: tuple[float, float] | None = None,
) -> tuple[list[float], History]:
    """Decide once per ``step`` from ``start`` to ``end``; a RUN is a backup that
    takes no time and ends with ``outcome``. While ``asleep`` nothing is decided;
    the wake sets ``woke_at``. Returns the times of the runs and the history."""
    runs: list[float] = []
    now = start
    while now < end:
        if asleep is not None and asleep[0] <= now < asleep[1]:
            now = asleep[1]
            woke_at = now
            continue
        d = decide(history, Moment(now, conditions, woke_at), p)
        if d.verdict is Verdict.RUN:
            runs.append(now)
            woke_at = None
            if outcome == "success":
                history = replace(history, last_success=now, last_attempt=now, failures=0)
            else:
                history = replace(history, last_attempt=now, failures=history.failures + 1)
        now += step
    return runs, history


def test_the_first_backup_is_due_at_once_and_manual_means_never() -> None:
    assert decide(History(), Moment(T0), plan()).verdict is Verdict.RUN
    off = decide(History(), Moment(T0), plan(interval=0))
    assert off.verdict is Verdict.OFF and off.next_backup is None
    # a daily time alone is a schedule too
    assert not plan(interval=0, daily_at="12:00").manual


def test_interval_slots_with_a_random_delay_that_stays_put() -> None:
    p = plan(random_delay_minutes=5)
    h = History(last_success=T0)
    d = decide(h, Moment(T0 + 59 * MIN), p)
    assert d.verdict is Verdict.WAIT
    assert d.next_backup is not None and T0 + HOUR <= d.next_backup <= T0 + HOUR + 5 * MIN
    # the same slot always gets the same delay: the decision does not flicker
    assert all(
        decide(h, Moment(T0 + 59 * MIN + s), p).next_backup == d.next_backup for s in range(30)
    )
    assert decide(h, Moment(d.next_backup), p).verdict is Verdict.RUN
    assert decide(h, Moment(d.next_backup - 1), p).verdict is Verdict.WAIT
    # machines differ: over 30 seeds the delays spread within 0..5 min
    delays = {jitter(T0 + HOUR, replace(p, seed=f"host{i}")) for i in range(30)}
    assert len(delays) > 10 and all(0 <= x <= 5 * MIN for x in delays)
    assert jitter(T0, plan(random_delay_minutes=0)) == 0


def test_slots_missed_while_asleep_run_once_after_the_wake_delay() -> None:
    p = plan(interval=60, random_delay_minutes=0, wake_delay_seconds=90)
    h = History(last_success=T0)
    # asleep from 09:10 to 14:10: five hourly slots pass
    runs, _ = walk(
        h,
        p,
        T0 + 10 * MIN,
        T0 + 7 * HOUR,
        step=30,
        asleep=(T0 + 10 * MIN, T0 + 5 * HOUR + 10 * MIN),
    )
    wake = T0 + 5 * HOUR + 10 * MIN
    # one catch-up 90 s after the wake, then hourly again from that run
    assert runs[0] == wake + 90
    assert runs[1:] == [wake + 90 + HOUR]
    # days off: still one run
    runs, _ = walk(h, p, T0 + 3 * DAY, T0 + 3 * DAY + 10 * MIN, step=30, woke_at=T0 + 3 * DAY)
    assert runs == [T0 + 3 * DAY + 90]


def test_a_second_wake_signal_does_not_run_twice() -> None:
    """logind's PrepareForSleep(false) and the clock jump both report the same wake."""
    p = plan(random_delay_minutes=0, wake_delay_seconds=60)
    wake = T0 + 5 * HOUR
    h = History(last_success=T0)
    assert decide(h, Moment(wake + 60, woke_at=wake), p).verdict is Verdict.RUN
    h = replace(h, last_success=wake + 60, last_attempt=wake + 60)
    for second_wake in (wake + 61, wake + 200, wake + 900):
        d = decide(h, Moment(second_wake + 60, woke_at=second_wake), p)
        assert d.verdict is Verdict.WAIT and d.next_backup == wake + 60 + HOUR


def test_a_clock_jump_counts_as_a_wake() -> None:
    # three hours of suspend: the monotonic clock stood still
    assert clock_jumped(T0, 100.0, T0 + 3 * HOUR + 30, 130.0)
    # the clock set back by two hours
    assert clock_jumped(T0, 100.0, T0 - 2 * HOUR, 130.0)
    # an ordinary tick, with a little NTP slew
    assert not clock_jumped(T0, 100.0, T0 + 30.5, 130.0)


def test_daily_at_a_time_catches_up_once_and_keeps_to_the_clock() -> None:
    p = plan(interval=0, daily_at="12:00", random_delay_minutes=0, wake_delay_seconds=0)
    yesterday_noon = T0 - 21 * HOUR  # Sunday 12:00
    h = History(last_success=yesterday_noon + 2 * MIN)
    assert next_slot(h.last_success, T0, p) == T0 + 3 * HOUR  # Monday 12:00
    # the laptop was off over noon, Monday to Wednesday; it starts Wednesday 18:00
    runs, h2 = walk(h, p, T0 + 2 * DAY + 9 * HOUR, T0 + 4 * DAY, woke_at=T0 + 2 * DAY + 9 * HOUR)
    assert runs == [T0 + 2 * DAY + 9 * HOUR, T0 + 3 * DAY + 3 * HOUR]  # then Thursday 12:00
    assert h2.last_success == T0 + 3 * DAY + 3 * HOUR


def test_daily_slots_across_daylight_saving_changes() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    p = replace(plan(interval=0, daily_at="02:30", random_delay_minutes=0), tz=berlin)
    t = datetime(2026, 3, 25, 3, 0, tzinfo=berlin).timestamp()
    slots = []
    for _ in range(10):  # through the spring change (29 March: 02:00-03:00 does not exist)
        t = next_slot(t, t, p)  # type: ignore[assignment]
        slots.append(datetime.fromtimestamp(t, berlin))
    assert [s.day for s in slots] == list(range(26, 32)) + [1, 2, 3, 4]
    assert all(b > a for a, b in zip(slots, slots[1:], strict=False))
    assert {(s.hour, s.minute) for s in slots if s.day != 29} == {(2, 30)}
    t = datetime(2026, 10, 22, 3, 0, tzinfo=berlin).timestamp()
    autumn = []
    for _ in range(6):  # 25 October: 02:30 happens twice; one run
        t = next_slot(t, t, p)  # type: ignore[assignment]
        autumn.append(datetime.fromtimestamp(t, berlin))
    assert [s.day for s in autumn] == [23, 24, 25, 26, 27, 28]


def test_failures_back_off_exponentially_up_to_the_cap() -> None:
    p = plan(interval=60, random_delay_minutes=0, max_retry_minutes=240)
    assert [backoff(n, p) / MIN for n in range(0, 9)] == [0, 5, 10, 20, 40, 80, 160, 240, 240]
    assert backoff(10**6, p) == 240 * MIN
    # walking a day of failures: attempts at the backoff intervals, not every minute
    h = History(last_success=T0 - DAY)
    runs, h2 = walk(h, p, T0, T0 + 10 * HOUR, outcome="failure")
    gaps = [round((b - a) / MIN) for a, b in zip(runs, runs[1:], strict=False)]
    assert gaps[:7] == [5, 10, 20, 40, 80, 160, 240]
    assert h2.failures == len(runs)
    d = decide(h2, Moment(runs[-1] + MIN), p)
    assert d.verdict is Verdict.WAIT and d.reason.startswith("retrying at")


@pytest.mark.parametrize(
    ("conditions", "settings", "reason"),
    [
        (Conditions(on_battery=True, battery_percent=80), {"skip_on_battery": True}, "on battery"),
        (
            Conditions(on_battery=True, battery_percent=15),
            {"min_battery_percent": 20},
            "battery at 15 % (below 20 %)",
        ),
        (Conditions(metered=True), {}, "on a metered network"),
    ],
)
def test_conditions_skip_a_due_backup_with_a_reason(
    conditions: Conditions, settings: dict[str, object], reason: str
) -> None:
    p = plan(**settings)
    d = decide(History(), Moment(T0, conditions), p)
    assert d.verdict is Verdict.SKIP and d.reason == reason
    assert list(blocking_reasons(T0, History(), conditions, p).values()) == [reason]


@pytest.mark.parametrize(
    ("conditions", "settings"),
    [
        (Conditions(on_battery=True, battery_percent=50), {}),  # above the level
        (Conditions(on_battery=False, battery_percent=5), {"skip_on_battery": True}),  # on AC
        (Conditions(metered=True), {"skip_on_metered": False}),
        (Conditions(), {"skip_on_battery": True}),  # nothing known: nothing stops it
    ],
)
def test_conditions_that_do_not_stop_a_backup(
    conditions: Conditions, settings: dict[str, object]
) -> None:
    assert decide(History(), Moment(T0, conditions), plan(**settings)).verdict is Verdict.RUN


def test_quiet_hours_across_midnight() -> None:
    p = plan(quiet_hours="22:00-07:00", random_delay_minutes=0)
    monday = T0 - 9 * HOUR
    at = {h: monday + h * HOUR for h in range(0, 48)}
    assert in_quiet_hours(at[23] + 30 * MIN, p) == at[31]  # Tuesday 07:00
    assert in_quiet_hours(at[6] + 59 * MIN, p) == at[7]
    assert in_quiet_hours(at[7], p) is None and in_quiet_hours(at[21] + 59 * MIN, p) is None
    d = decide(History(), Moment(at[23]), p)
    assert d.verdict is Verdict.SKIP and d.reason.startswith("quiet hours until")
    assert d.recheck == at[31]
    # a night walk: the backup due at 23:00 runs at 07:00, once
    runs, _ = walk(History(last_success=at[22]), p, at[22], at[32])
    assert runs == [at[31]]


def test_a_pause_for_a_while_and_until_resumed() -> None:
    p = plan(random_delay_minutes=0)
    h = History(paused_until=T0 + HOUR)
    d = decide(h, Moment(T0), p)
    assert d.verdict is Verdict.SKIP and d.recheck == T0 + HOUR
    assert decide(h, Moment(T0 + HOUR), p).verdict is Verdict.RUN
    forever = decide(History(paused_forever=True), Moment(T0 + 30 * DAY), p)
    assert forever.verdict is Verdict.SKIP and forever.next_backup is None
    assert forever.reason == "paused until you resume"
    # not due yet while paused: the next backup is expected when the pause ends
    later = decide(History(last_success=T0, paused_until=T0 + 3 * HOUR), Moment(T0 + MIN), p)
    assert later.verdict is Verdict.WAIT and later.next_backup == T0 + 3 * HOUR


def test_after_a_wake_a_server_repository_waits_for_the_network() -> None:
    p = replace(plan(wake_delay_seconds=30), needs_network=True)
    wake = T0
    down = Moment(T0 + 60, Conditions(network_up=False), woke_at=wake)
    assert decide(History(), down, p).reason == "waiting for the network"
    up = replace(down, conditions=Conditions(network_up=True))
    assert decide(History(), up, p).verdict is Verdict.RUN
    # a local repository does not care
    assert decide(History(), down, replace(p, needs_network=False)).verdict is Verdict.RUN
    # and nothing starts while a job runs, or before a repository exists
    assert decide(History(), replace(up, busy=True), p).verdict is Verdict.WAIT
    assert decide(History(), replace(up, repository=False), p).verdict is Verdict.WAIT


def test_maximum_runtime_and_the_run_it_stopped() -> None:
    p = plan(max_runtime_minutes=90, random_delay_minutes=0)
    assert not overran(T0, T0 + 89 * MIN, p) and overran(T0, T0 + 90 * MIN, p)
    assert not overran(T0, T0 + 30 * DAY, plan())
    # a stopped run counts as its slot's run: the next one continues at the next slot
    h = History(last_success=T0 - DAY, last_stop=T0, last_attempt=T0)
    d = decide(h, Moment(T0 + 30 * MIN), p)
    assert d.verdict is Verdict.WAIT and d.next_backup == T0 + HOUR
    assert decide(h, Moment(T0 + HOUR), p).verdict is Verdict.RUN


def test_stale_backups() -> None:
    p = plan(stale_after_days=3)
    assert not stale(History(), T0, p)
    assert not stale(History(last_success=T0 - 3 * DAY + 1), T0, p)
    assert stale(History(last_success=T0 - 3 * DAY - 1), T0, p)
    assert not stale(History(last_success=0.0), T0, plan(stale_after_days=0))


def test_upkeep_on_ac_unmetered_at_most_daily_and_weekly() -> None:
    p = replace(plan(), upkeep=UpkeepConfig(forget=True, check_subsets=4))
    h = History(last_success=T0)
    assert upkeep_due(h, Moment(T0 + MIN), p) == ("forget", 0, 0)
    for bad in (
        Moment(T0 + MIN, Conditions(on_battery=True)),
        Moment(T0 + MIN, Conditions(metered=True)),
        Moment(T0 + MIN, busy=True),
    ):
        assert upkeep_due(h, bad, p) is None
    assert upkeep_due(History(), Moment(T0), p) is None  # nothing backed up yet
    assert upkeep_due(h, Moment(T0 + MIN, woke_at=T0 + 30), p) is None  # settling after a wake
    offline = Moment(T0 + MIN, Conditions(network_up=False))
    assert upkeep_due(h, offline, replace(p, needs_network=True)) is None
    assert upkeep_due(h, offline, p) == ("forget", 0, 0)  # a local repository needs no network
    quiet = replace(p, schedule=ScheduleConfig(quiet_hours="08:00-10:00"))
    assert upkeep_due(h, Moment(T0 + MIN), quiet) is None
    # forgotten today: not again until a day later, and only after a newer backup
    h = replace(h, last_forget=T0 + MIN)
    assert upkeep_due(h, Moment(T0 + 2 * MIN), p) == ("check", 1, 4)
    h = replace(h, last_check=T0 + 2 * MIN, check_next=2)
    assert upkeep_due(h, Moment(T0 + 23 * HOUR), p) is None
    assert upkeep_due(h, Moment(T0 + 25 * HOUR), p) is None  # no backup since
    h = replace(h, last_success=T0 + 24 * HOUR)
    assert upkeep_due(h, Moment(T0 + 25 * HOUR), p) == ("forget", 0, 0)
    # the weekly check rotates n through 1..t
    h = replace(h, last_forget=T0 + 25 * HOUR)
    seen = []
    for week in range(1, 9):
        now = T0 + week * 7 * DAY + 3 * MIN
        task = upkeep_due(replace(h, last_success=now, last_forget=now), Moment(now), p)
        assert task is not None and task[0] == "check"
        seen.append(task[1])
        h = replace(h, last_check=now, check_next=task[1] % task[2] + 1)
    assert seen == [2, 3, 4, 1, 2, 3, 4, 1]
    off = replace(p, upkeep=UpkeepConfig(forget=False, check_subsets=0))
    assert upkeep_due(History(last_success=T0), Moment(T0 + MIN), off) is None


def test_timestamps_are_compared_in_local_time() -> None:
    """daily_at follows the machine's zone, not UTC."""
    tokyo = ZoneInfo("Asia/Tokyo")
    p = replace(plan(interval=0, daily_at="09:00", random_delay_minutes=0), tz=tokyo)
    start = datetime(2026, 12, 7, 10, 0, tzinfo=tokyo).timestamp()
    slot = next_slot(start, start, p)
    assert slot is not None
    assert datetime.fromtimestamp(slot, tokyo) == datetime(2026, 12, 8, 9, 0, tzinfo=tokyo)
    assert slot - start == timedelta(hours=23).total_seconds()


def test_a_broken_or_hostile_state_file_is_ignored(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    from desktop_agent.jobs.schedulestate import load_history, save_history

    path = tmp_path / "c-schedule.json"
    save_history(path, History(last_success=T0, failures=2, paused_forever=True))
    assert load_history(path) == History(last_success=T0, failures=2, paused_forever=True)
    for bad in (b"{", b"[]", b'{"failures": -1}', b'{"last_success": "soon"}', b"x" * 70_000):
        path.write_bytes(bad)
        assert load_history(path) == History()
    path.unlink()
    os.mkfifo(path)  # reading it would hang
    assert load_history(path) == History()
