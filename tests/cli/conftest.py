"""Fixtures of the command-line tests: a configured source, a world-readable
temporary directory, the CLI with raw output, a repository of hostile names."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from clisupport import (
    ENV,
    HOSTILE_DIR,
    HOSTILE_HOST,
    HOSTILE_NAMES,
    HOSTILE_TAG,
    RAW_NAME,
    WIDE_HOST,
)
from support import write, write_config

from desktop_agent.engine.backup import BackupOptions, backup


@pytest.fixture
def setup(tmp_path, cli):
    src = tmp_path / "src"
    write(src / "a.txt", b"alpha\n")
    write(src / "sub" / "b.bin", os.urandom(200_000))
    write(src / "skip.tmp", b"tmp")
    cfg = write_config(
        tmp_path / "config.toml", repo=tmp_path / "repo", sources=[src], exclude=["*.tmp"]
    )
    return src, cfg


@pytest.fixture
def shared_tmp():
    """A world-traversable temp dir (pytest's own is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="da-test-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def raw_cli(tmp_path):
    """Run the CLI as ``cli`` does, but keep its output as bytes (and CRs as CRs)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local/share"),
            "XDG_STATE_HOME": str(home / ".local/state"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "LANG": "C.UTF-8",
            **ENV,
        }
        cmd = [sys.executable, "-m", "desktop_agent", *args]
        return subprocess.run(cmd, env=env, capture_output=True, timeout=120)

    return run


@pytest.fixture
def hostile(tmp_path, new_repo):
    """A repository (made by the engine) of a tree with hostile names, twice:
    once from a host with a hostile name and hostile tags, once from a host
    whose name is wide characters."""
    src = tmp_path / "src"
    for i, (name, _shown) in enumerate(HOSTILE_NAMES):
        write(src / HOSTILE_DIR / name, f"content {i}\n".encode())
    with open(os.fsencode(src / HOSTILE_DIR) + b"/" + RAW_NAME, "wb") as fh:
        fh.write(b"raw name\n")
    repo = new_repo(tmp_path / "repo")
    evil = backup(
        repo,
        BackupOptions(sources=[str(src)], host=HOSTILE_HOST, tags=[HOSTILE_TAG, "ok"], helpers=0),
    )
    wide = backup(repo, BackupOptions(sources=[str(src)], host=WIDE_HOST, helpers=0))
    cfg = write_config(tmp_path / "config.toml", repo=tmp_path / "repo", sources=[src])
    return src, ["--config", str(cfg)], evil.snapshot, wide.snapshot
