"""Repository locks: restic's rules for sharing, staleness and refresh; restic agrees."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
from support import JumpingClock

from desktop_agent.engine import lock as lockmod
from desktop_agent.engine.errors import RepositoryLocked
from desktop_agent.engine.gocompat import format_time
from desktop_agent.engine.lock import Lock, LockInfo
from desktop_agent.engine.repository import Repository, hostname
from desktop_agent.engine.storage import FileType


def plant(repo: Repository, *, exclusive: bool, host: str, pid: int, age: float = 0.0) -> str:
    """A lock file as another client would have written it."""
    doc = {
        "time": format_time(time.time_ns() - int(age * 1e9)),
        "exclusive": exclusive,
        "hostname": host,
        "username": "someone",
        "pid": pid,
        "uid": 1000,
        "gid": 1000,
    }
    return repo.save_json(FileType.LOCK, doc)


def lock_names(repo: Repository) -> set[str]:
    return {n for n, _ in repo.storage.list(FileType.LOCK)}


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_shared_locks_coexist_and_exclusive_excludes_everyone(mem_repo):
    repo = mem_repo
    with Lock(repo, refresh=False), Lock(repo, refresh=False):
        assert len(lock_names(repo)) == 2
        with pytest.raises(RepositoryLocked, match=f"a lock held by PID {os.getpid()} on "):
            Lock(repo, exclusive=True, refresh=False).acquire()
    with Lock(repo, exclusive=True, refresh=False):
        for exclusive in (False, True):
            with pytest.raises(RepositoryLocked, match="an exclusive lock held by PID"):
                Lock(repo, exclusive=exclusive, refresh=False).acquire()
    assert lock_names(repo) == set()  # the refused attempts left nothing behind


def test_another_hosts_lock_is_stale_only_when_old(mem_repo):
    repo = mem_repo
    fresh = plant(repo, exclusive=True, host="other-laptop", pid=dead_pid())
    with pytest.raises(RepositoryLocked, match="on other-laptop"):
        Lock(repo, refresh=False).acquire()  # we cannot see its processes: it counts
    repo.storage.remove(FileType.LOCK, fresh)
    old = plant(repo, exclusive=True, host="other-laptop", pid=1, age=31 * 60)
    with Lock(repo, exclusive=True, refresh=False):
        pass  # 31 minutes without a refresh: stale, ignored
    assert lock_names(repo) == {old}  # but not ours to delete


def test_a_lock_of_a_dead_process_on_this_host_is_removed(mem_repo):
    repo = mem_repo
    dead = plant(repo, exclusive=True, host=hostname(), pid=dead_pid())
    alive = plant(repo, exclusive=False, host=hostname(), pid=os.getppid())
    info = {lk.name: lk for lk in lockmod._read_locks(repo)}
    assert info[dead].stale() and not info[alive].stale()
    with Lock(repo, refresh=False) as held:
        assert lock_names(repo) == {alive, held._name}
    with pytest.raises(RepositoryLocked):  # the live one still blocks exclusive use
        Lock(repo, exclusive=True, refresh=False).acquire()


def test_unreadable_lock_files_are_not_locks(mem_repo):
    repo = mem_repo
    repo.storage.save(FileType.LOCK, "ab" * 32, [b"not a lock"])
    with Lock(repo, exclusive=True, refresh=False):
        pass


def test_refresh_writes_a_new_lock_then_removes_the_old(mem_repo, monkeypatch):
    repo = mem_repo
    refreshed = threading.Event()
    real_refresh = Lock.refresh

    def refresh(self: Lock) -> None:
        real_refresh(self)
        refreshed.set()

    monkeypatch.setattr(lockmod, "REFRESH_EVERY", 0.05)
    monkeypatch.setattr(Lock, "refresh", refresh)
    with Lock(repo) as held:
        first = held._name
        assert refreshed.wait(10), "the lock was never refreshed"
        (now,) = lock_names(repo)
        assert now != first and held._name == now
        held.ensure_held()
    assert lock_names(repo) == set()


def test_a_refresh_after_a_long_sleep_does_not_revive_the_lock(mem_repo, monkeypatch):
    """The refresh timer does not count suspended time: the first refresh after
    waking must not make a lock others may have taken for stale look fresh."""
    repo = mem_repo
    clock = JumpingClock()
    monkeypatch.setattr(lockmod, "time", clock)
    with Lock(repo, refresh=False) as held:
        before = lock_names(repo)
        clock.offset = 40 * 60  # asleep for 40 minutes; another host may have pruned
        held.refresh()  # what the refresh thread does when it wakes up
        assert lock_names(repo) == before  # not renewed
        clock.offset += 60  # and a minute later, with time to spare, still lost
        with pytest.raises(RepositoryLocked, match="not refreshed for 40 minutes"):
            held.ensure_held()
    assert lock_names(repo) == set()


def test_a_refresh_notices_a_removed_lock(mem_repo):
    repo = mem_repo
    with Lock(repo, refresh=False) as held:
        repo.storage.remove(FileType.LOCK, held._name)  # another client ran `unlock`
        held.refresh()
        assert lock_names(repo) == set()  # not written again
        with pytest.raises(RepositoryLocked, match="another client removed"):
            held.ensure_held()


def test_ensure_held_notices_a_removed_lock(mem_repo):
    repo = mem_repo
    with Lock(repo, refresh=False) as held:
        held.ensure_held()
        repo.storage.remove(FileType.LOCK, held._name)
        with pytest.raises(RepositoryLocked, match="another client removed"):
            held.ensure_held()


def test_stale_by_age_is_restics_thirty_minutes():
    now = time.time_ns()
    info = LockInfo("x", now - int(29 * 60e9), False, "elsewhere", "u", 1)
    assert not info.stale(now)
    assert info.stale(now + int(2 * 60e9))


# ------------------------------------------------------------------ restic agrees


def test_restic_respects_our_exclusive_lock(new_repo, restic):
    repo = new_repo()
    with Lock(repo, exclusive=True, refresh=False):
        proc = restic(repo.storage.location, "check", check=False)
        assert proc.returncode != 0 and "locked" in proc.stderr, proc.stderr
    restic(repo.storage.location, "check")


def test_restic_unlock_agrees_on_what_is_stale(new_repo, restic):
    repo = new_repo()
    dead = plant(repo, exclusive=False, host=hostname(), pid=dead_pid())
    old = plant(repo, exclusive=False, host="other-laptop", pid=1, age=31 * 60)
    live = plant(repo, exclusive=False, host="other-laptop", pid=1)
    restic(repo.storage.location, "unlock")
    assert lock_names(repo) == {live}  # restic removed exactly the ones we call stale
    info = {lk.name: lk for lk in lockmod._read_locks(repo)}
    assert not info[live].stale()
    assert dead not in info and old not in info
