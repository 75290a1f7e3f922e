"""Encodings restic inherits from Go, reproduced byte for byte.

restic serializes trees with Go's ``encoding/json`` and stores node names
through ``strconv.Quote``; timestamps are ``time.Time`` in RFC 3339 with
nanoseconds. Tree ids are the SHA-256 of those bytes, so matching Go exactly
lets our trees deduplicate against restic's (and vice versa).
"""

from __future__ import annotations

import calendar
import json
import re
import time

__all__ = [
    "go_quote_name",
    "go_unquote_name",
    "json_string",
    "format_time",
    "parse_time",
]

_SIMPLE_ESCAPES = {
    0x07: "\\a",
    0x08: "\\b",
    0x0C: "\\f",
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
    0x0B: "\\v",
    0x5C: "\\\\",
    0x22: '\\"',
}


def go_quote_name(raw: bytes) -> str:
    """``strconv.Quote(name)`` without the surrounding quotes.

    Invalid UTF-8 bytes become ``\\xNN``; non-printable runes become Go
    escapes, so the result is always valid, printable Unicode.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", "surrogateescape")
    else:
        if text.isprintable() and '"' not in text and "\\" not in text:
            return text
    out: list[str] = []
    for ch in text:
        cp = ord(ch)
        if 0xDC80 <= cp <= 0xDCFF:  # an undecodable byte (surrogateescape)
            out.append(f"\\x{cp - 0xDC00:02x}")
        elif cp in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[cp])
        elif ch.isprintable():
            out.append(ch)
        elif cp < 0x20 or cp == 0x7F:
            out.append(f"\\x{cp:02x}")
        elif cp < 0x10000:
            out.append(f"\\u{cp:04x}")
        else:
            out.append(f"\\U{cp:08x}")
    return "".join(out)


_UNQUOTE_RE = re.compile(
    r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3}|[abfnrtv\\'\"])"
)
_UNQUOTE_SIMPLE = {
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "v": b"\v",
    "\\": b"\\",
    "'": b"'",
    '"': b'"',
}


def go_unquote_name(quoted: str) -> bytes:
    """Inverse of :func:`go_quote_name`: the raw name bytes.

    Raises ``ValueError`` on an escape Go would reject.
    """
    if "\\" not in quoted:
        return quoted.encode("utf-8", "surrogateescape")
    out = bytearray()
    pos = 0
    for m in _UNQUOTE_RE.finditer(quoted):
        if m.start() != pos and "\\" in quoted[pos : m.start()]:
            raise ValueError(f"invalid escape in name {quoted!r}")
        out += quoted[pos : m.start()].encode("utf-8")
        esc = m.group(1)
        kind = esc[0]
        if kind == "x":
            out.append(int(esc[1:], 16))
        elif kind in "uU":
            point = int(esc[1:], 16)
            if point > 0x10FFFF:  # Go rejects it; chr() would overflow
                raise ValueError(f"invalid escape in name {quoted!r}")
            out += chr(point).encode("utf-8", "surrogatepass")
        elif kind.isdigit():
            value = int(esc, 8)
            if value > 255:
                raise ValueError(f"invalid octal escape in name {quoted!r}")
            out.append(value)
        else:
            out += _UNQUOTE_SIMPLE[kind]
        pos = m.end()
    rest = quoted[pos:]
    if "\\" in rest:
        raise ValueError(f"invalid escape in name {quoted!r}")
    out += rest.encode("utf-8")
    return bytes(out)


_HTML_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
    # Go writes each byte of invalid UTF-8 as the escape \ufffd (not the raw rune)
    | {chr(c): "\\ufffd" for c in range(0xD800, 0xE000)}
)


def json_string(text: str) -> str:
    """A JSON string literal exactly as Go's ``encoding/json`` writes it.

    Go escapes ``<``, ``>``, ``&``, U+2028 and U+2029 and keeps other
    non-ASCII text as UTF-8. Lone surrogates (undecodable bytes) become the
    escape ``\\ufffd``, as Go writes invalid UTF-8.
    """
    if _NEEDS_ESCAPE.search(text) is None:  # the common case, 10x faster
        return '"' + text + '"'
    return json.dumps(text, ensure_ascii=False).translate(_HTML_ESCAPES)


_NEEDS_ESCAPE = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029\ud800-\udfff]')


_offset_cache: dict[int, str] = {}


def _offset_suffix(offset: int) -> str:
    suffix = _offset_cache.get(offset)
    if suffix is None:
        if offset == 0:
            suffix = "Z"
        else:
            sign = "+" if offset > 0 else "-"
            minutes = abs(offset) // 60
            suffix = f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
        _offset_cache[offset] = suffix
    return suffix


_second_cache: dict[int, tuple[str, str]] = {}


def format_time(ns: int, *, utc: bool = False) -> str:
    """Go's RFC 3339 with nanoseconds (``time.RFC3339Nano``) in local time.

    Trailing zeros of the fraction are dropped, a zero offset is written
    ``Z``. Years outside 0..9999 are clamped as restic's ``fixTime`` does.
    """
    sec, frac = divmod(ns, 1_000_000_000)
    if not utc:
        # trees hold many times within the same second: format it once
        hit = _second_cache.get(sec)
        if hit is None:
            if len(_second_cache) > 100_000:
                _second_cache.clear()
            whole = _format_time(sec, 0, False)
            hit = (whole[:19], whole[19:])
            _second_cache[sec] = hit
        if frac:
            return hit[0] + "." + str(frac).zfill(9).rstrip("0") + hit[1]
        return hit[0] + hit[1]
    return _format_time(sec, frac, utc)


def _format_time(sec: int, frac: int, utc: bool) -> str:
    try:
        tm = time.gmtime(sec) if utc else time.localtime(sec)
    except (OverflowError, OSError, ValueError):
        tm = time.gmtime(0 if sec < 0 else 253402300799)
    year = min(max(tm.tm_year, 0), 9999)
    text = (
        f"{year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}T"
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
    )
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + _offset_suffix(0 if utc else (tm.tm_gmtoff or 0))


_TIME_RE = re.compile(
    r"(-?\d{4,})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([Zz])|([+-])(\d\d):(\d\d))$"
)


_parse_cache: dict[str, int] = {}


def parse_time(text: str) -> int:
    """Parse an RFC 3339 timestamp into nanoseconds since the epoch."""
    # Fast path for what restic and we write: "YYYY-MM-DDTHH:MM:SS[.f]<zone>".
    # Trees hold many times within one second: the seconds part is cached.
    if len(text) >= 20 and text[4] == "-" and text[10] == "T" and text[19] in ".Z+-":
        if text[19] == ".":
            end = 20
            while end < len(text) and text[end].isdigit():
                end += 1
            frac = text[20:end]
            zone = text[end:]
        else:
            frac, zone = "", text[19:]
        key = text[:19] + zone
        seconds = _parse_cache.get(key)
        if seconds is None:
            seconds = _parse_slow(text[:19] + zone) // 1_000_000_000
            if len(_parse_cache) > 100_000:
                _parse_cache.clear()
            _parse_cache[key] = seconds
        if frac and len(frac) <= 9 and frac.isdigit():
            return seconds * 1_000_000_000 + int(frac.ljust(9, "0"))
        if not frac:
            return seconds * 1_000_000_000
    return _parse_slow(text)


def _parse_slow(text: str) -> int:
    m = _TIME_RE.match(text)
    if not m:
        raise ValueError(f"invalid timestamp {text!r}")
    year, mon, day, hour, minute, sec = (int(m.group(i)) for i in range(1, 7))
    frac = m.group(7) or ""
    ns = int((frac + "000000000")[:9]) if frac else 0
    seconds = calendar.timegm((year, mon, day, hour, minute, sec, 0, 0, 0))
    if m.group(9):
        offset = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        seconds -= offset if m.group(9) == "+" else -offset
    return seconds * 1_000_000_000 + ns
