"""Forget: restic's keep-policy semantics, grouping, and deleting snapshot files.

The policy tests use restic's own golden data (``fixtures/forget``, copied
from ``internal/data/testdata`` with the input list of
``snapshot_policy_test.go``); the interop test runs ``restic forget`` on a
restic-made repository and compares its decisions with ours.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import time
from pathlib import Path

import pytest
from support import PASSWORD

from desktop_agent.engine import gocompat
from desktop_agent.engine.errors import RepositoryLocked
from desktop_agent.engine.forget import (
    Duration,
    ForgetRefused,
    KeepPolicy,
    _iso_week,
    apply_policy,
    forget,
    group_snapshots,
    parse_duration,
)
from desktop_agent.engine.gocompat import parse_time
from desktop_agent.engine.ids import BlobId, SnapshotId
from desktop_agent.engine.lock import Lock
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.snapshot import Snapshot
from desktop_agent.engine.storage import FileType, LocalStorage

FIXTURES = Path(__file__).parent / "fixtures" / "forget"
NOW = parse_time("2030-01-01T00:00:00Z")


def snap(
    when: str, *, tags: tuple[str, ...] = (), paths: tuple[str, ...] = ("/data",), host: str = "h"
) -> Snapshot:
    """A snapshot document with a made-up (but stable, unique) id."""
    sid = hashlib.sha256(f"{when}|{tags}|{paths}|{host}".encode()).digest()
    return Snapshot(
        time=when,
        tree=BlobId(bytes(32)),
        paths=paths,
        hostname=host,
        tags=tags,
        id=SnapshotId(sid),
    )


def kept_times(snaps: list[Snapshot], policy: KeepPolicy, now: int = NOW) -> list[str]:
    keep, remove, reasons = apply_policy(snaps, policy, now_ns=now)
    assert len(keep) + len(remove) == len(snaps)
    assert set(reasons) == {s.id for s in keep}
    return [s.time for s in keep]


# ------------------------------------------------------------------ durations
@pytest.mark.parametrize(
    ("text", "expected", "rendered"),
    [
        ("1y2m3d4h", Duration(1, 2, 3, 4), "1y2m3d4h"),
        ("7d", Duration(days=7), "7d"),
        ("36h", Duration(hours=36), "36h"),
        (" 1y1d1m ", Duration(years=1, months=1, days=1), "1y1m1d"),
        ("2m2h", Duration(months=2, hours=2), "2m2h"),
        ("1d2d", Duration(days=2), "2d"),  # restic: the last value of a unit wins
        ("0d", Duration(), ""),
    ],
)
def test_parse_duration(text, expected, rendered):
    assert parse_duration(text) == expected
    assert str(parse_duration(text)) == rendered


@pytest.mark.parametrize("text", ["", "7", "d", "1w", "1x", "-1d", "1 d", "1.5d", "1dd", "1D"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_policy_validation_and_emptiness():
    assert KeepPolicy().empty
    assert KeepPolicy(within=Duration()).empty
    assert not KeepPolicy(last=-1).empty
    assert not KeepPolicy(within_daily=Duration(days=1)).empty
    assert not KeepPolicy(keep_tags=("",)).empty
    with pytest.raises(ValueError):
        KeepPolicy(daily=-2)
    with pytest.raises(ValueError):
        KeepPolicy(within=Duration(days=-1))
    with pytest.raises(TypeError):
        KeepPolicy(keep_tags="foo")  # type: ignore[arg-type]
    assert KeepPolicy(daily=7, weekly=-1, within=Duration(days=3)).describe() == (
        "keep 7 daily, all weekly snapshots and all snapshots within 3d of the newest"
    )


def test_empty_policy_keeps_everything():
    """restic's ApplyPolicy would drop everything; callers refuse an empty policy instead."""
    snaps = [snap("2024-01-01T00:00:00Z"), snap("2024-01-02T00:00:00Z")]
    keep, remove, reasons = apply_policy(snaps, KeepPolicy(), now_ns=NOW)
    assert [s.time for s in keep] == ["2024-01-02T00:00:00Z", "2024-01-01T00:00:00Z"]
    assert remove == [] and all(r == [] for r in reasons.values())


def test_iso_weeks_match_the_calendar():
    for days in range(-719_000, 2_900_000, 331):
        d = datetime.date(1970, 1, 1) + datetime.timedelta(days=days)
        assert _iso_week(d.year, d.month, d.day) == tuple(d.isocalendar())[:2], d


