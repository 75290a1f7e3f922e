"""Opening the repository (:mod:`desktop_agent.cli.common`): every way it fails is one line."""

from __future__ import annotations

import os

from clisupport import ENV, one_line_error
from support import PASSWORD

from desktop_agent.engine import crypto
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
