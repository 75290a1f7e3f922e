"""Reading the small private files a user points us at: the configuration and the password file.

Their paths come from the command line, the environment or a configuration
file, so they may name anything: a FIFO whose ``open`` would wait forever
for a writer, ``/dev/zero`` that never ends, a directory, a socket. They
are opened without blocking and checked with ``fstat`` before a single byte
is read: only a regular file (symbolic links followed) is read, and only up
to a cap.

Both files hold secrets. When other users can read (or change) one, the user
is told once per process and file: a warning in the log that carries the
:data:`USER_NOTICE` attribute, which the log setup also shows on stderr.
"""

from __future__ import annotations

import logging
import os
import shlex
import stat
import threading

from desktop_agent.config.errors import ConfigError

__all__ = ["USER_NOTICE", "read_regular_file", "warn_if_exposed"]

log = logging.getLogger(__name__)

USER_NOTICE = "desktop_agent_user_notice"
"""Name of the ``LogRecord`` attribute set (True) on warnings meant for the user's eyes.

The log setup shows such records on stderr even where it logs to a file only
(the command line), so the warning is not buried in a log nobody reads.
"""

_O_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)
_O_NOCTTY: int = getattr(os, "O_NOCTTY", 0)  # a terminal device must not become ours
_O_BINARY: int = getattr(os, "O_BINARY", 0)

_warned: set[str] = set()
_warned_lock = threading.Lock()


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _size(limit: int) -> str:
    if limit % (1024 * 1024) == 0:
        return f"{limit // (1024 * 1024)} MiB"
    if limit % 1024 == 0:
        return f"{limit // 1024} KiB"
    return f"{limit} bytes"


def _not_regular(label: str, noun: str, mode: int) -> ConfigError:
    return ConfigError(f"{label}: is {_kind(mode)}, not {noun}")


def _too_large(label: str, limit: int) -> ConfigError:
    return ConfigError(f"{label}: is larger than {_size(limit)}; is it the right file?")


def read_regular_file(
    path: str | os.PathLike[str], *, limit: int, label: str, noun: str
) -> tuple[bytes, os.stat_result]:
    """The content and ``fstat`` of the regular file at ``path``, at most ``limit`` bytes.

    ``label`` starts every message (the path, or ``"password file PATH"``)
    and ``noun`` names what the file should have been (``"a configuration
    file"``). Raises :class:`ConfigError` for anything but a regular file
    (before reading from it, so a FIFO or a device cannot hang or flood the
    program) and for a file larger than ``limit``; raises ``OSError`` when
    the file cannot be opened or read, for the caller to word.
    """
    flags = os.O_RDONLY | _O_NONBLOCK | _O_NOCTTY | _O_BINARY
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError:
        # Linux refuses to open a socket (ENXIO), Windows a directory (EACCES):
        # say what the path is when that is the reason.
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        if not stat.S_ISREG(mode):
            raise _not_regular(label, noun, mode) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(label, noun, info.st_mode)
        if info.st_size > limit:
            raise _too_large(label, limit)
        if _O_NONBLOCK:
            os.set_blocking(fd, True)  # the flag only guarded the open
        chunks: list[bytes] = []
        remaining = limit + 1  # one byte more tells a file that grew past the cap
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 64 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise _too_large(label, limit)
    return data, info


def warn_if_exposed(path: str | os.PathLike[str], mode: int, holds: str) -> None:
    """Warn, once per process and file, when users other than the owner may read or change it.

    ``mode`` is the file's ``st_mode``; ``holds`` says what secret it holds
    (``"the /ws token"``). The warning names the fix (``chmod 600 PATH``)
    and is marked with :data:`USER_NOTICE` so it reaches stderr as well as
    the log. Only POSIX permission bits are looked at.
    """
    if os.name != "posix":
        return
    bits = stat.S_IMODE(mode)
    if bits & 0o044:
        who = "can be read by other users"
    elif bits & 0o022:
        who = "can be changed by other users"
    else:
        return
    key = os.path.abspath(path)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(
        "%s %s (mode %04o) and holds %s; run: chmod 600 %s",
        key,
        who,
        bits,
        holds,
        shlex.quote(key),
        extra={USER_NOTICE: True},
    )
