"""Things done at most once per login session (the first-run window at login).

A start from the login entry that finds no repository shows the first-run
window; the same login's later starts (a crash and a restart, a second
autostart entry) must not show it again, or a user who closed it would get
it back and again. A marker remembers that it was shown:

- ``$XDG_RUNTIME_DIR/desktop-agent/<name>`` where the session has a runtime
  directory: it is created at the first login and emptied by the system at
  the last logout, exactly the lifetime wanted.
- Elsewhere (macOS, Windows, a Linux session without one) a file in the
  cache directory holding the session's identity: the boot id (and the
  audit login session where the kernel keeps one) on Linux, the boot time on
  macOS and Windows. A marker from another session does not count.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import platformdirs

from desktop_agent.config.atomicfile import make_private_dirs, write_atomic
from desktop_agent.config.paths import APP_NAME

__all__ = ["first_time_this_session", "session_id"]

# The boot time derived from the clocks wobbles by a few seconds between
# calls; two values this close belong to the same boot.
_BOOT_TIME_SLACK = 120.0
_UNSET_SESSION = "4294967295"  # /proc/self/sessionid without a login session


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read(128).strip()
    except OSError:
        return ""


def _macos_boot_time() -> str:
    try:
        out = subprocess.run(
            ["sysctl", "-n", "kern.boottime"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    match = re.search(r"sec = (\d+)", out)
    return f"boot:{match.group(1)}" if match else ""


def session_id() -> str:
    """Who this login session is, as well as the platform can tell.

    Linux: ``boot_id`` plus the audit session id (one per login) when there
    is one. macOS: the kernel's boot time. Elsewhere: the boot time from the
    clocks (``uptime:<seconds since the epoch>``, compared with some slack).
    """
    boot = _read("/proc/sys/kernel/random/boot_id")
    if boot:
        login = _read("/proc/self/sessionid")
        return f"{boot}:{login}" if login and login != _UNSET_SESSION else boot
    if sys.platform == "darwin":
        found = _macos_boot_time()
        if found:
            return found
    return f"uptime:{time.time() - time.monotonic():.0f}"


def _same_session(stored: str, current: str) -> bool:
    if stored.startswith("uptime:") and current.startswith("uptime:"):
        try:
            return abs(float(stored[7:]) - float(current[7:])) <= _BOOT_TIME_SLACK
        except ValueError:
            return False
    return stored == current


def _runtime_marker(name: str) -> Path | None:
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
        return Path(xdg) / APP_NAME / name
    return None


def first_time_this_session(name: str) -> bool:
    """True the first time ``name`` is asked for in this login session, False afterwards.

    The marker is written before returning True. When no marker can be
    written the answer is True: showing a window once too often beats never
    showing it.
    """
    marker = _runtime_marker(name)
    if marker is not None:
        try:
            make_private_dirs(marker.parent)
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        except OSError:
            return True
        os.close(fd)
        return True
    marker = Path(platformdirs.user_cache_dir(APP_NAME)) / "sessions" / name
    current = session_id()
    if _same_session(_read(str(marker)), current):
        return False
    with contextlib.suppress(OSError):
        make_private_dirs(marker.parent)
        write_atomic(marker, current.encode("ascii", "replace") + b"\n")
    return True
