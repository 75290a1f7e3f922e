"""The settings window's Schedule tab: when the agent backs up on its own, and upkeep.

How often (``[backup] interval_minutes`` or ``[schedule] daily_at``), the
random delay, when not to (on battery, below a battery level, on a metered
network, in quiet hours), the maximum runtime, keeping the computer awake,
the staleness warning, and the ``[upkeep]`` jobs: forget + prune by a keep
policy, a weekly check of a part of the data. The tab only shows and reads
values: :class:`~.settings.SettingsDialog` validates, saves and applies them
with the rest (see docs/architecture.md; the rules are in
:mod:`desktop_agent.jobs.schedule`).
"""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import QTime
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QSpinBox,
    QTimeEdit,
    QVBoxLayout,
    QWidget,
)

from desktop_agent.config import Config
from desktop_agent.config.model import parse_clock, parse_quiet_hours

from .widgets import hint

__all__ = ["Count", "DAILY", "EVERY_HOURS", "EVERY_MINUTES", "Frequency", "MANUAL", "ScheduleTab"]

MAX_INTERVAL = 7 * 24 * 60  # the loader's limit for [backup] interval_minutes
MAX_KEEP = 1_000_000  # the loader's limit for [upkeep] keep_*
MAX_SUBSETS = 256  # restic's read-data-subset groups: a pack id's first byte

# the choices of "How often", in the combo's order
EVERY_MINUTES, EVERY_HOURS, DAILY, MANUAL = range(4)
_CHOICES = ("Every N minutes", "Every N hours", "Daily at a set time", "Only when I start it")


