"""Helpers for the Qt tests (importable as ``uisupport``; fixtures live in tests/ui/conftest.py)."""

from __future__ import annotations

from pathlib import Path

from support import FAST_KDF, PASSWORD

from desktop_agent.config import AgentConfig, BackupConfig, Config, RepositoryConfig
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import LocalStorage

TOKEN = "ui-test-token-0123456789"


def make_config(
    tmp_path: Path,
    sources: list[Path],
    *,
    init: bool = True,
    allow_remote_restore: bool = False,
) -> Config:
    """A config for a repository in tmp_path (created unless ``init`` is False)."""
    repo = tmp_path / "repo"
    if init and not repo.exists():
        Repository.init(LocalStorage(repo), PASSWORD, kdf_params=FAST_KDF)
    return Config(
        agent=AgentConfig(token=TOKEN, allow_remote_restore=allow_remote_restore),
        repository=RepositoryConfig(path=str(repo), password_file=None),
        backup=BackupConfig(sources=tuple(map(str, sources)), exclude=(), interval_minutes=0),
        path=tmp_path / "config.toml",
    )