# --------------------------------------------------------- restic golden data
def _golden_cases():
    doc = json.loads((FIXTURES / "policy_input.json").read_text())
    return doc["snapshots"], list(enumerate(doc["policies"]))


_INPUT, _POLICIES = _golden_cases()


def _policy(spec: dict) -> KeepPolicy:
    kwargs: dict = {}
    for key, value in spec.items():
        if key.startswith("within"):
            kwargs[key] = parse_duration(value)
        elif key == "keep_tags":
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return KeepPolicy(**kwargs)


@pytest.mark.parametrize(("index", "spec"), _POLICIES, ids=[str(i) for i, _ in _POLICIES])
def test_policy_matches_restic_golden_data(index, spec):
    # restic's list has duplicates (same time, tags, paths): give each its own id
    snaps = [
        Snapshot(
            time=s["time"],
            tree=BlobId(bytes(32)),
            paths=tuple(s.get("paths", ())),
            tags=tuple(s.get("tags", ())),
            id=SnapshotId(hashlib.sha256(str(i).encode()).digest()),
        )
        for i, s in enumerate(_INPUT)
    ]
    golden = json.loads((FIXTURES / f"policy_keep_snapshots_{index}").read_text())
    policy = _policy(spec)
    keep, remove, reasons = apply_policy(snaps, policy, now_ns=NOW)
    assert len(keep) + len(remove) == len(snaps)
    if policy.empty:
        # the one deliberate difference: restic's ApplyPolicy keeps nothing
        assert golden["keep"] is None and len(keep) == len(snaps)
        return

    def ident(s: dict) -> tuple:
        return (parse_time(s["time"]), tuple(s.get("tags") or ()), tuple(s.get("paths") or ()))

    assert [(s.time_ns, s.tags, s.paths) for s in keep] == [ident(s) for s in golden["keep"]]
    assert [reasons[s.id] for s in keep] == [r["matches"] for r in golden["reasons"]]


# ------------------------------------------------------ documented behaviour
def test_keep_last_and_oldest_is_kept_while_counts_remain():
    snaps = [snap(f"2024-01-0{d}T12:00:00Z") for d in range(1, 6)]
    assert kept_times(snaps, KeepPolicy(last=2)) == ["2024-01-05T12:00:00Z", "2024-01-04T12:00:00Z"]
    # more asked for than there is: everything, nothing labelled "oldest" (all distinct)
    keep, _, reasons = apply_policy(snaps, KeepPolicy(last=10), now_ns=NOW)
    assert len(keep) == 5 and all(reasons[s.id] == ["last snapshot"] for s in keep)


def test_keep_daily_takes_the_newest_of_each_day():
    snaps = [
        snap("2024-01-01T08:00:00Z"),
        snap("2024-01-01T20:00:00Z"),
        snap("2024-01-02T09:00:00Z"),
        snap("2024-01-04T07:00:00Z"),
        snap("2024-01-04T23:59:59Z"),
    ]
    assert kept_times(snaps, KeepPolicy(daily=2)) == [
        "2024-01-04T23:59:59Z",
        "2024-01-02T09:00:00Z",
    ]
    # a third day is wanted: 01-01 20:00 is that day's newest; the group's oldest
    # snapshot (01-01 08:00) is in the same day and the count is used up: dropped
    assert kept_times(snaps, KeepPolicy(daily=3))[-1] == "2024-01-01T20:00:00Z"
    # counts left when the oldest is reached: it is kept too (restic >= 0.16)
    keep, _, reasons = apply_policy(snaps, KeepPolicy(daily=4), now_ns=NOW)
    assert keep[-1].time == "2024-01-01T08:00:00Z"
    assert reasons[keep[-1].id] == ["oldest daily snapshot"]


def test_keep_weekly_uses_iso_weeks_across_the_year_end():
    snaps = [
        snap("2020-12-27T12:00:00Z"),  # Sunday of ISO week 2020-52
        snap("2020-12-28T12:00:00Z"),  # Monday, week 2020-53
        snap("2021-01-03T12:00:00Z"),  # Sunday, still week 2020-53
        snap("2021-01-04T12:00:00Z"),  # Monday, week 2021-01
    ]
    assert kept_times(snaps, KeepPolicy(weekly=3)) == [
        "2021-01-04T12:00:00Z",
        "2021-01-03T12:00:00Z",
        "2020-12-27T12:00:00Z",
    ]


