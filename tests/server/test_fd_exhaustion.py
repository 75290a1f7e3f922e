"""The headless agent under a low open-file limit, flooded with /ws connections
while a backup runs: the backup completes, connection 257 gets 503, and the log
holds no traceback and stays small. Also: accept() failing for want of
descriptors is logged once, not once per attempt."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import FAST_KDF, PASSWORD, free_port, write
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import FileType, LocalStorage

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="counts descriptors in /proc"
)

TOKEN = "fd-token-0123456789abcdefghij"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FD_LIMIT = 512  # the agent's RLIMIT_NOFILE, soft and hard: it cannot raise it
LOG_BOUND = 200_000  # bytes


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class FdWatch:
    """Samples a process's open descriptors until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, fd_count(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def start_agent(
    tmp_path: Path, source: Path, fd_limit: int
) -> tuple[subprocess.Popen[str], int, Path]:
    """The headless agent as a user runs it, under ``RLIMIT_NOFILE = fd_limit``."""
    port = free_port()
    repo = tmp_path / "repo"
    Repository.init(LocalStorage(repo), PASSWORD, kdf_params=FAST_KDF)
    cfg = tmp_path / "config.toml"
    cfg.write_text(  # no max_connections: the default, 256
        f'[agent]\nlisten = "127.0.0.1:{port}"\ntoken = "{TOKEN}"\n'
        f'[repository]\npath = "{repo}"\npassword_file = ""\n'
        f'[backup]\nsources = ["{source}"]\nexclude = []\ninterval_minutes = 0\n'
    )
    os.chmod(cfg, 0o600)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "DESKTOP_AGENT_PASSWORD": PASSWORD,
    }

    def lower_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    proc = subprocess.Popen(
        [sys.executable, "-m", "desktop_agent", "--config", str(cfg), "--headless"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lower_limit,
    )
    log = tmp_path / "state" / "desktop-agent" / "log" / "desktop-agent.log"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        # the log line says the server is up; a probe connection would count
        if log.exists() and "desktop-agent running headless" in log.read_text():
            return proc, port, log
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the agent did not start: {proc.communicate()[0]}")


def make_source(root: Path) -> Path:
    """Thousands of small files (the engine hands them to helper processes) and
    some large ones (read and chunked in the agent itself)."""
    data = os.urandom(1 << 20)
    for i in range(4000):
        size = 200 + (i * 37) % 3000
        start = (i * 7919) % (len(data) - size)
        write(root / f"d{i % 40:02d}" / f"f{i}.txt", data[start : start + size])
    for i in range(8):
        write(root / "big" / f"b{i}.bin", os.urandom(16 << 20))
    return root


def ensure_own_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


async def drain(ws: ClientConnection, on: Callable[[dict[str, Any]], None]) -> None:
    """Read everything a held connection gets (a client that stops reading is dropped)."""
    try:
        async for message in ws:
            on(json.loads(message))
    except ConnectionClosed:
        pass


def test_a_connection_flood_under_a_low_fd_limit_neither_breaks_the_backup_nor_the_log(
    tmp_path,
):
    ensure_own_fd_limit(4096)
    source = make_source(tmp_path / "src")
    proc, port, log = start_agent(tmp_path, source, FD_LIMIT)
    watch = FdWatch(proc.pid)
    url = f"ws://127.0.0.1:{port}/ws"
    report: dict[str, Any] = {}

    async def scenario() -> None:
        held: list[ClientConnection] = []
        gate = asyncio.Semaphore(32)  # not more at once than the listen backlog takes

        async def open_one() -> ClientConnection:
            async with gate:
                return await connect(url, additional_headers=AUTH, open_timeout=20)

        began = time.monotonic()
        held = list(await asyncio.gather(*(open_one() for _ in range(256))))
        report["open_256"] = time.monotonic() - began
        driver, others = held[0], held[1:]
        ends: list[dict[str, Any]] = []
        completed = asyncio.Event()

        def watch_end(message: dict[str, Any]) -> None:
            if message["type"] in ("backup:completed", "backup:failed"):
                ends.append(message)
                if len(ends) == len(held):
                    completed.set()

        readers = [asyncio.create_task(drain(ws, watch_end)) for ws in others]
        driver_messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def on_driver(message: dict[str, Any]) -> None:
            watch_end(message)
            driver_messages.put_nowait(message)

        readers.append(asyncio.create_task(drain(driver, on_driver)))

        async def next_of(kind: str) -> dict[str, Any]:
            while True:
                message = await asyncio.wait_for(driver_messages.get(), 60)
                if message["type"] == kind:
                    return message

        async def attempt() -> str:
            try:
                async with connect(url, additional_headers=AUTH, open_timeout=20):
                    return "in"
            except InvalidStatus as exc:
                return str(exc.response.status_code)
            except (InvalidHandshake, OSError, ConnectionClosed, EOFError):
                return "closed"

        await driver.send(json.dumps({"type": "backup:start", "payload": {}}))
        job = (await next_of("backup:started"))["payload"]["job_id"]
        await next_of("backup:progress")

        # connection 257, while the backup runs
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, additional_headers=AUTH, open_timeout=20):
                pass
        assert info.value.response.status_code == 503
        assert info.value.response.body == b"Service Unavailable: too many connections\n"
        # then a burst of 200 more: each is answered 503 or closed unanswered, none gets in
        burst = asyncio.gather(*(attempt() for _ in range(200)))
        await driver.send(json.dumps({"type": "agent:status", "payload": None}))
        status = await next_of("agent:status")
        assert status["payload"]["status"] == "running", status  # the flood overlaps the backup
        outcomes = await burst
        report["burst"] = {o: outcomes.count(o) for o in set(outcomes)}
        assert "in" not in outcomes
        assert set(outcomes) <= {"503", "closed"}, outcomes

        await asyncio.wait_for(completed.wait(), 90)
        report["backup"] = time.monotonic() - began
        kinds = {(m["type"], m["payload"]["job_id"]) for m in ends}
        assert kinds == {("backup:completed", job)}, ends[:3]
        assert all(not r.done() for r in readers)  # all 256 still connected

        # SIGTERM with every connection held: they are closed with 1001, the agent exits 0
        proc.send_signal(signal.SIGTERM)
        returncode = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 60)
        assert returncode == 0
        await asyncio.wait_for(asyncio.gather(*readers), 30)
        codes = {ws.close_code for ws in held}
        assert codes == {1001}, codes

    try:
        asyncio.run(asyncio.wait_for(scenario(), 150))
    finally:
        peak = watch.stop()
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate(timeout=30)[0]
    text = log.read_text()
    report["peak_fds"] = peak
    report["log_bytes"] = len(text.encode())
    print(report)
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in text and "Traceback" not in out
    assert "Too many open files" not in text, text[-3000:]
    assert " ERROR " not in text, [line for line in text.splitlines() if " ERROR " in line][:5]
    assert len(text.encode()) < LOG_BOUND
    assert not (log.parent / (log.name + ".1")).exists()  # nothing rotated away
    assert TOKEN not in text and TOKEN not in out
    assert peak <= FD_LIMIT
    storage = LocalStorage(tmp_path / "repo")
    assert len(list(storage.list(FileType.SNAPSHOT))) == 1
    assert list(storage.list(FileType.LOCK)) == []


