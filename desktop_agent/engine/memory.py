"""Keeping the process's memory footprint close to its working set.

glibc gives every thread that contends for malloc an arena of its own (up to
8 per CPU). Backup threads allocate and free multi-megabyte buffers, which
then linger in those arenas: with the default, the CLI backup of 1 GiB peaks
about 25% higher than with two arenas, at the same speed. Elsewhere (musl,
macOS, Windows) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["limit_malloc_arenas"]

_M_ARENA_MAX = -8
_done = False


def limit_malloc_arenas(count: int = 2) -> None:
    """Cap glibc's malloc arenas (once per process; ignored where unsupported)."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return
    _done = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mallopt(_M_ARENA_MAX, count)
