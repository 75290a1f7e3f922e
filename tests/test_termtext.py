"""The terminal-output module: the sanitizer, widths and cuts, JSON text, human
figures, the command line's progress line and the headless agent's."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from desktop_agent.engine.progress import Progress, RateEstimator
from desktop_agent.protocol import (
    BackupCompleted,
    BackupProgress,
    JobId,
    RestoreFailed,
    RestoreProgress,
)
from desktop_agent.termprogress import TerminalProgress, show_progress_on_terminal
from desktop_agent.termtext import (
    ProgressLine,
    clean,
    columns,
    fit,
    fit_middle,
    fit_tail,
    human_bytes,
    human_duration,
    json_text,
    pad,
    tail,
)

# every code point, lone surrogates included (a file name's undecodable bytes)
ANY_TEXT = st.text(st.characters(exclude_categories=()))
WIDTHS = st.integers(min_value=0, max_value=40)
# backslashes among escape letters, hex digits and characters that get escaped:
# where an ambiguous encoding would show itself
TRICKY_TEXT = st.text(st.sampled_from("\\xuUnrt0aF9\x1b\n\r\x9b\udc9b\ud800\u0301\u202e"))

_ESCAPE = re.compile(r"\\(?:([nrt])|x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8}))")


def unclean(shown: str) -> str:
    """The inverse of clean(), written from its documented notation.

    That it exists (``unclean(clean(s)) == s``) is what "two different names
    never look the same" means.
    """
    out: list[str] = []
    i = 0
    while i < len(shown):
        c = shown[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if shown[i + 1 : i + 2] == "\\":
            out.append("\\")
            i += 2
            continue
        m = _ESCAPE.match(shown, i)
        if m is None:
            out.append("\\")  # a backslash that cannot be read as an escape
            i += 1
            continue
        named, byte, bmp, astral = m.groups()
        if named:
            out.append({"n": "\n", "r": "\r", "t": "\t"}[named])
        elif byte:
            value = int(byte, 16)
            out.append(chr(value if value < 0x80 else 0xDC00 + value))
        else:
            out.append(chr(int(bmp or astral, 16)))
        i = m.end()
    return "".join(out)


# ----------------------------------------------------------------- clean
@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain name.txt", "plain name.txt"),
        ("Grüße ünïcødé 家族.txt", "Grüße ünïcødé 家族.txt"),
        ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),  # sets the window title
        ("\x1b[2J", "\\x1b[2J"),  # clears the screen
        ("a\rb", "a\\rb"),
        ("a\nsnapshot saved", "a\\nsnapshot saved"),
        ("tab\there", "tab\\there"),
        ("del\x7f", "del\\x7f"),
        ("c1\x9b31m", "c1\\u009b31m"),  # the one-byte CSI
        ("nel\x85", "nel\\u0085"),
        ("bidi\u202etxt.exe", "bidi\\u202etxt.exe"),
        ("iso\u2066late\u2069", "iso\\u2066late\\u2069"),
        ("zero\u200bwidth\u200djoin", "zero\\u200bwidth\\u200djoin"),
        ("bom\ufeff", "bom\\ufeff"),
        ("line\u2028sep", "line\\u2028sep"),
        ("no\u00a0break", "no\\u00a0break"),  # looks like a space, is not one
        ("filler\u3164", "filler\\u3164"),  # blank, as wide as a letter
        ("tag\U000e0041", "tag\\U000e0041"),
        ("private\ue000", "private\\ue000"),
        ("lone\ud800", "lone\\ud800"),
        ("byte\udcff", "byte\\xff"),  # os.fsdecode of an undecodable byte
        ("\u0301starts with a mark", "\\u0301starts with a mark"),
        ("e\u0301 keeps its accent", "e\u0301 keeps its accent"),
        # a backslash stays single unless it would read as an escape
        ("C:\\Users\\me\\Documents", "C:\\Users\\me\\Documents"),
        ("C:\\temp\\x1b", "C:\\\\temp\\\\x1b"),
        ("back\\\\slash", "back\\\\\\slash"),
        ("esc after backslash\\\x1b", "esc after backslash\\\\\\x1b"),
        ("trailing\\", "trailing\\"),
    ],
)
def test_clean_escapes_what_could_drive_the_terminal(raw: str, shown: str) -> None:
    assert clean(raw) == shown
    assert unclean(shown) == raw


def test_bytes_are_a_raw_file_name() -> None:
    assert clean(b"bad\xffname") == "bad\\xffname"
    assert clean("Grüße\x1b".encode()) == "Grüße\\x1b"
    # a raw 0x9b byte and the C1 character U+009B stay distinguishable
    assert clean(b"\x9b") == "\\x9b" != clean("\x9b")


def test_a_name_that_spells_an_escape_differs_from_the_escape() -> None:
    assert clean("\\x1b") != clean("\x1b")
    assert clean("a\\nb") != clean("a\nb")
    assert clean("\\u202e") != clean("\u202e")


@given(st.one_of(ANY_TEXT, TRICKY_TEXT))
def test_clean_output_is_printable_on_one_line(text: str) -> None:
    shown = clean(text)
    assert shown.isprintable()
    assert "\n" not in shown and "\r" not in shown
    shown.encode("utf-8")  # no lone surrogate is left to fail the encoding


@given(st.one_of(ANY_TEXT, TRICKY_TEXT))
def test_clean_is_injective(text: str) -> None:
    assert unclean(clean(text)) == text


@given(st.binary())
def test_clean_of_bytes_is_injective(raw: bytes) -> None:
    shown = clean(raw)
    assert shown.isprintable()
    assert unclean(shown).encode("utf-8", "surrogateescape") == raw


# ----------------------------------------------------------------- width
@pytest.mark.parametrize(
    ("text", "width"),
    [
        ("abc", 3),
        ("家族", 4),
        ("ＡＢ", 4),  # fullwidth
        ("e\u0301", 1),  # combining mark
        ("\u20dd", 0),  # enclosing mark (combining class 0)
        ("한\u1161", 2),  # a medial vowel joins the syllable
        ("", 0),
    ],
)
def test_columns(text: str, width: int) -> None:
    assert columns(text) == width


def test_fit_never_splits_a_wide_character() -> None:
    assert fit("家家家", 5) == "家家"
    assert fit("家家家", 6) == "家家家"
    assert fit("ab家", 3) == "ab"
    assert fit("e\u0301x", 1) == "e\u0301"  # the mark goes with its base
    assert fit("abc", 0) == ""


def test_tail_never_starts_with_an_orphaned_mark() -> None:
    assert tail("家家家", 5) == "家家"
    assert tail("xe\u0301", 1) == "e\u0301"
    assert tail("家\u0301", 1) == ""


def test_fit_tail_and_fit_middle_mark_the_cut() -> None:
    path = "/data/" + "家" * 10
    assert fit_tail(path, 100) == path
    assert fit_tail(path, 9) == "..." + "家" * 3
    assert fit_tail(path, 10) == "..." + "家" * 3  # half a character is left out
    assert fit_tail(path, 2) == ".."
    assert fit_middle("abcdefghijklmnop", 9) == "abc...nop"
    assert fit_middle("家家家家家家", 8) == "家...家"


def test_pad_counts_columns() -> None:
    assert pad("家", 4) == "家  "
    assert pad("家", 4, right=True) == "  家"
    assert pad("toolong", 3) == "toolong"


def test_the_cutting_functions_escape_control_characters_left_in_their_input() -> None:
    for cut in (fit, tail, fit_tail, fit_middle, pad):
        out = cut("a\x1b[2Jb\nc", 40)
        assert "\x1b" not in out and "\n" not in out and "\\x1b" in out
    # clean text comes out unchanged (cleaning twice would double backslashes)
    shown = clean("C:\\temp\x1b")
    assert fit(shown, 80) == pad(shown, 0) == shown


@given(ANY_TEXT, WIDTHS)
def test_the_cuts_fit_the_width(text: str, width: int) -> None:
    shown = clean(text)
    head = fit(shown, width)
    end = tail(shown, width)
    assert shown.startswith(head) and shown.endswith(end)
    for out in (head, end, fit_tail(shown, width), fit_middle(shown, width)):
        assert columns(out) <= width
        assert out.isprintable()
    if columns(shown) <= width:
        assert fit_tail(shown, width) == fit_middle(shown, width) == shown
    padded = pad(shown, width)
    assert columns(padded) == max(width, columns(shown))


# ------------------------------------------------------------------ JSON
HOSTILE = [
    "\x1b]0;pwned\x07",
    "a\r\nsnapshot saved",
    "c1\x9b31m",
    "bidi\u202etxt",
    "line\u2028sep",
    "byte\udcff",
    "tag\U000e0041",
    "Grüße 家族",
    'quote"back\\slash',
]


def test_json_text_is_exact_and_safe_on_a_terminal() -> None:
    doc = {"paths": HOSTILE, "host": "\x1b[2J", "n": 3}
    text = json_text(doc)
    assert json.loads(text) == doc
    assert text.isprintable()
    text.encode("utf-8")
    assert "Grüße 家族" in text  # ordinary non-ASCII stays readable
    assert "\\u009b" in text and "\\u202e" in text and "\\udcff" in text


@given(
    st.lists(ANY_TEXT).filter(
        # JSON spells U+10000 as \ud800\udc00: a lone high surrogate followed by a
        # lone low one has no JSON spelling of its own (json.dumps shares this)
        lambda xs: not any(re.search("[\ud800-\udbff][\udc00-\udfff]", x) for x in xs)
    )
)
def test_json_text_round_trips(values: list[str]) -> None:
    text = json_text(values)
    assert json.loads(text) == values
    assert text.isprintable()


# --------------------------------------------------------- human figures
@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (5 << 20, "5.0 MiB"),
        (1 << 50, "1024.0 TiB"),
    ],
)
def test_human_bytes(n: int, shown: str) -> None:
    assert human_bytes(n) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0:00"), (75, "1:15"), (3700, "1:01:40"), (-3, "0:00"), (59.9, "0:59")],
)
def test_human_duration(seconds: float, shown: str) -> None:
    assert human_duration(seconds) == shown


# ------------------------------------------------------- the progress line
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _progress(current: str, *, final: bool = False) -> Progress:
    return Progress(1024, 4096, 1, 4, current, elapsed=2.0, final=final)


def test_the_progress_line_escapes_and_cuts_the_file_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    out = _Terminal()
    line = ProgressLine("backup", stream=out, interval=0)
    line(_progress("/data/evil\x1b]0;pwned\x07\x1b[2J\r\nsnapshot saved"))
    shown = out.getvalue()
    assert shown.startswith("\r") and shown[1:].isprintable()
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\r\\nsnapshot saved" in shown
    assert columns(shown[1:]) == 99  # the whole line is redrawn, one column short

    out.truncate(0)
    out.seek(0)
    line(_progress("/data/" + "家" * 80))
    shown = out.getvalue()[1:]
    assert columns(shown) == 99 and shown.rstrip().endswith("家家家")
    assert "..." in shown and "/data/" not in shown  # the start of the path gives way


def test_the_progress_line_shows_the_rate_estimators_rate_and_eta(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rate is the moving average the agent's backup:progress shows, not
    bytes over elapsed time (1.0 MiB/s and ETA 0:07 here)."""
    monkeypatch.setenv("COLUMNS", "120")
    out = _Terminal()
    line = ProgressLine("backup", stream=out, interval=0)
    estimator = RateEstimator()
    for elapsed, done in ((1.0, 0), (2.0, 1 << 20), (3.0, 3 << 20)):
        line(Progress(done, 10 << 20, 1, 4, "", scan_finished=True, elapsed=elapsed))
        estimator.update(elapsed, done)
    shown = out.getvalue().rsplit("\r", 1)[1]
    left = human_duration(estimator.eta(7 << 20))
    assert f"{human_bytes(estimator.rate)}/s  ETA {left}" in shown
    assert shown.startswith("[0:03]  30.0%  3.0 MiB / 10.0 MiB  1.3 MiB/s  ETA 0:06  1/4 files")