def test_keep_monthly_and_yearly():
    snaps = [
        snap("2022-06-15T00:00:00Z"),
        snap("2023-01-31T00:00:00Z"),
        snap("2023-02-01T00:00:00Z"),
        snap("2023-02-28T00:00:00Z"),
        snap("2023-12-31T23:00:00Z"),
        snap("2024-01-01T01:00:00Z"),
    ]
    assert kept_times(snaps, KeepPolicy(monthly=3)) == [
        "2024-01-01T01:00:00Z",
        "2023-12-31T23:00:00Z",
        "2023-02-28T00:00:00Z",
    ]
    keep, _, reasons = apply_policy(snaps, KeepPolicy(yearly=5), now_ns=NOW)
    assert [s.time for s in keep] == [
        "2024-01-01T01:00:00Z",
        "2023-12-31T23:00:00Z",
        "2022-06-15T00:00:00Z",
    ]
    assert reasons[keep[-1].id] == ["yearly snapshot"]  # a new year, not "oldest"


def test_buckets_use_the_wall_clock_the_snapshot_was_taken_at():
    """A snapshot at 23:30 in New York is on that day there, not on the next UTC day."""
    snaps = [
        snap("2023-12-31T12:00:00-05:00"),
        snap("2024-01-01T18:00:00-05:00"),  # 23:00 UTC, 1 January
        snap("2024-01-01T23:30:00-05:00"),  # 04:30 UTC, 2 January
    ]
    assert kept_times(snaps, KeepPolicy(daily=2)) == [
        "2024-01-01T23:30:00-05:00",
        "2023-12-31T12:00:00-05:00",
    ]


def test_unlimited_counts():
    snaps = [snap(f"2024-0{m}-0{d}T10:00:00Z") for m in (1, 2, 3) for d in (1, 2)]
    assert len(kept_times(snaps, KeepPolicy(last=-1))) == 6
    # -1 keeps each month's newest, and the group's oldest (the count never runs out)
    assert kept_times(snaps, KeepPolicy(monthly=-1)) == [
        "2024-03-02T10:00:00Z",
        "2024-02-02T10:00:00Z",
        "2024-01-02T10:00:00Z",
        "2024-01-01T10:00:00Z",
    ]


def test_keep_within_counts_back_from_the_newest_snapshot_not_from_now():
    snaps = [snap(f"2020-05-{d:02d}T12:00:00Z") for d in range(1, 31)]
    keep, _, reasons = apply_policy(snaps, KeepPolicy(within=Duration(days=7)), now_ns=NOW)
    assert [s.time for s in keep][-1] == "2020-05-24T12:00:00Z"  # strictly newer than 05-23
    assert len(keep) == 7
    assert all(reasons[s.id] == ["within 7d"] for s in keep)


def test_keep_within_subtracts_months_on_the_calendar():
    # one month before 31 March 2024 is "31 February" = 2 March (Go's AddDate);
    # a 31-day timedelta would reach back to 29 February
    snaps = [
        snap("2024-02-29T13:00:00Z"),
        snap("2024-03-01T13:00:00Z"),
        snap("2024-03-02T12:00:00Z"),  # exactly at the boundary: not "within"
        snap("2024-03-02T12:00:00.5Z"),
        snap("2024-03-31T12:00:00Z"),
    ]
    assert kept_times(snaps, KeepPolicy(within=Duration(months=1))) == [
        "2024-03-31T12:00:00Z",
        "2024-03-02T12:00:00.5Z",
    ]
    # hours are elapsed time after the calendar step
    assert kept_times(snaps, KeepPolicy(within=Duration(months=1, hours=24)))[-1] == (
        "2024-03-01T13:00:00Z"
    )


def test_keep_within_ignores_snapshots_from_the_future():
    now = parse_time("2024-06-10T00:00:00Z")
    snaps = [
        snap("2024-06-01T00:00:00Z"),
        snap("2024-06-08T00:00:00Z"),
        snap("2024-06-09T00:00:00Z"),
        snap("2031-01-01T00:00:00Z"),  # a wrong clock
    ]
    # "newest" is 06-09, not 2031: the 2031 one is kept as newer than that
    assert kept_times(snaps, KeepPolicy(within=Duration(days=2)), now=now) == [
        "2031-01-01T00:00:00Z",
        "2024-06-09T00:00:00Z",
        "2024-06-08T00:00:00Z",
    ]
    # nothing in the past at all: everything is "within"
    assert len(kept_times(snaps, KeepPolicy(within=Duration(hours=1)), now=0)) == 4


