"""Configuration and password files that are not what they should be, with real files.

A FIFO, ``/dev/zero``, a directory, a socket, an oversized file: each is
refused with one line before anything is read. Saving through a symbolic
link keeps the link. A file other users can read is pointed out on stderr.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import FAST_KDF, PASSWORD, write_config

from desktop_agent.config import (
    Config,
    ConfigError,
    generate_token,
    load,
    load_or_create,
    read_password,
    save,
    with_token,
    write_password_file,
)
from desktop_agent.config.loader import CONFIG_FILE_LIMIT
from desktop_agent.config.password import PASSWORD_FILE_LIMIT, read_password_file
from desktop_agent.config.privatefile import USER_NOTICE, read_regular_file
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import LocalStorage

pytestmark = pytest.mark.skipif(os.name != "posix", reason="FIFOs, devices and modes are POSIX")

TOKEN = "s3cret-token-0123456789"
VALID = f'[agent]\ntoken = "{TOKEN}"\n'


def private(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def config_with_password_file(directory: Path, password_file: str) -> Config:
    return load(
        private(
            directory / "config.toml",
            f'{VALID}[repository]\npath = "repo"\npassword_file = "{password_file}"\n',
        )
    )


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        yield path


def notices(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, USER_NOTICE, False)]


# ---------------------------------------------------------------- reading the config


@pytest.mark.timeout(20)  # the old code waited forever for a writer
def test_a_fifo_config_is_refused_before_it_is_opened_for_reading(fifo: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(fifo)
    assert str(caught.value) == f"{fifo}: is a named pipe (FIFO), not a configuration file"


@pytest.mark.timeout(20)
def test_a_fifo_with_a_writer_is_still_not_read(fifo: Path) -> None:
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that the writer can open
    writer = os.open(fifo, os.O_WRONLY)
    try:
        os.write(writer, VALID.encode())
        with pytest.raises(ConfigError, match="named pipe"):
            load(fifo)
        assert os.read(reader, 1000) == VALID.encode()  # nothing was consumed
    finally:
        os.close(writer)
        os.close(reader)


@pytest.mark.timeout(20)  # the old code read until MemoryError
def test_dev_zero_as_config_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^/dev/zero: is a character device, not a config"):
        load(Path("/dev/zero"))


def test_a_link_to_dev_zero_is_refused_as_well(tmp_path: Path) -> None:
    (tmp_path / "c.toml").symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="is a character device"):
        load(tmp_path / "c.toml")


def test_a_socket_as_config_is_refused(unix_socket: Path) -> None:
    with pytest.raises(ConfigError, match=f"^{unix_socket}: is a socket, not a configuration"):
        load(unix_socket)


def test_a_directory_as_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"^{tmp_path}: is a directory, not a configuration file"):
        load(tmp_path)


def test_a_config_larger_than_the_cap_is_refused_without_parsing(tmp_path: Path) -> None:
    path = private(tmp_path / "c.toml", VALID + "#" * CONFIG_FILE_LIMIT + "\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value) == (f"{path}: is larger than 1 MiB; is it the right file?")


def test_a_config_of_exactly_the_cap_is_read(tmp_path: Path) -> None:
    filler = "#" * (CONFIG_FILE_LIMIT - len(VALID) - 1) + "\n"
    path = private(tmp_path / "c.toml", VALID + filler)
    assert path.stat().st_size == CONFIG_FILE_LIMIT
    assert load(path).agent.token == TOKEN


def test_the_cap_holds_where_the_size_says_nothing() -> None:
    """procfs files claim size 0: the cap is enforced on what is read, not on st_size."""
    maps = Path("/proc/self/maps")
    if not maps.exists() or maps.stat().st_size != 0:
        pytest.skip("no procfs here")
    with pytest.raises(ConfigError, match="is larger than 100 bytes"):
        read_regular_file(maps, limit=100, label=str(maps), noun="a configuration file")
    data, _info = read_regular_file(maps, limit=1024 * 1024, label="maps", noun="a file")
    assert len(data) > 100


def test_a_linked_config_is_read_through_the_link(tmp_path: Path) -> None:
    private(tmp_path / "dotfiles" / "config.toml", VALID)
    (tmp_path / "config.toml").symlink_to("dotfiles/config.toml")
    assert load(tmp_path / "config.toml").agent.token == TOKEN


# ---------------------------------------------------------------- reading the password


@pytest.mark.timeout(20)
def test_a_fifo_password_file_is_refused(fifo: Path) -> None:
    config = config_with_password_file(fifo.parent, str(fifo))
    with pytest.raises(ConfigError) as caught:
        read_password(config)
    assert str(caught.value) == f"password file {fifo}: is a named pipe (FIFO), not a regular file"


@pytest.mark.timeout(20)
def test_dev_zero_as_password_file_is_refused(tmp_path: Path) -> None:
    config = config_with_password_file(tmp_path, "/dev/zero")
    with pytest.raises(ConfigError, match="^password file /dev/zero: is a character device"):
        read_password(config)


def test_a_socket_as_password_file_is_refused(unix_socket: Path) -> None:
    with pytest.raises(ConfigError, match=f"^password file {unix_socket}: is a socket"):
        read_password_file(str(unix_socket))


def test_an_oversized_password_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(b"secret\n" + b"x" * PASSWORD_FILE_LIMIT)
    path.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        read_password_file(str(path))
    assert str(caught.value) == (
        f"password file {path}: is larger than 64 KiB; is it the right file?"
    )
    assert "secret" not in str(caught.value)


def test_a_long_password_file_below_the_cap_still_gives_its_first_line(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(b"\xef\xbb\xbffirst\r\n" + b"y" * (PASSWORD_FILE_LIMIT - 20))
    path.chmod(0o600)
    assert read_password_file(str(path)) == "first"


# ---------------------------------------------------------------- others can read it


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_config_others_can_read_is_pointed_out_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    path = private(tmp_path / "my config.toml", VALID)
    path.chmod(mode)
    with caplog.at_level(logging.WARNING):
        load(path)
        load(path)  # a long-running agent reloads: no second warning
    (record,) = notices(caplog)
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"{path} can be read by other users (mode {mode:04o}) and holds the /ws token; "
        f"run: chmod 600 '{path}'"
    )
    assert TOKEN not in caplog.text


def test_a_config_others_can_change_is_pointed_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = private(tmp_path / "c.toml", VALID)
    path.chmod(0o620)
    with caplog.at_level(logging.WARNING):
        load(path)
    (record,) = notices(caplog)
    assert "can be changed by other users (mode 0620)" in record.getMessage()


def test_a_private_config_is_not_pointed_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        load(private(tmp_path / "c.toml", VALID))
    assert caplog.records == []


def test_a_password_file_others_can_read_is_pointed_out_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_with_password_file(tmp_path, "pw")
    (tmp_path / "pw").write_text("hunter2-password\n")
    (tmp_path / "pw").chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert read_password(config) == "hunter2-password"
        assert read_password(config) == "hunter2-password"
    (record,) = notices(caplog)
    assert record.getMessage() == (
        f"{tmp_path}/pw can be read by other users (mode 0644) and holds the repository "
        f"password; run: chmod 600 {tmp_path}/pw"
    )
    assert "hunter2" not in caplog.text


# ---------------------------------------------------------------- saving through a link


def dotfiles_setup(tmp_path: Path, link_text: Callable[[Path, Path], str]) -> tuple[Path, Path]:
    """A config in a "dotfiles repository" linked into the config directory; (link, target)."""
    target = private(tmp_path / "dotfiles" / "desktop-agent" / "config.toml", VALID)
    target.chmod(0o644)  # as a checkout leaves it
    link = tmp_path / "xdg" / "desktop-agent" / "config.toml"
    link.parent.mkdir(parents=True)
    link.symlink_to(link_text(link, target))
    return link, target


@pytest.mark.parametrize(
    "link_text",
    [
        pytest.param(lambda link, target: str(target), id="absolute"),
        pytest.param(lambda link, target: os.path.relpath(target, link.parent), id="relative"),
    ],
)
def test_saving_a_linked_config_writes_the_target_and_keeps_the_link(
    tmp_path: Path, link_text: Callable[[Path, Path], str]
) -> None:
    link, target = dotfiles_setup(tmp_path, link_text)
    before = os.readlink(link)
    config = load(link)
    token = generate_token()

    save(with_token(config, token))

    assert link.is_symlink() and os.readlink(link) == before
    assert load(target).agent.token == token  # the dotfiles copy has the new token
    assert load(link) == dataclasses.replace(with_token(config, token), path=link)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["config.toml"]
    assert sorted(p.name for p in link.parent.iterdir()) == ["config.toml"]


def test_saving_through_a_chain_of_links(tmp_path: Path) -> None:
    link, target = dotfiles_setup(tmp_path, lambda link, target: str(target))
    chain = tmp_path / "chain.toml"
    chain.symlink_to(link)
    token = generate_token()
    save(with_token(load(chain), token))
    assert chain.is_symlink() and link.is_symlink()
    assert load(target).agent.token == token


def test_saving_through_a_link_whose_target_is_not_there_yet(tmp_path: Path) -> None:
    config = load_or_create(tmp_path / "seed.toml")
    (tmp_path / "dotfiles").mkdir()
    link = tmp_path / "config.toml"
    link.symlink_to("dotfiles/config.toml")
    save(config, link)
    assert link.is_symlink()
    assert load(tmp_path / "dotfiles" / "config.toml").agent.token == config.agent.token


def test_writing_a_linked_password_file_keeps_the_link(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pw").write_text("old\n")
    link = tmp_path / "pw"
    link.symlink_to("secrets/pw")
    write_password_file(str(link), "new password")
    assert link.is_symlink() and os.readlink(link) == "secrets/pw"
    assert (tmp_path / "secrets" / "pw").read_text() == "new password\n"
    assert stat.S_IMODE((tmp_path / "secrets" / "pw").stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "secrets").iterdir()) == ["pw"]


# ---------------------------------------------------------------- the command line


def _limit_memory() -> None:
    # A regression that reads /dev/zero must fail fast here, not swap the machine.
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.fixture
def run(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python -m desktop_agent`` with a private HOME, a time limit and a memory limit."""
    home = tmp_path / "cli-home"
    home.mkdir()

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local/share"),
            "XDG_STATE_HOME": str(home / ".local/state"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "LANG": "C.UTF-8",
            **(env or {}),
        }
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "desktop_agent", *args],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=_limit_memory,
        )
        assert time.monotonic() - started < 30, "far too slow for a refusal"
        return proc

    return run


