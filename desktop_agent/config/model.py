"""The configuration as frozen dataclasses, with the defaults of a fresh install.

Values are kept as the user wrote them (``~/Documents`` stays ``~/Documents``)
so that saving a loaded configuration writes back the same text; the
properties and methods of :class:`Config` give the expanded, absolute paths
the rest of the program works with. Relative paths are relative to the
directory of the configuration file.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from desktop_agent.config.errors import ConfigError
from desktop_agent.config.location import Location, parse_location
from desktop_agent.config.network import parse_listen
from desktop_agent.config.paths import (
    default_password_file,
    default_repository_path,
    expand_path,
    user_cache_dir,
    user_log_dir,
)

__all__ = [
    "AgentConfig",
    "BackupConfig",
    "Config",
    "RepositoryConfig",
    "ScheduleConfig",
    "ServerConfig",
    "UiConfig",
    "UpkeepConfig",
    "parse_clock",
    "parse_quiet_hours",
    "generate_token",
    "with_token",
]


def generate_token() -> str:
    """A fresh random /ws access token (256 bits, URL-safe base64)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class AgentConfig:
    """The ``[agent]`` section: how the /ws server listens and whom it lets in."""

    listen: str = "127.0.0.1:8080"
    token: str = field(default="", repr=False)
    allowed_origins: tuple[str, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    # /ws connections at once (those still in the handshake count too); the
    # server may allow fewer when the open-file limit leaves no room for them
    max_connections: int = 256
    # whether a /ws client may start a restore (always into a new folder)
    allow_remote_restore: bool = False

    @property
    def host(self) -> str:
        """The host to bind, without IPv6 brackets (``"::1"``)."""
        return self._split()[0]

    @property
    def port(self) -> int:
        """The TCP port to bind."""
        return self._split()[1]

    def _split(self) -> tuple[str, int]:
        try:
            return parse_listen(self.listen)
        except ValueError as exc:
            raise ConfigError(f"[agent] listen: {exc}") from None


@dataclass(frozen=True)
class RepositoryConfig:
    """The ``[repository]`` section: where backups go and where their password is.

    ``password_file`` None means: no file, take the password from the
    environment or the OS keyring only.
    """

    path: str = field(default_factory=default_repository_path)
    password_file: str | None = field(default_factory=default_password_file)


@dataclass(frozen=True)
class BackupConfig:
    """The ``[backup]`` section: what to back up and what to leave out."""

    sources: tuple[str, ...] = ("~/Documents",)
    exclude: tuple[str, ...] = ("*.tmp", "**/.cache")
    interval_minutes: int = 60  # the agent backs up when the last backup is older; 0 = never


def parse_clock(text: str) -> int:
    """``"HH:MM"`` (24-hour local time) as minutes after midnight; ``ValueError`` otherwise."""
    match = re.fullmatch(r"([01]?[0-9]|2[0-3]):([0-5][0-9])", text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a time of day as HH:MM (00:00 to 23:59)")
    return int(match[1]) * 60 + int(match[2])


def parse_quiet_hours(text: str) -> tuple[int, int] | None:
    """``"HH:MM-HH:MM"`` as (start, end) minutes after midnight (the window may
    cross midnight: ``22:00-07:00``); None for an empty string."""
    if not text.strip():
        return None
    start, sep, end = text.partition("-")
    if not sep:
        raise ValueError(f"{text!r} is not a window as HH:MM-HH:MM (e.g. 22:00-07:00)")
    window = parse_clock(start), parse_clock(end)
    if window[0] == window[1]:
        raise ValueError(f"{text!r} starts and ends at the same time")
    return window


@dataclass(frozen=True)
class ScheduleConfig:
    """The ``[schedule]`` section: when the agent backs up on its own, and when not.

    How often is ``[backup] interval_minutes`` (0: only when asked), or once a
    day at ``daily_at`` when that is set. See docs/scheduling.md.
    """

    daily_at: str = ""  # "HH:MM" local time: once a day then, instead of every interval
    random_delay_minutes: int = 5  # a scheduled run starts up to this much later
    wake_delay_seconds: int = 60  # after a wake, wait this long (and for the network)
    skip_on_battery: bool = False  # no scheduled backups while on battery
    min_battery_percent: int = 20  # on battery: none below this level (0 = any level)
    skip_on_metered: bool = True  # no scheduled backups over a metered connection
    quiet_hours: str = ""  # "HH:MM-HH:MM": no scheduled backups in this window
    max_runtime_minutes: int = 0  # a scheduled backup stops after this (work kept); 0 = none
    keep_awake: bool = False  # keep the machine from sleeping while a backup runs
    stale_after_days: int = 3  # warn when the last successful backup is older; 0 = never
    max_retry_minutes: int = 240  # the cap of the backoff after failed backups

    @property
    def daily_minute(self) -> int | None:
        """``daily_at`` as minutes after midnight, or None (every interval)."""
        return parse_clock(self.daily_at) if self.daily_at.strip() else None

    @property
    def quiet_window(self) -> tuple[int, int] | None:
        """``quiet_hours`` as (start, end) minutes after midnight, or None."""
        return parse_quiet_hours(self.quiet_hours)


@dataclass(frozen=True)
class UpkeepConfig:
    """The ``[upkeep]`` section: repository maintenance the agent runs on its own.

    Both only on AC power and unmetered networks, as jobs of the one queue.
    """

    forget: bool = False  # forget + prune by the keep_* policy after a backup, at most daily
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 7
    keep_weekly: int = 4
    keep_monthly: int = 12
    keep_yearly: int = 0
    # a weekly `check --read-data-subset n/check_subsets`, n rotating; 0 = no scheduled check
    check_subsets: int = 20


@dataclass(frozen=True)
class ServerConfig:
    """The ``[server]`` section: the backup server the agent dials out to (docs/protocol.md).

    ``url`` empty: off. The credential is never here: ``DESKTOP_AGENT_SERVER_TOKEN``,
    ``token_file``, or the OS keyring (config/secrets.py).
    """

    url: str = ""  # "wss://backup.example.com/agents"
    token_file: str | None = None
    ca_file: str | None = None  # trust this CA instead of the system's
    allow_insecure: bool = False  # ws:// to a host other than this machine


@dataclass(frozen=True)
class UiConfig:
    """The ``[ui]`` section: how the tray app talks to the user."""

    notify_success: bool = True  # failures are always shown


@dataclass(frozen=True)
class Config:
    """A whole configuration and the file it belongs to."""

    agent: AgentConfig
    repository: RepositoryConfig
    backup: BackupConfig
    path: Path
    ui: UiConfig = UiConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    upkeep: UpkeepConfig = UpkeepConfig()
    server: ServerConfig = ServerConfig()

    def resolve_path(self, value: str) -> str:
        """Expand ``~`` and ``$VARS`` in ``value``; relative means relative to the file's dir."""
        return expand_path(value, self.path.parent)

    def expanded_sources(self) -> list[str]:
        """The backup sources, expanded and absolute, in order, without duplicates."""
        seen: dict[str, None] = {}
        for source in self.backup.sources:
            seen.setdefault(self.resolve_path(source), None)
        return list(seen)

    def backup_excludes(self) -> list[str]:
        """The exclude patterns a backup uses: the configured ones, then the
        repository itself and the agent's own caches and logs, wherever they
        lie inside a source (backing up the backup, or its cache, would make
        every run bigger than the last)."""
        own = [str(user_cache_dir()), str(user_log_dir())]
        if not self.repository_location.remote:
            own.insert(0, self.repository_path)
        # absolute patterns match exactly that path; glob characters in it are literal
        return list(self.backup.exclude) + [glob.escape(os.path.abspath(p)) for p in own]

    @property
    def repository_location(self) -> Location:
        """Where the repository is; a local folder's path expanded and absolute."""
        location = parse_location(self.repository.path)
        if location.remote:
            return location
        path = self.resolve_path(location.path)
        return Location("local", path, path=path)

    @property
    def repository_path(self) -> str:
        """The repository: a local folder expanded and absolute, or a remote location as
        written (it holds no password: the loader refuses one)."""
        location = self.repository_location
        return location.path if not location.remote else location.text

    @property
    def password_file_path(self) -> str | None:
        """The password file, expanded and absolute, or None when none is configured."""
        if self.repository.password_file is None:
            return None
        return self.resolve_path(self.repository.password_file)

    @property
    def tls_files(self) -> tuple[str, str] | None:
        """``(certificate, key)`` expanded and absolute, or None when TLS is off."""
        if self.agent.tls_cert is None or self.agent.tls_key is None:
            return None
        return self.resolve_path(self.agent.tls_cert), self.resolve_path(self.agent.tls_key)


def with_token(config: Config, token: str) -> Config:
    """A copy of ``config`` with another /ws token (save it to make it stick)."""
    return dataclasses.replace(config, agent=dataclasses.replace(config.agent, token=token))
