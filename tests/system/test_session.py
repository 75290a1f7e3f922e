"""'Once per login session' markers: the runtime directory, or the session's identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from desktop_agent.system import session
from desktop_agent.system.session import first_time_this_session, session_id


def test_in_the_runtime_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = tmp_path / "run-user-1000"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert first_time_this_session("first-run-a") is True
    assert first_time_this_session("first-run-a") is False
    assert first_time_this_session("first-run-a") is False
    assert first_time_this_session("first-run-b") is True  # another configuration
    assert (runtime / "desktop-agent" / "first-run-a").exists()
    # the next login: the system emptied the runtime directory
    for marker in (runtime / "desktop-agent").iterdir():
        marker.unlink()
    assert first_time_this_session("first-run-a") is True


def test_without_a_runtime_directory_the_session_identity_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    current = ["boot-1:7"]
    monkeypatch.setattr(session, "session_id", lambda: current[0])
    assert first_time_this_session("first-run-a") is True
    assert first_time_this_session("first-run-a") is False
    assert (tmp_path / "cache" / "desktop-agent" / "sessions" / "first-run-a").read_text() == (
        "boot-1:7\n"
    )
    current[0] = "boot-1:8"  # logged out and in again
    assert first_time_this_session("first-run-a") is True
    assert first_time_this_session("first-run-a") is False
    current[0] = "boot-2:8"  # rebooted
    assert first_time_this_session("first-run-a") is True


def test_boot_times_from_the_clocks_match_with_some_slack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    current = ["uptime:1700000000"]
    monkeypatch.setattr(session, "session_id", lambda: current[0])
    assert first_time_this_session("x") is True
    current[0] = "uptime:1700000003"  # the same boot, the clocks read a little apart
    assert first_time_this_session("x") is False
    current[0] = "uptime:1700090000"  # a day later: another boot
    assert first_time_this_session("x") is True


def test_linux_session_id_is_the_boot_id() -> None:
    boot_id = Path("/proc/sys/kernel/random/boot_id")
    if not boot_id.exists():
        pytest.skip("no boot id here")
    assert session_id().startswith(boot_id.read_text().strip())
    assert session_id() == session_id()
