"""Terminal output: the one sanitizer, widths and cuts, human figures, progress lines.

File names, paths, hostnames, usernames, tags and error texts may come from
a repository somebody else wrote, from an agent across the network, or from
a local disk where any byte but ``/`` and NUL can be in a name. Printed raw,
they drive the terminal: an escape sequence clears the screen or sets the
window title, a carriage return or newline forges a line, a bidi override
reverses what follows. Everything of that kind printed by the command line
(:mod:`desktop_agent.cli`), the remote client and the progress lines goes
through :func:`clean` first, and is measured and cut with :func:`columns`,
:func:`fit` and friends, which count terminal columns (a CJK character takes
two) rather than code points.

:func:`clean` is injective: two different names never look the same
(a control character is shown as ``\\x1b``; a backslash that would read as
the start of such an escape is doubled, so a name that really holds the four
characters ``\\x1b`` shows as ``\\\\x1b``). Machine-readable output uses
:func:`json_text` instead: exact JSON, with the same characters escaped the
JSON way.

Also here: :func:`human_bytes` and :func:`human_duration`, the figures every
printer shows; :class:`ProgressLine`, the command line's status line for an
engine operation, whose rate and ETA come from
:class:`~desktop_agent.engine.progress.RateEstimator` (the estimator the job
controller uses for ``backup:progress``). The headless agent's line, drawn
from protocol events, is :mod:`desktop_agent.termprogress`.

Imports nothing of ours but :mod:`desktop_agent.engine.progress` (values,
no I/O): the command line, the remote client, the agent and the tray can
all use it, and a command-line start does not pay for the protocol's
message classes.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
import unicodedata
from typing import Any, TextIO

from desktop_agent.engine.progress import Progress, RateEstimator

__all__ = [
    "ELLIPSIS",
    "clean",
    "columns",
    "fit",
    "tail",
    "fit_tail",
    "fit_middle",
    "pad",
    "json_text",
    "human_bytes",
    "human_duration",
    "line_width",
    "ProgressLine",
]

ELLIPSIS = "..."

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

# Printable per Unicode, yet blank and as wide as a letter (or two): they
# could fake padding or make two names look alike, so they are escaped too.
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0")

# What may follow a backslash in clean()'s output when it starts an escape.
# A literal backslash followed by one of these (or by another backslash or
# an escaped character) is doubled; any other backslash (``C:\Users``) stays
# single, which keeps the encoding unambiguous and most paths readable.
_ESCAPE_BODY = re.compile(r"[nrt]|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}")


def _is_mark(c: str) -> bool:
    """A combining mark: drawn on the character before it, no column of its own."""
    return unicodedata.category(c) in ("Mn", "Me")


def _unsafe(c: str) -> bool:
    """Whether ``c`` must never reach the terminal as itself."""
    return not c.isprintable() or c in _INVISIBLE


def _escape(c: str) -> str:
    """The visible form of one character (ASCII, printable)."""
    cp = ord(c)
    named = _NAMED.get(c)
    if named is not None:
        return named
    if cp < 0x80:
        return f"\\x{cp:02x}"
    if 0xDC80 <= cp <= 0xDCFF:
        # an undecodable byte (surrogateescape): shown as the byte it was;
        # C1 controls use \u00NN, so the two cannot be confused
        return f"\\x{cp - 0xDC00:02x}"
    if cp <= 0xFFFF:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def clean(text: str | bytes) -> str:
    """``text`` made safe to print: every character that could drive the
    terminal or hide itself is shown as an escape.

    Escaped: C0 and C1 controls, DEL, line and paragraph separators, format
    characters (bidi overrides and isolates, zero-width joiners and spaces,
    the BOM), unassigned and private-use code points, spaces other than
    U+0020, lone surrogates (an undecodable byte of a file name shows as
    ``\\xNN``), invisible fillers, and a combining mark at the very start
    (it would land on whatever was printed before). ``bytes`` are taken as
    a raw file name: UTF-8, with undecodable bytes escaped.

    The result is printable (``str.isprintable``), has no line break, and
    different inputs give different results.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text  # the common case
    out: list[str] = []
    for i, c in enumerate(text):
        if c == "\\":
            out.append("\\\\" if _backslash_is_ambiguous(text, i + 1) else "\\")
        elif _unsafe(c) or (i == 0 and _is_mark(c)):
            out.append(_escape(c))
        else:
            out.append(c)
    return "".join(out)


def _backslash_is_ambiguous(text: str, after: int) -> bool:
    """Whether a backslash before ``text[after:]`` would read as (part of) an escape."""
    if after >= len(text):
        return False
    nxt = text[after]
    return nxt == "\\" or _unsafe(nxt) or _ESCAPE_BODY.match(text, after) is not None


def _printable(text: str) -> str:
    """Escape what is unsafe in ``text``, leaving backslashes alone.

    The cutting functions take text that is already clean (lines built from
    clean names); this makes them safe on any text without changing clean
    text (clean() is not idempotent: it would double its own backslashes).
    """
    if text.isprintable() and not _INVISIBLE.intersection(text):
        return text
    return "".join(_escape(c) if _unsafe(c) else c for c in text)


def _char_columns(c: str) -> int:
    """Terminal columns of one character (as wcwidth counts them; controls: 0)."""
    if unicodedata.category(c) in ("Mn", "Me", "Cf", "Cc"):
        return 0
    if "\u1160" <= c <= "\u11ff":  # Hangul medial vowels and final consonants join the syllable
        return 0
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1


