"""``init``, ``snapshots`` and ``check`` (:mod:`desktop_agent.cli.repository`)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from clisupport import (
    ENV,
    FORGED,
    HOSTILE_DIR_SHOWN,
    HOSTILE_HOST,
    HOSTILE_HOST_SHOWN,
    HOSTILE_TAG,
    HOSTILE_TAG_SHOWN,
    WIDE_HOST,
    safe_lines,
)
from support import PASSWORD, write_config

from desktop_agent.engine.ids import BlobType
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import FileType, LocalStorage
from desktop_agent.termtext import columns


def test_first_start_creates_config_and_init_generates_password(tmp_path, cli):
    cfg = tmp_path / "home" / ".config" / "desktop-agent" / "config.toml"
    proc = cli("token", env={"DESKTOP_AGENT_CONFIG": str(cfg)})
    assert proc.returncode == 0 and len(proc.stdout.strip()) >= 32
    assert cfg.stat().st_mode & 0o777 == 0o600
    init = cli("init", env={"DESKTOP_AGENT_CONFIG": str(cfg)})
    assert init.returncode == 0, init.stderr
    assert "keep a copy somewhere safe" in init.stdout
    pw_file = cfg.parent / "repository-password"
    assert pw_file.stat().st_mode & 0o777 == 0o600
    listing = cli("snapshots", env={"DESKTOP_AGENT_CONFIG": str(cfg)})
    assert listing.returncode == 0 and "no snapshots" in listing.stdout


def test_restic_written_repository_via_cli(tmp_path, cli, restic, odd_tree):
    src = odd_tree(tmp_path / "src")
    restic(tmp_path / "repo", "init")
    restic(tmp_path / "repo", "backup", str(src))
    cfg = write_config(tmp_path / "config.toml", repo=tmp_path / "repo", sources=[src])
    snaps = json.loads(cli("--config", str(cfg), "snapshots", "--json", env=ENV).stdout)
    assert len(snaps) == 1
    proc = cli("--config", str(cfg), "backup", env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "0 new, 0 changed" in proc.stdout
    restic(tmp_path / "repo", "check", "--read-data")
    assert Path(tmp_path / "repo" / "config").exists()


def test_snapshots_shows_hostile_hosts_and_tags_escaped_and_aligned(hostile, raw_cli):
    src, c, evil, wide = hostile
    proc = raw_cli(*c, "snapshots")
    assert proc.returncode == 0, proc.stderr
    assert safe_lines(proc.stderr) == []
    lines = safe_lines(proc.stdout)
    # header, rule, the hostile snapshot (two tags: two lines), the other one, rule, count
    assert len(lines) == 7, lines
    assert HOSTILE_HOST_SHOWN in lines[2] and HOSTILE_TAG_SHOWN in lines[2]
    assert lines[3].strip() == "ok"
    assert WIDE_HOST in lines[4]
    # the paths start in the same terminal column in every row: widths are
    # counted in columns, so the wide host name does not shift its row
    header = lines[0]
    at = columns(header[: header.index("Paths")])
    for row in (lines[2], lines[4]):
        assert columns(row[: row.index(str(src))]) == at, row
    assert columns(lines[3][: lines[3].index("ok")]) == columns(header[: header.index("Tags")])


def test_snapshots_json_keeps_hostile_names_exact(hostile, raw_cli):
    _src, c, evil, wide = hostile
    proc = raw_cli(*c, "snapshots", "--json")
    assert proc.returncode == 0, proc.stderr
    (line,) = safe_lines(proc.stdout)  # JSON-escaped: nothing raw reaches the terminal
    listed = {s["short_id"]: s for s in json.loads(line)}
    assert listed[evil.short_id]["hostname"] == HOSTILE_HOST
    assert listed[evil.short_id]["tags"] == [HOSTILE_TAG, "ok"]
    assert listed[wide.short_id]["hostname"] == WIDE_HOST


def test_check_names_hostile_paths_escaped(hostile, raw_cli, tmp_path):
    _src, c, _evil, _wide = hostile
    repo = Repository.open(LocalStorage(tmp_path / "repo"), PASSWORD)
    repo.ensure_index()
    entry = repo.index.lookup(BlobType.DATA, hashlib.sha256(b"content 3\n").digest())
    assert entry is not None
    os.unlink(repo.storage.path(FileType.PACK, entry.pack.hex()))
    proc = raw_cli(*c, "check")
    assert proc.returncode == 1
    safe_lines(proc.stdout)
    errors = safe_lines(proc.stderr)
    assert errors[-1].startswith("desktop-agent: error: the repository has")
    text = "\n".join(errors)
    assert f"/{HOSTILE_DIR_SHOWN}/nl\\n{FORGED}" in text
    assert "\\x1b]0;pwned\\x07title.txt" in text
