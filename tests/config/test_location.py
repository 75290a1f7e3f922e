"""Repository locations in restic's syntax, and the credentials kept for servers."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from desktop_agent.config import ConfigError, load
from desktop_agent.config.location import parse_location
from desktop_agent.config.secrets import (
    KEYRING_SERVICE,
    REST_PASSWORD,
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    read_server_secret,
    server_credentials,
    store_server_secret,
)

T = 'token = "0123456789abcdefghij"'


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("/srv/backup", {"scheme": "local", "path": "/srv/backup"}),
        ("local:/srv/backup", {"scheme": "local", "path": "/srv/backup"}),
        ("C:\\Backups", {"scheme": "local", "path": "C:\\Backups"}),
        (
            "rest:http://127.0.0.1:8000/repo/",
            {"scheme": "rest", "url": "http://127.0.0.1:8000/repo", "port": 8000, "user": ""},
        ),
        (
            "rest:https://me@backup.example/",
            {"scheme": "rest", "url": "https://backup.example", "user": "me", "port": None},
        ),
        (
            "sftp:me@host.example:/srv/restic",
            {"scheme": "sftp", "user": "me", "host": "host.example", "path": "/srv/restic"},
        ),
        ("sftp:host:backups", {"scheme": "sftp", "user": "", "path": "backups", "port": None}),
        (
            "sftp://me@host:2222//srv/restic",
            {"scheme": "sftp", "user": "me", "port": 2222, "path": "/srv/restic"},
        ),
        ("sftp://me@host/relative", {"scheme": "sftp", "path": "relative"}),
        (
            "s3:https://minio.example:9000/bucket/some/prefix",
            {
                "scheme": "s3",
                "endpoint": "https://minio.example:9000",
                "bucket": "bucket",
                "path": "some/prefix",
            },
        ),
        (
            "s3:s3.amazonaws.com/my-bucket",
            {"endpoint": "https://s3.amazonaws.com", "bucket": "my-bucket", "path": ""},
        ),
        ("s3:http://127.0.0.1:9000/b12", {"endpoint": "http://127.0.0.1:9000", "bucket": "b12"}),
    ],
)
def test_restic_syntax(text: str, fields: dict[str, object]) -> None:
    location = parse_location(text)
    for name, value in fields.items():
        assert getattr(location, name) == value, name
    assert location.remote == (location.scheme != "local")


def test_a_rest_password_is_kept_but_never_shown() -> None:
    location = parse_location("rest:https://me:s3cr%2Ft@host:8000/r")
    assert location.password == "s3cr/t" and location.user == "me"
    assert location.display() == "rest:https://me:***@host:8000/r" == str(location)
    assert "s3cr" not in repr(location) and "s3cr" not in location.key()
    with pytest.raises(ConfigError) as info:
        parse_location("rest:https://me:s3cret@host:99999/r")
    assert "s3cret" not in str(info.value) and "***" in str(info.value)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("rest:ftp://host/r", "rest:http://host:port/path"),
        ("rest:http://:pw@host/r", "user name before '@' is empty"),
        ("sftp:host", "sftp:user@host:/path"),
        ("sftp://me@host", "no folder after the host"),
        ("sftp:me@host:/", "folder on the server is missing"),
        ("s3:host", "bucket is missing"),
        ("s3:https://host/Bad_Bucket", "is not a bucket name"),
        ("s3:https://key:secret@host/bucket", "credentials do not go into the location"),
        ("gs:bucket:/x", "not supported"),
        (" rest:http://h/r", "local"),  # not a URL: a local folder with a leading space
    ],
)
def test_bad_locations_say_why_in_one_line(text: str, why: str) -> None:
    if why == "local":
        assert parse_location(text).scheme == "local"
        return
    with pytest.raises(ConfigError) as info:
        parse_location(text)
    assert why in str(info.value) and "\n" not in str(info.value)


def test_a_config_with_a_server_location(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[agent]\n{T}\n[repository]\npath = "sftp:me@nas:/volume1/restic"\n')
    cfg.chmod(0o600)
    config = load(cfg)
    assert config.repository_path == "sftp:me@nas:/volume1/restic"
    assert config.repository_location.host == "nas"
    # a server location is not a folder of this machine: nothing of it is excluded
    assert not any("volume1" in p for p in config.backup_excludes())


def _config(tmp_path: Path, location: str):  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[agent]\n{T}\n[repository]\npath = "{location}"\n')
    cfg.chmod(0o600)
    return load(cfg)


def test_server_secrets_go_to_the_keyring(tmp_path: Path, memory_keyring: Any) -> None:
    config = _config(tmp_path, "rest:https://me@host:8000/r")
    location = config.repository_location
    assert store_server_secret(config, REST_PASSWORD, location, "pw1") == "the OS keyring"
    assert (
        memory_keyring.passwords[(KEYRING_SERVICE, "rest-password:rest:https://me@host:8000/r")]
        == "pw1"
    )
    creds = server_credentials(config, location, env={})
    assert (creds.rest_user, creds.rest_password) == ("me", "pw1")
    assert "pw1" not in repr(creds)
    # restic's variable wins over what is stored
    env = {"RESTIC_REST_PASSWORD": "from-env"}
    assert server_credentials(config, location, env=env).rest_password == "from-env"
    store_server_secret(config, REST_PASSWORD, location, "")
    assert read_server_secret(config, REST_PASSWORD, location) is None


def test_without_a_keyring_server_secrets_go_to_a_private_file(tmp_path: Path) -> None:
    config = _config(tmp_path, "s3:https://minio:9000/bucket/laptop")
    location = config.repository_location
    where = store_server_secret(config, S3_ACCESS_KEY, location, "AKIA123")
    store_server_secret(config, S3_SECRET_KEY, location, "sekrit")
    assert where.startswith("the private file ")
    path = Path(where.removeprefix("the private file "))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert "AKIA123" not in where and "sekrit" not in path.name
    creds = server_credentials(config, location, env={"AWS_DEFAULT_REGION": "eu-west-1"})
    assert (creds.s3_access_key, creds.s3_secret_key, creds.s3_region) == (
        "AKIA123",
        "sekrit",
        "eu-west-1",
    )
    # the environment restic reads wins, as a pair
    env = {"AWS_ACCESS_KEY_ID": "env-id", "AWS_SECRET_ACCESS_KEY": "env-secret"}
    creds = server_credentials(config, location, env=env)
    assert (creds.s3_access_key, creds.s3_secret_key) == ("env-id", "env-secret")
