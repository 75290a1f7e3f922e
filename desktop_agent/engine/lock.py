"""Repository locks, as restic defines them (``locks/<id>``).

A lock is an unpacked file ``{"time", "exclusive", "hostname", "username",
"pid", "uid", "gid"}``. Many shared locks may coexist; an exclusive lock
excludes every other lock. A lock is stale when its time is older than 30
minutes, or when it was made on this host by a process that no longer
exists. Holders refresh their lock every 5 minutes by writing a new one and
removing the old.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from .errors import EngineError, IntegrityError, NotFound, RepositoryLocked
from .gocompat import format_time, parse_time
from .repository import Repository, hostname, username
from .storage import FileType

log = logging.getLogger(__name__)

__all__ = ["Lock", "LockInfo", "STALE_AFTER", "REFRESH_EVERY"]

STALE_AFTER = 30 * 60.0
REFRESH_EVERY = 5 * 60.0


@dataclass(frozen=True)
class LockInfo:
    """A decoded lock file."""

    name: str
    time_ns: int
    exclusive: bool
    hostname: str
    username: str
    pid: int

    def stale(self, now_ns: int | None = None) -> bool:
        """restic's staleness rule: old, or ours and its process is gone."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        if now_ns - self.time_ns > STALE_AFTER * 1e9:
            return True
        if self.hostname == hostname() and self.pid > 0:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except OSError:
                return False
        return False

    def describe(self) -> str:
        """Who holds it, for error messages."""
        kind = "an exclusive" if self.exclusive else "a"
        since = format_time(self.time_ns)
        return f"{kind} lock held by PID {self.pid} on {self.hostname} since {since}"


# lock files this process could not remove (storage location, name)
_left_behind: set[tuple[str, str]] = set()
_left_lock = threading.Lock()

_REMOVED = (
    "another client removed this backup's repository lock; no snapshot was written: "
    "run the backup again"
)


def _stale_message(age: float) -> str:
    return (
        f"the repository lock was not refreshed for {int(age // 60)} minutes (did the "
        "computer sleep?); another client may have changed the repository meanwhile, "
        "so no snapshot was written: run the backup again"
    )


def _read_locks(repo: Repository) -> list[LockInfo]:
    locks = []
    for name, _ in repo.storage.list(FileType.LOCK):
        try:
            doc: Any = repo.load_json(FileType.LOCK, name)
            locks.append(
                LockInfo(
                    name=name,
                    time_ns=parse_time(str(doc["time"])),
                    exclusive=bool(doc.get("exclusive")),
                    hostname=str(doc.get("hostname") or ""),
                    username=str(doc.get("username") or ""),
                    pid=int(doc.get("pid") or 0),
                )
            )
        except (
            NotFound,
            IntegrityError,
            KeyError,
            ValueError,
            TypeError,
            AttributeError,
            OverflowError,
        ):
            continue  # removed meanwhile, or unreadable: not a valid lock
    return locks


