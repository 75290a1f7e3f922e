"""The configuration layer's one exception."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(Exception):
    """A configuration problem, worded so that a user can fix it.

    The message names the file, the key and the problem, e.g.
    ``/x/config.toml: [agent] listen: port 99999 is out of range 1-65535``.
    It never contains a token or a password.
    """
