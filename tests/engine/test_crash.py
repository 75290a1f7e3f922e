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
from support import PASSWORD, JumpingClock, reopen, signature, tree_bytes, write, write_config

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
        tree_bytes(repo_dir / "data") < 0.7 * total
        and time.monotonic() < deadline
        and proc.poll() is None
    ):
        time.sleep(0.01)
    assert proc.poll() is None, "the backup ended before it could be killed"
    killed_at = tree_bytes(repo_dir / "data")
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


class RepoWatch:
    """What another process has done to a repository so far, read off its directory.

    ``changes()`` counts packs, index and snapshot files added or removed
    since the watch began, plus the fraction of a pack being spooled in
    ``tmp/`` (so a target below 1 falls while the first pack is written);
    ``new_bytes()`` is the size of new packs and spool files.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base = self.files()

    def files(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for sub in ("index", "snapshots"):
            with os.scandir(self.root / sub) as it:
                for e in it:
                    out[f"{sub}/{e.name}"] = 0
        with os.scandir(self.root / "data") as dirs:
            for d in dirs:
                with os.scandir(d.path) as it:
                    for e in it:
                        try:
                            out[f"data/{e.name}"] = e.stat().st_size
                        except FileNotFoundError:
                            pass  # being deleted
        return out

    def spool_bytes(self) -> int:
        total = 0
        with os.scandir(self.root / "tmp") as it:
            for e in it:
                try:
                    total += e.stat().st_size
                except FileNotFoundError:
                    pass  # renamed into place meanwhile
        return total

    def changes(self) -> float:
        now = self.files()
        done = len(now.keys() ^ self.base.keys())
        return done + min(self.spool_bytes() / (16 << 20), 0.99)

    def new_bytes(self) -> int:
        now = self.files()
        return sum(size for name, size in now.items() if name not in self.base) + (
            self.spool_bytes()
        )


def kill_when(proc: subprocess.Popen, reached) -> float:  # type: ignore[no-untyped-def]
    """SIGKILL ``proc`` as soon as ``reached()`` is true; returns the seconds it ran.

    Polls every 2 ms: the process is watched from outside, as a power cut
    would meet it. Fails the test if the process ended first (no kill point).
    """
    started = time.monotonic()
    while proc.poll() is None:
        if reached():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return time.monotonic() - started
        time.sleep(0.002)
    raise AssertionError(f"the process ended (status {proc.returncode}) before the kill point")


def prune_events(repo_dir: Path) -> int:
    """How many files a prune of this repository will add or remove (read-only plan)."""
    from desktop_agent.engine.prune import plan_prune

    plan = plan_prune(Repository.open(LocalStorage(repo_dir), PASSWORD))
    repacked = sum(plan.sizes[p] for p in plan.repack)
    new_packs = max(1, -(-repacked // (16 << 20))) if plan.repack else 0
    return new_packs + 1 + len(plan.old_indexes) + len(plan.repack + plan.delete + plan.orphans)


def restores_exactly(repo_dir: Path, src: Path, out: Path) -> None:
    repo = Repository.open(LocalStorage(repo_dir), PASSWORD)
    assert restore(repo, repo.find_snapshot("latest"), RestoreOptions(target=str(out))).errors == ()
    assert signature(out / str(src).lstrip("/")) == signature(src)


PRUNE = (
    "from desktop_agent.engine.repository import Repository; "
    "from desktop_agent.engine.storage import LocalStorage; "
    "from desktop_agent.engine.prune import prune; "
    "prune(Repository.open(LocalStorage({repo!r}), {password!r}))"
)


@pytest.mark.parametrize("seed", range(6))
def test_kill_9_during_backup_or_prune_leaves_a_valid_repository(tmp_path, restic, seed):
    """Two kill points per seed, 12 in all: a first backup killed after a random
    share of its data reached the repository, and a prune killed after a
    random number of its writes and deletions. After each: both checks pass;
    then a backup completes and restores exactly the source."""
    rng = random.Random(seed)
    src = tmp_path / "src"
    for i in range(6):
        write(src / f"big{i}.bin", rng.randbytes(12 * 1024 * 1024))
    for i in range(300):
        write(src / "small" / f"f{i}.txt", rng.randbytes(rng.randint(100, 9000)))
    repo_dir = tmp_path / "repo"
    cfg = write_config(tmp_path / "c.toml", repo=repo_dir, sources=[src])
    assert start(tmp_path, cfg, "init").wait() == 0
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())

    # 1. a first backup, killed once a random share of the data is stored or spooled
    share = rng.uniform(0.02, 0.9)
    watch = RepoWatch(repo_dir)
    kill_when(start(tmp_path, cfg, "backup"), lambda: watch.new_bytes() >= share * total)
    assert list(LocalStorage(repo_dir).list(FileType.SNAPSHOT)) == []
    both_checks(repo_dir, restic)
    done = start(tmp_path, cfg, "backup")
    assert done.wait(timeout=300) == 0, done.stderr.read() if done.stderr else ""

    # 2. changes, a second snapshot, the first one forgotten
    for i in range(0, 300, 3):
        os.unlink(src / "small" / f"f{i}.txt")
    write(src / "big0.bin", rng.randbytes(12 * 1024 * 1024))
    done = start(tmp_path, cfg, "backup")
    assert done.wait(timeout=300) == 0, done.stderr.read() if done.stderr else ""
    repo = Repository.open(LocalStorage(repo_dir), PASSWORD)
    oldest = repo.list_snapshots()[0]
    repo.storage.remove(FileType.SNAPSHOT, oldest.id.hex())

    # 3. a prune, killed after a random number of its steps
    events = prune_events(repo_dir)
    assert events >= 4, events  # something to repack, index files to replace, packs to delete
    target = rng.uniform(0.3, events - 0.5)
    watch = RepoWatch(repo_dir)
    code = PRUNE.format(repo=str(repo_dir), password=PASSWORD)
    proc = subprocess.Popen([sys.executable, "-c", code], env=cli_env(tmp_path))
    kill_when(proc, lambda: watch.changes() >= target)
    print(f"seed {seed}: backup killed at {share:.0%}, prune at step {target:.1f} of {events}")
    both_checks(repo_dir, restic)

    # 4. the next backup completes and restores exactly; a full prune then loses nothing
    write(src / "after.txt", b"after the crashes\n")
    done = start(tmp_path, cfg, "backup")
    _out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    both_checks(repo_dir, restic)
    restores_exactly(repo_dir, src, tmp_path / "out1")
    proc = subprocess.Popen([sys.executable, "-c", code], env=cli_env(tmp_path))
    assert proc.wait(timeout=300) == 0
    both_checks(repo_dir, restic)
    restores_exactly(repo_dir, src, tmp_path / "out2")


def test_a_backup_whose_lock_went_stale_writes_no_snapshot(tmp_path, new_repo, monkeypatch):
    src = tmp_path / "src"
    for i in range(4):
        write(src / f"f{i}.bin", os.urandom(4 * 1024 * 1024))
    repo = new_repo()
    clock = JumpingClock()
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


def test_a_durable_write_is_temp_fsync_rename_fsync_dir(tmp_path, monkeypatch):
    from desktop_agent.engine.storage import local

    events: list[tuple[str, str]] = []
    fds: dict[int, str] = {}
    real_open, real_fsync, real_replace = os.open, os.fsync, os.replace

    def open_(path, flags, mode=0o777, **kw):  # type: ignore[no-untyped-def]
        fd = real_open(path, flags, mode, **kw)
        fds[fd] = os.fsdecode(path)
        return fd

    def fsync(fd: int) -> None:
        events.append(("fsync", fds.get(fd, "?")))
        real_fsync(fd)

    def replace(src, dst):  # type: ignore[no-untyped-def]
        events.append(("rename", f"{src} -> {dst}"))
        real_replace(src, dst)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store = local.LocalStorage(tmp_path / "repo")
    store.create_layout()
    store.save(FileType.SNAPSHOT, "ab" * 32, [b"hello"])
    final = str(tmp_path / "repo" / "snapshots" / ("ab" * 32))
    (f1, tmp), (r, move), (f2, d) = events
    assert (f1, r, f2) == ("fsync", "rename", "fsync")
    assert tmp.startswith(final + "-tmp-") and move == f"{tmp} -> {final}"
    assert d == str(tmp_path / "repo" / "snapshots")  # the directory, after the rename