def test_keep_within_daily():
    snaps = [snap(f"2024-04-{d:02d}T{h:02d}:00:00Z") for d in range(1, 11) for h in (9, 21)]
    keep, _, reasons = apply_policy(snaps, KeepPolicy(within_daily=Duration(days=3)), now_ns=NOW)
    assert [s.time for s in keep] == [
        "2024-04-10T21:00:00Z",
        "2024-04-09T21:00:00Z",
        "2024-04-08T21:00:00Z",
    ]
    assert reasons[keep[0].id] == ["daily within 3d"]


def test_keep_tag_lists():
    snaps = [
        snap("2024-01-01T00:00:00Z"),
        snap("2024-01-02T00:00:00Z", tags=("a",)),
        snap("2024-01-03T00:00:00Z", tags=("a", "b")),
        snap("2024-01-04T00:00:00Z", tags=("b",)),
    ]
    assert kept_times(snaps, KeepPolicy(keep_tags=("a",))) == [
        "2024-01-03T00:00:00Z",
        "2024-01-02T00:00:00Z",
    ]
    # a comma-separated list needs all its tags; lists are ORed
    assert kept_times(snaps, KeepPolicy(keep_tags=("a, b",))) == ["2024-01-03T00:00:00Z"]
    assert len(kept_times(snaps, KeepPolicy(keep_tags=("a", "b")))) == 3
    # the empty tag keeps snapshots without tags
    keep, _, reasons = apply_policy(snaps, KeepPolicy(keep_tags=("",)), now_ns=NOW)
    assert [s.time for s in keep] == ["2024-01-01T00:00:00Z"]
    assert reasons[keep[0].id] == ["has tags []"]


def test_combined_rules_record_every_reason():
    snaps = [
        snap("2023-11-20T10:00:00Z"),
        snap("2023-12-30T10:00:00Z", tags=("keep",)),
        snap("2024-01-01T10:00:00Z"),
        snap("2024-01-01T11:00:00Z"),
    ]
    policy = KeepPolicy(last=1, daily=2, monthly=2, keep_tags=("keep",), within=Duration(days=1))
    keep, remove, reasons = apply_policy(snaps, policy, now_ns=NOW)
    assert {s.time: reasons[s.id] for s in keep} == {
        "2024-01-01T11:00:00Z": [
            "within 1d",
            "last snapshot",
            "daily snapshot",
            "monthly snapshot",
        ],
        "2024-01-01T10:00:00Z": ["within 1d"],
        "2023-12-30T10:00:00Z": ["has tags [keep]", "daily snapshot", "monthly snapshot"],
    }
    assert [s.time for s in remove] == ["2023-11-20T10:00:00Z"]


def test_group_snapshots_by_host_and_sorted_paths():
    a = snap("2024-01-01T00:00:00Z", paths=("/b", "/a"), host="x")
    b = snap("2024-01-02T00:00:00Z", paths=("/a", "/b"), host="x")
    c = snap("2024-01-03T00:00:00Z", paths=("/a", "/b"), host="y")
    d = snap("2024-01-04T00:00:00Z", paths=("/a",), host="x")
    groups = group_snapshots([a, b, c, d])
    assert list(groups) == [("x", ("/a",)), ("x", ("/a", "/b")), ("y", ("/a", "/b"))]
    assert groups[("x", ("/a", "/b"))] == [a, b]


# ------------------------------------------------------------ on a repository
def _store(repo: Repository, snaps: list[Snapshot]) -> list[Snapshot]:
    out = []
    for s in snaps:
        sid = repo.save_snapshot(s)
        out.append(Snapshot.from_json(s.to_json(), sid))
    return out


