"""What ``remote watch`` shows (:mod:`desktop_agent.cli.remote_watch`): the live
display on a terminal, lines elsewhere, JSON with ``--json``; nothing from the
agent can drive the terminal."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from desktop_agent.cli.remote_client import Message
from desktop_agent.cli.remote_watch import JsonPrinter, LinePrinter, LivePrinter, Watcher
from desktop_agent.protocol import (
    BackupCompleted,
    BackupFailed,
    BackupProgress,
    BackupStarted,
    JobId,
    RestoreCompleted,
    RestoreFailed,
    RestorePaused,
    RestoreProgress,
    RestoreResumed,
    RestoreStarted,
    UpkeepCompleted,
    UpkeepFailed,
    UpkeepPaused,
    UpkeepProgress,
    UpkeepResumed,
    UpkeepStarted,
    encode_event,
)


def _msg(event: Any) -> Message:
    text = encode_event(event)
    return Message(event, json.loads(text))


def _progress(job: str, percent: float, current: str | None) -> BackupProgress:
    return BackupProgress(JobId(job), percent, 1024, 4096, 512, 3, current, 1, 4)


def test_the_live_display_redraws_one_line_per_job_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    out = io.StringIO()
    watcher = Watcher(LivePrinter(out), once=True)
    a, b = "a" * 36, "b" * 36
    for event in (
        BackupStarted(JobId(a)),
        BackupStarted(JobId(b)),
        _progress(a, 25.0, "/data/" + "x" * 200 + "/evil\x1b[2Jname\n"),
        _progress(b, 50.0, "/data/" + "\u5bb6" * 60),
    ):
        watcher.handle(_msg(event))
    watcher.printer.flush(watcher.active)
    screen = out.getvalue()
    # a file name cannot drive the terminal
    assert "\x1b[2J" not in screen and "evil\\x1b[2Jname\\n" in screen
    assert "\r\x1b[2A\x1b[J" in screen  # back up over the two job lines and redraw
    lines = screen.rsplit("\x1b[J", 1)[1].splitlines()  # the last redraw
    assert len(lines) == 2
    assert lines[0].startswith(
        "aaaaaaaa [####............]  25.0% 1.0 KiB/4.0 KiB 512 B/s ETA 0:03"
    )
    assert lines[1].startswith("bbbbbbbb [########........]  50.0%")
    assert "1/4 files  /data/x" not in lines[0] and "1/4 files  ..." in lines[0]
    assert lines[0].endswith("name\\n")  # the end of a long path is kept, escaped
    # a wide character takes two columns: no line is wider than the terminal
    assert all(len(line) + line.count("\u5bb6") <= 99 for line in lines)

    watcher.handle(_msg(BackupCompleted(JobId(a), 4096)))
    assert screen.count("completed") == 0
    assert out.getvalue().rsplit("\x1b[J", 1)[1].startswith(f"{a} completed: 4.0 KiB\nbbbbbbbb [")
    assert not watcher.finished
    watcher.handle(_msg(BackupFailed(JobId(b), "cancelled")))
    assert watcher.finished
    assert out.getvalue().rsplit("\x1b[J", 1)[1] == f"{b} failed: cancelled\n"


def test_lines_and_json_from_the_agent_cannot_drive_the_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    a = "a" * 36
    evil = "/data/\x1b]0;pwned\x07\u009b2J\u202e\r\nb completed: 1 B"
    out = io.StringIO()
    lines = Watcher(LinePrinter(out))
    for event in (_progress(a, 10.0, evil), BackupFailed(JobId(a), "disk \x1b[2J\nfull")):
        lines.handle(_msg(event))
    shown = out.getvalue().split("\n")
    assert shown[-1] == "" and len(shown) == 3  # one line per event, nothing forged
    assert all(line.isprintable() for line in shown)
    assert shown[0].endswith("\\x1b]0;pwned\\x07\\u009b2J\\u202e\\r\\nb completed: 1 B")
    assert shown[1] == f"{a} failed: disk \\x1b[2J\\nfull"

    # --json: the agent's payloads exactly, with the dangerous characters \u-escaped
    as_json = Watcher(JsonPrinter())
    as_json.handle(_msg(_progress(a, 10.0, evil)))
    (line,) = capsys.readouterr().out.splitlines()
    assert line.isprintable()
    assert json.loads(line)["payload"]["current_file"] == evil


def test_restores_are_watched_like_backups_and_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    r, b = "r" * 36, "b" * 36
    out = io.StringIO()
    lines = Watcher(LinePrinter(out), once=True)
    for event in (
        RestoreStarted(JobId(r), "ab" * 32, "/home/me/Downloads/Restored \udcff"),
        RestoreProgress(JobId(r), 40.0, 1024, 4096, 512, 3, "/x/a.txt", 1, 4),
        RestorePaused(JobId(r)),
        RestoreResumed(JobId(r)),
        RestoreCompleted(JobId(r), 4096),
    ):
        lines.handle(_msg(event))
    assert lines.finished
    assert out.getvalue().splitlines() == [
        f"{r} restore of snapshot abababab into /home/me/Downloads/Restored \\xff started",
        f"{r} restore  40.0%  1.0 KiB / 4.0 KiB  512 B/s  ETA 0:03  1/4 files  /x/a.txt",
        f"{r} restore paused",
        f"{r} restore resumed",
        f"{r} restore completed: 4.0 KiB",
    ]

    live = io.StringIO()
    watcher = Watcher(LivePrinter(live), once=True)
    watcher.handle(_msg(BackupStarted(JobId(b))))
    watcher.handle(_msg(RestoreProgress(JobId(r), 40.0, 1024, 4096, 512, 3, None, 1, 4)))
    watcher.printer.flush(watcher.active)
    shown = live.getvalue().rsplit("\x1b[J", 1)[1].splitlines()
    assert shown[0] == "bbbbbbbb waiting to start"
    assert shown[1].startswith("rrrrrrrr restore [######..........]  40.0%")
    watcher.handle(_msg(RestoreFailed(JobId(r), "cancelled")))
    assert f"{r} restore failed: cancelled" in live.getvalue()
    assert not watcher.finished  # the backup is still active


def test_upkeep_is_watched_to_its_end_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    u = "u" * 36
    out = io.StringIO()
    lines = Watcher(LinePrinter(out), once=True)
    for event in (
        UpkeepStarted(JobId(u), "check"),
        UpkeepProgress(JobId(u), 50.0, 2048, 4096, 1024, 2, None, 3, 6),
        UpkeepPaused(JobId(u)),
        UpkeepResumed(JobId(u)),
    ):
        lines.handle(_msg(event))
    assert not lines.finished  # `remote watch --once` waits for the end of upkeep too
    lines.handle(_msg(UpkeepCompleted(JobId(u), "check", "checked 1/20 of the data: no errors")))
    assert lines.finished
    assert out.getvalue().splitlines() == [
        f"{u} upkeep (check) started",
        f"{u} upkeep  50.0%  2.0 KiB / 4.0 KiB  1.0 KiB/s  ETA 0:02  3/6 files",
        f"{u} upkeep paused",
        f"{u} upkeep resumed",
        f"{u} upkeep completed: checked 1/20 of the data: no errors",
    ]
    live = io.StringIO()
    watcher = Watcher(LivePrinter(live), once=True)
    watcher.handle(_msg(UpkeepProgress(JobId(u), 40.0, 1024, 4096, 512, 3, None, 1, 4)))
    watcher.printer.flush(watcher.active)
    assert live.getvalue().rsplit("\x1b[J", 1)[1].startswith("uuuuuuuu upkeep [######")
    watcher.handle(_msg(UpkeepFailed(JobId(u), "cancelled")))
    assert f"{u} upkeep failed: cancelled" in live.getvalue() and watcher.finished
