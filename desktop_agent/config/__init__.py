"""Configuration: dataclasses, TOML load/validate/save, platform paths, secrets.

Imported by every other package; imports nothing else of desktop-agent's.

>>> config = load_or_create(resolve_config_path(None))   # doctest: +SKIP
>>> config.agent.port, config.repository_path             # doctest: +SKIP
"""

from __future__ import annotations

from desktop_agent.config.errors import ConfigError
from desktop_agent.config.loader import load, load_or_create, save, validate
from desktop_agent.config.model import (
    AgentConfig,
    BackupConfig,
    Config,
    RepositoryConfig,
    UiConfig,
    generate_token,
    with_token,
)
from desktop_agent.config.password import (
    KEYRING_SERVICE,
    PASSWORD_ENV,
    read_password,
    write_password_file,
)
from desktop_agent.config.paths import (
    CONFIG_ENV,
    default_config_path,
    resolve_config_path,
    user_cache_dir,
    user_log_dir,
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
    "UiConfig",
    "default_config_path",
    "generate_token",
    "load",
    "load_or_create",
    "read_password",
    "resolve_config_path",
    "save",
    "user_cache_dir",
    "user_log_dir",
    "validate",
    "with_token",
    "write_password_file",
]
