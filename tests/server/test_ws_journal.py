"""The change journal in the running agent: backups started over /ws list only
what changed, and their snapshots equal full scans.

A real agent on a real port, a real websockets client, real inotify.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
from support import FAST_KDF, PASSWORD, subtree_at, write
from websockets.asyncio.client import connect
from wssupport import Agented, is_, run, send, until

from desktop_agent.config import AgentConfig, BackupConfig, Config, RepositoryConfig
from desktop_agent.engine import watch_inotify
from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import LocalStorage

pytestmark = pytest.mark.skipif(not watch_inotify.available(), reason="inotify is Linux only")

TOKEN = "test-token-abcdefghijklmnop"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # everything the agent writes lives below env/: a new entry in a folder
    # above the source would change the folder's node in the snapshot
    env = tmp_path / "env"
    env.mkdir()
    monkeypatch.setenv("HOME", str(env / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(env / "xdg-config"))
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(env / "cache"))


def _full_scan_tree(repo_dir: Path, src: Path) -> bytes:
    repo = Repository.open(LocalStorage(repo_dir), PASSWORD)
    opts = BackupOptions(sources=[str(src)], host="oracle", scan=False, helpers=0)
    return subtree_at(repo, backup(repo, opts).snapshot.tree, src)


def _agent_tree(repo_dir: Path, src: Path) -> bytes:
    """The source's tree in the agent's newest snapshot (the oracle's are another host's)."""
    repo = Repository.open(LocalStorage(repo_dir), PASSWORD)
    mine = [s for s in repo.list_snapshots() if s.hostname != "oracle"]
    return subtree_at(repo, max(mine, key=lambda s: s.time).tree, src)


def test_backups_over_ws_use_the_journal_and_equal_full_scans(tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    Repository.init(LocalStorage(repo_dir), PASSWORD, kdf_params=FAST_KDF)
    src = tmp_path / "data" / "src"
    rng = random.Random(5)
    for d in range(5):
        for f in range(20):
            write(src / f"d{d}" / f"s{f % 4}" / f"f{f}.txt", rng.randbytes(200))
    config = Config(
        agent=AgentConfig(token=TOKEN),
        repository=RepositoryConfig(path=str(repo_dir), password_file=None),
        backup=BackupConfig(sources=(str(src),), exclude=(), interval_minutes=0),
        path=tmp_path / "env" / "config.toml",
    )

    async def scenario() -> None:
        async with Agented(config) as agent:
            async with connect(agent.server.url, additional_headers=AUTH) as ws:

                async def one_backup() -> bytes:
                    await send(ws, "backup:start", {})
                    await until(ws, is_("backup:completed"))
                    return _agent_tree(repo_dir, src)

                journal = agent.controller.journal
                first = await one_backup()
                assert journal.last_run is not None and journal.last_run.full
                assert first == _full_scan_tree(repo_dir, src)
                changes = [
                    lambda: write(src / "d1" / "s2" / "f2.txt", b"edited"),
                    lambda: (src / "d3" / "s0").rename(src / "d4" / "moved"),
                    lambda: shutil.rmtree(src / "d0" / "s1"),
                    lambda: write(src / "d2" / "new" / "deep" / "n.txt", b"new"),
                    lambda: os.truncate(src / "d4" / "s3" / "f3.txt", 10),
                ]
                for change in changes:
                    change()
                    snap = await one_backup()
                    run_ = journal.last_run
                    assert run_ is not None and not run_.full, run_.reason
                    assert run_.reused > 0
                    assert snap == _full_scan_tree(repo_dir, src)

    run(scenario)