def one_line_error(proc: subprocess.CompletedProcess[str], message: str) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert proc.stderr == f"desktop-agent: error: {message}\n"


def test_cli_refuses_a_fifo_config(run: Callable[..., Any], fifo: Path) -> None:
    proc = run("--config", str(fifo), "snapshots")
    one_line_error(proc, f"{fifo}: is a named pipe (FIFO), not a configuration file")


def test_cli_refuses_dev_zero_as_config(run: Callable[..., Any]) -> None:
    proc = run("--config", "/dev/zero", "snapshots")
    one_line_error(proc, "/dev/zero: is a character device, not a configuration file")


def test_cli_refuses_a_directory_as_config(run: Callable[..., Any], tmp_path: Path) -> None:
    proc = run("--config", str(tmp_path), "token")
    one_line_error(proc, f"{tmp_path}: is a directory, not a configuration file")


def test_cli_refuses_an_oversized_config(run: Callable[..., Any], tmp_path: Path) -> None:
    path = private(tmp_path / "c.toml", VALID + "#" * CONFIG_FILE_LIMIT)
    proc = run("--config", str(path), "token")
    one_line_error(
        proc,
        f"{path}: is larger than 1 MiB; is it the right file?",
    )


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "oversized"])
def test_cli_refuses_an_odd_password_file(
    run: Callable[..., Any], tmp_path: Path, kind: str
) -> None:
    if kind == "fifo":
        password_file = tmp_path / "pw-fifo"
        os.mkfifo(password_file)
        problem = "is a named pipe (FIFO), not a regular file"
    elif kind == "dev-zero":
        password_file = Path("/dev/zero")
        problem = "is a character device, not a regular file"
    else:
        password_file = tmp_path / "pw"
        password_file.write_bytes(b"x" * (PASSWORD_FILE_LIMIT + 1))
        problem = "is larger than 64 KiB; is it the right file?"
    cfg = write_config(
        tmp_path / "c.toml", repo=tmp_path / "repo", sources=[], password_file=password_file
    )
    proc = run("--config", str(cfg), "init")
    one_line_error(proc, f"password file {password_file}: {problem}")
    assert not (tmp_path / "repo").exists()


