"""The [server] section (the backup server the agent dials out to), its
credential and the agent's stable id."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from desktop_agent.config import ConfigError, ServerConfig, load, load_or_create, save
from desktop_agent.config.secrets import (
    SERVER_TOKEN_ENV,
    agent_id,
    dialout_token,
    store_dialout_token,
)


@pytest.fixture(autouse=True)
def _no_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.delenv(SERVER_TOKEN_ENV, raising=False)


def test_off_by_default_and_urls_checked(tmp_path: Path) -> None:
    config = load_or_create(tmp_path / "c.toml")
    assert config.server == ServerConfig() and config.server.url == ""
    on = replace(config, server=ServerConfig(url="wss://backup.example.com/agents"))
    save(on)
    assert load(on.path).server.url == "wss://backup.example.com/agents"
    text = on.path.read_text()
    for bad in ("https://backup.example.com", "backup.example.com", "wss://"):
        on.path.write_text(text.replace("wss://backup.example.com/agents", bad))
        with pytest.raises(ConfigError, match=r"\[server\] url: .* not a ws:// or wss:// URL"):
            load(on.path)


def test_the_credential_comes_from_the_environment_a_file_or_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_or_create(tmp_path / "c.toml")
    config = replace(config, server=ServerConfig(url="wss://b.example/agents"))
    assert dialout_token(config) is None
    where = store_dialout_token(config, "stored-token")
    assert "private file" in where and "stored-token" not in where
    assert dialout_token(config) == "stored-token"
    (tmp_path / "tok").write_text("file-token\n")
    os.chmod(tmp_path / "tok", 0o600)
    with_file = replace(config, server=replace(config.server, token_file="tok"))
    assert dialout_token(with_file) == "file-token"
    monkeypatch.setenv(SERVER_TOKEN_ENV, "env-token")
    assert dialout_token(with_file) == "env-token"
    # another server, another credential
    monkeypatch.delenv(SERVER_TOKEN_ENV)
    assert dialout_token(replace(config, server=ServerConfig(url="wss://c.example/"))) is None


def test_the_agent_id_is_made_once_and_kept(tmp_path: Path) -> None:
    config = load_or_create(tmp_path / "c.toml")
    first = agent_id(config)
    assert len(first) == 36 and agent_id(config) == first
    kept = tmp_path / "c-agent-id"
    assert kept.read_text().strip() == first
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    other = load_or_create(tmp_path / "other.toml")
    assert agent_id(other) != first


def test_an_agent_id_path_that_is_no_file_is_refused_in_one_line(tmp_path: Path) -> None:
    config = load_or_create(tmp_path / "c.toml")
    os.mkfifo(tmp_path / "c-agent-id")  # reading it would hang
    with pytest.raises(ConfigError, match=r"c-agent-id: is a named pipe \(FIFO\)"):
        agent_id(config)