ACCEPT_STARVED = textwrap.dedent(
    """
    import asyncio, logging, os, sys

    from desktop_agent.config import AgentConfig
    from desktop_agent.jobs import EventBus
    from desktop_agent.server import AgentServer
    from desktop_agent.server.limits import installed_filter

    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(message)s")

    async def main():
        config = AgentConfig(token="t" * 24, listen="127.0.0.1:1")
        server = AgentServer(config, None, EventBus(), host="127.0.0.1", port=0)
        await server.start()
        hog = []
        try:  # take every descriptor left: accept() fails with EMFILE from now on
            while True:
                hog.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        print("PORT", server.port, flush=True)
        loop = asyncio.get_running_loop()
        throttle = installed_filter(loop).throttle  # the one the server put there
        while throttle.suppressed < 200:  # the test's clients keep failing to get in
            await asyncio.sleep(0.05)
        for fd in hog:
            os.close(fd)
        print("SUPPRESSED", throttle.suppressed, flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)  # until the test connected
        await server.stop()

    if sys.argv[1] == "qasync":  # the tray's loop: Qt's event loop with asyncio on top
        from concurrent.futures import ThreadPoolExecutor

        import qasync
        from PySide6.QtWidgets import QApplication

        app = QApplication([])
        loop = qasync.QEventLoop(app)
        loop.set_default_executor(ThreadPoolExecutor(max_workers=2))
        asyncio.set_event_loop(loop)
        with loop:
            loop.run_until_complete(main())
    else:
        asyncio.run(main())
    """
)


@pytest.mark.parametrize("loop", ["asyncio", "qasync"])
def test_accept_errors_from_descriptor_exhaustion_are_logged_once(tmp_path, loop):
    """The server process has no descriptor left (as when a backup used them up): every
    accept() fails with EMFILE and asyncio reports each; the log gets one line,
    and once descriptors are free the waiting clients are served."""
    proc = subprocess.Popen(
        [sys.executable, "-c", ACCEPT_STARVED, loop],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)),
        env=dict(os.environ, QT_QPA_PLATFORM="offscreen"),
    )
    assert proc.stdin is not None and proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("PORT "):
                break
        port = int(lines[-1].split()[1])
        # clients wait in the listen queue; each wake-up of the loop fails for all of them
        waiting = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(40)]
        # asyncio retries after a second, failing again for each waiting client;
        # the agent gives its descriptors back after 200 failures
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("SUPPRESSED "):
                break
        suppressed = int(lines[-1].split()[1])
        # with descriptors back, the waiting clients are answered (401: no token)
        for sock in waiting[:3]:
            sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 401 "), "not served after recovery"
        for sock in waiting:
            sock.close()
        proc.stdin.write("\n")
        proc.stdin.flush()
        out = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines) + out
    assert proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert suppressed >= 200  # asyncio reported many failures ...
    accept_lines = [line for line in text.splitlines() if "cannot accept connections" in line]
    assert len(accept_lines) == 1, accept_lines  # ... the log got one line
    assert "Too many open files (EMFILE)" in accept_lines[0]


PLAN = textwrap.dedent(
    """
    import resource, sys
    from desktop_agent.server.limits import plan_fd_budget

    budget = plan_fd_budget(int(sys.argv[1]))
    now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    print(budget.cap, budget.soft_limit, budget.raised_from, now)
    """
)


@pytest.mark.parametrize(
    ("soft", "hard", "raised"),
    [(300, 4096, True), (300, 300, False), (4096, 4096, False)],
)
def test_the_open_file_limit_is_raised_as_far_as_needed_and_no_further(soft, hard, raised):
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    proc = subprocess.run(
        [sys.executable, "-c", PLAN, "256"],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    cap, new_soft, raised_from, now = proc.stdout.split()
    assert int(new_soft) == int(now)  # what it reports is what the process has
    if raised:
        assert raised_from == str(soft)
        assert soft < int(now) < 1024  # enough for 256 connections and the reserve, no more
        assert int(cap) >= 256
    else:
        assert raised_from == "None" and int(now) == soft
        assert (int(cap) >= 256) == (soft >= 1024)  # 300 cannot hold 256 and the reserve