def _time(minute: int) -> QTime:
    return QTime(minute // 60, minute % 60)


def _minute(t: QTime) -> int:
    return t.hour() * 60 + t.minute()


def _clock(t: QTime) -> str:
    return f"{t.hour():02d}:{t.minute():02d}"


def _time_edit() -> QTimeEdit:
    edit = QTimeEdit()
    edit.setDisplayFormat("HH:mm")
    return edit


class Count(QSpinBox):
    """A spin box of a count with its unit, singular or plural as the count is."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._unit = ("", "")
        self.valueChanged.connect(self._suffix)

    def set_unit(self, singular: str, plural: str) -> None:
        """``" hour"``, ``" hours"``."""
        self._unit = (singular, plural)
        self._suffix(self.value())

    def _suffix(self, value: int) -> None:
        self.setSuffix(self._unit[0] if value == 1 else self._unit[1])


def _spin(maximum: int, unit: str = "", zero: str = "", minimum: int = 0) -> Count:
    """A count from ``minimum`` to ``maximum`` in ``unit`` (plural, "minutes");
    ``zero``: the words shown for the minimum."""
    spin = Count()
    spin.setRange(minimum, maximum)
    if unit:
        spin.set_unit(unit.removesuffix("s"), unit)
    if zero:
        spin.setSpecialValueText(zero)
    return spin


class Frequency(QWidget):
    """How often: every N minutes, every N hours, daily at a time, or only by hand."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.mode = QComboBox()
        self.mode.addItems(_CHOICES)
        self.every = _spin(MAX_INTERVAL, minimum=1)
        self.at = _time_edit()
        self._mode = MANUAL
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.mode)
        row.addWidget(self.every, 1)
        row.addWidget(self.at, 1)
        self.mode.currentIndexChanged.connect(self._mode_changed)
        self._show(MANUAL)

    def set_values(self, interval_minutes: int, daily_at: str) -> None:
        """Show ``[backup] interval_minutes`` and ``[schedule] daily_at``."""
        if daily_at.strip():
            mode = DAILY
            self.at.setTime(_time(parse_clock(daily_at)))
        elif interval_minutes <= 0:
            mode = MANUAL
        elif interval_minutes % 60 == 0:
            mode = EVERY_HOURS
        else:
            mode = EVERY_MINUTES
        if not daily_at.strip():
            self.at.setTime(QTime(12, 0))
        self._mode = mode  # set before the combo's signal: no conversion of the number
        self._units(mode)
        if mode == EVERY_HOURS:
            self.every.setValue(interval_minutes // 60)
        elif mode == EVERY_MINUTES:
            self.every.setValue(interval_minutes)
        else:
            self.every.setValue(60)
        self.mode.setCurrentIndex(mode)
        self._show(mode)

    def values(self, interval_minutes: int, daily_at: str) -> tuple[int, str]:
        """``(interval_minutes, daily_at)`` as the form says; the arguments (the
        values the form was filled from) are kept where the form does not
        change them: the interval under "Daily at", a daily time written
        another way (``7:05`` for ``07:05``)."""
        mode = self.mode.currentIndex()
        if mode == DAILY:
            minute = _minute(self.at.time())
            if daily_at.strip() and parse_clock(daily_at) == minute:
                return interval_minutes, daily_at
            return interval_minutes, _clock(self.at.time())
        if mode == MANUAL:
            return 0, ""
        factor = 60 if mode == EVERY_HOURS else 1
        return self.every.value() * factor, ""

    def _units(self, mode: int) -> None:
        if mode == EVERY_HOURS:
            self.every.setRange(1, MAX_INTERVAL // 60)
            self.every.set_unit(" hour", " hours")
        else:
            self.every.setRange(1, MAX_INTERVAL)
            self.every.set_unit(" minute", " minutes")

    def _mode_changed(self, mode: int) -> None:
        old, self._mode = self._mode, mode
        if {old, mode} == {EVERY_MINUTES, EVERY_HOURS}:
            # the same interval in the other unit (rounded to whole hours)
            minutes = self.every.value() * (60 if old == EVERY_HOURS else 1)
            self._units(mode)
            self.every.setValue(max(1, round(minutes / 60)) if mode == EVERY_HOURS else minutes)
        else:
            self._units(mode)
        self._show(mode)

    def _show(self, mode: int) -> None:
        self.every.setVisible(mode in (EVERY_MINUTES, EVERY_HOURS))
        self.at.setVisible(mode == DAILY)


class ScheduleTab(QWidget):
    """The [schedule] and [upkeep] settings (and how often, from [backup])."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.frequency = Frequency()
        self.random_delay = _spin(240, " minutes", "none")
        self.skip_on_battery = QCheckBox("Skip on battery")
        self.min_battery = _spin(100, " %", "any level")
        self.skip_on_metered = QCheckBox("Skip on metered networks")
        self.quiet = QCheckBox("No backups from")
        self.quiet_start = _time_edit()
        self.quiet_end = _time_edit()
        self.max_runtime = _spin(MAX_INTERVAL, " minutes", "no limit")
        self.keep_awake = QCheckBox("Keep the computer awake while backing up")
        self.stale_days = _spin(365, " days", "never")
        self.skip_on_battery.toggled.connect(self._follow)
        self.quiet.toggled.connect(self._follow)

        quiet_row = QHBoxLayout()
        quiet_row.addWidget(self.quiet)
        quiet_row.addWidget(self.quiet_start)
        quiet_row.addWidget(QLabel("to"))
        quiet_row.addWidget(self.quiet_end)
        quiet_row.addStretch(1)

        when = QGroupBox("Scheduled backups")
        form = QFormLayout(when)
        form.addRow("How often:", self.frequency)
        form.addRow("Random delay:", self.random_delay)
        form.addRow("", self.skip_on_battery)
        form.addRow("On battery, skip below:", self.min_battery)
        form.addRow("", self.skip_on_metered)
        form.addRow("Quiet hours:", quiet_row)
        form.addRow("Stop a backup after:", self.max_runtime)
        form.addRow("", hint("What it stored is kept; the next one continues from there."))
        form.addRow("", self.keep_awake)
        form.addRow("Warn after no backup for:", self.stale_days)

        self.forget = QCheckBox("Forget old snapshots and prune (at most daily, after a backup)")
        self.forget.toggled.connect(self._follow)
        self.keep: dict[str, Count] = {
            rule: _spin(MAX_KEEP) for rule in ("last", "daily", "weekly", "monthly", "yearly")
        }
        keep = QGridLayout()
        keep.setContentsMargins(20, 0, 0, 0)
        for i, (rule, spin) in enumerate(self.keep.items()):
            keep.addWidget(QLabel(f"Keep {rule}:"), i // 3, 2 * (i % 3))
            keep.addWidget(spin, i // 3, 2 * (i % 3) + 1)
        self.check_subsets = _spin(MAX_SUBSETS, "", "off")
        self.check_subsets.setPrefix("1/")
        check_row = QHBoxLayout()
        check_row.addWidget(QLabel("Check part of the data weekly:"))
        check_row.addWidget(self.check_subsets)
        check_row.addStretch(1)

        upkeep = QGroupBox("Upkeep (on AC power and unmetered networks only)")
        box = QVBoxLayout(upkeep)
        box.addWidget(self.forget)
        box.addLayout(keep)
        box.addLayout(check_row)
        box.addWidget(hint("Reads 1/N of the data each week, another part every time; off: 0."))

        layout = QVBoxLayout(self)
        layout.addWidget(when)
        layout.addWidget(upkeep)
        layout.addStretch(1)
        self._follow()

    def _follow(self) -> None:
        """Settings that do not apply are greyed out (their values are kept)."""
        self.min_battery.setEnabled(not self.skip_on_battery.isChecked())
        for edit in (self.quiet_start, self.quiet_end):
            edit.setEnabled(self.quiet.isChecked())
        for spin in self.keep.values():
            spin.setEnabled(self.forget.isChecked())

    def load(self, config: Config) -> None:
        """Show ``config``'s values."""
        s, u = config.schedule, config.upkeep
        self.frequency.set_values(config.backup.interval_minutes, s.daily_at)
        self.random_delay.setValue(s.random_delay_minutes)
        self.skip_on_battery.setChecked(s.skip_on_battery)
        self.min_battery.setValue(s.min_battery_percent)
        self.skip_on_metered.setChecked(s.skip_on_metered)
        window = parse_quiet_hours(s.quiet_hours)
        self.quiet.setChecked(window is not None)
        start, end = window if window is not None else (22 * 60, 7 * 60)
        self.quiet_start.setTime(_time(start))
        self.quiet_end.setTime(_time(end))
        self.max_runtime.setValue(s.max_runtime_minutes)
        self.keep_awake.setChecked(s.keep_awake)
        self.stale_days.setValue(s.stale_after_days)
        self.forget.setChecked(u.forget)
        for rule, spin in self.keep.items():
            spin.setValue(getattr(u, f"keep_{rule}"))
        self.check_subsets.setValue(u.check_subsets)
        self._follow()

    def form(self, base: Config) -> Config:
        """``base`` with the values this tab shows (texts written as in ``base``
        where they mean the same)."""
        s, u = base.schedule, base.upkeep
        interval, daily_at = self.frequency.values(base.backup.interval_minutes, s.daily_at)
        quiet = ""
        if self.quiet.isChecked():
            quiet = f"{_clock(self.quiet_start.time())}-{_clock(self.quiet_end.time())}"
            try:
                if parse_quiet_hours(s.quiet_hours) == parse_quiet_hours(quiet):
                    quiet = s.quiet_hours
            except ValueError:
                pass  # the same start and end: the loader's rules say so on Apply
        keep = {f"keep_{rule}": spin.value() for rule, spin in self.keep.items()}
        return replace(
            base,
            backup=replace(base.backup, interval_minutes=interval),
            schedule=replace(
                s,
                daily_at=daily_at,
                random_delay_minutes=self.random_delay.value(),
                skip_on_battery=self.skip_on_battery.isChecked(),
                min_battery_percent=self.min_battery.value(),
                skip_on_metered=self.skip_on_metered.isChecked(),
                quiet_hours=quiet,
                max_runtime_minutes=self.max_runtime.value(),
                keep_awake=self.keep_awake.isChecked(),
                stale_after_days=self.stale_days.value(),
            ),
            upkeep=replace(
                u,
                forget=self.forget.isChecked(),
                check_subsets=self.check_subsets.value(),
                **keep,
            ),
        )
