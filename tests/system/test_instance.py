"""One agent per configuration: the lock in-process, then real agents and trays as processes."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import FAST_KDF, PASSWORD

from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import LocalStorage
from desktop_agent.system.errors import AlreadyRunning
from desktop_agent.system.instance import (
    InstanceLock,
    TrayRequest,
    bind_failure,
    instance_key,
    runtime_dir,
    server_name,
)

TOKEN = "instance-token-0123456789"


# ------------------------------------------------------------ in-process
def test_one_holder_per_configuration(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    first = InstanceLock(config, tmp_path)
    first.acquire("headless")
    try:
        with pytest.raises(AlreadyRunning) as caught:
            InstanceLock(config, tmp_path).acquire("tray")
        assert (caught.value.pid, caught.value.mode) == (os.getpid(), "headless")
        assert str(caught.value) == f"already running (pid {os.getpid()})"
        # another configuration is another lock
        with InstanceLock(tmp_path / "other.toml", tmp_path).holding("tray"):
            pass
    finally:
        first.release()
    with InstanceLock(config, tmp_path).holding("tray") as again:
        assert again.held
        assert again.path.read_text() == f"{os.getpid()} tray\n"


def test_a_link_to_the_configuration_is_the_same_configuration(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    link = tmp_path / "link.toml"
    link.symlink_to(config)
    assert instance_key(link) == instance_key(config) != instance_key(tmp_path / "x.toml")
    with InstanceLock(config, tmp_path).holding("headless"):
        with pytest.raises(AlreadyRunning):
            InstanceLock(link, tmp_path).acquire("headless")


def test_what_a_dead_holder_left_in_the_file_does_not_count(tmp_path: Path) -> None:
    lock = InstanceLock(tmp_path / "config.toml", tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.path.write_text(f"{dead.pid} headless\n")  # as after kill -9: file there, no lock
    lock.acquire("tray")
    assert lock.path.read_text() == f"{os.getpid()} tray\n"
    lock.release()


def test_runtime_dir_and_server_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    short = Path(tempfile.mkdtemp(prefix="da-"))
    try:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(short))
        assert runtime_dir() == short / "desktop-agent"
        assert (runtime_dir().stat().st_mode & 0o777) == 0o700
        key = instance_key(tmp_path / "c.toml")
        assert server_name(tmp_path / "c.toml") == str(short / "desktop-agent" / f"tray-{key}.sock")
        deep = tmp_path / ("d" * 120)
        deep.mkdir()
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
        # too long for a socket path: a name (Qt puts it in the temp dir), with the user in it
        assert server_name(tmp_path / "c.toml") == f"desktop-agent-{os.getuid()}-{key}"
        monkeypatch.delenv("XDG_RUNTIME_DIR")
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
        assert runtime_dir() == tmp_path / "state" / "desktop-agent" / "run"
    finally:
        shutil.rmtree(short)


def test_tray_request_round_trip_and_junk() -> None:
    for request in (TrayRequest(), TrayRequest("settings"), TrayRequest(None, autostart=True)):
        line = request.encode()
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert TrayRequest.decode(line.strip()) == request
    for junk in (b"[]", b"{", b'{"show": 3}', b'{"show": "../x"}', b'{"autostart": "y"}'):
        with pytest.raises(ValueError):
            TrayRequest.decode(junk)
    with pytest.raises(ValueError):
        TrayRequest.decode(b'{"show": "' + b"a" * 5000 + b'"}')


def test_bind_failures_say_what_to_change(tmp_path: Path) -> None:
    in_use = OSError(errno.EADDRINUSE, "error while attempting to bind: address already in use")
    message = bind_failure(in_use, tmp_path / "c.toml")
    assert message is not None and message.startswith("could not start: error while")
    assert f"change [agent] listen in {tmp_path / 'c.toml'}" in message
    assert bind_failure(OSError(errno.EIO, "i/o"), tmp_path / "c.toml") is None


# ------------------------------------------------------------ processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(pred: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Wait until ``pred()`` holds (checked every 50 ms), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Setup:
    """An isolated user (HOME, XDG dirs) and configurations with their own repository."""

    def __init__(self, root: Path, runtime: Path | None) -> None:
        self.root = root
        home = root / "home"
        home.mkdir()
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_STATE_HOME": str(home / ".state"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "DESKTOP_AGENT_PASSWORD": PASSWORD,
            "QT_QPA_PLATFORM": "offscreen",
            "LANG": "C.UTF-8",
        }
        if runtime is not None:
            self.env["XDG_RUNTIME_DIR"] = str(runtime)
        self.log = home / ".state" / "desktop-agent" / "log" / "desktop-agent.log"
        self.procs: list[subprocess.Popen[str]] = []

    def config(self, name: str, port: int | None = None) -> tuple[Path, int]:
        port = port or free_port()
        repo = self.root / f"repo-{name}"
        Repository.init(LocalStorage(repo), PASSWORD, kdf_params=FAST_KDF)
        cfg = self.root / f"{name}.toml"
        cfg.write_text(
            f'[agent]\nlisten = "127.0.0.1:{port}"\ntoken = "{TOKEN}"\n'
            f'[repository]\npath = "{repo}"\npassword_file = ""\n'
            f'[backup]\nsources = ["{self.root}"]\nexclude = []\ninterval_minutes = 0\n'
        )
        cfg.chmod(0o600)
        return cfg, port

    def start(self, cfg: Path, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "desktop_agent", "--config", str(cfg), *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def run(self, cfg: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "desktop_agent", "--config", str(cfg), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def logged(self, text: str) -> bool:
        return self.log.exists() and text in self.log.read_text()

    def stop(self, proc: subprocess.Popen[str]) -> tuple[int, str]:
        """SIGTERM, and the exit status and stderr (it must end on its own)."""
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
        return proc.returncode, err

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[Setup]:
    """A user without a runtime directory: the lock lives in the state directory."""
    s = Setup(tmp_path, runtime=None)
    yield s
    s.cleanup()


@pytest.fixture
def login(tmp_path: Path) -> Iterator[Setup]:
    """A user with a (short) runtime directory, as a desktop login has."""
    runtime = Path(tempfile.mkdtemp(prefix="da-run-"))
    runtime.chmod(0o700)
    s = Setup(tmp_path, runtime=runtime)
    yield s
    s.cleanup()
    shutil.rmtree(runtime, ignore_errors=True)


def test_a_second_headless_agent_exits_1_with_the_first_ones_pid(plain: Setup) -> None:
    cfg, port = plain.config("a")
    first = plain.start(cfg, "--headless")
    wait_for(lambda: accepts(port), "the first agent to listen")

    started = time.monotonic()
    second = plain.run(cfg, "--headless", timeout=30)
    elapsed = time.monotonic() - started

    assert second.returncode == 1
    # one line, and nothing else: it did not get as far as binding (which would fail
    # with "address already in use") or logging that it listens
    assert second.stderr == f"desktop-agent: already running (pid {first.pid})\n"
    assert second.stdout == ""
    assert elapsed < 10
    assert first.poll() is None and accepts(port)
    status, err = plain.stop(first)
    assert status == 0, err


def test_after_kill_9_a_new_start_runs(plain: Setup) -> None:
    cfg, port = plain.config("a")
    first = plain.start(cfg, "--headless")
    wait_for(lambda: accepts(port), "the first agent to listen")
    first.kill()  # SIGKILL: no cleanup at all; the lock file stays behind
    first.communicate(timeout=30)
    assert list((Path(plain.env["XDG_STATE_HOME"]) / "desktop-agent" / "run").glob("*.lock"))

    again = plain.start(cfg, "--headless")
    wait_for(lambda: accepts(port) or again.poll() is not None, "the new agent to listen")
    assert again.poll() is None, again.communicate()
    status, err = plain.stop(again)
    assert status == 0, err


def test_two_configurations_run_side_by_side(login: Setup) -> None:
    cfg_a, port_a = login.config("a")
    cfg_b, port_b = login.config("b")
    a = login.start(cfg_a, "--headless")
    b = login.start(cfg_b, "--headless")
    wait_for(lambda: accepts(port_a) and accepts(port_b), "both agents to listen")
    assert a.poll() is None and b.poll() is None
    assert len(list((Path(login.env["XDG_RUNTIME_DIR"]) / "desktop-agent").glob("*.lock"))) == 2
    assert login.stop(a)[0] == 0 and login.stop(b)[0] == 0


def test_a_second_tray_hands_its_request_to_the_first(login: Setup) -> None:
    cfg, port = login.config("a")
    tray = login.start(cfg)
    wait_for(lambda: login.logged("accepting requests from later starts"), "the tray to listen")
    wait_for(lambda: accepts(port), "the tray's agent to listen")
    assert not login.logged("showing the settings window")

    second = login.run(cfg, "--show", "settings", timeout=60)

    assert second.returncode == 0, second.stderr
    assert second.stdout == ""
    wait_for(lambda: login.logged("showing the settings window"), "the first to show settings")
    assert login.logged("a later start asked for settings")
    assert tray.poll() is None
    # the socket is a file in the runtime directory, named after the configuration
    sockets = list((Path(login.env["XDG_RUNTIME_DIR"]) / "desktop-agent").glob("tray-*.sock"))
    assert [p.name for p in sockets] == [f"tray-{instance_key(cfg)}.sock"]

    # a headless agent on the same configuration refuses, naming the tray's pid
    headless = login.run(cfg, "--headless", timeout=30)
    assert headless.returncode == 1
    assert headless.stderr == (
        f"desktop-agent: already running (pid {tray.pid}): the tray app uses this configuration\n"
    )
    # and SIGTERM still ends the tray (it used to ignore it after a failed start)
    status, err = login.stop(tray)
    assert status == 0, err


def test_two_trays_started_at_once_end_as_one(login: Setup) -> None:
    cfg, _port = login.config("a")
    # no waiting: whichever takes the lock first runs; the other may find it still
    # starting (not listening yet) and tries again until it can hand over
    a = login.start(cfg)
    b = login.start(cfg, "--show", "log")
    wait_for(lambda: a.poll() is not None or b.poll() is not None, "one of them to hand over")
    ended, running = (a, b) if a.poll() is not None else (b, a)
    _out, err = ended.communicate(timeout=30)
    assert ended.returncode == 0, err
    # b's request is served either way: b shows it itself, or a shows it for b
    wait_for(lambda: login.logged("showing the log window"), "the log window")
    assert login.logged("a later start asked for")
    assert running.poll() is None
    assert login.stop(running)[0] == 0


def test_a_tray_refuses_while_a_headless_agent_runs(login: Setup) -> None:
    cfg, port = login.config("a")
    headless = login.start(cfg, "--headless")
    wait_for(lambda: accepts(port), "the agent to listen")

    tray = login.run(cfg, "--show", "settings", timeout=30)

    assert tray.returncode == 1
    assert tray.stderr.startswith(f"desktop-agent: already running (pid {headless.pid}): ")
    assert "headless agent uses this configuration" in tray.stderr
    assert tray.stderr.count("\n") == 1
    assert login.stop(headless)[0] == 0


def test_a_tray_that_cannot_start_says_why_in_one_line_and_exits_1(login: Setup) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg, port = login.config("a", port=taken.getsockname()[1])
        tray = login.start(cfg)
        try:
            _out, err = tray.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError("the tray hangs after a failed start") from None
    assert tray.returncode == 1
    assert err.count("\n") == 1, err
    assert err.startswith("desktop-agent: error: could not start: ")
    assert "address already in use" in err and f"change [agent] listen in {cfg}" in err
    # and the configuration is free again for the next start
    run_dir = Path(login.env["XDG_RUNTIME_DIR"]) / "desktop-agent"
    with InstanceLock(cfg, run_dir).holding("tray"):
        pass