@pytest.mark.parametrize("width", [40, 70, 71, 72, 73])
def test_the_progress_line_fits_a_narrow_terminal(
    monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    out = _Terminal()
    ProgressLine("restore", stream=out, interval=0)(_progress("/data/\x1b[2J" + "家" * 10))
    shown = out.getvalue()
    assert shown.startswith("\r") and shown[1:].isprintable()
    assert columns(shown[1:]) == width - 1
    figures, _, name = shown[1:].partition(" files  ")
    if width > 40:  # room for the end of the name, cut by columns
        room = width - 1 - columns(figures + " files  ")
        name = name.rstrip()
        assert name.startswith("...") and set(name[3:]) == {"家"}
        assert room - 1 <= columns(name) <= room  # less only by half a wide character
    else:
        assert name == ""


# ------------------------------------------- the headless agent's progress line
def test_progress_on_a_terminal_is_one_line_cleared_before_log_lines() -> None:
    out = io.StringIO()
    progress = TerminalProgress(out)
    event = BackupProgress(JobId("j"), 42.5, 5 << 20, 10 << 20, 1 << 20, 5, "/a/b\x1b[2J", 3, 7)
    progress.on_event(event)
    assert out.getvalue().startswith("\rbackup  42.5%  5.0 MiB / 10.0 MiB  1.0 MiB/s  ETA 0:05")
    assert "\x1b" not in out.getvalue()
    progress.clear()
    assert out.getvalue().endswith("\r")
    before = out.getvalue()
    progress.on_event(BackupCompleted(JobId("j"), 10 << 20))
    assert out.getvalue() == before  # nothing shown: nothing to clear


def test_a_restore_has_the_same_line_and_says_restore() -> None:
    out = io.StringIO()
    progress = TerminalProgress(out)
    progress.on_event(
        RestoreProgress(JobId("j"), 10.0, 1 << 20, 10 << 20, 1 << 20, 9, "/a/\udcff\x1b", 1, 7)
    )
    assert out.getvalue().startswith("\rrestore  10.0%  1.0 MiB / 10.0 MiB  1.0 MiB/s  ETA 0:09")
    assert out.getvalue().rstrip().endswith("/a/\\xff\\x1b")  # the one display form, clean
    progress.on_event(RestoreFailed(JobId("j"), "cancelled"))
    assert out.getvalue().endswith("\r")  # the line is wiped when the restore ends


def test_show_progress_on_terminal_subscribes_only_on_a_terminal() -> None:
    subscribed: list[object] = []
    assert show_progress_on_terminal(subscribed.append, io.StringIO()) is None
    assert subscribed == []

    out = _Terminal()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        progress = show_progress_on_terminal(subscribed.append, out)
        assert progress is not None and subscribed == [progress.on_event]
        progress.on_event(BackupProgress(JobId("j"), 50.0, 1, 2, 1, 1, "", 1, 2))
        shown = out.getvalue()
        root.warning("a log line")
    finally:
        root.removeHandler(handler)
    # the line was wiped before the log line was written, not overwritten by it
    wiped = "\r" + " " * (len(shown) - 1) + "\r"
    assert out.getvalue() == shown + wiped + "a log line\n"
