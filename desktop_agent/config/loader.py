"""Reading, validating, creating and saving the TOML configuration file.

Every problem becomes a :class:`ConfigError` naming the file, the key and
what is wrong with it. Validation is strict: an unknown section or key is an
error (a typo would otherwise be silently ignored).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from desktop_agent.config.atomicfile import make_private_dirs, resolve_link, write_atomic
from desktop_agent.config.errors import ConfigError
from desktop_agent.config.location import parse_location
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
    parse_clock,
    parse_quiet_hours,
)
from desktop_agent.config.network import normalize_origin, parse_listen
from desktop_agent.config.paths import (
    default_password_file,
    default_repository_path,
    default_sources,
    expand_path,
)
from desktop_agent.config.privatefile import read_regular_file, warn_if_exposed
from desktop_agent.config.template import render_default

__all__ = ["load", "load_or_create", "merge", "parse_document", "save", "to_document", "validate"]

log = logging.getLogger(__name__)

_KEYS: dict[str, tuple[str, ...]] = {
    "agent": (
        "listen",
        "token",
        "allowed_origins",
        "tls_cert",
        "tls_key",
        "max_connections",
        "allow_remote_restore",
    ),
    "repository": ("path", "password_file"),
    "backup": ("sources", "exclude", "interval_minutes"),
    "schedule": (
        "daily_at",
        "random_delay_minutes",
        "wake_delay_seconds",
        "skip_on_battery",
        "min_battery_percent",
        "skip_on_metered",
        "quiet_hours",
        "max_runtime_minutes",
        "keep_awake",
        "stale_after_days",
        "max_retry_minutes",
    ),
    "upkeep": (
        "forget",
        "keep_last",
        "keep_hourly",
        "keep_daily",
        "keep_weekly",
        "keep_monthly",
        "keep_yearly",
        "check_subsets",
    ),
    "server": ("url", "token_file", "ca_file", "allow_insecure"),
    "ui": ("notify_success",),
}

# A configuration file is a few kilobytes; this is far beyond any real one and
# keeps reading a wrong path (a huge log file, say) cheap.
CONFIG_FILE_LIMIT = 1024 * 1024

# restic's remote backends; a local path is all this version stores to.


def _toml_type(value: object) -> str:
    names: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
    ]
    for kind, name in names:
        if isinstance(value, kind):
            return name
    return "a date/time"


def _show(value: object) -> str:
    """``value`` written roughly as TOML would, for messages."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def _suggest(name: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {_show(close[0])}?)" if close else ""


