"""Logging to the platform's log directory (and, for the headless agent, stderr).

Nothing that goes through here ever contains the /ws token or a password:
the server and the config loader never pass them to a logger, and
websockets' own header logging is kept below the level we record.

The log names the paths that are backed up and restored, so it is private:
the directory is 0700 and every log file, rotated ones included, 0600,
whatever the umask. Warnings marked for the user (``USER_NOTICE``, such as
"your configuration file can be read by others") also go to stderr when the
rest of the log does not.
"""

from __future__ import annotations

import contextlib
import io
import logging
import logging.handlers
import os
import stat
import sys
from pathlib import Path

from desktop_agent.config import user_log_dir
from desktop_agent.config.atomicfile import make_private_dirs
from desktop_agent.config.privatefile import USER_NOTICE
from desktop_agent.termtext import clean

__all__ = ["setup_logging", "LOG_NAME", "OneLineFormatter", "PrivateRotatingFileHandler"]

LOG_NAME = "desktop-agent.log"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_NOTICE_FORMAT = "desktop-agent: warning: %(message)s"
_POSIX = os.name == "posix"


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log file only its owner can read: mode 0600 whatever the umask.

    Rotation renames the file, so the rotated copies keep that mode; a file
    left by an older version with a wider mode is narrowed when it is opened.
    """

    def _open(self) -> io.TextIOWrapper:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if "w" in self.mode else os.O_APPEND)
        fd = os.open(self.baseFilename, flags, 0o600)
        try:
            if _POSIX:
                os.fchmod(fd, 0o600)
            # "a" whatever self.mode: a "w" handler's truncation was done by O_TRUNC above.
            return open(fd, "a", encoding=self.encoding, errors=self.errors)  # noqa: SIM115
        except BaseException:
            os.close(fd)
            raise


class OneLineFormatter(logging.Formatter):
    """Messages may carry file names and hostnames from a repository or a
    disk: control characters in them are escaped, so no message can forge
    another log line or drive the terminal that shows stderr. Tracebacks
    (ours, never a client's) keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = clean(record.message)
        return super().formatMessage(record)


def _make_private(log_dir: Path) -> None:
    """Create ``log_dir`` with mode 0700, or narrow an existing one of ours (and its logs)."""
    make_private_dirs(log_dir)
    if not _POSIX:
        return
    info = os.stat(log_dir)
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(log_dir, 0o700)
    # Rotated files from before logs were private: the handler only opens the current one.
    for entry in os.scandir(log_dir):
        if entry.name.startswith(LOG_NAME) and entry.is_file(follow_symlinks=False):
            info = entry.stat(follow_symlinks=False)
            if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & 0o077:
                with contextlib.suppress(OSError):  # an old copy must not stop logging
                    os.chmod(entry.path, 0o600)


def _is_user_notice(record: logging.LogRecord) -> bool:
    return bool(getattr(record, USER_NOTICE, False))


_CHATTY = ("httpx", "httpcore", "asyncssh", "botocore", "urllib3")


def setup_logging(*, stderr: bool = False, level: int = logging.INFO) -> str | None:
    """Log to ``<log dir>/desktop-agent.log`` (rotated, private); returns its path.

    With ``stderr`` every record is also written to stderr (the headless
    agent); without it only the warnings marked as user notices are, as one
    ``desktop-agent: warning: ...`` line each. Returns None when the log
    file cannot be written (logging then goes to stderr only, if at all).
    """
    root = logging.getLogger()
    root.setLevel(level)
    # the network libraries of the remote backends log every request (a URL per
    # pack) and connection at INFO: the backends report what matters themselves
    for chatty in _CHATTY:
        logging.getLogger(chatty).setLevel(logging.WARNING)
    path: str | None = None
    try:
        log_dir = user_log_dir()
        _make_private(log_dir)
        path = str(log_dir / LOG_NAME)
        handler: logging.Handler = PrivateRotatingFileHandler(
            path, maxBytes=2 * 1024 * 1024, backupCount=3, encoding="utf-8"
        )
        handler.setFormatter(OneLineFormatter(_FORMAT))
        root.addHandler(handler)
    except OSError:
        path = None
    if sys.stderr is None:  # a windowed build on Windows has no stderr at all
        return path
    if stderr:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(OneLineFormatter(_FORMAT))
        root.addHandler(console)
    else:
        notices = logging.StreamHandler(sys.stderr)
        notices.setLevel(logging.WARNING)
        notices.addFilter(_is_user_notice)
        notices.setFormatter(OneLineFormatter(_NOTICE_FORMAT))
        root.addHandler(notices)
    return path