def columns(text: str) -> int:
    """The width of ``text`` on a terminal, in columns.

    East Asian wide and fullwidth characters take two columns, combining
    marks none. Meant for clean text: a control character counts as 0.
    """
    if text.isascii():
        return sum(1 for c in text if c.isprintable())
    return sum(_char_columns(c) for c in text)


def fit(text: str, width: int) -> str:
    """The start of ``text`` that fits in ``width`` columns (cut without a mark).

    A wide character that would straddle the edge is left out whole;
    combining marks stay with their base character.
    """
    text = _printable(text)
    used = 0
    for i, c in enumerate(text):
        used += _char_columns(c)
        if used > width:
            return text[:i]
    return text


def tail(text: str, width: int) -> str:
    """The end of ``text`` that fits in ``width`` columns (cut without a mark).

    It never starts with a combining mark whose base was cut off.
    """
    text = _printable(text)
    used = 0
    start = 0
    for i in range(len(text) - 1, -1, -1):
        used += _char_columns(text[i])
        if used > width:
            start = i + 1
            break
    while start < len(text) and _char_columns(text[start]) == 0:
        start += 1  # marks of a base character that did not fit
    if start == 0:
        return text
    return text[start:]


def fit_tail(text: str, width: int) -> str:
    """``text``, or ``...`` and as much of its end as fits in ``width`` columns.

    For paths, whose end (the file name) says most.
    """
    text = _printable(text)
    if columns(text) <= width:
        return text
    if width <= len(ELLIPSIS):
        return ELLIPSIS[: max(width, 0)]
    return ELLIPSIS + tail(text, width - len(ELLIPSIS))


def fit_middle(text: str, width: int) -> str:
    """``text``, or its start and end around ``...``, in ``width`` columns."""
    text = _printable(text)
    if columns(text) <= width:
        return text
    if width <= len(ELLIPSIS):
        return ELLIPSIS[: max(width, 0)]
    room = width - len(ELLIPSIS)
    head = fit(text, (room + 1) // 2)
    return head + ELLIPSIS + tail(text, room - columns(head))


def pad(text: str, width: int, *, right: bool = False) -> str:
    """``text`` padded with spaces to ``width`` columns (``str.ljust`` by columns).

    ``right``: aligned to the right instead. Text wider than ``width`` is
    returned as it is: a table grows rather than cut a name.
    """
    text = _printable(text)
    fill = " " * max(0, width - columns(text))
    return fill + text if right else text + fill


def _json_escape(c: str) -> str:
    cp = ord(c)
    if cp <= 0xFFFF:
        return f"\\u{cp:04x}"
    cp -= 0x10000  # JSON writes a character beyond the BMP as a UTF-16 pair
    return f"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04x}"


def json_text(obj: Any) -> str:
    """``obj`` as one line of JSON that is exact and safe on a terminal.

    Like ``json.dumps(obj, ensure_ascii=False)`` (names stay readable), but
    every character :func:`clean` would escape is written as a JSON
    ``\\uXXXX`` escape: json.dumps leaves C1 controls, DEL, bidi overrides,
    line separators and lone surrogates raw, which would drive a terminal or
    fail to encode. ``json.loads`` gives back exactly ``obj``.
    """
    text = json.dumps(obj, ensure_ascii=False)
    if text.isprintable() and not _INVISIBLE.intersection(text):
        return text
    # outside strings json.dumps writes only printable ASCII, so every
    # character replaced here is inside a string, where \\u escapes are valid
    return "".join(_json_escape(c) if _unsafe(c) else c for c in text)


# ------------------------------------------------------------ human figures
def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_duration(seconds: float) -> str:
    """``75`` -> ``"1:15"``, ``3700`` -> ``"1:01:40"``."""
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def line_width() -> int:
    """The columns a status line may fill on this terminal."""
    # one column short of the terminal: a line that wraps spoils the redraw
    return shutil.get_terminal_size((100, 20)).columns - 1


# ---------------------------------------------------------- progress lines
class ProgressLine:
    """Redraws one status line on a terminal, at most every ``interval`` s.

    A reporter for an engine operation run by the command line; the rate
    and ETA are :class:`RateEstimator`'s, as in the agent's ``backup:progress``.
    """

    def __init__(self, verb: str, stream: TextIO | None = None, interval: float = 0.2) -> None:
        self.verb = verb
        self.stream = stream or sys.stderr
        self.interval = interval
        self._last = 0.0
        self._shown = False
        self._rate = RateEstimator()
        self.enabled = self.stream.isatty()

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not p.final and now - self._last < self.interval:
            return
        self._last = now
        pct = 100.0 * p.bytes_done / p.bytes_total if p.bytes_total else 0.0
        rate = self._rate.update(p.elapsed, p.bytes_done)
        left = self._rate.eta(p.bytes_total - p.bytes_done) if p.scan_finished else 0
        eta = f"  ETA {human_duration(left)}" if left else ""
        text = (
            f"[{human_duration(p.elapsed)}] {pct:5.1f}%  {human_bytes(p.bytes_done)} / "
            f"{human_bytes(p.bytes_total)}  {human_bytes(rate)}/s{eta}  "
            f"{p.files_done}/{p.files_total} files"
        )
        width = line_width()
        room = width - columns(text) - 2
        if p.current_file and not p.final and room > 8:
            # the name comes from the disk or the repository: it may hold
            # escape sequences, a newline, or characters two columns wide
            text += "  " + fit_tail(clean(p.current_file), room)
        self.stream.write("\r" + pad(fit(text, width), width))
        self._shown = True
        if p.final:
            self.done()
        self.stream.flush()

    def done(self) -> None:
        """Move past the status line."""
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False
