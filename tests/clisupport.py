"""Helpers for the command-line tests (``tests/cli/``): how a user must see a
failure, and names that try to drive the terminal (fixtures that use them
are in ``tests/cli/conftest.py``)."""

from __future__ import annotations

from support import PASSWORD

ENV = {"DESKTOP_AGENT_PASSWORD": PASSWORD}


def no_traceback(proc) -> None:
    """Nothing the CLI printed is a traceback."""
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


def one_line_error(proc, *needles: str) -> None:
    """Exit 1 with one ``desktop-agent: error:`` line that names every needle."""
    no_traceback(proc)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert lines, "no error message"
    msg = lines[-1]
    assert msg.startswith("desktop-agent: error: ")
    for n in needles:
        assert n in msg, msg


# ------------------------------------------- names that try to drive the terminal
# A repository may be written by someone else, and a disk may hold any name:
# what the CLI prints must not move the cursor, set the title or forge lines.
FORGED = "snapshot 00000000 saved"

HOSTILE_DIR = "dir\x1b[31m"

HOSTILE_DIR_SHOWN = "dir\\x1b[31m"

HOSTILE_NAMES = [
    ("\x1b]0;pwned\x07title.txt", "\\x1b]0;pwned\\x07title.txt"),  # sets the window title
    ("\x1b[2Jclear.txt", "\\x1b[2Jclear.txt"),  # clears the screen
    ("cr\rforged.txt", "cr\\rforged.txt"),
    (f"nl\n{FORGED}", f"nl\\n{FORGED}"),
    ("bidi\u202etxt.exe", "bidi\\u202etxt.exe"),
    ("c1\u009b2J.txt", "c1\\u009b2J.txt"),  # the one-character CSI
]

RAW_NAME = b"raw\xff\x9bname"  # not UTF-8; 0x9b is CSI to an 8-bit terminal

RAW_NAME_SHOWN = "raw\\xff\\x9bname"

HOSTILE_HOST = f"evil\x1b]0;pwned\x07\x1b[2J\r\n{FORGED}\u202e"

HOSTILE_HOST_SHOWN = f"evil\\x1b]0;pwned\\x07\\x1b[2J\\r\\n{FORGED}\\u202e"

WIDE_HOST = "家のパソコン"  # two columns a character

HOSTILE_TAG = "tag\x1b[5m\nblink"

HOSTILE_TAG_SHOWN = "tag\\x1b[5m\\nblink"


def safe_lines(raw: bytes) -> list[str]:
    """The lines of an output, after checking that none could drive a terminal."""
    text = raw.decode("utf-8")  # strict: no raw undecodable byte got through
    assert text == "" or text.endswith("\n"), text
    lines = text.split("\n")[:-1]
    for line in lines:
        # no ESC, BEL, CR, C1 control, bidi override, line separator...
        assert line.isprintable(), ascii(line)
        assert not line.startswith(FORGED), line
    return lines
