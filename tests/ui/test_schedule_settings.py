"""The settings window's Schedule tab: [backup] interval_minutes, [schedule] and
[upkeep] through the form and back, saved by the loader's rules, used at once."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from PySide6.QtCore import QTime
from uisupport import make_config

from desktop_agent.app import Agent
from desktop_agent.config import Config, load, save
from desktop_agent.jobs.schedule import Verdict
from desktop_agent.jobs.schedulestate import state_path
from desktop_agent.ui.bridge import Bridge
from desktop_agent.ui.model import clock
from desktop_agent.ui.schedule_settings import DAILY, EVERY_HOURS, EVERY_MINUTES, MANUAL
from desktop_agent.ui.settings import SettingsDialog


@pytest.fixture(autouse=True, scope="module")
def collect_while_qt_lives() -> Iterator[None]:
    """Collect this module's garbage while the QApplication exists (see test_settings)."""
    yield
    gc.collect()


def until(run: Callable[..., Any], pred: Callable[[], bool], timeout: float = 60) -> None:
    """Let the qasync loop (and so Qt) run until ``pred()`` holds."""

    async def wait() -> None:
        while not pred():
            await asyncio.sleep(0.01)

    run(wait(), timeout)


def open_dialog(bridge: Bridge, qtbot: Any) -> SettingsDialog:
    dlg = SettingsDialog(bridge)
    qtbot.addWidget(dlg)
    dlg.show()
    dlg.tabs.setCurrentWidget(dlg.schedule)
    return dlg


def apply(run: Callable[..., Any], dlg: SettingsDialog) -> None:
    dlg.apply_button.click()
    until(run, lambda: dlg.task is not None and dlg.task.done())
    assert dlg.error.isHidden(), dlg.error.text()


def laptop(config: Config) -> Config:
    """Every schedule and upkeep value away from its default."""
    return replace(
        config,
        backup=replace(config.backup, interval_minutes=120),
        schedule=replace(
            config.schedule,
            random_delay_minutes=7,
            skip_on_battery=True,
            min_battery_percent=30,
            skip_on_metered=False,
            quiet_hours="22:30-06:15",
            max_runtime_minutes=90,
            keep_awake=True,
            stale_after_days=5,
            wake_delay_seconds=30,  # not in the form: kept
        ),
        upkeep=replace(
            config.upkeep,
            forget=True,
            keep_last=3,
            keep_hourly=24,  # not in the form: kept
            keep_daily=5,
            keep_weekly=2,
            keep_monthly=6,
            keep_yearly=1,
            check_subsets=16,
        ),
    )


def test_values_round_trip_through_the_form(agent, run, qtbot):
    bridge = Bridge(agent)
    save(laptop(agent.config))
    loaded = load(agent.config.path)
    bridge.apply_config(loaded)
    dlg = open_dialog(bridge, qtbot)
    tab = dlg.schedule
    try:
        # the form shows the file...
        assert tab.frequency.mode.currentIndex() == EVERY_HOURS
        assert tab.frequency.every.text() == "2 hours" and not tab.frequency.at.isVisible()
        assert tab.random_delay.value() == 7
        assert tab.skip_on_battery.isChecked() and not tab.min_battery.isEnabled()
        assert tab.min_battery.value() == 30
        assert not tab.skip_on_metered.isChecked()
        assert tab.quiet.isChecked()
        assert (tab.quiet_start.time(), tab.quiet_end.time()) == (QTime(22, 30), QTime(6, 15))
        assert tab.max_runtime.value() == 90 and tab.keep_awake.isChecked()
        assert tab.stale_days.value() == 5
        assert tab.forget.isChecked()
        assert {rule: spin.value() for rule, spin in tab.keep.items()} == {
            "last": 3,
            "daily": 5,
            "weekly": 2,
            "monthly": 6,
            "yearly": 1,
        }
        assert tab.check_subsets.text() == "1/16"
        # ...and gives back exactly what it was filled from
        assert not dlg.edited() and dlg.build() == loaded

        # the other way round: everything off, by clicks
        tab.frequency.mode.setCurrentIndex(DAILY)
        tab.frequency.at.setTime(QTime(3, 30))
        tab.random_delay.setValue(0)
        tab.skip_on_battery.setChecked(False)
        assert tab.min_battery.isEnabled()
        tab.min_battery.setValue(0)
        tab.skip_on_metered.setChecked(True)
        tab.quiet.setChecked(False)
        tab.max_runtime.setValue(0)
        tab.keep_awake.setChecked(False)
        tab.stale_days.setValue(0)
        tab.forget.setChecked(False)
        assert not tab.keep["daily"].isEnabled()
        tab.check_subsets.setValue(0)
        assert tab.check_subsets.text() == "off" and tab.max_runtime.text() == "no limit"
        assert dlg.edited()
        apply(run, dlg)

        saved = load(agent.config.path)
        assert saved.backup.interval_minutes == 120  # kept: "Daily at" does not use it
        assert saved.schedule == replace(
            loaded.schedule,
            daily_at="03:30",
            random_delay_minutes=0,
            skip_on_battery=False,
            min_battery_percent=0,
            skip_on_metered=True,
            quiet_hours="",
            max_runtime_minutes=0,
            keep_awake=False,
            stale_after_days=0,
        )
        assert saved.upkeep == replace(loaded.upkeep, forget=False, check_subsets=0)
        assert agent.config == saved  # in use at once
        assert bridge.model.stale_after == 0
        assert not dlg.edited() and dlg.build() == saved  # the form shows what is in use
        assert tab.frequency.mode.currentIndex() == DAILY and tab.frequency.at.isVisible()

        # back to an interval and to the file's first values, by clicks again
        tab.frequency.mode.setCurrentIndex(EVERY_MINUTES)
        tab.frequency.every.setValue(45)
        tab.quiet.setChecked(True)
        tab.quiet_start.setTime(QTime(22, 30))
        tab.quiet_end.setTime(QTime(6, 15))
        apply(run, dlg)
        again = load(agent.config.path)
        assert (again.backup.interval_minutes, again.schedule.daily_at) == (45, "")
        assert again.schedule.quiet_hours == "22:30-06:15"
    finally:
        bridge.close()


