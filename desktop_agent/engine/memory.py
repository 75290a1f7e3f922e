"""Keeping the process's memory footprint close to its working set, and its
garbage collector out of the way of a backup.

glibc gives every thread that contends for malloc an arena of its own (up to
8 per CPU). Backup threads allocate and free multi-megabyte buffers, which
then linger in those arenas: with the default, the CLI backup of 1 GiB peaks
about 25% higher than with two arenas, at the same speed. Elsewhere (musl,
macOS, Windows) this is a no-op.
"""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["limit_malloc_arenas", "fewer_gc_passes", "FEWER_GC_PASSES"]

_M_ARENA_MAX = -8
_done = False


def limit_malloc_arenas(count: int = 2) -> None:
    """Cap glibc's malloc arenas (once per process; ignored where unsupported)."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return
    _done = True
    import ctypes  # here: the helper processes import this module and need no ctypes

    try:
        # the process's own symbols, libc's among them (find_library would run ldconfig)
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mallopt(_M_ARENA_MAX, count)


# A backup of many small files allocates a few container objects per file
# (nodes, jobs, answers; in the helpers, answers and packs) and keeps many
# of them until their directory is saved. With the default thresholds
# (700, 10, 10) the cyclic collector runs a young pass every 700 of them
# and ever longer full passes over what the backup holds: about 1 us of
# every 3 spent making a file's job, and several percent of a backup of
# small files. These thresholds run it far less often; the objects a backup
# makes form no cycles to speak of (reference counting frees them), so
# memory does not grow for it.
FEWER_GC_PASSES = (50_000, 50, 100)
_gc_lock = threading.Lock()
_gc_users = 0
_gc_saved: tuple[int, int, int] = (0, 0, 0)


@contextmanager
def fewer_gc_passes() -> Iterator[None]:
    """Raise the collector's thresholds while the block runs (nests, thread-safe).

    The thresholds are the process's: the first block to enter raises them
    and the last one to leave puts back what it found.
    """
    global _gc_users, _gc_saved
    with _gc_lock:
        if _gc_users == 0:
            young, middle, old = _gc_saved = gc.get_threshold()[:3]
            want = FEWER_GC_PASSES
            gc.set_threshold(max(young, want[0]), max(middle, want[1]), max(old, want[2]))
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0:
                gc.set_threshold(*_gc_saved)
