"""The log window: the tail of the file, followed across appends and rotation, filtered."""

from __future__ import annotations

import logging
import logging.handlers
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtGui import QFont, QGuiApplication

from desktop_agent.ui.log_viewer import MAX_LINES, LogViewer


def record(n: int, level: str = "INFO", text: str = "") -> str:
    return f"2024-05-01 12:00:{n % 60:02d},123 {level} desktop_agent.jobs: {text or f'line {n}'}\n"


def append(path: Path, *lines: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(lines))


def shown(qtbot, path: Path | str | None) -> LogViewer:
    viewer = LogViewer(str(path) if path is not None else None)
    qtbot.addWidget(viewer)
    viewer.show()
    qtbot.waitExposed(viewer)
    return viewer


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "logs" / "desktop-agent.log"
    path.parent.mkdir()
    append(path, *(record(i) for i in range(5)))
    return path


def test_shows_the_last_lines_in_a_monospace_font(qtbot, tmp_path):
    path = tmp_path / "desktop-agent.log"
    append(path, *(record(i) for i in range(MAX_LINES + 500)))
    append(path, "an unfinished line")  # not shown until its newline arrives
    viewer = shown(qtbot, path)
    lines = viewer.shown_lines()
    assert len(lines) == MAX_LINES
    assert lines[0].endswith("line 500") and lines[-1].endswith(f"line {MAX_LINES + 499}")
    # the fixed-width font is asked for; which one Qt finds depends on the fonts installed
    assert viewer.view.font().styleHint() == QFont.StyleHint.TypeWriter
    assert viewer.windowTitle() == "Log - desktop-agent"
    assert viewer.message.text() == str(path)
    bar = viewer.view.verticalScrollBar()
    assert bar.value() == bar.maximum() > 0  # at the end
    append(path, " now finished\n")
    qtbot.waitUntil(lambda: viewer.shown_lines()[-1] == "an unfinished line now finished")


def test_follows_appended_lines_unless_scrolled_up(qtbot, log):
    viewer = shown(qtbot, log)
    assert viewer.following
    assert str(log) in viewer._watcher.files()
    assert not viewer._poll.isActive()  # the watcher is enough: no polling
    append(log, *(record(i, text=f"new {i}") for i in range(100)))
    qtbot.waitUntil(lambda: viewer.shown_lines()[-1].endswith("new 99"))
    bar = viewer.view.verticalScrollBar()
    assert bar.value() == bar.maximum() > 0
    bar.setValue(0)  # the user scrolls up to read
    append(log, record(1, text="later"))
    qtbot.waitUntil(lambda: viewer.shown_lines()[-1].endswith("later"))
    assert bar.value() == 0


