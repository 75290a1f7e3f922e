"""Saving: atomic, private, and read back equal by load()."""

from __future__ import annotations

import dataclasses
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from desktop_agent.config import (
    AgentConfig,
    BackupConfig,
    Config,
    ConfigError,
    RepositoryConfig,
    UiConfig,
    generate_token,
    load,
    load_or_create,
    save,
    with_token,
)


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    config = Config(
        agent=AgentConfig(
            listen="[::1]:9443",
            token="abc-DEF_123",
            allowed_origins=("https://backup.example.com", "http://localhost:3000"),
        ),
        repository=RepositoryConfig(path="/media/usb/backup", password_file=None),
        backup=BackupConfig(sources=("~/Documents", "/etc"), exclude=()),
        path=tmp_path / "config.toml",
        ui=UiConfig(notify_success=False),
    )
    save(config)
    assert load(config.path) == config
    assert "notify_success = false" in config.path.read_text()


def test_saved_file_is_private_and_replaces_atomically(tmp_path: Path) -> None:
    directory = tmp_path / "cfg"
    directory.mkdir()
    path = directory / "config.toml"
    path.write_text("old")
    path.chmod(0o644)
    config = load_or_create(directory / "first.toml")

    save(config, path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load(path) == dataclasses.replace(config, path=path)
    # no temporary file left behind
    assert sorted(p.name for p in directory.iterdir()) == ["config.toml", "first.toml"]


def test_save_creates_private_parent_dirs(tmp_path: Path) -> None:
    config = load_or_create(tmp_path / "c.toml")
    target = tmp_path / "new" / "dir" / "c.toml"
    save(config, target)
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert load(target).agent.token == config.agent.token


def test_with_token_then_save_keeps_everything_else(tmp_path: Path) -> None:
    config = load_or_create(tmp_path / "c.toml")
    token = generate_token()
    save(with_token(config, token))
    reloaded = load(config.path)
    assert reloaded.agent.token == token
    assert dataclasses.replace(reloaded, agent=config.agent) == config


def test_an_invalid_config_is_not_written(tmp_path: Path) -> None:
    config = load_or_create(tmp_path / "c.toml")
    before = config.path.read_bytes()
    bad = dataclasses.replace(config, agent=dataclasses.replace(config.agent, listen="nowhere"))
    with pytest.raises(ConfigError, match=r"c\.toml: \[agent\] listen: "):
        save(bad)
    assert config.path.read_bytes() == before


def test_save_reports_an_unwritable_place(tmp_path: Path) -> None:
    config = load_or_create(tmp_path / "c.toml")
    (tmp_path / "blocker").write_text("")
    with pytest.raises(ConfigError, match="cannot write"):
        save(config, tmp_path / "blocker" / "c.toml")


def test_token_is_kept_out_of_repr(tmp_path: Path) -> None:
    config = load_or_create(tmp_path / "c.toml")
    assert config.agent.token not in repr(config)


# ---------------------------------------------------------------- property

_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1
).filter(lambda s: bool(s.strip()))
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_hostname = (
    st.lists(_label, min_size=1, max_size=3)
    .map(".".join)
    .filter(lambda h: not all(part.isdigit() for part in h.split(".")))
)
_host = st.one_of(
    st.sampled_from(["127.0.0.1", "0.0.0.0", "[::1]", "[::]", "[fe80::1]"]),
    _hostname,
)
_listen = st.builds(lambda h, p: f"{h}:{p}", _host, st.integers(1, 65535))
_token = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64)


@st.composite
def _origins(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https"]))
    host = draw(st.one_of(_hostname, st.just("[::1]")))
    default = 80 if scheme == "http" else 443
    port = draw(st.none() | st.integers(1, 65535).filter(lambda p: p != default))
    return f"{scheme}://{host}" if port is None else f"{scheme}://{host}:{port}"


# locations in restic's URL syntax are parsed (tests/config/test_location.py)
_remote = ("sftp:", "rest:", "s3:", "b2:", "azure:", "gs:", "swift:", "rclone:", "local:")
_repository = st.builds(
    RepositoryConfig,
    path=_text.filter(lambda s: not s.lower().startswith(_remote)),
    password_file=st.none() | _text,
)
_strings = st.lists(_text, max_size=4).map(tuple)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    listen=_listen,
    token=_token,
    origins=st.lists(_origins(), max_size=3).map(tuple),
    tls=st.booleans(),
    repository=_repository,
    sources=_strings,
    exclude=_strings,
    remote_restore=st.booleans(),
)
def test_any_valid_config_survives_save_and_load(
    listen: str,
    token: str,
    origins: tuple[str, ...],
    tls: bool,
    repository: RepositoryConfig,
    sources: tuple[str, ...],
    exclude: tuple[str, ...],
    remote_restore: bool,
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        if tls:
            (directory / "cert.pem").write_text("c")
            (directory / "key.pem").write_text("k")
        config = Config(
            agent=AgentConfig(
                listen=listen,
                token=token,
                allowed_origins=origins,
                tls_cert="cert.pem" if tls else None,
                tls_key="key.pem" if tls else None,
                allow_remote_restore=remote_restore,
            ),
            repository=repository,
            backup=BackupConfig(sources=sources, exclude=exclude),
            path=directory / "config.toml",
        )
        save(config)
        assert load(config.path) == config
