"""The repository password: environment, then file, then keyring."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from keyring.backend import KeyringBackend

from desktop_agent.config import (
    Config,
    ConfigError,
    load,
    read_password,
    write_password_file,
)


def make_config(tmp_path: Path, password_file: str | None = "pw") -> Config:
    """A config whose repository is tmp_path/repo and password file tmp_path/<password_file>."""
    line = (
        f'password_file = "{password_file}"' if password_file is not None else 'password_file = ""'
    )
    path = tmp_path / "config.toml"
    path.write_text(f'[agent]\ntoken = "t"\n[repository]\npath = "repo"\n{line}\n')
    path.chmod(0o600)
    return load(path)


# ---------------------------------------------------------------- precedence


def test_env_beats_file_and_keyring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memory_keyring: KeyringBackend
) -> None:
    config = make_config(tmp_path)
    (tmp_path / "pw").write_text("from-file\n")
    memory_keyring.set_password("desktop-agent", config.repository_path, "from-keyring")
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", "from-env")
    assert read_password(config) == "from-env"


def test_file_beats_keyring(tmp_path: Path, memory_keyring: KeyringBackend) -> None:
    config = make_config(tmp_path)
    (tmp_path / "pw").write_text("from-file\n")
    memory_keyring.set_password("desktop-agent", config.repository_path, "from-keyring")
    assert read_password(config) == "from-file"


def test_empty_env_counts_as_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(tmp_path)
    (tmp_path / "pw").write_text("from-file\n")
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", "")
    assert read_password(config) == "from-file"


def test_keyring_is_asked_for_the_repository_path(
    tmp_path: Path, memory_keyring: KeyringBackend
) -> None:
    config = make_config(tmp_path)  # password file configured but absent
    memory_keyring.set_password("desktop-agent", str(tmp_path / "repo"), "from-keyring")
    assert read_password(config) == "from-keyring"


def test_keyring_is_asked_when_no_password_file_is_configured(
    tmp_path: Path, memory_keyring: KeyringBackend
) -> None:
    config = make_config(tmp_path, password_file=None)
    (tmp_path / "pw").write_text("ignored\n")
    memory_keyring.set_password("desktop-agent", config.repository_path, "from-keyring")
    assert read_password(config) == "from-keyring"


def test_nothing_anywhere_is_none(tmp_path: Path) -> None:
    # The autouse fixture installed keyring's "no backend" backend, which raises.
    assert read_password(make_config(tmp_path)) is None


def test_a_failing_keyring_counts_as_absent(tmp_path: Path, broken_keyring: KeyringBackend) -> None:
    assert read_password(make_config(tmp_path)) is None


def test_a_keyring_without_the_entry_is_none(
    tmp_path: Path, memory_keyring: KeyringBackend
) -> None:
    assert read_password(make_config(tmp_path)) is None


# ---------------------------------------------------------------- the file


@pytest.mark.parametrize(
    ("content", "password"),
    [
        (b"plain", "plain"),
        (b"with newline\n", "with newline"),
        (b"windows\r\n", "windows"),
        (b"first\nsecond\n", "first"),
        (b"\xef\xbb\xbfbom", "bom"),
        (b"  spaces kept  \n", "  spaces kept  "),
        ("pässwörd\n".encode(), "pässwörd"),
    ],
)
def test_password_file_first_line(tmp_path: Path, content: bytes, password: str) -> None:
    config = make_config(tmp_path)
    (tmp_path / "pw").write_bytes(content)
    assert read_password(config) == password


def test_empty_password_file_is_an_error(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    (tmp_path / "pw").write_text("\nsecond line\n")
    with pytest.raises(ConfigError, match=f"password file {tmp_path}/pw: the first line is empty"):
        read_password(config)


def test_password_file_that_is_a_directory(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    (tmp_path / "pw").mkdir()
    with pytest.raises(ConfigError, match=f"password file {tmp_path}/pw: is a directory"):
        read_password(config)


def test_password_file_that_is_not_utf8(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    (tmp_path / "pw").write_bytes(b"\xff\xfe\xfa\n")
    with pytest.raises(ConfigError, match=f"password file {tmp_path}/pw: not UTF-8 text"):
        read_password(config)


def test_dangling_password_file_link_is_an_error(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    (tmp_path / "pw").symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigError, match=f"password file {tmp_path}/pw: cannot read: "):
        read_password(config)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_password_file(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "pw").chmod(0)
    with pytest.raises(ConfigError, match=f"password file {tmp_path}/pw: cannot read: Permission"):
        read_password(config)


# ---------------------------------------------------------------- writing


def test_write_password_file_is_private_and_reads_back(tmp_path: Path) -> None:
    config = make_config(tmp_path, password_file="secrets/deep/pw")
    assert config.password_file_path is not None
    write_password_file(config.password_file_path, "correct horse")
    written = Path(config.password_file_path)
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert stat.S_IMODE(written.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    assert written.read_bytes() == b"correct horse\n"
    assert read_password(config) == "correct horse"


def test_write_password_file_replaces_and_expands_tilde(home: Path) -> None:
    write_password_file("~/pw", "one")
    write_password_file("~/pw", "two")
    assert (home / "pw").read_text() == "two\n"
    assert [p.name for p in home.iterdir()] == ["pw"]


@pytest.mark.parametrize("password", ["", "two\nlines", "cr\r"])
def test_write_password_file_refuses_what_cannot_be_read_back(
    tmp_path: Path, password: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        write_password_file(str(tmp_path / "pw"), password)
    assert not (tmp_path / "pw").exists()
    if password:
        assert password not in str(caught.value)