def test_survives_rotation_by_the_real_handler(qtbot, log):
    viewer = shown(qtbot, log)
    logger = logging.getLogger("test_log_viewer.rotation")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.handlers.RotatingFileHandler(
        log, maxBytes=4000, backupCount=2, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    try:
        for i in range(200):  # about 80 bytes each: several rollovers
            logger.info("rotating %03d", i)
            if i % 40 == 0:  # let the viewer read now and then, as it would
                qtbot.wait(200)
        qtbot.waitUntil(lambda: viewer.shown_lines()[-1].endswith("rotating 199"))
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert Path(f"{log}.1").exists()
    numbers = [int(line[-3:]) for line in viewer.shown_lines() if "rotating" in line]
    assert numbers == sorted(numbers) and numbers[-1] == 199


def test_rotation_keeps_the_lines_written_just_before_it(qtbot, log):
    viewer = shown(qtbot, log)
    # no events are processed between these steps: the viewer sees them all at once
    append(log, record(7, text="last words of the old file"))
    os.rename(log, f"{log}.1")
    append(log, record(8, text="first of the new file"))
    qtbot.waitUntil(lambda: viewer.shown_lines()[-1].endswith("first of the new file"))
    assert viewer.shown_lines()[-2].endswith("last words of the old file")
    append(log, record(9, text="and it goes on"))  # the new file is watched
    qtbot.waitUntil(lambda: viewer.shown_lines()[-1].endswith("and it goes on"))


def test_truncation_starts_over(qtbot, log):
    viewer = shown(qtbot, log)
    log.write_text(record(1, text="after truncation"), encoding="utf-8")
    qtbot.waitUntil(lambda: viewer.shown_lines()[-1].endswith("after truncation"))


def test_filters(qtbot, log):
    append(
        log,
        record(10, "WARNING", "disk almost full"),
        record(11, "ERROR", "Backup FAILED"),
        "Traceback (most recent call last):\n",
        '  File "x.py", line 1\n',
        record(12, "INFO", "backup failed? no, fine"),
    )
    viewer = shown(qtbot, log)
    viewer.filter.setText("failed")  # case-insensitive substring
    assert [line.split(": ", 1)[1] for line in viewer.shown_lines()] == [
        "Backup FAILED",
        "backup failed? no, fine",
    ]
    viewer.filter.setText("")
    viewer.level.setCurrentText("Warnings and errors")
    # the traceback belongs to the error above it
    assert viewer.shown_lines() == [
        record(10, "WARNING", "disk almost full").rstrip(),
        record(11, "ERROR", "Backup FAILED").rstrip(),
        "Traceback (most recent call last):",
        '  File "x.py", line 1',
    ]
    append(log, record(13, "INFO", "quiet"), record(14, "ERROR", "loud"))
    qtbot.waitUntil(lambda: viewer.shown_lines()[-1].endswith("loud"))
    assert not any("quiet" in line for line in viewer.shown_lines())
    viewer.filter.setText("nothing like this")
    assert viewer.shown_lines() == []
    assert viewer.view.placeholderText() == "No lines match the filter"
    viewer.filter.setText("")
    viewer.level.setCurrentText("All")
    assert len(viewer.shown_lines()) == 12
    viewer.copy_all()
    assert QGuiApplication.clipboard().text() == viewer.view.toPlainText()


def test_missing_file_says_where_and_appears_later(qtbot, tmp_path):
    path = tmp_path / "logs" / "desktop-agent.log"
    viewer = shown(qtbot, path)
    assert viewer.message.text() == f"No log yet at {path}"
    assert viewer.view.placeholderText() == f"No log yet at {path}"
    assert not viewer.open_folder_button.isEnabled()
    assert viewer._poll.isActive()  # nothing to watch yet: poll, while visible
    path.parent.mkdir()
    append(path, record(1, text="hello"))
    qtbot.waitUntil(
        lambda: viewer.shown_lines() == [record(1, text="hello").rstrip()], timeout=6000
    )
    assert viewer.message.text() == str(path)
    assert viewer.open_folder_button.isEnabled()
    assert not viewer._poll.isActive()


def test_no_log_path_names_the_default_location(qtbot, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    viewer = shown(qtbot, None)
    assert viewer.message.text().startswith("No log yet at ")
    assert viewer.message.text().endswith("desktop-agent.log")


def test_a_hidden_window_costs_nothing(qtbot, log):
    viewer = shown(qtbot, log)
    viewer.hide()
    assert not viewer.following
    assert viewer._watcher.files() == [] and viewer._watcher.directories() == []
    assert not viewer._poll.isActive() and not viewer._settle.isActive()
    append(log, record(1, text="while hidden"))
    qtbot.wait(300)
    assert not viewer.shown_lines()[-1].endswith("while hidden")
    viewer.show()  # catches up at once
    assert viewer.shown_lines()[-1].endswith("while hidden")


@pytest.fixture(autouse=True)
def _no_log_folder_opening(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    opened: list[str] = []
    monkeypatch.setattr(
        "desktop_agent.ui.log_viewer.QDesktopServices.openUrl",
        lambda url: opened.append(url.toLocalFile()) or True,
    )
    yield opened


def test_open_log_folder(qtbot, log, _no_log_folder_opening):
    viewer = shown(qtbot, log)
    viewer.open_folder_button.click()
    assert _no_log_folder_opening == [str(log.parent)]