class _Section:
    """Reads the keys of one table, turning every problem into a ConfigError."""

    def __init__(self, file: Path, name: str, table: Mapping[str, Any]) -> None:
        self.file = file
        self.name = name
        self.table = table
        known = _KEYS[name]
        for key in table:
            if key not in known:
                raise ConfigError(
                    f"{file}: [{name}] {key}: unknown key{_suggest(key, known)}; "
                    f"known keys: {', '.join(known)}"
                )

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.file}: [{self.name}] {key}: {problem}")

    def string(self, key: str, default: str | None, *, secret: bool = False) -> str | None:
        """The key's string value; ``default`` when absent. Empty strings are returned as-is."""
        if key not in self.table:
            return default
        value = self.table[key]
        if not isinstance(value, str):
            shown = "" if secret else f" {_show(value)}"
            raise self.error(key, f"expected a string, got {_toml_type(value)}{shown}")
        if "\x00" in value:
            raise self.error(key, "contains a NUL character")
        return value

    def integer(self, key: str, default: int, *, minimum: int, maximum: int) -> int:
        """The key's integer value within ``[minimum, maximum]``; ``default`` when absent."""
        if key not in self.table:
            return default
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {_toml_type(value)} {_show(value)}")
        if not minimum <= value <= maximum:
            raise self.error(key, f"{value} is out of range {minimum}-{maximum}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        """The key's boolean value; ``default`` when absent."""
        if key not in self.table:
            return default
        value = self.table[key]
        if not isinstance(value, bool):
            raise self.error(
                key, f"expected a boolean (true or false), got {_toml_type(value)} {_show(value)}"
            )
        return value

    def string_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """The key's array of non-empty strings; ``default`` when absent."""
        if key not in self.table:
            return default
        value = self.table[key]
        if not isinstance(value, list):
            if isinstance(value, str):
                raise self.error(
                    key, f"expected an array of strings, got a string: write [{_show(value)}]"
                )
            raise self.error(
                key, f"expected an array of strings, got {_toml_type(value)} {_show(value)}"
            )
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(
                    key,
                    f"item {index + 1} should be a string, got {_toml_type(item)} {_show(item)}",
                )
            if not item.strip():
                raise self.error(key, f"item {index + 1} is empty")
            if "\x00" in item:
                raise self.error(key, f"item {index + 1} contains a NUL character")
        return tuple(value)

    def existing_file(self, key: str, value: str) -> None:
        if not value.strip():
            raise self.error(key, "the path is empty; remove the key to turn TLS off")
        resolved = expand_path(value, self.file.parent)
        if not os.path.exists(resolved):
            raise self.error(key, f"file {resolved} does not exist")
        if not os.path.isfile(resolved):
            raise self.error(key, f"{resolved} is not a file")


def _parse_agent(section: _Section) -> AgentConfig:
    defaults = AgentConfig()
    listen = section.string("listen", defaults.listen)
    assert listen is not None
    try:
        parse_listen(listen)
    except ValueError as exc:
        raise section.error("listen", str(exc)) from None

    token = section.string("token", None, secret=True)
    if token is None:
        raise section.error(
            "token", "missing; set it to a long random string, or delete the file to get a new one"
        )
    if not token.strip():
        raise section.error(
            "token", "is empty; set it to a long random string, or delete the file to get a new one"
        )
    if not all(0x21 <= ord(c) <= 0x7E for c in token):
        # It travels in an HTTP header: printable ASCII without spaces only.
        raise section.error("token", "may contain only printable ASCII characters without spaces")

    origins = []
    for index, origin in enumerate(section.string_list("allowed_origins", ())):
        try:
            origins.append(normalize_origin(origin))
        except ValueError as exc:
            raise section.error("allowed_origins", f"item {index + 1}: {exc}") from None

    tls_cert = section.string("tls_cert", None)
    tls_key = section.string("tls_key", None)
    if (tls_cert is None) != (tls_key is None):
        given, absent = ("tls_cert", "tls_key") if tls_cert is not None else ("tls_key", "tls_cert")
        raise section.error(absent, f"missing; {given} is set, and TLS needs both or neither")
    if tls_cert is not None and tls_key is not None:
        section.existing_file("tls_cert", tls_cert)
        section.existing_file("tls_key", tls_key)

    # more than 65535 connections is surely a typo (and more than a file-descriptor limit allows)
    max_connections = section.integer(
        "max_connections", defaults.max_connections, minimum=1, maximum=65535
    )

    allow_remote_restore = section.boolean("allow_remote_restore", defaults.allow_remote_restore)

    return AgentConfig(
        listen=listen,
        token=token,
        allowed_origins=tuple(origins),
        tls_cert=tls_cert,
        tls_key=tls_key,
        max_connections=max_connections,
        allow_remote_restore=allow_remote_restore,
    )


def _parse_repository(section: _Section) -> RepositoryConfig:
    path = section.string("path", None)
    if path is None:
        path = default_repository_path()
    if not path.strip():
        raise section.error("path", "is empty; name the directory that holds the backups")
    try:
        location = parse_location(path)
    except ConfigError as exc:
        raise section.error("path", str(exc)) from None
    if location.password:
        raise section.error(
            "path",
            f"{location.display()}: holds a password in clear; remove it from the URL and store "
            "it with the settings window, or set RESTIC_REST_PASSWORD",
        )
    password_file = section.string("password_file", None)
    if password_file is None:
        password_file = default_password_file()
    # "" means: no file, only the environment variable and the keyring.
    return RepositoryConfig(path=path, password_file=password_file or None)


def _parse_backup(section: _Section) -> BackupConfig:
    defaults = BackupConfig()
    return BackupConfig(
        sources=section.string_list("sources", defaults.sources),
        exclude=section.string_list("exclude", defaults.exclude),
        interval_minutes=section.integer(
            "interval_minutes", defaults.interval_minutes, minimum=0, maximum=7 * 24 * 60
        ),
    )


def _parse_schedule(section: _Section) -> ScheduleConfig:
    d = ScheduleConfig()
    daily_at = section.string("daily_at", d.daily_at) or ""
    if daily_at.strip():
        try:
            parse_clock(daily_at)
        except ValueError as exc:
            raise section.error("daily_at", f'{exc}; or "" for every interval_minutes') from None
    quiet = section.string("quiet_hours", d.quiet_hours) or ""
    try:
        parse_quiet_hours(quiet)
    except ValueError as exc:
        raise section.error("quiet_hours", f'{exc}; or "" for none') from None
    return ScheduleConfig(
        daily_at=daily_at.strip(),
        random_delay_minutes=section.integer(
            "random_delay_minutes", d.random_delay_minutes, minimum=0, maximum=240
        ),
        wake_delay_seconds=section.integer(
            "wake_delay_seconds", d.wake_delay_seconds, minimum=0, maximum=3600
        ),
        skip_on_battery=section.boolean("skip_on_battery", d.skip_on_battery),
        min_battery_percent=section.integer(
            "min_battery_percent", d.min_battery_percent, minimum=0, maximum=100
        ),
        skip_on_metered=section.boolean("skip_on_metered", d.skip_on_metered),
        quiet_hours=quiet.strip(),
        max_runtime_minutes=section.integer(
            "max_runtime_minutes", d.max_runtime_minutes, minimum=0, maximum=7 * 24 * 60
        ),
        keep_awake=section.boolean("keep_awake", d.keep_awake),
        stale_after_days=section.integer(
            "stale_after_days", d.stale_after_days, minimum=0, maximum=365
        ),
        max_retry_minutes=section.integer(
            "max_retry_minutes", d.max_retry_minutes, minimum=1, maximum=7 * 24 * 60
        ),
    )


def _parse_upkeep(section: _Section) -> UpkeepConfig:
    d = UpkeepConfig()
    keep = {
        key: section.integer(key, getattr(d, key), minimum=0, maximum=1_000_000)
        for key in (
            "keep_last",
            "keep_hourly",
            "keep_daily",
            "keep_weekly",
            "keep_monthly",
            "keep_yearly",
        )
    }
    forget = section.boolean("forget", d.forget)
    if forget and not any(keep.values()):
        raise section.error(
            "forget", "is true but every keep_* is 0, which would forget every snapshot"
        )
    return UpkeepConfig(
        forget=forget,
        # restic's read-data-subset groups packs by the first byte of their id: at most 256
        check_subsets=section.integer("check_subsets", d.check_subsets, minimum=0, maximum=256),
        **keep,
    )


def _parse_server(section: _Section) -> ServerConfig:
    d = ServerConfig()
    url = (section.string("url", d.url) or "").strip()
    if url:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() not in ("ws", "wss") or not rest.split("/")[0]:
            raise section.error("url", f'{url!r} is not a ws:// or wss:// URL; "" turns it off')
    token_file = section.string("token_file", None) or None
    ca_file = section.string("ca_file", None) or None
    if ca_file is not None:
        section.existing_file("ca_file", ca_file)
    return ServerConfig(
        url=url,
        token_file=token_file,
        ca_file=ca_file,
        allow_insecure=section.boolean("allow_insecure", d.allow_insecure),
    )


def _parse_ui(section: _Section) -> UiConfig:
    defaults = UiConfig()
    return UiConfig(notify_success=section.boolean("notify_success", defaults.notify_success))


def parse_document(document: Mapping[str, Any], path: Path) -> Config:
    """Validate an already-parsed TOML document and build the :class:`Config`.

    ``path`` is the file the document belongs to: it is named in errors and
    relative paths are resolved against its directory.
    """
    path = Path(os.path.abspath(path))
    for name, value in document.items():
        if name in _KEYS:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [{name}]: expected a table, got {_toml_type(value)}")
            continue
        if isinstance(value, dict):
            raise ConfigError(
                f"{path}: [{name}]: unknown section{_suggest(name, list(_KEYS))}; "
                f"known sections: {', '.join(_KEYS)}"
            )
        owners = [section for section, keys in _KEYS.items() if name in keys]
        hint = f" (it belongs in the [{owners[0]}] section)" if owners else ""
        raise ConfigError(f"{path}: {name}: unknown top-level key{hint}")

    sections = {name: _Section(path, name, document.get(name, {})) for name in _KEYS}
    agent = _parse_agent(sections["agent"])
    repository = _parse_repository(sections["repository"])
    backup = _parse_backup(sections["backup"])
    ui = _parse_ui(sections["ui"])
    return Config(
        agent=agent,
        repository=repository,
        backup=backup,
        path=path,
        ui=ui,
        schedule=_parse_schedule(sections["schedule"]),
        upkeep=_parse_upkeep(sections["upkeep"]),
        server=_parse_server(sections["server"]),
    )


def to_document(config: Config) -> dict[str, Any]:
    """The TOML document for ``config``, as :func:`save` writes it."""
    agent: dict[str, Any] = {
        "listen": config.agent.listen,
        "token": config.agent.token,
        "allowed_origins": list(config.agent.allowed_origins),
    }
    if config.agent.tls_cert is not None:
        agent["tls_cert"] = config.agent.tls_cert
    if config.agent.tls_key is not None:
        agent["tls_key"] = config.agent.tls_key
    agent["max_connections"] = config.agent.max_connections
    agent["allow_remote_restore"] = config.agent.allow_remote_restore
    return {
        "agent": agent,
        "repository": {
            "path": config.repository.path,
            "password_file": config.repository.password_file or "",
        },
        "backup": {
            "sources": list(config.backup.sources),
            "exclude": list(config.backup.exclude),
            "interval_minutes": config.backup.interval_minutes,
        },
        "schedule": dataclasses.asdict(config.schedule),
        "upkeep": dataclasses.asdict(config.upkeep),
        "server": {k: v for k, v in dataclasses.asdict(config.server).items() if v is not None},
        "ui": {"notify_success": config.ui.notify_success},
    }


def validate(config: Config) -> Config:
    """``config`` checked exactly as :func:`save` and :func:`load` would check it.

    Returns the configuration as it would be read back (origins normalized);
    raises :class:`ConfigError` naming the file and key otherwise. Nothing is
    written: a settings window validates with this before it saves.
    """
    return parse_document(to_document(config), config.path)


def load(path: Path) -> Config:
    """Read and validate the configuration file at ``path``.

    Raises :class:`ConfigError` when the file is missing or unreadable, is
    not a regular file (a FIFO or a device is refused before anything is
    read from it), is larger than 1 MiB, is not valid TOML (the message
    gives line and column), or any value is wrong. Warns, once per process
    and on stderr as well as in the log, when the file, which holds the /ws
    token, can be read by other users.
    """
    path = Path(os.path.abspath(path))
    try:
        raw, info = read_regular_file(
            path, limit=CONFIG_FILE_LIMIT, label=str(path), noun="a configuration file"
        )
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start + 1})") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    config = parse_document(document, path)
    warn_if_exposed(path, info.st_mode, "the /ws token")
    return config


