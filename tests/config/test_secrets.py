"""config.secrets: the keyring, private files, and where a repository password is stored.

Keyrings are in-memory or broken backends installed by tests/config/conftest.py
(the machine's real keyring is never touched).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import keyring
import keyring.backend
import keyring.backends.null
import pytest
from keyring.backend import KeyringBackend

from desktop_agent.config import (
    KEYRING_SERVICE,
    ConfigError,
    load,
    password_storage_problem,
    read_password,
    secrets,
    store_password,
)
from desktop_agent.config import password as password_module
from desktop_agent.config.secrets import (
    keyring_get,
    keyring_set,
    keyring_usable,
    read_password_file,
    write_password_file,
)

SECRET = "correct horse battery staple"


class MemoryKeyring(KeyringBackend):
    """Passwords in a dict (the conftest's fixtures install one like it)."""

    priority = 1

    def __init__(self) -> None:
        super().__init__()
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.passwords.pop((service, username), None)


class RefusingKeyring(MemoryKeyring):
    """A backend that answers but refuses to store (a locked collection, say)."""

    def set_password(self, service: str, username: str, password: str) -> None:
        raise PermissionError("the collection is locked")


def config_with(tmp_path: Path, password_file: str | None = "pw"):  # type: ignore[no-untyped-def]
    line = f'password_file = "{password_file}"' if password_file else 'password_file = ""'
    path = tmp_path / "config.toml"
    path.write_text(f'[agent]\ntoken = "t"\n[repository]\npath = "repo"\n{line}\n')
    path.chmod(0o600)
    return load(path)


# ------------------------------------------------------------ the keyring
def test_the_fail_and_null_backends_are_no_keyring(memory_keyring: KeyringBackend) -> None:
    assert keyring_usable()
    keyring.set_keyring(keyring.backends.null.Keyring())
    assert not keyring_usable()


def test_keyring_get_and_set(memory_keyring: KeyringBackend) -> None:
    keyring_set("someone", SECRET)
    assert memory_keyring.passwords == {(KEYRING_SERVICE, "someone"): SECRET}
    assert keyring_get("someone") == SECRET
    assert keyring_get("nobody") is None
    keyring_set("server", "tok", service="desktop-agent-server")
    assert keyring_get("server", service="desktop-agent-server") == "tok"
    assert keyring_get("server") is None


def test_a_broken_keyring_reads_as_empty_and_refuses_without_the_secret(
    broken_keyring: KeyringBackend,
) -> None:
    assert keyring_get("someone") is None
    keyring.set_keyring(RefusingKeyring())
    with pytest.raises(ConfigError) as caught:
        keyring_set("someone", SECRET, what="password")
    assert str(caught.value) == "the OS keyring did not take the password (PermissionError)"
    assert SECRET not in str(caught.value)


def test_no_keyring_at_all_is_said_as_such() -> None:
    assert not keyring_usable()  # the autouse fixture's "fail" backend
    with pytest.raises(ConfigError, match="no usable OS keyring"):
        keyring_set("someone", SECRET)


# ------------------------------------------------------------ private files
def test_password_files_are_private_one_line_and_read_back(tmp_path: Path) -> None:
    file = tmp_path / "deep" / "dir" / "pw"
    write_password_file(str(file), SECRET)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE(file.parent.stat().st_mode) == 0o700
    assert read_password_file(str(file)) == SECRET
    for bad in ("", "two\nlines"):
        with pytest.raises(ConfigError):
            write_password_file(str(file), bad)
    assert read_password_file(str(file)) == SECRET


def test_the_password_module_keeps_its_names() -> None:
    """Callers that import the file functions from config.password get the same ones."""
    assert password_module.read_password_file is secrets.read_password_file
    assert password_module.write_password_file is secrets.write_password_file
    assert password_module.KEYRING_SERVICE == secrets.KEYRING_SERVICE


# ------------------------------------------------- storing the repository password
def test_store_goes_to_the_keyring_when_there_is_one(
    tmp_path: Path, memory_keyring: KeyringBackend
) -> None:
    config = config_with(tmp_path)
    where = store_password(config, config.repository_path, SECRET)
    assert where == "the OS keyring"
    assert memory_keyring.passwords == {(KEYRING_SERVICE, config.repository_path): SECRET}
    assert not (tmp_path / "pw").exists()
    assert read_password(config) == SECRET


def test_an_existing_password_file_is_rewritten_instead(
    tmp_path: Path, memory_keyring: KeyringBackend
) -> None:
    config = config_with(tmp_path)
    (tmp_path / "pw").write_text("old\n")
    assert store_password(config, config.repository_path, SECRET) == (
        f"the password file {tmp_path / 'pw'}"
    )
    assert memory_keyring.passwords == {}  # it would be hidden by the file anyway
    assert read_password(config) == SECRET


def test_no_keyring_means_the_file(tmp_path: Path) -> None:
    config = config_with(tmp_path)
    assert store_password(config, config.repository_path, SECRET).startswith("the password file")
    assert read_password(config) == SECRET


def test_a_refusing_keyring_falls_back_to_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keyring.set_keyring(RefusingKeyring())
    config = config_with(tmp_path)
    with caplog.at_level(logging.INFO, logger="desktop_agent.config.secrets"):
        where = store_password(config, config.repository_path, SECRET)
    assert where == f"the password file {tmp_path / 'pw'}"
    assert "did not take the password" in caplog.text and SECRET not in caplog.text


def test_nowhere_to_keep_it_says_what_to_set(tmp_path: Path) -> None:
    config = config_with(tmp_path, password_file=None)
    with pytest.raises(ConfigError, match=r"set \[repository\] password_file in .*config\.toml"):
        store_password(config, config.repository_path, SECRET)
    keyring.set_keyring(RefusingKeyring())
    with pytest.raises(ConfigError) as caught:
        store_password(config, config.repository_path, SECRET)
    assert str(caught.value) == (
        "the OS keyring did not take the password (PermissionError) and no password file "
        f"is configured ([repository] password_file in {config.path})"
    )


def test_storage_problems_are_found_before_anything_is_created(tmp_path: Path) -> None:
    file = tmp_path / "pw"
    assert password_storage_problem(str(file), SECRET, generated=True) is None
    file.write_text("another\n")
    file.chmod(0o600)
    problem = password_storage_problem(str(file), SECRET, generated=False)
    assert problem is not None and "holds another password" in problem
    assert password_storage_problem(str(file), "another", generated=False) is None
    # no file configured: a typed password needs a keyring
    problem = password_storage_problem(None, SECRET, generated=False)
    assert problem is not None and "no OS keyring" in problem
    keyring.set_keyring(MemoryKeyring())
    assert password_storage_problem(None, SECRET, generated=False) is None
    assert sorted(os.listdir(tmp_path)) == ["home", "pw"]  # nothing written by asking
