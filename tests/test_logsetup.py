"""The log is private (directory 0700, files 0600 after rotation); user notices reach stderr."""

from __future__ import annotations

import logging
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from desktop_agent.config import user_log_dir
from desktop_agent.config.privatefile import USER_NOTICE
from desktop_agent.logsetup import LOG_NAME, PrivateRotatingFileHandler, setup_logging

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private XDG state directory, where the log directory lives on Linux."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture(autouse=True)
def root_logger() -> Iterator[None]:
    """Undo what setup_logging does to the root logger."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """umask 0: whatever is not set explicitly comes out world-readable (and writable)."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_a_new_log_directory_and_file_are_private(loose_umask: None, state_home: Path) -> None:
    path = setup_logging()
    assert path is not None
    log_dir = user_log_dir()
    assert Path(path) == log_dir / LOG_NAME
    logging.getLogger("desktop_agent.test").warning("backing up /home/me/secret-project")
    assert "secret-project" in Path(path).read_text()
    assert mode(log_dir) == 0o700
    assert mode(Path(path)) == 0o600
    # the parents it had to create too: they lead to the log and say what is backed up
    assert mode(log_dir.parent) == 0o700


def test_an_existing_open_log_directory_and_its_files_are_narrowed(loose_umask: None) -> None:
    log_dir = user_log_dir()
    log_dir.mkdir(parents=True)
    log_dir.chmod(0o755)
    for name in (LOG_NAME, f"{LOG_NAME}.1", f"{LOG_NAME}.3"):
        (log_dir / name).write_text("old lines\n")
        (log_dir / name).chmod(0o644)
    (log_dir / "unrelated.txt").write_text("")
    (log_dir / "unrelated.txt").chmod(0o644)

    setup_logging()

    assert mode(log_dir) == 0o700
    for name in (LOG_NAME, f"{LOG_NAME}.1", f"{LOG_NAME}.3"):
        assert mode(log_dir / name) == 0o600, name
    assert mode(log_dir / "unrelated.txt") == 0o644  # not ours to change


def test_rotated_logs_stay_private(loose_umask: None, tmp_path: Path) -> None:
    path = tmp_path / "rot.log"
    handler = PrivateRotatingFileHandler(path, maxBytes=200, backupCount=3, encoding="utf-8")
    logger = logging.getLogger("desktop_agent.test.rotation")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for i in range(40):
            logger.warning("line %d of a log that names /home/me/taxes", i)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        handler.close()
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("rot.log"))
    assert files == ["rot.log", "rot.log.1", "rot.log.2", "rot.log.3"]
    for name in files:
        assert mode(tmp_path / name) == 0o600, name


def test_the_handler_appends(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_text("before\n")
    handler = PrivateRotatingFileHandler(path, maxBytes=10_000, backupCount=1, encoding="utf-8")
    handler.emit(logging.makeLogRecord({"msg": "after", "levelno": logging.INFO}))
    handler.close()
    assert path.read_text() == "before\nafter\n"


# ---------------------------------------------------------------- stderr


def notice(text: str) -> None:
    logging.getLogger("desktop_agent.config.test").warning(text, extra={USER_NOTICE: True})


def test_without_stderr_logging_only_user_notices_reach_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = setup_logging(stderr=False)
    logging.getLogger("desktop_agent.test").warning("an ordinary warning")
    notice("/x/config.toml can be read by other users; run: chmod 600 /x/config.toml")
    err = capsys.readouterr().err
    assert err == (
        "desktop-agent: warning: /x/config.toml can be read by other users; "
        "run: chmod 600 /x/config.toml\n"
    )
    assert path is not None
    logged = Path(path).read_text()
    assert "an ordinary warning" in logged and "chmod 600 /x/config.toml" in logged


def test_with_stderr_logging_a_notice_is_shown_once(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(stderr=True)
    logging.getLogger("desktop_agent.test").warning("an ordinary warning")
    notice("chmod 600 /x/config.toml")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("WARNING desktop_agent.test: an ordinary warning")
    assert lines[1].endswith("chmod 600 /x/config.toml")


def test_no_stderr_at_all_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", None)  # pythonw / a windowed build
    path = setup_logging(stderr=False)
    notice("still logged")
    assert path is not None and "still logged" in Path(path).read_text()


def test_a_message_cannot_forge_a_log_line_or_drive_the_terminal() -> None:
    from desktop_agent.logsetup import OneLineFormatter

    fmt = OneLineFormatter("%(levelname)s %(message)s")
    name = "evil\n2026-01-01 00:00:00 INFO forged: all good\x1b]0;pwned\x07"
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "skipped %s", (name,), None)
    text = fmt.format(record)
    assert "\n" not in text and "\x1b" not in text and "\x07" not in text
    assert text.startswith("WARNING skipped evil\\n2026-01-01")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "Traceback (most recent call last):\n" in fmt.format(record)
