"""Keeping the process's memory footprint close to its working set, and its
garbage collector out of the way of a backup.

glibc gives every thread that contends for malloc an arena of its own (up to
8 per CPU), and by default hands large buffers back to the system as soon as
they are freed (see :func:`steady_buffers` for the time a backup or
restore runs). Backup threads allocate and free multi-megabyte buffers, which
then linger in those arenas: with the default, the CLI backup of 1 GiB peaks
about 25% higher than with two arenas, at the same speed. Elsewhere (musl,
macOS, Windows) this is a no-op.
"""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

__all__ = [
    "limit_malloc_arenas",
    "steady_buffers",
    "fewer_gc_passes",
    "FEWER_GC_PASSES",
]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_done = False
_libc: Any = None


def _glibc() -> Any:
    """libc with ``mallopt`` and ``malloc_trim`` typed, or None (not Linux, or not glibc)."""
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            import ctypes  # here: the helper processes import this module and need no ctypes

            try:
                # the process's own symbols, libc's among them (find_library runs ldconfig)
                libc = ctypes.CDLL(None)
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                libc.mallopt.restype = ctypes.c_int
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                libc.malloc_trim.restype = ctypes.c_int
                _libc = libc
            except (OSError, AttributeError):
                pass
    return _libc or None


def limit_malloc_arenas(count: int = 2) -> None:
    """Cap glibc's malloc arenas (once per process; ignored where unsupported)."""
    global _done
    if _done:
        return
    _done = True
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, count)


class _WhileUsed:
    """A process-wide setting held while any block uses it (nests, thread-safe):
    the first block to enter applies it, the last one to leave undoes it."""

    def __init__(self, apply: Callable[[], None], undo: Callable[[], None]) -> None:
        self._apply, self._undo = apply, undo
        self._lock = threading.Lock()
        self._users = 0

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._apply()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._undo()


# A backup or restore reads, decrypts and decompresses buffers of a few
# hundred KiB to a few MiB, one after the other. glibc serves each from
# fresh pages of its own (mmap) or returns the top of its heap once more
# than a little is free, so every buffer's pages are faulted in and zeroed
# again: 1 GiB backed up took 100,000 page faults, restored 79,000. While
# steady_buffers() holds, buffers up to 32 MiB come from the heap and up to
# 64 MiB of it stays with the process between them: 33,000 and 21,500
# faults, a second less of system time and 4-7% less wall time on this
# machine, for 3-7 MB more at the peak. On leaving, glibc's defaults are put
# back and the free memory returned. The command line's backup and restore
# use it; the agent does not: a fixed threshold afterwards would replace
# glibc's adaptive one for the rest of a long-lived process.
_STEADY_MMAP = 32 << 20  # glibc's largest allowed threshold on 64-bit systems
_STEADY_TRIM = 64 << 20
_DEFAULT_MMAP = _DEFAULT_TRIM = 128 << 10


def _steady_apply() -> None:
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _STEADY_MMAP)
        libc.mallopt(_M_TRIM_THRESHOLD, _STEADY_TRIM)


def _steady_undo() -> None:
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT_MMAP)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM)
        libc.malloc_trim(0)


_steady = _WhileUsed(_steady_apply, _steady_undo)


def steady_buffers() -> AbstractContextManager[None]:
    """Keep large buffers' memory in the process while the block runs (nests,
    thread-safe; glibc only, elsewhere nothing)."""
    return _steady.held()


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
_gc_saved: tuple[int, int, int] = (0, 0, 0)


def _gc_apply() -> None:
    global _gc_saved
    young, middle, old = _gc_saved = gc.get_threshold()[:3]
    want = FEWER_GC_PASSES
    gc.set_threshold(max(young, want[0]), max(middle, want[1]), max(old, want[2]))


def _gc_undo() -> None:
    gc.set_threshold(*_gc_saved)


_fewer_gc = _WhileUsed(_gc_apply, _gc_undo)


def fewer_gc_passes() -> AbstractContextManager[None]:
    """Raise the collector's thresholds while the block runs (nests, thread-safe).

    The thresholds are the process's: the first block to enter raises them
    and the last one to leave puts back what it found.
    """
    return _fewer_gc.held()