def load_or_create(path: Path) -> Config:
    """Load ``path``, first writing the commented default configuration if it is missing.

    The new file gets a fresh random token and mode 0600; missing parent
    directories are created with mode 0700. If another process creates the
    file at the same moment, its file wins and is loaded.
    """
    path = Path(os.path.abspath(path))
    if not os.path.lexists(path):
        sources, extra = default_sources()
        text = render_default(
            generate_token(), sources=sources, exclude=BackupConfig().exclude + extra
        )
        try:
            make_private_dirs(path.parent)
            if write_atomic(path, text.encode("utf-8"), mode=0o600, replace=False):
                log.info("wrote a new configuration file %s", path)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot create: {exc.strerror or exc}") from None
    return load(path)


def save(config: Config, path: Path | None = None) -> None:
    """Write ``config`` to ``path`` (default: ``config.path``) atomically with mode 0600.

    The configuration is validated first exactly as :func:`load` would, so
    whatever ``save`` writes, ``load`` reads back equal (origins normalized
    as the loader does, and ``path`` set to the file written). The file is
    rewritten with tomli_w: values survive, comments of the original file do
    not. Missing parent directories are created with mode 0700. A symbolic
    link at the path stays a link: the file it points to is replaced (a
    configuration kept in a dotfiles repository gets the new token).
    """
    target = Path(os.path.abspath(path if path is not None else config.path))
    checked = parse_document(to_document(config), target)
    data = tomli_w.dumps(to_document(checked)).encode("utf-8")
    try:
        make_private_dirs(resolve_link(target).parent)
        write_atomic(target, data, mode=0o600)
    except OSError as exc:
        raise ConfigError(f"{target}: cannot write: {exc.strerror or exc}") from None


def merge(base: Config, mine: Config, theirs: Config) -> Config:
    """``theirs`` with the values ``mine`` changed relative to ``base``, key by key.

    A three-way merge for whoever edits a configuration while another change
    may be applied meanwhile: ``base`` is what the edit started from,
    ``mine`` the edited copy, ``theirs`` the configuration in use now. A key
    the edit left alone keeps ``theirs``' value (a change made elsewhere is
    not reverted); a key the edit changed takes ``mine``'s, even where
    ``theirs`` changed it too (the later edit wins). ``path`` is ``theirs``'.
    Nothing is validated: :func:`validate` the result before saving it.
    """
    sections: dict[str, Any] = {}
    for section in dataclasses.fields(Config):
        old = getattr(base, section.name)
        if not dataclasses.is_dataclass(old):
            continue  # the file's path is not an edited value
        new = getattr(mine, section.name)
        changed = {
            key.name: getattr(new, key.name)
            for key in dataclasses.fields(new)
            if getattr(new, key.name) != getattr(old, key.name)
        }
        sections[section.name] = dataclasses.replace(getattr(theirs, section.name), **changed)
    return dataclasses.replace(theirs, **sections)
