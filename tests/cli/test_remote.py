"""``desktop-agent remote`` as a user meets it (:mod:`desktop_agent.cli.remote` and
:mod:`desktop_agent.cli.remote_client`): a real agent, the CLI in a subprocess.

The agent runs on 127.0.0.1 port 0 with its event loop in a thread of the
test process; every CLI call is ``python -m desktop_agent remote ...`` with
an isolated HOME (the remote verb must not need or create a local config).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support import FAST_KDF, PASSWORD, write

from desktop_agent.app import Agent
from desktop_agent.config import AgentConfig, BackupConfig, Config, RepositoryConfig
from desktop_agent.engine.control import Control
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import LocalStorage

TOKEN = "remote-test-token-0123456789"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
T = TypeVar("T")


# ------------------------------------------------------------------ harness
class AgentThread:
    """A real :class:`Agent` on 127.0.0.1:0, its event loop in a background thread."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.agent: Agent | None = None

    def __enter__(self) -> AgentThread:
        self.thread.start()

        async def start() -> Agent:
            agent = Agent(self.config, host="127.0.0.1", port=0, schedule=False)
            await agent.start()
            return agent

        self.agent = self._run(start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def stop(self) -> None:
        """Stop the agent (idempotent)."""
        if self.agent is not None:
            agent, self.agent = self.agent, None
            self._run(agent.stop())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the agent's loop thread (its state belongs to that thread)."""

        async def call() -> T:
            return fn()

        return self._run(call())  # type: ignore[no-any-return]

    @property
    def url(self) -> str:
        assert self.agent is not None
        return self.agent.server.url

    def wait_for_clients(self, n: int, timeout: float = 20) -> None:
        """Until ``n`` clients are connected (so they see what follows)."""
        agent = self.agent
        assert agent is not None
        deadline = time.monotonic() + timeout
        while self.call(lambda: len(agent.server.clients)) < n:
            assert time.monotonic() < deadline, f"{n} client(s) did not connect"
            time.sleep(0.02)


def make_config(tmp_path: Path, sources: list[Path], **agent: Any) -> Config:
    repo = tmp_path / "repo"
    if not repo.exists():
        Repository.init(LocalStorage(repo), PASSWORD, kdf_params=FAST_KDF)
    return Config(
        agent=AgentConfig(token=TOKEN, **agent),
        repository=RepositoryConfig(path=str(repo), password_file=None),
        backup=BackupConfig(sources=tuple(str(s) for s in sources), exclude=(), interval_minutes=0),
        path=tmp_path / "config.toml",
    )


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The agent (in this process) finds its password; the CLI gets a bare HOME."""
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "agent-cache"))
    home = tmp_path / "home"
    home.mkdir()
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_STATE_HOME": str(home / ".local/state"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "LANG": "C.UTF-8",
    }


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    write(src / "a.txt", b"alpha\n")
    write(src / "sub" / "b.bin", os.urandom(300_000))
    return src


@pytest.fixture
def agent(tmp_path: Path, env: dict[str, str], source: Path) -> Iterator[AgentThread]:
    with AgentThread(make_config(tmp_path, [source])) as running:
        yield running


def _cmd(url: str, args: tuple[str, ...], token: str | None) -> list[str]:
    auth = ["--token", token] if token is not None else []
    return [sys.executable, "-m", "desktop_agent", "remote", url, *auth, *args]


def remote(
    env: dict[str, str],
    url: str,
    *args: str,
    token: str | None = TOKEN,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``desktop-agent remote URL [--token T] ARGS...`` to the end."""
    proc = subprocess.run(
        _cmd(url, args, token),
        env={**env, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    _no_traceback(proc.stdout, proc.stderr)
    return proc


def remote_bg(env: dict[str, str], url: str, *args: str) -> subprocess.Popen[str]:
    """Start ``desktop-agent remote ...`` in the background (a watcher)."""
    return subprocess.Popen(
        _cmd(url, args, TOKEN),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextlib.contextmanager
def sigint_not_ignored() -> Iterator[None]:
    """Children started inside get SIGINT at its default, as from a terminal.

    A program started with SIGINT ignored keeps ignoring it (Python then
    installs no KeyboardInterrupt handler, nor does asyncio.run): that is how
    a shell without job control (a script's ``cmd &``, so a ``nohup ... &``
    run of the suite) keeps Ctrl-C from its background jobs, and the pytest
    processes pass the ignored SIGINT on to every child. A handler here
    (``signal.signal``: the main thread) clears it for a child: exec resets
    a caught signal to its default, an ignored one stays ignored.
    """
    old = signal.getsignal(signal.SIGINT)
    if old != signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    _no_traceback(out, err)
    return proc.returncode, out, err


def _no_traceback(out: str, err: str) -> None:
    assert "Traceback" not in out and "Traceback" not in err, out + err


def failed(proc: subprocess.CompletedProcess[str], *needles: str, status: int = 1) -> str:
    """Assert a one-line failure; returns the line."""
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 or status == 2, proc.stderr  # usage errors add the usage line
    line = lines[-1]
    assert line.startswith("desktop-agent: error: "), line
    for needle in needles:
        assert needle in line, line
    return line


def frames(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


# -------------------------------------------------------------------- status
def test_status_in_one_line_or_as_json(agent: AgentThread, env: dict[str, str]) -> None:
    text = remote(env, agent.url, "status")
    assert text.returncode == 0, text.stderr
    assert re.fullmatch(r"idle, 0 active jobs, up \d+:\d\d\n", text.stdout), text.stdout
    assert text.stderr == ""

    # the token from the environment; options after COMMAND work too
    raw = remote(
        env, agent.url, "status", "--json", token=None, extra_env={"DESKTOP_AGENT_TOKEN": TOKEN}
    )
    assert raw.returncode == 0, raw.stderr
    payload = json.loads(raw.stdout)
    assert set(payload) == {"status", "active_jobs", "uptime_secs"}
    assert payload["status"] == "idle" and payload["active_jobs"] == 0
    assert isinstance(payload["uptime_secs"], int)

    # a URL without a path means /ws
    bare = remote(env, agent.url.removesuffix("/ws"), "status")
    assert bare.returncode == 0, bare.stderr

    # nothing local was needed, nothing local was created
    assert not (Path(env["XDG_CONFIG_HOME"]) / "desktop-agent").exists()


# ----------------------------------------------------------- start and watch
def test_start_is_seen_by_watchers_until_it_completes(
    agent: AgentThread, env: dict[str, str]
) -> None:
    text_watch = remote_bg(env, agent.url, "watch", "--once")
    json_watch = remote_bg(env, agent.url, "watch", "--once", "--json")
    agent.wait_for_clients(2)

    started = remote(env, agent.url, "start")
    assert started.returncode == 0, started.stderr
    job = started.stdout.strip()
    assert UUID.match(job), started.stdout

    rc, out, err = finish(text_watch)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{job} started"
    assert re.fullmatch(rf"{job} completed: \d+\.\d KiB", lines[-1]), lines[-1]
    assert all(line.startswith(job) for line in lines)

    rc, out, err = finish(json_watch)
    assert rc == 0, err
    got = frames(out)
    types = [f["type"] for f in got]
    assert types[0] == "backup:started" and types[-1] == "backup:completed"
    assert set(types[1:-1]) == {"backup:progress"}
    percents = [f["payload"]["percent"] for f in got if f["type"] == "backup:progress"]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert all(f["payload"]["job_id"] == job for f in got)


def test_start_watch_follows_its_own_job(
    agent: AgentThread, env: dict[str, str], source: Path
) -> None:
    proc = remote(env, agent.url, "start", str(source / "sub"), "--watch")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    job = lines[0].removesuffix(" started")
    assert UUID.match(job), lines
    assert lines[-1].startswith(f"{job} completed: ")
    view = agent.call(lambda: agent.agent.controller.job(job))  # type: ignore[union-attr]
    assert view.paths == (str(source / "sub"),)
    assert view.state.value == "completed"


def test_start_with_a_bad_path_list_is_an_error_reply(
    agent: AgentThread, env: dict[str, str]
) -> None:
    proc = remote(env, agent.url, "start", "")
    failed(proc, "the agent refused backup:start", "non-empty")


# -------------------------------------------------- pause, resume and cancel
@pytest.fixture
def slow_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hold every engine checkpoint (one per chunk or entry) for 200 ms.

    The engine backs up hundreds of MB a second: a CLI started after the
    backup could arrive after its end. Slowed down, the backup below runs
    for seconds whatever the machine, and the test cancels it.
    """
    checkpoint = Control.checkpoint

    def slow(self: Control, **kw: Any) -> None:
        time.sleep(0.2)
        checkpoint(self, **kw)

    monkeypatch.setattr(Control, "checkpoint", slow)


def test_pause_resume_and_cancel_a_running_backup(
    tmp_path: Path, env: dict[str, str], slow_engine: None
) -> None:
    big = tmp_path / "big"
    for i in range(8):
        write(big / f"f{i}.bin", os.urandom(8 * 1024 * 1024))
    with AgentThread(make_config(tmp_path, [big])) as agent:
        watch = remote_bg(env, agent.url, "watch", "--once", "--json")
        agent.wait_for_clients(1)
        job = remote(env, agent.url, "start").stdout.strip()
        assert UUID.match(job)

        paused = remote(env, agent.url, "pause", job)
        assert (paused.returncode, paused.stdout) == (0, f"job {job} paused\n"), paused.stderr
        status = json.loads(remote(env, agent.url, "status", "--json").stdout)
        assert status["status"] == "paused" and status["active_jobs"] == 1

        again = remote(env, agent.url, "pause", job)
        failed(again, "the agent refused backup:pause", "only a running job can be paused")

        resumed = remote(env, agent.url, "resume", job, "--json")
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout) == {"job_id": job}

        cancelled = remote(env, agent.url, "cancel", job)
        assert (cancelled.returncode, cancelled.stdout) == (0, f"job {job} cancelled\n"), (
            cancelled.stderr
        )

        rc, out, err = finish(watch)
        assert rc == 0, err
        got = frames(out)
        types = [f["type"] for f in got]
        assert types[0] == "backup:started"
        assert types.index("backup:paused") < types.index("backup:resumed")
        assert got[-1] == {
            "type": "backup:failed",
            "payload": {"job_id": job, "error": "cancelled"},
        }
        assert sum(t in ("backup:completed", "backup:failed") for t in types) == 1

        late = remote(env, agent.url, "cancel", job)
        failed(late, "the agent refused backup:cancel", "already")
        unknown = remote(env, agent.url, "resume", "no-such-job")
        failed(unknown, "unknown job_id")


# ----------------------------------------------------------------- refusals
def test_a_wrong_token_is_refused_with_401(agent: AgentThread, env: dict[str, str]) -> None:
    proc = remote(env, agent.url, "status", token="not-the-token")
    failed(proc, "the agent refused the token (HTTP 401)")
    assert "not-the-token" not in proc.stderr


def test_a_wrong_path_is_404(agent: AgentThread, env: dict[str, str]) -> None:
    proc = remote(env, agent.url.replace("/ws", "/socket"), "status")
    failed(proc, "HTTP 404", "/socket", "the endpoint is /ws")


def test_no_token_is_a_usage_error(agent: AgentThread, env: dict[str, str]) -> None:
    proc = remote(env, agent.url, "status", token=None)
    failed(proc, "DESKTOP_AGENT_TOKEN", "--token", status=2)


@pytest.mark.parametrize(
    ("url", "needle"),
    [("http://127.0.0.1:8080/ws", "ws://"), ("ws://127.0.0.1:99999/ws", "Port out of range")],
)
def test_a_bad_url_is_a_usage_error(env: dict[str, str], url: str, needle: str) -> None:
    failed(remote(env, url, "status"), needle, status=2)


def test_no_command_is_a_usage_error(env: dict[str, str]) -> None:
    proc = remote(env, "ws://127.0.0.1:1/ws")
    assert proc.returncode == 2 and "COMMAND" in proc.stderr, proc.stderr


def test_nobody_listening(env: dict[str, str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    failed(remote(env, f"ws://127.0.0.1:{port}/ws", "status"), "connection refused")


def test_a_silent_server_times_out(env: dict[str, str]) -> None:
    with socket.socket() as s:  # accepts connections (backlog), never answers
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = remote(env, f"ws://127.0.0.1:{port}/ws", "status", "--timeout", "0.5")
    failed(proc, "no answer from", "within 0.5 s")


def test_watch_fails_when_the_agent_goes_away(agent: AgentThread, env: dict[str, str]) -> None:
    watch = remote_bg(env, agent.url, "watch")
    agent.wait_for_clients(1)
    agent.stop()
    rc, out, err = finish(watch)
    assert rc == 1 and out == ""
    assert err.startswith("desktop-agent: error: the agent closed the connection"), err
    assert len(err.splitlines()) == 1


def test_ctrl_c_ends_a_watch(agent: AgentThread, env: dict[str, str]) -> None:
    with sigint_not_ignored():  # a user's Ctrl-C, even when the suite runs in the background
        watch = remote_bg(env, agent.url, "watch")
    agent.wait_for_clients(1)
    watch.send_signal(signal.SIGINT)
    rc, out, err = finish(watch)
    assert (rc, out, err) == (0, "", "")


# ---------------------------------------------------------------------- wss
def self_signed(where: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = where / "cert.pem", where / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_wss(tmp_path: Path, env: dict[str, str], source: Path) -> None:
    cert, key = self_signed(tmp_path)
    config = make_config(tmp_path, [source], tls_cert=str(cert), tls_key=str(key))
    with AgentThread(config) as agent:
        url = agent.url
        assert url.startswith("wss://")
        # verified against a trusted certificate (here: trusted via SSL_CERT_FILE)
        trusted = remote(env, url, "status", extra_env={"SSL_CERT_FILE": str(cert)})
        assert trusted.returncode == 0, trusted.stderr
        # self-signed and not trusted: refused, unless --insecure
        failed(remote(env, url, "status"), "not trusted", "--insecure")
        insecure = remote(env, url, "--insecure", "status")
        assert insecure.returncode == 0, insecure.stderr
        # ws:// where the agent speaks TLS
        failed(remote(env, url.replace("wss://", "ws://"), "status"), "wss://")


def test_status_shows_the_schedules_fields_when_the_agent_sends_them() -> None:
    from desktop_agent.cli.remote import schedule_lines

    seed = {"status": "idle", "active_jobs": 0, "uptime_secs": 5}
    assert schedule_lines(seed) == []
    payload = dict(
        seed,
        next_backup=None,
        last_success="2026-12-07T10:00:03Z",
        paused_until="2026-12-07T12:00:00Z",
        paused_indefinitely=False,
        conditions={"on_battery": True, "battery_percent": 41.0},
        schedule={"state": "paused", "reason": "paused until 12:00"},
    )
    assert schedule_lines(payload) == [
        "schedule: paused: paused until 12:00",
        "last backup 2026-12-07T10:00:03Z; paused until 2026-12-07T12:00:00Z; "
        "battery_percent=41.0, on_battery=True",
    ]
