"""Where desktop-agent keeps its files on this platform, and how paths are expanded.

Every location comes from platformdirs under the application name
``desktop-agent``, so it follows XDG on Linux, ``~/Library`` on macOS and
``%LOCALAPPDATA%`` on Windows.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from desktop_agent.config.errors import ConfigError

__all__ = [
    "APP_NAME",
    "CONFIG_ENV",
    "default_config_path",
    "default_password_file",
    "default_repository_path",
    "default_sources",
    "expand_path",
    "HOME_EXCLUDES",
    "resolve_config_path",
    "user_cache_dir",
    "user_downloads_dir",
    "user_log_dir",
]

APP_NAME = "desktop-agent"
CONFIG_ENV = "DESKTOP_AGENT_CONFIG"


def default_config_path() -> Path:
    """The configuration file used when neither ``--config`` nor the environment names one."""
    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


def default_repository_path() -> str:
    """The repository location written into a fresh configuration."""
    return os.path.join(platformdirs.user_data_dir(APP_NAME), "repository")


def default_password_file() -> str:
    """The password file location written into a fresh configuration."""
    return os.path.join(platformdirs.user_config_dir(APP_NAME), "repository-password")


# Left out when the whole home folder is backed up: caches, the trash, and
# what package managers and toolchain installers download again on demand.
HOME_EXCLUDES = (
    "~/.cache",
    "~/.local/share/Trash",
    "~/.Trash",
    "~/Library/Caches",
    "~/.npm/_cacache",
    "~/.cargo/registry",
    "~/.cargo/git",
    "~/.rustup/toolchains",
    "~/go/pkg/mod",
    "~/.m2/repository",
    "~/.gradle/caches",
    "~/.local/share/pnpm/store",
    "~/.yarn/berry/cache",
    "~/.pyenv/versions",
    "~/.nvm/versions",
    "~/.sdkman/candidates",
    "~/.local/share/containers",
    "~/.local/share/flatpak",
    "~/snap",
)


def default_sources(home: Path | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(sources, extra excludes)`` for a fresh configuration.

    ``~/Documents`` when it exists; otherwise the whole home folder, without
    :data:`HOME_EXCLUDES` (a fresh machine, a server account, a desktop
    whose documents live elsewhere: backing up nothing would be worse).
    """
    home = home or Path(os.path.expanduser("~"))
    if (home / "Documents").is_dir():
        return ("~/Documents",), ()
    return ("~",), HOME_EXCLUDES


def user_log_dir() -> Path:
    """The directory for desktop-agent's log files."""
    return Path(platformdirs.user_log_dir(APP_NAME))


def user_cache_dir() -> Path:
    """The directory for desktop-agent's caches (safe to delete)."""
    return Path(platformdirs.user_cache_dir(APP_NAME))


def user_downloads_dir() -> Path:
    """The user's downloads folder (XDG ``DOWNLOAD``, ``~/Downloads``) if it exists,
    else the home folder: where files a backup server restores go."""
    downloads = Path(platformdirs.user_downloads_dir())
    if downloads.is_dir():
        return downloads
    return Path(os.path.expanduser("~"))


def resolve_config_path(cli_value: str | None) -> Path:
    """Pick the configuration file: ``--config`` beats ``$DESKTOP_AGENT_CONFIG`` beats the default.

    ``cli_value`` is the ``--config`` argument, or None when it was not given.
    An empty environment variable counts as unset; an empty ``--config`` is an
    error. ``~`` is expanded and the result is absolute (relative to the
    current directory, as a user typing the path expects).
    """
    if cli_value is not None:
        if not cli_value.strip():
            raise ConfigError("--config: the path is empty")
        return Path(os.path.abspath(os.path.expanduser(cli_value)))
    from_env = os.environ.get(CONFIG_ENV, "")
    if from_env.strip():
        return Path(os.path.abspath(os.path.expanduser(from_env)))
    return default_config_path()


def expand_path(value: str, base: Path) -> str:
    """Expand ``~`` and environment variables in ``value`` and make it absolute.

    A relative path is taken relative to ``base`` (the configuration file's
    directory), not to the current directory: the agent is often started from
    an autostart entry or a service manager whose current directory means
    nothing to the user. The result is normalized; symbolic links are kept.
    Unset variables are left as written, as ``os.path.expandvars`` does.
    """
    expanded = os.path.expandvars(os.path.expanduser(value))
    if not os.path.isabs(expanded):
        expanded = os.path.join(os.path.abspath(base), expanded)
    return os.path.normpath(expanded)