def test_how_often_in_minutes_hours_a_day_or_by_hand(agent, qtbot):
    bridge = Bridge(agent)
    dlg = open_dialog(bridge, qtbot)
    frequency = dlg.schedule.frequency
    try:
        assert [frequency.mode.itemText(i) for i in range(frequency.mode.count())] == [
            "Every N minutes",
            "Every N hours",
            "Daily at a set time",
            "Only when I start it",
        ]
        frequency.set_values(60, "")
        assert frequency.mode.currentIndex() == EVERY_HOURS
        assert frequency.every.text() == "1 hour"  # one hour, two hours
        frequency.set_values(90, "")
        assert frequency.mode.currentIndex() == EVERY_MINUTES
        assert frequency.every.text() == "90 minutes"
        frequency.mode.setCurrentIndex(EVERY_HOURS)  # the same interval in hours, rounded
        assert frequency.every.text() == "2 hours"
        assert frequency.values(90, "") == (120, "")
        frequency.mode.setCurrentIndex(EVERY_MINUTES)
        assert frequency.values(90, "") == (120, "")
        assert frequency.every.maximum() == 7 * 24 * 60
        # a daily time written another way stays as written when unchanged
        frequency.set_values(30, "7:05")
        assert frequency.mode.currentIndex() == DAILY
        assert frequency.at.time() == QTime(7, 5)
        assert frequency.values(30, "7:05") == (30, "7:05")
        frequency.at.setTime(QTime(7, 6))
        assert frequency.values(30, "7:05") == (30, "07:06")
        frequency.mode.setCurrentIndex(MANUAL)
        assert not frequency.every.isVisible() and not frequency.at.isVisible()
        assert frequency.values(30, "7:05") == (0, "")
    finally:
        bridge.close()


def test_impossible_values_are_refused_inline(agent, run, qtbot):
    bridge = Bridge(agent)
    before = bridge.config
    dlg = open_dialog(bridge, qtbot)
    tab = dlg.schedule
    try:
        tab.quiet.setChecked(True)
        tab.quiet_start.setTime(QTime(8, 0))
        tab.quiet_end.setTime(QTime(8, 0))
        dlg.apply_button.click()
        assert dlg.task is None and not dlg.error.isHidden()
        assert "[schedule] quiet_hours" in dlg.error.text()
        assert "starts and ends at the same time" in dlg.error.text()

        tab.quiet.setChecked(False)
        tab.forget.setChecked(True)
        for spin in tab.keep.values():
            spin.setValue(0)
        dlg.apply_button.click()
        assert dlg.task is None
        assert "[upkeep] forget" in dlg.error.text()
        assert not before.path.exists() and bridge.config is before
    finally:
        bridge.close()


def test_the_tray_follows_a_new_schedule_at_once(env, run, qtbot, tmp_path, source):
    config = make_config(tmp_path, [source])
    config = replace(config, upkeep=replace(config.upkeep, check_subsets=0))
    last = time.time() - 600
    state_path(config).write_text(json.dumps({"last_success": last}))
    agent = Agent(config, host="127.0.0.1", port=0, providers=False)
    bridge = Bridge(agent)
    run(agent.start())
    try:
        bridge.sync_schedule()
        schedule = bridge.model.schedule
        assert schedule is not None and schedule.verdict is Verdict.OFF
        assert bridge.model.schedule_line() == "Backups run only when you start them"
        dlg = open_dialog(bridge, qtbot)
        dlg.schedule.frequency.mode.setCurrentIndex(EVERY_HOURS)
        dlg.schedule.frequency.every.setValue(1)
        dlg.schedule.random_delay.setValue(0)
        apply(run, dlg)
        # no waiting for the scheduler's next look: the tray says it now
        assert bridge.model.schedule_line() == f"Next backup at {clock(last + 3600, time.time())}"
    finally:
        bridge.close()
        run(agent.stop())
