"""Creating the default file, loading it, and every validation error."""

from __future__ import annotations

import logging
import os
import stat
import tomllib
from pathlib import Path

import pytest

from desktop_agent.config import (
    AgentConfig,
    ConfigError,
    load,
    load_or_create,
)
from desktop_agent.config.paths import default_sources

TOKEN_LINE = 'token = "s3cret-token"'


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


# ---------------------------------------------------------------- first start


def test_first_start_writes_private_commented_defaults(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "config.toml"

    config = load_or_create(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700
    text = path.read_text()
    assert "# Every /ws client must send" in text
    assert tomllib.loads(text)["agent"]["token"] == config.agent.token
    assert len(config.agent.token) >= 40
    assert config.path == path
    assert config.agent.listen == "127.0.0.1:8080"
    assert config.agent.allowed_origins == ()
    assert config.agent.tls_cert is None and config.agent.tls_key is None
    assert config.ui.notify_success is True
    # ~/Documents when it exists, else the home folder without caches and downloads
    sources, extra = default_sources()
    assert config.backup.sources == sources
    assert config.backup.exclude == ("*.tmp", "**/.cache", *extra)
    assert config.repository.path == str(tmp_path / "xdg-data" / "desktop-agent" / "repository")
    assert config.repository.password_file == str(
        tmp_path / "xdg-config" / "desktop-agent" / "repository-password"
    )
    assert not [p for p in path.parent.iterdir() if p.name != "config.toml"]  # no temp files


def test_each_first_start_gets_its_own_token(tmp_path: Path) -> None:
    one = load_or_create(tmp_path / "one.toml")
    two = load_or_create(tmp_path / "two.toml")
    assert one.agent.token != two.agent.token


def test_an_existing_file_is_loaded_not_replaced(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", f"[agent]\n{TOKEN_LINE}\n# mine\n")
    config = load_or_create(path)
    assert config.agent.token == "s3cret-token"
    assert path.read_text().endswith("# mine\n")


def test_load_or_create_reports_an_unwritable_place(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"config\.toml: cannot create"):
        load_or_create(blocker / "config.toml")


def test_missing_sections_take_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path / "c.toml", f"[agent]\n{TOKEN_LINE}\n"))
    assert config.agent.port == 8080
    assert config.backup.sources == ("~/Documents",)
    assert config.repository.path.endswith("repository")


def test_empty_password_file_means_none(tmp_path: Path) -> None:
    config = load(
        write(tmp_path / "c.toml", f'[agent]\n{TOKEN_LINE}\n[repository]\npassword_file = ""\n')
    )
    assert config.repository.password_file is None
    assert config.password_file_path is None


# ---------------------------------------------------------------- values


def test_paths_expand_relative_to_the_config_file(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATA", "/srv/data")
    monkeypatch.chdir(home)  # the current directory must not matter
    (tmp_path / "cfg").mkdir()
    path = write(
        tmp_path / "cfg" / "c.toml",
        f"""[agent]
{TOKEN_LINE}
[repository]
path = "repo"
password_file = "~/pw"
[backup]
sources = ["~/Documents", "$DATA/photos", "${{DATA}}/photos/", "docs/../notes", "/abs//x",
           "~/Documents"]
""",
    )
    config = load(path)
    assert config.repository_path == str(tmp_path / "cfg" / "repo")
    assert config.password_file_path == str(home / "pw")
    assert config.expanded_sources() == [
        str(home / "Documents"),
        "/srv/data/photos",
        str(tmp_path / "cfg" / "notes"),
        "/abs/x",
    ]


def test_ipv6_listen(tmp_path: Path) -> None:
    config = load(write(tmp_path / "c.toml", f'[agent]\nlisten = "[::1]:9000"\n{TOKEN_LINE}\n'))
    assert (config.agent.host, config.agent.port) == ("::1", 9000)


def test_hostname_listen() -> None:
    agent = AgentConfig(listen="localhost:1")
    assert (agent.host, agent.port) == ("localhost", 1)


def test_bad_listen_on_a_hand_made_agent_config_raises_config_error() -> None:
    with pytest.raises(ConfigError, match=r"\[agent\] listen: port 70000 is out of range"):
        _ = AgentConfig(listen="127.0.0.1:70000").port


def test_origins_are_normalized_as_browsers_send_them(tmp_path: Path) -> None:
    text = f"""[agent]
{TOKEN_LINE}
allowed_origins = ["HTTPS://Backup.Example.com/", "http://localhost:3000", "http://x.org:80",
                   "https://[::1]:8443"]
"""
    config = load(write(tmp_path / "c.toml", text))
    assert config.agent.allowed_origins == (
        "https://backup.example.com",
        "http://localhost:3000",
        "http://x.org",
        "https://[::1]:8443",
    )


def test_tls_files_that_exist_are_accepted(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("cert")
    (tmp_path / "key.pem").write_text("key")
    text = f'[agent]\n{TOKEN_LINE}\ntls_cert = "cert.pem"\ntls_key = "{tmp_path}/key.pem"\n'
    config = load(write(tmp_path / "c.toml", text))
    assert config.tls_files == (str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))


def test_a_config_others_can_read_is_loaded_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "c.toml", f"[agent]\n{TOKEN_LINE}\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="desktop_agent.config"):
        load(path)
    assert "chmod 600" in caplog.text
    assert "s3cret-token" not in caplog.text


# ---------------------------------------------------------------- file errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        load(tmp_path / "nope.toml")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", f"[agent]\n{TOKEN_LINE}\n")
    path.chmod(0)
    with pytest.raises(ConfigError, match="cannot read: Permission denied"):
        load(path)


def test_invalid_toml_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", f'[agent]\n{TOKEN_LINE}\nlisten = "127.0.0.1:80\n')
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not valid TOML: ")
    assert "line 3" in message and "column" in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b'[agent]\ntoken = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load(path)


# ---------------------------------------------------------------- validation errors

T = TOKEN_LINE
VALIDATION_ERRORS = [
    # [agent] listen
    (
        f'[agent]\n{T}\nlisten = "127.0.0.1:99999"',
        "[agent] listen: port 99999 is out of range 1-65535",
    ),
    (f'[agent]\n{T}\nlisten = "127.0.0.1:0"', "[agent] listen: port 0 is out of range 1-65535"),
    (f'[agent]\n{T}\nlisten = "localhost"', '[agent] listen: "localhost" is not host:port'),
    (f'[agent]\n{T}\nlisten = "localhost:"', "[agent] listen: the port is missing"),
    (f'[agent]\n{T}\nlisten = "localhost:http"', '[agent] listen: port "http" is not a number'),
    (f'[agent]\n{T}\nlisten = ":8080"', "[agent] listen: the host is missing"),
    (f'[agent]\n{T}\nlisten = "::1:8080"', "[agent] listen: IPv6 addresses go in brackets"),
    (f'[agent]\n{T}\nlisten = "[::1:8080"', '[agent] listen: "[::1:8080" has no closing ]'),
    (f'[agent]\n{T}\nlisten = "[::1]8080"', '[agent] listen: "[::1]8080" is not host:port'),
    (f'[agent]\n{T}\nlisten = "[nope]:80"', '[agent] listen: "nope" is not an IPv6 address'),
    (f'[agent]\n{T}\nlisten = "my host:80"', '[agent] listen: "my host" is not a valid host name'),
    (f'[agent]\n{T}\nlisten = "300.1.1.1:80"', '[agent] listen: "300.1.1.1" is not a valid host'),
    (f"[agent]\n{T}\nlisten = 8080", "[agent] listen: expected a string, got an integer 8080"),
    (f"[agent]\n{T}\nlisten = 1979-05-27", "[agent] listen: expected a string, got a date/time"),
    # [agent] token
    ('[agent]\nlisten = "127.0.0.1:8080"', "[agent] token: missing;"),
    ('[agent]\ntoken = ""', "[agent] token: is empty;"),
    ('[agent]\ntoken = "two words"', "[agent] token: may contain only printable ASCII"),
    ("[agent]\ntoken = 12345", "[agent] token: expected a string, got an integer"),
    # [agent] allowed_origins
    (
        f'[agent]\n{T}\nallowed_origins = "https://a.example"',
        '[agent] allowed_origins: expected an array of strings, got a string: write ["https://a.example"]',
    ),
    (
        f'[agent]\n{T}\nallowed_origins = ["ftp://a.example"]',
        '[agent] allowed_origins: item 1: "ftp://a.example" must start with http:// or https://',
    ),
    (
        f'[agent]\n{T}\nallowed_origins = ["a.example"]',
        '[agent] allowed_origins: item 1: "a.example" is not an origin',
    ),
    (
        f'[agent]\n{T}\nallowed_origins = ["https://a.example", "https://b.example/app"]',
        '[agent] allowed_origins: item 2: "https://b.example/app" must be scheme://host[:port]',
    ),
    (f'[agent]\n{T}\nallowed_origins = ["https://a.example?x=1"]', "without a path or query"),
    (
        f'[agent]\n{T}\nallowed_origins = ["*"]',
        '[agent] allowed_origins: item 1: "*" is not allowed',
    ),
    (f'[agent]\n{T}\nallowed_origins = ["https://u:p@a.example"]', "must not contain a user name"),
    (
        f'[agent]\n{T}\nallowed_origins = ["https://a.example:99999"]',
        '[agent] allowed_origins: item 1: "https://a.example:99999" is not an origin',
    ),
    (f'[agent]\n{T}\nallowed_origins = ["https://a_b.example"]', "is not a valid host name"),
    (
        f"[agent]\n{T}\nallowed_origins = [1]",
        "[agent] allowed_origins: item 1 should be a string, got an integer 1",
    ),
    # [agent] tls
    (
        f'[agent]\n{T}\ntls_cert = "cert.pem"',
        "[agent] tls_key: missing; tls_cert is set, and TLS needs both or neither",
    ),
    (f'[agent]\n{T}\ntls_key = "key.pem"', "[agent] tls_cert: missing; tls_key is set"),
    (
        f'[agent]\n{T}\ntls_cert = "absent.pem"\ntls_key = "absent.key"',
        "[agent] tls_cert: file {dir}/absent.pem does not exist",
    ),
    (f'[agent]\n{T}\ntls_cert = ""\ntls_key = "k"', "[agent] tls_cert: the path is empty"),
    (f'[agent]\n{T}\ntls_cert = "."\ntls_key = "."', "[agent] tls_cert: {dir} is not a file"),
    # unknown names and wrong shapes
    (f"[agnet]\n{T}", '[agnet]: unknown section (did you mean "agent"?); known sections: agent'),
    (f'[agent]\n{T}\nlistn = "x"', '[agent] listn: unknown key (did you mean "listen"?)'),
    (f"{T}\n", "token: unknown top-level key (it belongs in the [agent] section)"),
    ('colour = "blue"\n', "colour: unknown top-level key"),
    ("agent = 1\n", "[agent]: expected a table, got an integer"),
    # [repository]
    (f'[agent]\n{T}\n[repository]\npath = ""', "[repository] path: is empty"),
    (
        f'[agent]\n{T}\n[repository]\npath = "rest:https://me:hunter2@host:8000/r"',
        "[repository] path: rest:https://me:***@host:8000/r: holds a password in clear; "
        "remove it from the URL and store it with the settings window, or set "
        "RESTIC_REST_PASSWORD",
    ),
    (
        f'[agent]\n{T}\n[repository]\npath = "sftp:me@host"',
        "[repository] path: repository location 'sftp:me@host': an SFTP location is "
        "sftp:user@host:/path or sftp://user@host:port//path",
    ),
    (
        f'[agent]\n{T}\n[repository]\npath = "s3:https://minio:99999/bucket"',
        "[repository] path: repository location 's3:https://minio:99999/bucket': "
        "'99999' is not a port (1-65535)",
    ),
    (
        f'[agent]\n{T}\n[repository]\npath = "b2:bucket:path"',
        "[repository] path: repository location 'b2:bucket:path': b2: repositories are not "
        "supported; use rest:, sftp:, s3: or a folder",
    ),
    (
        f"[agent]\n{T}\n[repository]\npath = ['/a']",
        '[repository] path: expected a string, got an array ["/a"]',
    ),
    (
        f"[agent]\n{T}\n[repository]\npassword_file = false",
        "[repository] password_file: expected a string, got a boolean false",
    ),
    (f'[agent]\n{T}\n[repository]\npath = "/a\\u0000b"', "[repository] path: contains a NUL"),
    (f'[agent]\n{T}\n[repository]\nkey = "x"', "[repository] key: unknown key"),
    # [backup]
    (
        f'[agent]\n{T}\n[backup]\nsources = "~/Documents"',
        '[backup] sources: expected an array of strings, got a string: write ["~/Documents"]',
    ),
    (
        f'[agent]\n{T}\n[backup]\nsources = ["~/a", 3]',
        "[backup] sources: item 2 should be a string, got an integer 3",
    ),
    (f'[agent]\n{T}\n[backup]\nsources = ["  "]', "[backup] sources: item 1 is empty"),
    (
        f"[agent]\n{T}\n[backup]\nexclude = 5",
        "[backup] exclude: expected an array of strings, got an integer 5",
    ),
    (
        f"[agent]\n{T}\n[backup]\nexclude = [{{a = 1}}]",
        "[backup] exclude: item 1 should be a string, got a table",
    ),
    (
        f'[agent]\n{T}\n[backup]\nsource = ["~"]',
        '[backup] source: unknown key (did you mean "sources"?)',
    ),
    # [ui]
    (
        f'[agent]\n{T}\n[ui]\nnotify_success = "yes"',
        '[ui] notify_success: expected a boolean (true or false), got a string "yes"',
    ),
]


@pytest.mark.parametrize(("text", "expected"), VALIDATION_ERRORS)
def test_validation_error_names_file_key_and_problem(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path / "config.toml", text + "\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert expected.format(dir=tmp_path) in message, message
    assert "s3cret-token" not in message
    assert "\n" not in message


def test_a_wrong_token_type_is_not_echoed(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[agent]\ntoken = 987654321\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert "987654321" not in str(caught.value)


# ---------------------------------------------------------------- [agent] max_connections


def test_max_connections_defaults_to_256_and_the_fresh_file_explains_it(tmp_path: Path) -> None:
    assert load(write(tmp_path / "c.toml", f"[agent]\n{TOKEN_LINE}\n")).agent.max_connections == 256
    path = tmp_path / "fresh" / "config.toml"
    config = load_or_create(path)
    text = path.read_text()
    assert config.agent.max_connections == 256
    assert tomllib.loads(text)["agent"]["max_connections"] == 256
    assert "HTTP 503" in text  # the comment says what happens beyond it


def test_max_connections_is_read(tmp_path: Path) -> None:
    for value in (1, 5, 65535):
        path = write(tmp_path / "c.toml", f"[agent]\n{TOKEN_LINE}\nmax_connections = {value}\n")
        assert load(path).agent.max_connections == value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", "[agent] max_connections: 0 is out of range 1-65535"),
        ("-3", "[agent] max_connections: -3 is out of range 1-65535"),
        ("65536", "[agent] max_connections: 65536 is out of range 1-65535"),
        ('"256"', '[agent] max_connections: expected an integer, got a string "256"'),
        ("2.5", "[agent] max_connections: expected an integer, got a float 2.5"),
        ("true", "[agent] max_connections: expected an integer, got a boolean true"),
    ],
)
def test_a_bad_max_connections_names_the_key_and_the_range(
    tmp_path: Path, value: str, expected: str
) -> None:
    path = write(tmp_path / "c.toml", f"[agent]\n{TOKEN_LINE}\nmax_connections = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value) == f"{path}: {expected}"


def test_max_connections_survives_save_and_load(tmp_path: Path) -> None:
    import dataclasses

    from desktop_agent.config import save, validate

    config = load(write(tmp_path / "c.toml", f"[agent]\n{TOKEN_LINE}\nmax_connections = 7\n"))
    changed = dataclasses.replace(
        config, agent=dataclasses.replace(config.agent, max_connections=9)
    )
    save(changed)
    assert tomllib.loads(config.path.read_text())["agent"]["max_connections"] == 9
    assert load(config.path).agent.max_connections == 9
    bad = dataclasses.replace(config, agent=dataclasses.replace(config.agent, max_connections=0))
    with pytest.raises(ConfigError, match=r"\[agent\] max_connections: 0 is out of range"):
        validate(bad)
    with pytest.raises(ConfigError, match=r"\[agent\] max_connections: 0 is out of range"):
        save(bad)
    assert load(config.path).agent.max_connections == 9  # the bad one was not written


# ---------------------------------------------------------------- [agent] allow_remote_restore


def test_remote_restores_are_off_by_default_and_the_fresh_file_explains_it(
    tmp_path: Path,
) -> None:
    assert not load(
        write(tmp_path / "c.toml", f"[agent]\n{TOKEN_LINE}\n")
    ).agent.allow_remote_restore
    path = tmp_path / "fresh" / "config.toml"
    config = load_or_create(path)
    text = path.read_text()
    assert config.agent.allow_remote_restore is False
    assert tomllib.loads(text)["agent"]["allow_remote_restore"] is False
    assert "restore:start" in text and "new folder" in text  # the comment says what it allows


def test_allow_remote_restore_is_read(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", f"[agent]\n{TOKEN_LINE}\nallow_remote_restore = true\n")
    assert load(path).agent.allow_remote_restore is True


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"yes"', 'expected a boolean (true or false), got a string "yes"'),
        ("1", "expected a boolean (true or false), got an integer 1"),
    ],
)
def test_a_bad_allow_remote_restore_names_the_key(
    tmp_path: Path, value: str, expected: str
) -> None:
    path = write(tmp_path / "c.toml", f"[agent]\n{TOKEN_LINE}\nallow_remote_restore = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value) == f"{path}: [agent] allow_remote_restore: {expected}"


def test_a_misspelt_allow_remote_restore_is_pointed_out(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", f"[agent]\n{TOKEN_LINE}\nallow_remote_restores = true\n")
    with pytest.raises(ConfigError, match='did you mean "allow_remote_restore"'):
        load(path)


def test_allow_remote_restore_survives_save_and_load(tmp_path: Path) -> None:
    import dataclasses

    from desktop_agent.config import save

    config = load(write(tmp_path / "c.toml", f"[agent]\n{TOKEN_LINE}\n"))
    save(
        dataclasses.replace(
            config, agent=dataclasses.replace(config.agent, allow_remote_restore=True)
        )
    )
    assert tomllib.loads(config.path.read_text())["agent"]["allow_remote_restore"] is True
    assert load(config.path).agent.allow_remote_restore is True