def test_forget_removes_only_snapshot_files_per_group(mem_repo):
    repo = mem_repo
    laptop = [snap(f"2024-01-{d:02d}T10:00:00Z", host="laptop") for d in range(1, 6)]
    desktop = [snap(f"2024-01-{d:02d}T10:00:00Z", host="desktop") for d in (1, 2)]
    stored = _store(repo, laptop + desktop)
    before = {ft: sorted(repo.storage.list(ft)) for ft in (FileType.KEY, FileType.CONFIG)}

    dry = forget(repo, KeepPolicy(last=2), dry_run=True)
    assert len(list(repo.storage.list(FileType.SNAPSHOT))) == 7
    assert dry.removed == () and len(dry.remove) == 3
    assert [(g.hostname, len(g.keep), len(g.remove)) for g in dry.groups] == [
        ("desktop", 2, 0),
        ("laptop", 2, 3),
    ]

    result = forget(repo, KeepPolicy(last=2), dry_run=False)
    assert result.ok and not result.dry_run
    assert {s.id for s in result.remove} == set(result.removed)
    left = {s.id for s in repo.list_snapshots()}
    assert left == {s.id for s in stored if s.time >= "2024-01-04" or s.hostname == "desktop"}
    assert list(repo.storage.list(FileType.LOCK)) == []
    assert {ft: sorted(repo.storage.list(ft)) for ft in before} == before


def test_forget_refuses_to_empty_a_group(mem_repo):
    repo = mem_repo
    _store(repo, [snap("2024-01-01T00:00:00Z", tags=("x",)), snap("2024-01-02T00:00:00Z")])
    with pytest.raises(ForgetRefused, match="refusing to delete every snapshot"):
        forget(repo, KeepPolicy(keep_tags=("nope",)), dry_run=False)
    assert len(repo.list_snapshots()) == 2
    assert list(repo.storage.list(FileType.LOCK)) == []


def test_forget_needs_the_exclusive_lock_but_a_dry_run_does_not(mem_repo):
    repo = mem_repo
    _store(repo, [snap("2024-01-01T00:00:00Z"), snap("2024-01-02T00:00:00Z")])
    with Lock(repo, exclusive=False, refresh=False):
        with pytest.raises(RepositoryLocked):
            forget(repo, KeepPolicy(last=1), dry_run=False)
        assert len(forget(repo, KeepPolicy(last=1), dry_run=True).remove) == 1
    assert len(repo.list_snapshots()) == 2


# ------------------------------------------------------------ restic interop
def _restic_version(restic, repo: Path) -> tuple[int, ...]:
    out = restic(repo, "version").stdout
    m = re.search(r"restic (\d+)\.(\d+)\.(\d+)", out)
    assert m, out
    return tuple(int(x) for x in m.groups())


@pytest.fixture
def berlin(monkeypatch):
    """Run in a zone with daylight saving time (restic inherits the environment)."""
    if not os.path.exists("/usr/share/zoneinfo/Europe/Berlin"):
        pytest.skip("no time zone database")

    def switched() -> None:
        time.tzset()
        gocompat._second_cache.clear()  # format_time memoizes local seconds

    monkeypatch.setenv("TZ", "Europe/Berlin")
    switched()
    yield
    monkeypatch.undo()
    switched()


# (host, source, local time, tags): hours, days, ISO weeks, months, years,
# a daylight-saving change (31 March 2024) and three groups
_RESTIC_SNAPSHOTS = [
    ("laptop", "a", "2022-07-01 09:00:00", ""),
    ("laptop", "a", "2023-03-15 09:00:00", ""),
    ("laptop", "a", "2023-12-31 23:30:00", "monthly"),
    ("laptop", "a", "2024-01-01 00:30:00", ""),
    ("laptop", "a", "2024-03-29 10:00:00", ""),
    ("laptop", "a", "2024-03-30 11:30:00", ""),
    ("laptop", "a", "2024-03-30 12:30:00", "important"),
    ("laptop", "a", "2024-03-31 01:30:00", ""),
    ("laptop", "a", "2024-03-31 03:30:00", ""),
    ("laptop", "a", "2024-03-31 12:00:00", ""),
    ("laptop", "b", "2024-02-01 08:00:00", ""),
    ("laptop", "b", "2024-03-01 08:00:00", ""),
    ("desktop", "a", "2024-03-25 08:00:00", "important"),
    ("desktop", "a", "2024-03-31 08:00:00", ""),
]

