"""Nothing lost: kill -9 at random points, resume after a kill, expired locks."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import PASSWORD, reopen, signature, write, write_config

from desktop_agent.engine import lock as lockmod
from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.check import check
from desktop_agent.engine.errors import RepositoryLocked
from desktop_agent.engine.progress import Progress
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.restore import RestoreOptions, restore
from desktop_agent.engine.storage import FileType, LocalStorage

ENV = {"DESKTOP_AGENT_PASSWORD": PASSWORD}


def cli_env(tmp_path: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "DESKTOP_AGENT_PASSWORD": PASSWORD,
    }


def start(tmp_path: Path, cfg: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "desktop_agent", "--config", str(cfg), *args],
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def pack_bytes(repo_dir: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(repo_dir / "data"):
        for f in files:
            total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def both_checks(repo_dir: Path, restic) -> None:
    repo = Repository.open(LocalStorage(repo_dir), PASSWORD)
    result = check(repo, read_data=True)
    assert result.ok, result.errors
    # the killed process's lock is still there: restic 0.14 wants it removed
    # first (`restic unlock` removes locks of dead processes on this host)
    restic(repo_dir, "unlock")
    restic(repo_dir, "check", "--read-data")


def test_resume_after_a_kill_stores_little_again(tmp_path, restic):
    """Kill -9 at about 70% of a first backup: the next run re-stores little,
    thanks to index checkpoints (every 2 packs)."""
    src = tmp_path / "src"
    total = 0
    for i in range(16):
        total += write(src / f"f{i:02d}.bin", os.urandom(32 * 1024 * 1024)).stat().st_size
    repo_dir = tmp_path / "repo"
    cfg = write_config(tmp_path / "c.toml", repo=repo_dir, sources=[src])
    assert start(tmp_path, cfg, "init").wait() == 0
    proc = start(tmp_path, cfg, "backup")
    deadline = time.monotonic() + 120
    while (
        pack_bytes(repo_dir) < 0.7 * total and time.monotonic() < deadline and proc.poll() is None
    ):
        time.sleep(0.01)
    assert proc.poll() is None, "the backup ended before it could be killed"
    killed_at = pack_bytes(repo_dir)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(LocalStorage(repo_dir).list(FileType.SNAPSHOT)) == []
    both_checks(repo_dir, restic)
    again = start(tmp_path, cfg, "backup", "--json")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    summary = json.loads(out.splitlines()[-1])
    stored_again = summary["data_added_packed"] / total
    print(f"killed at {killed_at / total:.0%} stored; the next run stored {stored_again:.0%} again")
    assert stored_again <= 0.40
    both_checks(repo_dir, restic)


@pytest.mark.parametrize("seed", range(6))
def test_kill_9_during_backup_or_prune_leaves_a_valid_repository(tmp_path, restic, seed):
    """Two random kill points per seed (one backup, one prune): 12 in all."""
    rng = random.Random(seed)
    src = tmp_path / "src"
    for i in range(6):
        write(src / f"big{i}.bin", os.urandom(12 * 1024 * 1024))
    for i in range(300):
        write(src / "small" / f"f{i}.txt", os.urandom(rng.randint(100, 9000)))
    repo_dir = tmp_path / "repo"
    cfg = write_config(tmp_path / "c.toml", repo=repo_dir, sources=[src])
    assert start(tmp_path, cfg, "init").wait() == 0
    assert start(tmp_path, cfg, "backup").wait() == 0

    # change things, then kill a backup at a random moment
    for i in range(0, 300, 3):
        os.unlink(src / "small" / f"f{i}.txt")
    write(src / "big0.bin", os.urandom(12 * 1024 * 1024))
    proc = start(tmp_path, cfg, "backup")
    time.sleep(rng.uniform(0.2, 1.2))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    both_checks(repo_dir, restic)

    # forget the first snapshot, kill a prune at a random moment
    repo = Repository.open(LocalStorage(repo_dir), PASSWORD)
    oldest = repo.list_snapshots()[0]
    repo.storage.remove(FileType.SNAPSHOT, oldest.id.hex())
    code = (
        "import sys; from desktop_agent.engine.repository import Repository; "
        "from desktop_agent.engine.storage import LocalStorage; "
        "from desktop_agent.engine.prune import prune; "
        f"prune(Repository.open(LocalStorage({str(repo_dir)!r}), {PASSWORD!r}))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=cli_env(tmp_path))
    time.sleep(rng.uniform(0.15, 0.8))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    both_checks(repo_dir, restic)

    # the next backup completes and restores what is there now
    done = start(tmp_path, cfg, "backup")
    _out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    both_checks(repo_dir, restic)
    repo = Repository.open(LocalStorage(repo_dir), PASSWORD)
    out = tmp_path / "out"
    assert restore(repo, repo.find_snapshot("latest"), RestoreOptions(target=str(out))).errors == ()
    assert signature(out / str(src).lstrip("/")) == signature(src)


class _Clock:
    """time as the lock module sees it, with a jump (the computer slept)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def time_ns(self) -> int:
        return time.time_ns() + int(self.offset * 1e9)


def test_a_backup_whose_lock_went_stale_writes_no_snapshot(tmp_path, new_repo, monkeypatch):
    src = tmp_path / "src"
    for i in range(4):
        write(src / f"f{i}.bin", os.urandom(4 * 1024 * 1024))
    repo = new_repo()
    clock = _Clock()
    monkeypatch.setattr(lockmod, "time", clock)

    calls = []

    def sleep_laptop(p: Progress) -> None:
        # the first report comes while the backup runs, after the lock was taken
        calls.append(p)
        clock.offset = 31 * 60

    with pytest.raises(RepositoryLocked, match="not refreshed for 31 minutes"):
        backup(repo, BackupOptions(sources=[str(src)]), progress=sleep_laptop, progress_interval=0)
    assert calls and not calls[0].final
    assert list(repo.storage.list(FileType.SNAPSHOT)) == []
    assert list(repo.storage.list(FileType.LOCK)) == []
    assert check(reopen(repo), read_data=True).ok


def test_a_backup_whose_lock_was_removed_writes_no_snapshot(tmp_path, new_repo):
    src = tmp_path / "src"
    write(src / "a.bin", os.urandom(6 * 1024 * 1024))
    repo = new_repo()

    def another_client_unlocks(p: Progress) -> None:
        for name, _ in repo.storage.list(FileType.LOCK):
            repo.storage.remove(FileType.LOCK, name)

    with pytest.raises(RepositoryLocked, match="removed"):
        backup(
            repo,
            BackupOptions(sources=[str(src)]),
            progress=another_client_unlocks,
            progress_interval=0,
        )
    assert list(repo.storage.list(FileType.SNAPSHOT)) == []
    assert check(reopen(repo)).ok


def test_stale_spool_files_of_dead_processes_are_cleaned(tmp_path, new_repo):
    from desktop_agent.engine.repository import hostname
    from desktop_agent.engine.writer import remove_stale_spool

    repo = new_repo()
    spool = Path(repo.storage.spool_dir())
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = spool / f"pack-{hostname()}-{dead.pid}-abc123"
    stale.write_bytes(b"half a pack")
    alive = spool / f"pack-{hostname()}-{os.getpid()}-def456"
    alive.write_bytes(b"being written")
    other_host = spool / f"pack-elsewhere-{dead.pid}-ghi789"
    other_host.write_bytes(b"not ours to judge")
    assert remove_stale_spool(repo) == 1
    assert not stale.exists() and alive.exists() and other_host.exists()
