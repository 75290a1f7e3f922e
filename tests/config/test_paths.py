"""Platform locations and the choice of configuration file."""

from __future__ import annotations

from pathlib import Path

import pytest

from desktop_agent.config import (
    ConfigError,
    default_config_path,
    resolve_config_path,
    user_cache_dir,
    user_log_dir,
)


def test_default_config_path_follows_xdg_config_home(tmp_path: Path) -> None:
    assert default_config_path() == tmp_path / "xdg-config" / "desktop-agent" / "config.toml"


def test_log_and_cache_dirs_follow_xdg(tmp_path: Path) -> None:
    assert user_log_dir().is_relative_to(tmp_path / "xdg-state" / "desktop-agent")
    assert user_cache_dir() == tmp_path / "xdg-cache" / "desktop-agent"


def test_without_cli_or_env_the_default_is_used() -> None:
    assert resolve_config_path(None) == default_config_path()


def test_env_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DESKTOP_AGENT_CONFIG", str(tmp_path / "from-env.toml"))
    assert resolve_config_path(None) == tmp_path / "from-env.toml"


def test_cli_beats_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DESKTOP_AGENT_CONFIG", str(tmp_path / "from-env.toml"))
    assert resolve_config_path(str(tmp_path / "from-cli.toml")) == tmp_path / "from-cli.toml"


def test_empty_env_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DESKTOP_AGENT_CONFIG", "")
    assert resolve_config_path(None) == default_config_path()


def test_empty_cli_value_is_an_error() -> None:
    with pytest.raises(ConfigError, match="--config: the path is empty"):
        resolve_config_path("  ")


def test_tilde_is_expanded_and_relative_paths_made_absolute(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_config_path("~/agent.toml") == home / "agent.toml"
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("sub/agent.toml") == tmp_path / "sub" / "agent.toml"
    monkeypatch.setenv("DESKTOP_AGENT_CONFIG", "env.toml")
    assert resolve_config_path(None) == tmp_path / "env.toml"