_RESTIC_POLICIES = [
    ["--keep-last", "3"],
    ["--keep-hourly", "3"],
    ["--keep-daily", "3"],
    ["--keep-weekly", "2", "--keep-monthly", "2"],
    ["--keep-yearly", "2"],
    ["--keep-within", "1d"],  # across the DST change: 24 h of calendar, 23 h of time
    ["--keep-within", "1m3d", "--keep-last", "1"],
    ["--keep-within-daily", "3d"],
    ["--keep-last", "2", "--keep-tag", "important", "--keep-tag", "monthly"],
    ["--keep-daily", "unlimited"],  # restic < 0.16 had no "unlimited" (and mishandled -1)
]


def _policy_from_flags(flags: list[str]) -> KeepPolicy:
    kwargs: dict = {}
    tags: list[str] = []
    for name, value in zip(flags[::2], flags[1::2], strict=True):
        key = name.removeprefix("--keep-").replace("-", "_")
        if key == "tag":
            tags.append(value)
        elif key.startswith("within"):
            kwargs[key] = parse_duration(value)
        else:
            kwargs[key] = -1 if value == "unlimited" else int(value)
    return KeepPolicy(**kwargs, keep_tags=tuple(tags))


def test_same_decisions_as_restic_forget(tmp_path, restic, berlin, new_repo):
    repo_dir = tmp_path / "repo"
    new_repo(repo_dir)  # a fast key: restic derives it on every run
    version = _restic_version(restic, repo_dir)
    for source in ("a", "b"):
        (tmp_path / source).mkdir()
        (tmp_path / source / "f").write_text(source)
    for host, source, when, tag in _RESTIC_SNAPSHOTS:
        (tmp_path / source / "f").write_text(when)
        extra = ["--tag", tag] if tag else []
        restic(
            repo_dir, "backup", "-q", "--host", host, "--time", when, *extra, str(tmp_path / source)
        )
    repo = Repository.open(LocalStorage(repo_dir), PASSWORD)
    times = {s.time[:19] for s in repo.list_snapshots()}
    assert "2024-03-30T11:30:00" in times  # written in local (Berlin) time
    assert any(s.time.endswith("+02:00") for s in repo.list_snapshots())

    for flags in _RESTIC_POLICIES:
        if "unlimited" in flags and version < (0, 16, 0):
            continue
        theirs = json.loads(restic(repo_dir, "forget", "--dry-run", "--json", *flags).stdout)
        policy = _policy_from_flags(flags)
        ours = forget(repo, policy, dry_run=True)
        by_key = {(g.hostname, g.paths): g for g in ours.groups}
        assert len(by_key) == len(theirs) == 3
        for tg in theirs:
            group = by_key[(tg["host"], tuple(sorted(tg["paths"])))]
            their_keep = [s["id"] for s in tg["keep"] or []]
            our_keep = [s.id.hex() for s in group.keep]
            their_reasons = {their_keep[i]: r["matches"] for i, r in enumerate(tg["reasons"] or [])}
            extra = [sid for sid in our_keep if sid not in their_keep]
            if version < (0, 16, 0):
                # restic < 0.16 did not yet keep a group's oldest snapshot while counts
                # remain; everything else must agree
                assert extra in ([], [our_keep[-1]]), (flags, extra)
                oldest = min([*group.keep, *group.remove], key=lambda s: s.time_ns)
                for sid in extra:
                    assert sid == oldest.id.hex()
                    assert all(w.startswith("oldest ") for w in group.reasons[oldest.id])
            else:
                assert extra == [], flags
            assert [sid for sid in our_keep if sid not in extra] == their_keep, flags
            for sid in their_keep:
                ours_why = list(group.reasons[SnapshotId(bytes.fromhex(sid))])
                if version < (0, 16, 0):
                    ours_why = [w for w in ours_why if not w.startswith("oldest ")]
                assert ours_why == their_reasons[sid], (flags, sid)

    # and for real: restic sees what we left, and the repository is still sound
    policy = _policy_from_flags(["--keep-daily", "2", "--keep-tag", "important"])
    expected = json.loads(
        restic(
            repo_dir,
            "forget",
            "--dry-run",
            "--json",
            "--keep-daily",
            "2",
            "--keep-tag",
            "important",
        ).stdout
    )
    result = forget(repo, policy, dry_run=False)
    assert result.ok
    left = {s["id"] for s in json.loads(restic(repo_dir, "snapshots", "--json").stdout)}
    ours_left = {s.id.hex() for s in result.keep}
    assert left == ours_left
    theirs_left = {s["id"] for g in expected for s in g["keep"] or []}
    assert theirs_left <= ours_left
    restic(repo_dir, "check")
