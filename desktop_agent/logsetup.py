"""Logging to the platform's log directory (and, for the headless agent, stderr).

Nothing that goes through here ever contains the /ws token or a password:
the server and the config loader never pass them to a logger, and
websockets' own header logging is kept below the level we record.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys

from desktop_agent.config import user_log_dir

__all__ = ["setup_logging", "LOG_NAME"]

LOG_NAME = "desktop-agent.log"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(*, stderr: bool = False, level: int = logging.INFO) -> str | None:
    """Log to ``<log dir>/desktop-agent.log`` (rotated); returns its path."""
    root = logging.getLogger()
    root.setLevel(level)
    path: str | None = None
    try:
        log_dir = user_log_dir()
        log_dir.mkdir(parents=True, exist_ok=True)
        path = str(log_dir / LOG_NAME)
        handler: logging.Handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=2 * 1024 * 1024, backupCount=3, encoding="utf-8"
        )
        handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(handler)
    except OSError:
        path = None
    if stderr:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(console)
    return path
