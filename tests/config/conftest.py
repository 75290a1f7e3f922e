"""Fixtures for the config tests: a private HOME and XDG tree, and a controllable keyring."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import keyring
import keyring.backend
import keyring.backends.fail
import pytest


class MemoryKeyring(keyring.backend.KeyringBackend):
    """A keyring backend that keeps passwords in a dict (the real API, no OS store)."""

    priority = 1

    def __init__(self) -> None:
        super().__init__()
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.passwords.pop((service, username), None)


class BrokenKeyring(MemoryKeyring):
    """A backend whose every call fails, as a locked or half-configured OS keyring does."""

    def get_password(self, service: str, username: str) -> str | None:
        raise RuntimeError("the keyring daemon went away")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point HOME and the XDG directories into tmp_path; clear our environment variables."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name, sub in [
        ("XDG_CONFIG_HOME", "xdg-config"),
        ("XDG_DATA_HOME", "xdg-data"),
        ("XDG_STATE_HOME", "xdg-state"),
        ("XDG_CACHE_HOME", "xdg-cache"),
    ]:
        monkeypatch.setenv(name, str(tmp_path / sub))
    monkeypatch.delenv("DESKTOP_AGENT_CONFIG", raising=False)
    monkeypatch.delenv("DESKTOP_AGENT_PASSWORD", raising=False)
    return home


@pytest.fixture(autouse=True)
def no_keyring() -> Iterator[None]:
    """Never touch the machine's real keyring: start every test with the 'no backend' one."""
    previous = keyring.get_keyring()
    keyring.set_keyring(keyring.backends.fail.Keyring())
    yield
    keyring.set_keyring(previous)


@pytest.fixture
def memory_keyring() -> MemoryKeyring:
    """Install and return an in-memory keyring backend for this test."""
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    return backend


@pytest.fixture
def broken_keyring() -> BrokenKeyring:
    """Install a keyring backend that raises on every call."""
    backend = BrokenKeyring()
    keyring.set_keyring(backend)
    return backend
