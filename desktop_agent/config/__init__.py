"""Configuration: dataclasses, TOML load/validate/save, platform paths, secrets.

Imported by every other package; imports nothing else of desktop-agent's.

>>> config = load_or_create(resolve_config_path(None))   # doctest: +SKIP
>>> config.agent.port, config.repository_path             # doctest: +SKIP
"""

from __future__ import annotations

from desktop_agent.config.errors import ConfigError
from desktop_agent.config.loader import load, load_or_create, merge, save, validate
from desktop_agent.config.model import (
    AgentConfig,
    BackupConfig,
    Config,
    RepositoryConfig,
    ScheduleConfig,
    ServerConfig,
    UiConfig,
    UpkeepConfig,
    generate_token,
    with_token,
)
from desktop_agent.config.password import PASSWORD_ENV, read_password
from desktop_agent.config.paths import (
    CONFIG_ENV,
    default_config_path,
    resolve_config_path,
    user_cache_dir,
    user_downloads_dir,
    user_log_dir,
)
from desktop_agent.config.secrets import (
    KEYRING_SERVICE,
    keyring_usable,
    password_storage_problem,
    store_password,
    write_password_file,
)

__all__ = [
    "CONFIG_ENV",
    "KEYRING_SERVICE",
    "PASSWORD_ENV",
    "AgentConfig",
    "BackupConfig",
    "Config",
    "ConfigError",
    "RepositoryConfig",
    "ScheduleConfig",
    "ServerConfig",
    "UiConfig",
    "UpkeepConfig",
    "default_config_path",
    "generate_token",
    "keyring_usable",
    "load",
    "load_or_create",
    "merge",
    "password_storage_problem",
    "read_password",
    "resolve_config_path",
    "save",
    "store_password",
    "user_cache_dir",
    "user_downloads_dir",
    "user_log_dir",
    "validate",
    "with_token",
    "write_password_file",
]
