"""Opening the repository (:mod:`desktop_agent.cli.common`): every way it fails is one line."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import threading

from clisupport import ENV, one_line_error
from support import PASSWORD, write_config

from desktop_agent.cli import common
from desktop_agent.config import load_or_create
from desktop_agent.engine import crypto
from desktop_agent.engine import unlock as unlock_mod
from desktop_agent.engine.repository import RepoConfig, Repository
from desktop_agent.engine.storage import FileType, LocalStorage


def test_wrong_password(cli, setup):
    _src, cfg = setup
    assert cli("--config", str(cfg), "init", env=ENV).returncode == 0
    bad = cli("--config", str(cfg), "snapshots", env={"DESKTOP_AGENT_PASSWORD": "nope"})
    one_line_error(bad, "wrong password")


def test_not_a_repository(tmp_path, cli, setup):
    _src, cfg = setup
    proc = cli("--config", str(cfg), "backup", env=ENV)
    one_line_error(proc, "no repository", "init")
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "holiday.jpg").write_bytes(b"jpeg")
    proc = cli("--config", str(cfg), "snapshots", env=ENV)
    one_line_error(proc, "no repository")
    proc = cli("--config", str(cfg), "init", env=ENV)
    one_line_error(proc, "not empty")
    assert (tmp_path / "repo" / "holiday.jpg").read_bytes() == b"jpeg"


def test_newer_repository_version_is_refused(tmp_path, cli, setup):
    _src, cfg = setup
    assert cli("--config", str(cfg), "init", env=ENV).returncode == 0
    storage = LocalStorage(tmp_path / "repo")
    repo = Repository.open(storage, PASSWORD)
    newer = RepoConfig(3, repo.config.id, repo.config.chunker_polynomial)
    os.chmod(storage.path(FileType.CONFIG, ""), 0o600)
    storage.save(FileType.CONFIG, "", [crypto.encrypt(repo.key, newer.to_bytes())])
    proc = cli("--config", str(cfg), "backup", env=ENV)
    one_line_error(proc, "version 3", "not supported")


# ------------------------------------------- the key derived beside the imports
def test_the_command_line_starts_without_the_engine():
    """Parsing and the configuration need no engine: it is imported while the
    key is derived (see open_repository)."""
    code = (
        "import sys, desktop_agent.cli.entry as e; e.build_parser(); "
        "print(sorted(m for m in sys.modules if m.startswith('desktop_agent.engine.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = set(ast.literal_eval(out))
    for heavy in ("repository", "backup", "restore", "check", "forget", "prune", "index"):
        assert f"desktop_agent.engine.{heavy}" not in loaded


def test_the_key_is_derived_on_a_thread_while_the_engine_is_imported(
    tmp_path, new_repo, monkeypatch
):
    repo = new_repo(tmp_path / "repo")
    cfg = write_config(tmp_path / "config.toml", repo=tmp_path / "repo", sources=[tmp_path])
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    config = load_or_create(cfg)
    seen: list[tuple[str, bool]] = []
    real_unlock = unlock_mod.unlock
    real_import = importlib.import_module

    def unlock(storage, password):
        result = real_unlock(storage, password)
        seen.append(("unlock", threading.current_thread() is threading.main_thread()))
        return result

    def import_module(name, *args):
        seen.append((name, threading.current_thread() is threading.main_thread()))
        return real_import(name, *args)

    monkeypatch.setattr(unlock_mod, "unlock", unlock)
    monkeypatch.setattr(common.importlib, "import_module", import_module)
    opened = common.open_repository(config, imports=["desktop_agent.engine.backup"])
    assert opened.config.id == repo.config.id
    assert ("unlock", False) in seen  # not on the main thread
    assert ("desktop_agent.engine.backup", True) in seen
