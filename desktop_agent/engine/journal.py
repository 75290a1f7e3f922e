"""A change journal: which directories changed since the last backup.

See docs/design.md, section 4a. The running agent keeps one
:class:`ChangeJournal`; an OS watcher (:mod:`.watchers`: inotify, or fanotify as root) marks
directories whose entries changed. A backup asks for a :class:`JournalRun`
at its start and then lists only the directories the journal marked (and
their ancestors); a directory it did not mark keeps the tree of the last
backup without being listed.

Correctness never rests on the journal proving a directory clean: it only
ever *adds* work. A run is a full scan (every directory listed and compared
by its signature, :mod:`.dircache`) whenever the journal cannot vouch for
the time since the last backup: the first backup of an agent, a different
set of sources or excludes, a backup that was not the last one this journal
saw, an event queue overflow, a watch that could not be added, a change
of the mounts at, above or below a source, and at least once a day. Every
incremental run also re-lists a small random share of the directories it
could have reused and compares them; a difference there means the journal
missed something, and the next run is a full scan. Directories the walker
marks volatile (files with several hard links, mount points, network and
FUSE file systems, whose changes raise no event here) are always listed.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "ChangeJournal",
    "JournalRun",
    "Watcher",
    "FULL_SCAN_EVERY",
    "RECHECK_SHARE",
]

log = logging.getLogger(__name__)

FULL_SCAN_EVERY = 24 * 3600.0  # seconds between full scans, whatever the journal says
RECHECK_SHARE = 0.02  # share of reusable directories re-listed anyway, every run


class Watcher(Protocol):
    """The OS half of a journal: watches directories and reports to the journal."""

    def watch(self, path: bytes) -> str | None:
        """Watch ``path`` (a directory about to be listed): None when watched, ""
        when only this folder cannot be, an error text when watching must stop."""

    def sync(self) -> None:
        """Take in every change made so far (called as a backup starts)."""

    def identity(self, roots: Sequence[bytes]) -> bytes:
        """What must stay the same between two runs: the mounts at, above or
        below the sources ``roots``."""

    def trusted(self, device: int, path: bytes) -> bool:
        """Whether changes on this device (``path`` on it) raise events here."""

    def mapped_for_writing(self, roots: list[bytes]) -> set[bytes]:
        """Folders below ``roots`` with files mapped shared and writable now."""

    def close(self) -> None:
        """Stop watching and free every watch."""


@dataclass
class JournalRun:
    """What the journal says for one backup: full scan, or which paths to list.

    ``full``: list everything (``reason`` says why). Otherwise a directory
    may be reused unlisted when :meth:`reusable` says so.
    """

    full: bool
    reason: str
    journal: ChangeJournal | None = None
    dirty: set[bytes] = field(default_factory=set)
    above: set[bytes] = field(default_factory=set)  # ancestors of dirty paths
    gone: set[bytes] = field(default_factory=set)  # subtrees whose identity changed
    share: float = RECHECK_SHARE
    rng: random.Random = field(default_factory=random.Random)
    rechecked: set[bytes] = field(default_factory=set)
    reused: int = 0
    missed: int = 0
    generation: int = 0

    def watch(self, path: bytes) -> bool:
        """Called before a directory is listed: watch it from now on.

        False when it could not be watched: it is then never reused unlisted.
        """
        return self.journal is not None and self.journal.watch(path)

    def reusable(self, path: bytes) -> bool:
        """Whether the journal vouches that nothing at or below ``path`` changed.

        A small random share of such directories is turned down (and
        remembered, see :meth:`check`), so every run tests the journal.
        """
        if self.full or path in self.dirty or path in self.above:
            return False
        gone = self.gone
        if gone:
            if path in gone:
                return False
            pos = path.rfind(b"/")
            while pos > 0:
                if path[:pos] in gone:
                    return False
                pos = path.rfind(b"/", 0, pos)
        if self.share and self.rng.random() < self.share:
            self.rechecked.add(path)
            return False
        self.reused += 1
        return True

    def check(self, path: bytes, same: bool) -> None:
        """A re-checked directory was listed: ``same`` when it was as cached."""
        if path in self.rechecked and not same:
            self.missed += 1
            if self.journal is not None:
                self.journal.invalidate(f"it missed a change in {path!r}")


class ChangeJournal:
    """Marks of directories changed since the last backup (thread-safe).

    ``make_watcher`` builds the OS watcher on first use (so an agent that
    never backs up never watches); ``None`` from it, or an error, means no
    journal: every run is a full scan.
    """

    def __init__(
        self,
        make_watcher: Callable[[ChangeJournal], Watcher | None],
        *,
        clock: Callable[[], float] = time.time,
        full_every: float = FULL_SCAN_EVERY,
        recheck: float = RECHECK_SHARE,
    ) -> None:
        self._make_watcher = make_watcher
        self._clock = clock
        self._full_every = full_every
        self._recheck = recheck
        self._lock = threading.Lock()
        self._watcher: Watcher | None = None
        self._started = False
        self._disabled: str | None = None  # the journal gave up: always full scans
        self._broken: str | None = "no backup has been watched yet"
        self._generation = 0  # bumped by every invalidation
        self._dirty: set[bytes] = set()
        self._gone: set[bytes] = set()
        self._committed: tuple[object, bytes] | None = None  # (key, snapshot id)
        self._identity = b""
        self._roots: tuple[bytes, ...] = ()  # the sources of the runs watched
        self._last_full = float("-inf")
        self._taken: tuple[set[bytes], set[bytes]] = (set(), set())
        self._key: object = None  # the sources (and excludes) watched
        self._mapped: set[bytes] = set()  # folders with files mapped for writing, last run
        self.last_run: JournalRun | None = None

    # ------------------------------------------------------------ watcher side
    def changed(self, path: bytes) -> None:
        """The entries of directory ``path`` changed."""
        with self._lock:
            self._dirty.add(path)

    def changed_many(self, paths: set[bytes]) -> None:
        """The entries of each of these directories changed."""
        with self._lock:
            self._dirty |= paths

    def replaced(self, path: bytes) -> None:
        """Directory ``path`` was moved or deleted: nothing at or below it is vouched for."""
        with self._lock:
            self._gone.add(path)
            self._dirty.add(path)
            parent = path[: path.rfind(b"/")] or b"/"
            self._dirty.add(parent)

    def invalidate(self, reason: str) -> None:
        """Events were lost: the next run is a full scan."""
        with self._lock:
            self._generation += 1
            if self._broken is None:
                log.info("change journal: %s; the next backup lists every folder", reason)
            self._broken = self._broken or reason

    def disable(self, reason: str) -> None:
        """Give up watching for the rest of this agent's life (e.g. the watch limit)."""
        with self._lock:
            if self._disabled is None:
                log.warning(
                    "change journal off: %s; every backup lists every folder "
                    "(slower, as complete as before)",
                    reason,
                )
            self._disabled = self._disabled or reason
            self._generation += 1
            watcher, self._watcher = self._watcher, None
            self._dirty.clear()
            self._gone.clear()
        if watcher is not None:
            watcher.close()

    # ------------------------------------------------------------- walker side
    @property
    def active(self) -> bool:
        """A watcher runs (the journal can vouch for directories)."""
        return self._watcher is not None

    def watch(self, path: bytes) -> bool:
        """Watch a directory before it is listed (from the walker thread).

        False when it is not watched (refused, gone, or no journal).
        """
        watcher = self._watcher
        if watcher is None:
            return False
        error = watcher.watch(path)
        if error is None:
            return True
        if error:  # "" = not watched, for a reason that only concerns this folder
            self.disable(f"cannot watch {path!r}: {error}")
        return False

    def trusted(self, device: int, path: bytes) -> bool:
        """Whether changes on ``device`` raise events (no watcher: nothing is)."""
        watcher = self._watcher
        return watcher is not None and watcher.trusted(device, path)

    def begin(self, key: object, parent: bytes | None, roots: Sequence[bytes] = ()) -> JournalRun:
        """Take the marks for a backup of ``key`` whose parent snapshot is ``parent``.

        ``parent`` is None when the backup has no directory cache to reuse
        trees from. The marks taken are handed back by :meth:`abort` when
        the run does not complete.
        """
        self._start()
        if self._key is not None and key != self._key:
            self._restart()  # other sources: the old ones' watches would only cost
        self._key = key
        self._roots = tuple(roots)
        watcher = self._watcher
        mapped: set[bytes] = set()
        if watcher is not None:
            watcher.sync()  # a change made just before the backup is in this run
            if roots:
                mapped = watcher.mapped_for_writing(list(roots))
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            # written through a mapping: listed while it lasts, and once after
            dirty |= mapped | self._mapped
            self._mapped = mapped
            gone, self._gone = self._gone, set()
            reason = self._full_reason(key, parent)
            generation = self._generation
            if reason is not None:
                self._broken = None  # the full scan watches and lists everything
                run = JournalRun(True, reason, self, generation=generation)
            else:
                above: set[bytes] = set()
                for p in dirty:
                    pos = p.rfind(b"/")
                    while pos > 0:
                        anc = p[:pos]
                        if anc in above:
                            break
                        above.add(anc)
                        pos = p.rfind(b"/", 0, pos)
                above.add(b"/")
                run = JournalRun(
                    False,
                    "",
                    self,
                    dirty=dirty,
                    above=above,
                    gone=gone,
                    share=self._recheck,
                    generation=generation,
                )
            # kept until commit or abort, so a failed run hands them back
            self._taken = (dirty, gone)
        self.last_run = run
        return run

    def _full_reason(self, key: object, parent: bytes | None) -> str | None:
        if self._disabled is not None:
            return f"the change journal is off ({self._disabled})"
        if self._watcher is None:
            return "no change journal on this system"
        if self._broken is not None:
            return self._broken
        if parent is None or self._committed != (key, parent):
            return "the last backup was not watched by this agent"
        if self._watcher.identity(self._roots) != self._identity:
            return "the mounted file systems changed"
        if self._clock() - self._last_full >= self._full_every:
            return "the daily full scan"
        return None

    def commit(self, run: JournalRun, key: object, snapshot: bytes) -> None:
        """The run's snapshot and directory cache are saved: it is the new base."""
        watcher = self._watcher
        identity = watcher.identity(self._roots) if watcher is not None else b""
        with self._lock:
            self._committed = (key, snapshot)
            if run.full:
                self._last_full = self._clock()
                self._identity = identity
            elif identity != self._identity:
                self._broken = self._broken or "the mounted file systems changed"
            self._taken = (set(), set())

    def abort(self, run: JournalRun) -> None:
        """The run did not complete: its marks count again for the next one."""
        with self._lock:
            dirty, gone = self._taken
            self._dirty |= dirty
            self._gone |= gone
            self._taken = (set(), set())
            self._committed = None

    def close(self) -> None:
        """Stop watching."""
        with self._lock:
            watcher, self._watcher = self._watcher, None
            self._disabled = self._disabled or "closed"
        if watcher is not None:
            watcher.close()

    def _restart(self) -> None:
        """A new watcher: every watch of the old one is dropped."""
        with self._lock:
            watcher, self._watcher = self._watcher, None
            self._dirty.clear()
            self._gone.clear()
            self._committed = None
        if watcher is None:
            return
        watcher.close()
        try:
            new = self._make_watcher(self)
        except OSError as exc:
            self.disable(f"cannot start watching ({exc.strerror or exc})")
            return
        with self._lock:
            self._watcher = new

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            watcher = self._make_watcher(self)
        except OSError as exc:
            self.disable(f"cannot start watching ({exc.strerror or exc})")
            return
        if watcher is None:
            with self._lock:
                self._disabled = self._disabled or "no watcher for this system"
            return
        with self._lock:
            self._watcher = watcher
