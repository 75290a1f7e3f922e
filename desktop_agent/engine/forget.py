"""Forget: remove snapshots according to a keep policy, as ``restic forget`` does.

Snapshots are grouped by host and paths; the policy is applied to every
group on its own, so that one machine's or one source set's history never
pushes out another's. Within a group, newest first:

- ``--keep-last n`` keeps the n newest snapshots;
- ``--keep-hourly/daily/weekly/monthly/yearly n`` keep the newest snapshot
  of each of the n newest hours/days/ISO weeks/months/years that have one.
  Buckets are calendar boundaries of the wall clock the snapshot was taken
  at (its own time and UTC offset), not of the moment forget runs;
- ``n = -1`` means unlimited: every bucket;
- when a count is not used up by the time the oldest snapshot of the group
  is reached, that snapshot is kept too ("oldest daily snapshot"), so a
  young history is not cut short (restic >= 0.16);
- ``--keep-within d`` keeps every snapshot newer than ``d`` before the
  newest snapshot (not before now); ``--keep-within-daily d`` and friends
  keep one snapshot per bucket within that span. Snapshots dated in the
  future are ignored when finding the newest, and so are always kept;
- ``--keep-tag a,b`` keeps every snapshot that has all of a, b; several
  tag lists are ORed, and the empty list ``''`` matches untagged snapshots.

A snapshot is kept if any rule keeps it; the reasons are all recorded.

Forgetting only removes snapshot files. The data they referenced stays
until :func:`~.prune.prune` runs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import EngineError
from .ids import SnapshotId
from .lock import Lock
from .repository import Repository
from .snapshot import Snapshot
from .storage import FileType

__all__ = [
    "Duration",
    "parse_duration",
    "parse_tag_list",
    "KeepPolicy",
    "GroupKey",
    "group_snapshots",
    "apply_policy",
    "ForgetGroup",
    "ForgetResult",
    "ForgetRefused",
    "forget",
    "UNLIMITED",
]

UNLIMITED = -1


class ForgetRefused(EngineError):
    """The policy would remove every snapshot of a group; nothing was removed."""


# ------------------------------------------------------------------ durations
@dataclass(frozen=True)
class Duration:
    """A calendar span of years, months, days and hours (restic's ``1y2m3d4h``).

    Not a :class:`datetime.timedelta`: a month or a year is subtracted on
    the calendar (one month before 31 March is "31 February", which rolls
    over to 3 March as in Go), so its length depends on where it starts.
    """

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @property
    def zero(self) -> bool:
        """Whether every component is zero (an unused option)."""
        return not (self.years or self.months or self.days or self.hours)

    def __str__(self) -> str:
        """restic's rendering: non-zero components in the order y, m, d, h."""
        parts = ((self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h"))
        return "".join(f"{n}{unit}" for n, unit in parts if n)


_DURATION_PART = re.compile(r"(-?)(\d+)([a-zA-Z]?)")


def parse_duration(text: str) -> Duration:
    """Parse restic's duration syntax, e.g. ``1y2m3d4h``, ``7d``, ``36h``.

    Units: ``y`` years, ``m`` months, ``d`` days, ``h`` hours; a unit given
    twice takes the last value. Negative numbers are refused (restic's
    forget refuses them too). Raises ``ValueError`` with a readable reason.
    """
    rest = text.strip()
    if not rest:
        raise ValueError("empty duration (expected something like 7d or 1y6m)")
    values = {"y": 0, "m": 0, "d": 0, "h": 0}
    while rest:
        m = _DURATION_PART.match(rest)
        if m is None:
            raise ValueError(f"invalid duration {text!r}: expected a number at {rest!r}")
        sign, digits, unit = m.groups()
        if not unit:
            raise ValueError(f"invalid duration {text!r}: no unit after {sign}{digits}")
        if unit not in values:
            raise ValueError(f"invalid duration {text!r}: unknown unit {unit!r} (use y, m, d or h)")
        if sign:
            raise ValueError(f"invalid duration {text!r}: negative values are not allowed")
        values[unit] = int(digits)
        rest = rest[m.end() :]
    return Duration(years=values["y"], months=values["m"], days=values["d"], hours=values["h"])


def parse_tag_list(text: str) -> tuple[str, ...]:
    """Split a restic tag list ``"a, b"`` into its tags (whitespace trimmed)."""
    return tuple(t.strip() for t in text.split(","))


# --------------------------------------------------------------------- policy
@dataclass(frozen=True)
class KeepPolicy:
    """Which snapshots to keep; 0 (or ``None``) leaves a rule unused, -1 is unlimited.

    ``keep_tags`` holds restic tag lists: ``"a,b"`` keeps the snapshots
    that carry both a and b; a snapshot matching any entry is kept; the
    entry ``""`` matches snapshots without tags.
    """

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None
    within_hourly: Duration | None = None
    within_daily: Duration | None = None
    within_weekly: Duration | None = None
    within_monthly: Duration | None = None
    within_yearly: Duration | None = None
    keep_tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < UNLIMITED:
                raise ValueError(f"keep {name}: {value!r} is not a count (0 or more, -1 for all)")
        for name, dur in self._durations():
            if dur is not None and min(dur.years, dur.months, dur.days, dur.hours) < 0:
                raise ValueError(f"keep {name}: negative durations are not allowed")
        if isinstance(self.keep_tags, str):
            # a bare string would be iterated character by character
            raise TypeError("keep_tags must be a tuple of tag lists, not a string")

    def _durations(self) -> list[tuple[str, Duration | None]]:
        return [
            ("within", self.within),
            ("within-hourly", self.within_hourly),
            ("within-daily", self.within_daily),
            ("within-weekly", self.within_weekly),
            ("within-monthly", self.within_monthly),
            ("within-yearly", self.within_yearly),
        ]

    @property
    def empty(self) -> bool:
        """Whether no rule is set (restic refuses to run forget with such a policy)."""
        counts = (self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly)
        return (
            not any(counts)
            and all(d is None or d.zero for _, d in self._durations())
            and not self.keep_tags
        )

    def describe(self) -> str:
        """One line for people, in the words restic uses ("keep 7 daily snapshots ...")."""
        counts = []
        for value, label in (
            (self.last, "latest"),
            (self.hourly, "hourly"),
            (self.daily, "daily"),
            (self.weekly, "weekly"),
            (self.monthly, "monthly"),
            (self.yearly, "yearly"),
        ):
            if value > 0:
                counts.append(f"{value} {label}")
            elif value == UNLIMITED:
                counts.append(f"all {label}")
        parts = [f"{', '.join(counts)} snapshots"] if counts else []
        for name, dur in self._durations()[1:]:
            if dur is not None and not dur.zero:
                parts.append(f"{name.split('-')[1]} snapshots within {dur}")
        text = ", ".join(parts)
        if self.keep_tags:
            lists = " or ".join(f"[{', '.join(parse_tag_list(t))}]" for t in self.keep_tags)
            text += (" and " if text else "") + f"all snapshots with tags {lists}"
        if self.within is not None and not self.within.zero:
            text += (" and " if text else "") + f"all snapshots within {self.within} of the newest"
        return f"keep {text}" if text else "keep everything (no policy)"


# ---------------------------------------------------------------- time buckets
class _Wall(NamedTuple):
    """A snapshot time as written: its wall clock and the UTC offset beside it."""

    year: int
    month: int
    day: int
    hour: int
    minute: int
    second: int
    nanos: int
    offset: int  # seconds east of UTC
    utc: bool  # written with "Z"


_WALL_RE = re.compile(
    r"(-?\d{4,})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([Zz])|([+-])(\d\d):(\d\d))$"
)


def _wall(text: str) -> _Wall:
    m = _WALL_RE.match(text)
    if m is None:
        raise ValueError(f"invalid snapshot time {text!r}")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    nanos = int((m.group(7) or "").ljust(9, "0")[:9])
    offset = 0
    if m.group(9):
        offset = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        if m.group(9) == "-":
            offset = -offset
    return _Wall(year, month, day, hour, minute, second, nanos, offset, bool(m.group(8)))


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date, for any year."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """Inverse of :func:`_days_from_civil`."""
    days += 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (month <= 2), month, day


def _iso_week(year: int, month: int, day: int) -> tuple[int, int]:
    """ISO 8601 (year, week): weeks run Monday to Sunday; week 1 holds January 4th."""
    days = _days_from_civil(year, month, day)
    weekday = (days + 3) % 7  # Monday = 0; 1970-01-01 was a Thursday
    thursday = days - weekday + 3  # the week belongs to the year its Thursday is in
    iso_year = _civil_from_days(thursday)[0]
    return iso_year, (thursday - _days_from_civil(iso_year, 1, 1)) // 7 + 1


def _hour_bucket(w: _Wall, _nr: int) -> int:
    return w.year * 1_000_000 + w.month * 10_000 + w.day * 100 + w.hour


def _day_bucket(w: _Wall, _nr: int) -> int:
    return w.year * 10_000 + w.month * 100 + w.day


def _week_bucket(w: _Wall, _nr: int) -> int:
    iso_year, week = _iso_week(w.year, w.month, w.day)
    return iso_year * 100 + week


def _month_bucket(w: _Wall, _nr: int) -> int:
    return w.year * 100 + w.month


def _year_bucket(w: _Wall, _nr: int) -> int:
    return w.year


def _every_snapshot(_w: _Wall, nr: int) -> int:
    return nr


_Bucket = Callable[[_Wall, int], int]


def _local_offset(epoch_seconds: int) -> int | None:
    try:
        return time.localtime(epoch_seconds).tm_gmtoff
    except (OverflowError, OSError, ValueError):
        return None


def _cutoff_ns(latest: Snapshot, span: Duration) -> int:
    """The instant ``span`` before ``latest``, computed as Go's ``AddDate`` then ``Add``.

    Years, months and days are subtracted on the calendar of the newest
    snapshot's wall clock (day overflow rolls into the next month); hours
    are then subtracted as elapsed time.
    """
    w = _wall(latest.time)
    year_shift, month0 = divmod(w.month - 1 - span.months, 12)
    year = w.year - span.years + year_shift
    days = _days_from_civil(year, month0 + 1, 1) + (w.day - span.days - 1)
    wall_seconds = days * 86400 + w.hour * 3600 + w.minute * 60 + w.second
    seconds = wall_seconds - w.offset
    # Go keeps the machine's own zone (with its DST rules) when the written
    # offset is the one in force here at that instant; any other offset is fixed.
    latest_seconds = latest.time_ns // 1_000_000_000
    if not w.utc and _local_offset(latest_seconds) == w.offset:
        y, mo, d = _civil_from_days(days)
        try:
            seconds = int(time.mktime((y, mo, d, w.hour, w.minute, w.second, 0, 0, -1)))
        except (OverflowError, OSError, ValueError):
            pass  # outside what the C library handles: the fixed offset is close enough
    return (seconds - span.hours * 3600) * 1_000_000_000 + w.nanos


def _has_tags(snap: Snapshot, tags: Sequence[str]) -> bool:
    """restic's rule: all of ``tags``; an empty tag matches an untagged snapshot."""
    for tag in tags:
        if tag == "" and not snap.tags:
            return True
        if tag not in snap.tags:
            return False
    return True


def apply_policy(
    snapshots: Iterable[Snapshot], policy: KeepPolicy, *, now_ns: int | None = None
) -> tuple[list[Snapshot], list[Snapshot], dict[SnapshotId, list[str]]]:
    """Split one group of snapshots into (keep, remove, reasons), newest first.

    ``reasons`` maps each kept snapshot's id to why it is kept, in restic's
    words ("last snapshot", "daily snapshot", "within 7d", ...). Snapshots
    with equal times stay in the order given. An empty policy keeps
    everything (restic would remove everything; callers refuse it instead).
    ``now_ns`` (default: now) decides which snapshots lie in the future.
    """
    ordered = sorted(snapshots, key=lambda s: s.time_ns, reverse=True)
    for snap in ordered:
        if snap.id is None:
            raise ValueError(f"snapshot of {snap.time} has no id")
    if not ordered or policy.empty:
        return ordered, [], {SnapshotId(s.id or b""): [] for s in ordered}
    now = time.time_ns() if now_ns is None else now_ns
    past = [s for s in ordered if s.time_ns < now]
    latest = max(past, key=lambda s: s.time_ns) if past else None

    def cutoff(span: Duration | None) -> int | None:
        """None: rule unused; otherwise keep what is strictly newer than this."""
        if span is None or span.zero:
            return None
        if latest is None:
            return -(1 << 127)  # nothing in the past: every snapshot is "within"
        return _cutoff_ns(latest, span)

    counted: list[tuple[str, _Bucket, int]] = [
        ("last snapshot", _every_snapshot, policy.last),
        ("hourly snapshot", _hour_bucket, policy.hourly),
        ("daily snapshot", _day_bucket, policy.daily),
        ("weekly snapshot", _week_bucket, policy.weekly),
        ("monthly snapshot", _month_bucket, policy.monthly),
        ("yearly snapshot", _year_bucket, policy.yearly),
    ]
    remaining = [count for _, _, count in counted]
    seen: list[int | None] = [None] * len(counted)
    spans: list[tuple[str, _Bucket, Duration, int]] = []
    span_rules: list[tuple[str, _Bucket, Duration | None]] = [
        ("hourly within", _hour_bucket, policy.within_hourly),
        ("daily within", _day_bucket, policy.within_daily),
        ("weekly within", _week_bucket, policy.within_weekly),
        ("monthly within", _month_bucket, policy.within_monthly),
        ("yearly within", _year_bucket, policy.within_yearly),
    ]
    for span_label, span_bucket, span in span_rules:
        limit = cutoff(span)
        if span is not None and limit is not None:
            spans.append((span_label, span_bucket, span, limit))
    span_seen: list[int | None] = [None] * len(spans)
    within_limit = cutoff(policy.within)
    tag_lists = [parse_tag_list(t) for t in policy.keep_tags]

    keep: list[Snapshot] = []
    remove: list[Snapshot] = []
    reasons: dict[SnapshotId, list[str]] = {}
    oldest = len(ordered) - 1
    for nr, snap in enumerate(ordered):
        why: list[str] = []
        for tags in tag_lists:
            if _has_tags(snap, tags):
                why.append(f"has tags [{', '.join(tags)}]")
        if within_limit is not None and snap.time_ns > within_limit:
            why.append(f"within {policy.within}")
        wall = _wall(snap.time)
        for i, (label, bucket, _count) in enumerate(counted):
            if remaining[i] == 0:
                continue
            value = bucket(wall, nr)
            # A new bucket is kept; so is the group's oldest snapshot while the
            # count is not used up, to keep as much history as was asked for.
            if value != seen[i] or nr == oldest:
                why.append(f"oldest {label}" if value == seen[i] else label)
                seen[i] = value
                if remaining[i] > 0:
                    remaining[i] -= 1
        for i, (label, bucket, span, limit) in enumerate(spans):
            if snap.time_ns <= limit:
                continue
            value = bucket(wall, nr)
            if value != span_seen[i] or nr == oldest:
                why.append(f"{'oldest ' if value == span_seen[i] else ''}{label} {span}")
                span_seen[i] = value
        if why:
            keep.append(snap)
            reasons[SnapshotId(snap.id or b"")] = why
        else:
            remove.append(snap)
    return keep, remove, reasons


# -------------------------------------------------------------------- groups
GroupKey = tuple[str, tuple[str, ...]]
"""(hostname, sorted paths): restic's default ``--group-by host,paths``."""


def group_snapshots(snapshots: Iterable[Snapshot]) -> dict[GroupKey, list[Snapshot]]:
    """Group by host and (sorted) paths; groups in key order, snapshots in input order."""
    groups: dict[GroupKey, list[Snapshot]] = {}
    for snap in snapshots:
        groups.setdefault((snap.hostname, tuple(sorted(snap.paths))), []).append(snap)
    return {key: groups[key] for key in sorted(groups)}


@dataclass(frozen=True)
class ForgetGroup:
    """The decision for one group: kept and removed snapshots, newest first."""

    hostname: str
    paths: tuple[str, ...]
    keep: tuple[Snapshot, ...]
    remove: tuple[Snapshot, ...]
    reasons: Mapping[SnapshotId, tuple[str, ...]] = field(hash=False)

    def describe(self) -> str:
        """restic's group header words: ``host h, paths [/a /b]``."""
        parts = []
        if self.hostname:
            parts.append(f"host {self.hostname}")
        if self.paths:
            parts.append(f"paths [{' '.join(self.paths)}]")
        return ", ".join(parts) or "(no host, no paths)"

    def to_json(self) -> dict[str, object]:
        """The group as ``restic forget --json`` writes it (lists are [] rather than null)."""
        return {
            "tags": None,
            "host": self.hostname,
            "paths": list(self.paths),
            "keep": [s.to_listing_json() for s in self.keep],
            "remove": [s.to_listing_json() for s in self.remove],
            "reasons": [
                {"snapshot": s.to_listing_json(), "matches": list(self.reasons[s.id])}
                for s in self.keep
                if s.id is not None
            ],
        }


@dataclass(frozen=True)
class ForgetResult:
    """What forget decided and, unless it was a dry run, did."""

    policy: KeepPolicy
    groups: tuple[ForgetGroup, ...]
    dry_run: bool
    removed: tuple[SnapshotId, ...] = ()
    failed: tuple[tuple[SnapshotId, str], ...] = ()

    @property
    def keep(self) -> list[Snapshot]:
        """Every kept snapshot, group by group."""
        return [s for g in self.groups for s in g.keep]

    @property
    def remove(self) -> list[Snapshot]:
        """Every snapshot the policy removes (or would remove, in a dry run)."""
        return [s for g in self.groups for s in g.remove]

    @property
    def ok(self) -> bool:
        """Whether every snapshot that was to be removed is gone (always, in a dry run)."""
        return not self.failed

    def to_json(self) -> list[dict[str, object]]:
        """``restic forget --json``: one object per group."""
        return [g.to_json() for g in self.groups]


def forget(
    repo: Repository, policy: KeepPolicy, *, dry_run: bool, now_ns: int | None = None
) -> ForgetResult:
    """Apply ``policy`` to every host+paths group and delete the snapshots it drops.

    Holds an exclusive lock while it lists and deletes (none for a dry run,
    which changes nothing). Only snapshot files are deleted: the data stays
    until prune. Raises :class:`ForgetRefused`, before deleting anything,
    when the policy would leave a group without any snapshot (possible
    with tag lists only). A snapshot that cannot be deleted does not stop
    the others; it is reported in ``failed``.
    """
    lock = None if dry_run else Lock(repo, exclusive=True)
    if lock is not None:
        lock.acquire()
    try:
        groups = []
        # unreadable snapshots are left alone (and named in repo.damaged_snapshots):
        # the policy applies to the others, which stay removable
        readable = repo.list_snapshots(skip_damaged=True)
        for (host, paths), snaps in group_snapshots(readable).items():
            keep, remove, reasons = apply_policy(snaps, policy, now_ns=now_ns)
            group = ForgetGroup(
                host, paths, tuple(keep), tuple(remove), {k: tuple(v) for k, v in reasons.items()}
            )
            if not keep:
                raise ForgetRefused(
                    f"refusing to delete every snapshot of the group {group.describe()}: "
                    f"none matches the policy ({policy.describe()})"
                )
            groups.append(group)
        removed: list[SnapshotId] = []
        failed: list[tuple[SnapshotId, str]] = []
        if not dry_run:
            for group in groups:
                for snap in group.remove:
                    sid = SnapshotId(snap.id or b"")
                    try:
                        repo.storage.remove(FileType.SNAPSHOT, sid.hex())
                    except (EngineError, OSError) as exc:
                        failed.append((sid, str(exc)))
                    else:
                        removed.append(sid)
        return ForgetResult(policy, tuple(groups), dry_run, tuple(removed), tuple(failed))
    finally:
        if lock is not None:
            lock.release()
