"""gocompat: strconv.Quote names, Go's JSON strings and RFC 3339 times, byte for byte."""

from __future__ import annotations

import calendar
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from desktop_agent.engine import gocompat
from desktop_agent.engine.gocompat import (
    format_time,
    go_quote_name,
    go_unquote_name,
    json_string,
    parse_time,
)


def _forget_formatted_times() -> None:
    # format_time memoizes local seconds, assuming the zone of a process never
    # changes; these tests change it.
    cache = getattr(gocompat, "_second_cache", None)
    if isinstance(cache, dict):
        cache.clear()


@contextmanager
def local_tz(name: str) -> Iterator[None]:
    """Run with ``TZ`` set (restored afterwards, also for the C library)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    _forget_formatted_times()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()
        _forget_formatted_times()


# ----------------------------------------------------------------- names


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_quote_unquote_round_trip_for_any_bytes(raw: bytes) -> None:
    quoted = go_quote_name(raw)
    quoted.encode("utf-8")  # always valid Unicode, never a lone surrogate
    assert quoted.isprintable()
    assert go_unquote_name(quoted) == raw


@settings(max_examples=300)
@given(st.text(max_size=40))
def test_quote_unquote_round_trip_for_any_text(text: str) -> None:
    raw = text.encode("utf-8", "surrogatepass")
    assert go_unquote_name(go_quote_name(raw)) == raw


@pytest.mark.parametrize(
    "raw, quoted",
    [
        # as restic 0.14 stores them (checked against its trees in test_tree.py)
        (b"bad\xffname", "bad\\xffname"),
        (b'q"b\\s', 'q\\"b\\\\s'),
        (b"tab\tnl", "tab\\tnl"),
        ("Grüße".encode(), "Grüße"),
        (b"plain.txt", "plain.txt"),
        (b"", ""),
        (b"nl\ncr\rbell\x07bs\x08ff\x0cvt\x0b", "nl\\ncr\\rbell\\abs\\bff\\fvt\\v"),
        (b"ctl\x01\x1f\x7f", "ctl\\x01\\x1f\\x7f"),
        ("c1\x85nbsp\xa0".encode(), "c1\\u0085nbsp\\u00a0"),
        ("zw\u200bls\u2028".encode(), "zw\\u200bls\\u2028"),
        ("tag\U000e0001".encode(), "tag\\U000e0001"),
        ("emoji😀".encode(), "emoji😀"),
        ("e\u0301 \ufffd".encode(), "e\u0301 \ufffd"),
        (b"trunc\xe2\x82", "trunc\\xe2\\x82"),
        (b"surr\xed\xa0\x80", "surr\\xed\\xa0\\x80"),
        (b"overlong\xc0\xaf", "overlong\\xc0\\xaf"),
        (b"single'quote", "single'quote"),
    ],
)
def test_quote_matches_go(raw: bytes, quoted: str) -> None:
    assert go_quote_name(raw) == quoted
    assert go_unquote_name(quoted) == raw


@pytest.mark.parametrize(
    "quoted, raw",
    [
        ("\\'", b"'"),
        ("\\101\\x42\\u0043\\U00000044", b"ABCD"),
        ("\\X41", None),
        ("bad\\q", None),
        ("trailing\\", None),
        ("\\x4", None),
        ("\\400", None),
        ("\\U00110000", None),
        ("\\UFFFFFFFF", None),  # past what chr() takes: ValueError, not OverflowError
    ],
)
def test_unquote_accepts_go_escapes_and_rejects_others(quoted: str, raw: bytes | None) -> None:
    if raw is None:
        with pytest.raises(ValueError):
            go_unquote_name(quoted)
    else:
        assert go_unquote_name(quoted) == raw


# ----------------------------------------------------------------- JSON strings


@pytest.mark.parametrize(
    "text, literal",
    [
        ("plain", '"plain"'),
        ("<a & b>", '"\\u003ca \\u0026 b\\u003e"'),
        ("ls\u2028ps\u2029", '"ls\\u2028ps\\u2029"'),
        ('q"b\\s', '"q\\"b\\\\s"'),
        ("nl\ncr\rtab\t", '"nl\\ncr\\rtab\\t"'),
        ("ctl\x01\x1f", '"ctl\\u0001\\u001f"'),
        ("del\x7f", '"del\x7f"'),
        ("Grüße 😀 \ufffd", '"Grüße 😀 \ufffd"'),
        # undecodable bytes: Go writes each as the escape \ufffd, never the raw rune
        (b"tgt\xfe\xffx".decode("utf-8", "surrogateescape"), '"tgt\\ufffd\\ufffdx"'),
    ],
)
def test_json_string_escapes_like_go(text: str, literal: str) -> None:
    assert json_string(text) == literal


@settings(max_examples=300)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_json_string_is_json_for_the_same_text(text: str) -> None:
    literal = json_string(text)
    assert json.loads(literal) == text
    assert not {"<", ">", "&", "\u2028", "\u2029"} & set(literal)


# ----------------------------------------------------------------- times

# 1970-01-01 up to the end of 2200
_NS = st.integers(0, (calendar.timegm((2201, 1, 1, 0, 0, 0)) * 10**9) - 1)
_ZONES = ["UTC", "Europe/Berlin", "America/St_Johns", "Asia/Kolkata", "Australia/Lord_Howe"]


@settings(max_examples=300)
@given(_NS)
def test_utc_time_round_trip(ns: int) -> None:
    text = format_time(ns, utc=True)
    assert text.endswith("Z")
    assert parse_time(text) == ns


@settings(max_examples=300)
@given(_NS, st.sampled_from(_ZONES))
def test_local_time_round_trip(ns: int, zone: str) -> None:
    with local_tz(zone):
        text = format_time(ns)
    assert parse_time(text) == ns
    assert parse_time(format_time(ns, utc=True)) == ns


@pytest.mark.parametrize(
    "ns, zone, text",
    [
        (0, "UTC", "1970-01-01T00:00:00Z"),
        (500_000_000, "UTC", "1970-01-01T00:00:00.5Z"),
        (1_500_000_000_000_000_001, "UTC", "2017-07-14T02:40:00.000000001Z"),
        (1_600_000_000_123_456_789, "UTC", "2020-09-13T12:26:40.123456789Z"),
        (1_600_000_000_120_000_000, "UTC", "2020-09-13T12:26:40.12Z"),
        (0, "Asia/Kolkata", "1970-01-01T05:30:00+05:30"),
        (0, "America/St_Johns", "1969-12-31T20:30:00-03:30"),
        (1_593_561_600 * 10**9, "Europe/Berlin", "2020-07-01T02:00:00+02:00"),
        (1_577_836_800 * 10**9, "Europe/Berlin", "2020-01-01T01:00:00+01:00"),
        (1_577_836_800 * 10**9, "Europe/London", "2020-01-01T00:00:00Z"),
    ],
)
def test_format_time_vectors(ns: int, zone: str, text: str) -> None:
    with local_tz(zone):
        assert format_time(ns) == text
    assert parse_time(text) == ns


def test_format_time_utc_ignores_the_local_zone() -> None:
    with local_tz("Asia/Kolkata"):
        assert format_time(0, utc=True) == "1970-01-01T00:00:00Z"


def test_format_time_before_1970() -> None:
    assert format_time(-1, utc=True) == "1969-12-31T23:59:59.999999999Z"
    assert parse_time("1969-12-31T23:59:59.999999999Z") == -1


def test_format_time_clamps_years_like_restic() -> None:
    # 12000-03-04T05:06:07Z: 25 Gregorian cycles of 400 years after 2000
    far = (calendar.timegm((2000, 3, 4, 5, 6, 7)) + 25 * 146097 * 86400) * 10**9
    assert format_time(far, utc=True) == "9999-03-04T05:06:07Z"


@pytest.mark.parametrize(
    "text, ns",
    [
        ("2020-01-01T02:00:00+02:00", 1_577_836_800 * 10**9),
        ("2019-12-31T21:30:00-02:30", 1_577_836_800 * 10**9),
        ("2020-01-01T00:00:00Z", 1_577_836_800 * 10**9),
        ("2020-01-01t00:00:00z", 1_577_836_800 * 10**9),
        ("2020-01-01 00:00:00Z", 1_577_836_800 * 10**9),
        ("2020-01-01T00:00:00.1+00:00", 1_577_836_800 * 10**9 + 100_000_000),
        ("2020-01-01T00:00:00.1234567891Z", 1_577_836_800 * 10**9 + 123_456_789),
    ],
)
def test_parse_time_offsets_and_variants(text: str, ns: int) -> None:
    assert parse_time(text) == ns


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2020-01-01",
        "2020-01-01T00:00:00",
        "2020-01-01T00:00:00+0200",
        "yesterday",
        "2020-13-01T00:00:00Z",
        "2020-01-01T00:00:00Z trailing",
    ],
)
def test_parse_time_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)