class Lock:
    """A held repository lock; use as a context manager.

    ``refresh=True`` starts a daemon thread that renews the lock so that it
    never looks stale to other clients while we work.
    """

    def __init__(self, repo: Repository, *, exclusive: bool = False, refresh: bool = True) -> None:
        self.repo = repo
        self.exclusive = exclusive
        self._name: str | None = None
        self._refresh = refresh
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()
        self.refreshed_at = 0.0  # wall clock: it keeps counting while the computer sleeps
        self._lost: str | None = None  # why the lock can no longer be trusted

    def _doc(self) -> dict[str, Any]:
        return {
            "time": format_time(time.time_ns()),
            "exclusive": self.exclusive,
            "hostname": hostname(),
            "username": username(),
            "pid": os.getpid(),
            "uid": os.getuid() if hasattr(os, "getuid") else 0,
            "gid": os.getgid() if hasattr(os, "getgid") else 0,
        }

    def _conflicts(self) -> list[LockInfo]:
        return [
            lk
            for lk in _read_locks(self.repo)
            if lk.name != self._name and (self.exclusive or lk.exclusive) and not lk.stale()
        ]

    def acquire(self) -> None:
        """Take the lock or raise :class:`RepositoryLocked`.

        Locks this host's dead processes left behind (killed, crashed) are
        removed first, as ``restic unlock`` would: nobody holds them.
        """
        for lk in _read_locks(self.repo):
            if lk.hostname == hostname() and lk.pid > 0 and lk.stale():
                self.repo.storage.remove(FileType.LOCK, lk.name)
        where = self.repo.storage.location
        with _left_lock:
            mine = [n for loc, n in _left_behind if loc == where]
        for name in mine:  # ours, from a run that could not remove them
            self.repo.storage.remove(FileType.LOCK, name)
            with _left_lock:
                _left_behind.discard((where, name))
        conflicts = self._conflicts()
        if conflicts:
            raise RepositoryLocked(f"the repository is locked: {conflicts[0].describe()}")
        self._name = self.repo.save_json(FileType.LOCK, self._doc())
        self.refreshed_at = time.time()
        # restic re-checks after writing: two clients may have raced.
        conflicts = self._conflicts()
        if conflicts:
            self.release()
            raise RepositoryLocked(f"the repository is locked: {conflicts[0].describe()}")
        if self._refresh:
            self._thread = threading.Thread(
                target=self._refresher, name="lock-refresh", daemon=True
            )
            self._thread.start()

    def refresh(self) -> None:
        """Replace the lock file with a fresh one, unless the lock is already lost.

        A lock that went unrefreshed for almost the stale age (the computer
        slept: the refresh timer does not count suspended time, the wall
        clock does), or whose file another client removed, is not revived:
        others may have acted on it being stale, so :meth:`ensure_held`
        fails from then on.
        """
        with self._mutex:
            if self._name is None or self._lost is not None:
                return
            age = time.time() - self.refreshed_at
            if age > STALE_AFTER - 60:
                self._lost = _stale_message(age)
                return
            old = self._name
            try:
                self.repo.storage.load(FileType.LOCK, old)
            except NotFound:
                self._lost = _REMOVED
                return
            self._name = self.repo.save_json(FileType.LOCK, self._doc())
            self.refreshed_at = time.time()
            self.repo.storage.remove(FileType.LOCK, old)

    def ensure_held(self) -> None:
        """Raise unless the lock is still ours and fresh.

        Called before anything that must not happen without the lock (writing
        a snapshot). If the lock was not refreshed for almost the stale age
        (the computer slept, the disk hung), another client may have
        considered it stale and, say, pruned data this run relies on.
        """
        with self._mutex:
            name = self._name
            lost = self._lost
        if lost is not None:
            raise RepositoryLocked(lost)
        if name is None:
            raise RepositoryLocked("the repository lock is not held")
        age = time.time() - self.refreshed_at
        if age > STALE_AFTER - 60:
            raise RepositoryLocked(_stale_message(age))
        try:
            self.repo.storage.load(FileType.LOCK, name)
        except NotFound:
            raise RepositoryLocked(_REMOVED) from None

    def _refresher(self) -> None:
        while not self._stop.wait(REFRESH_EVERY):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - a failed refresh is retried next round
                continue

    def release(self) -> None:
        """Remove the lock file and stop refreshing.

        A lock file that cannot be removed (the drive was unplugged) is
        remembered and removed by the next lock this process takes on the
        same repository: it names a live process, so nobody else would.
        """
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._mutex:
            if self._name is not None:
                name, self._name = self._name, None
                removed = False
                try:
                    self.repo.storage.remove(FileType.LOCK, name)
                    # removing a file from a vanished mount "succeeds": it is
                    # not there to remove, but it is still on the drive
                    removed = self.repo.storage.exists()
                finally:
                    if not removed:
                        with _left_lock:
                            _left_behind.add((self.repo.storage.location, name))

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.release()
            return
        # the work already failed: that is the error to report, not a lock file
        # that could not be removed as well (the same lost server, say)
        try:
            self.release()
        except EngineError as cleanup:
            log.info("lock not removed after a failure: %s", cleanup)
