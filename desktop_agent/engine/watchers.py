"""The change journal's watcher for this system.

A privileged agent on Linux marks whole file systems with fanotify
(:mod:`.watch_fanotify`); any other Linux agent watches each directory with
inotify (:mod:`.watch_inotify`). Elsewhere there is no watcher yet, and
every backup lists every folder (as complete, slower).
"""

from __future__ import annotations

import logging

from . import watch_fanotify, watch_inotify
from .journal import ChangeJournal, Watcher

__all__ = ["start"]

log = logging.getLogger(__name__)


def start(journal: ChangeJournal) -> Watcher | None:
    """The best watcher this process may use, or None where there is none."""
    if watch_fanotify.available():
        try:
            return watch_fanotify.FanotifyWatcher(journal)
        except OSError as exc:
            # not allowed (no CAP_SYS_ADMIN), or out of fanotify groups: inotify
            log.debug("fanotify not usable here (%s); watching with inotify", exc.strerror)
    return watch_inotify.start(journal)