def test_cli_warns_on_stderr_about_a_config_others_can_read(
    run: Callable[..., Any], tmp_path: Path
) -> None:
    path = private(tmp_path / "c.toml", VALID)
    path.chmod(0o640)
    proc = run("--config", str(path), "token")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{TOKEN}\n"
    assert proc.stderr == (
        f"desktop-agent: warning: {path} can be read by other users (mode 0640) and holds "
        f"the /ws token; run: chmod 600 {path}\n"
    )

    path.chmod(0o600)
    quiet = run("--config", str(path), "token")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_cli_warns_on_stderr_about_a_password_file_others_can_read(
    run: Callable[..., Any], tmp_path: Path
) -> None:
    Repository.init(LocalStorage(tmp_path / "repo"), PASSWORD, kdf_params=FAST_KDF)
    password_file = tmp_path / "pw"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o644)
    cfg = write_config(
        tmp_path / "c.toml", repo=tmp_path / "repo", sources=[], password_file=password_file
    )
    proc = run("--config", str(cfg), "snapshots")
    assert proc.returncode == 0, proc.stderr
    assert "no snapshots yet" in proc.stdout
    assert proc.stderr == (
        f"desktop-agent: warning: {password_file} can be read by other users (mode 0644) and "
        f"holds the repository password; run: chmod 600 {password_file}\n"
    )
    assert PASSWORD not in proc.stderr
