#!/usr/bin/env python3
"""Agent benchmark: the /ws server while a backup runs at full speed.

Runs the headless agent as its own process (``python -m desktop_agent
--headless``) on a fresh repository, on a data set kept between runs in
--workdir (about 2 GiB: incompressible files of 50-200 MiB and compressible
text), and measures from the outside, over real sockets:

``latency``
    ``agent:status`` round trips on one connection while another starts
    backups (``backup:start``) and follows them: count, p50, p99 and max of
    the time from sending the request to the matching reply, only counting
    requests sent and answered while a backup was running, for at least
    --min-load seconds (one more backup is started while that is not
    reached; a repeat re-reads touched files and stores nothing new, so
    it is other work than the first: both are reported apart). Also the
    backup throughput meanwhile and, for scale, the same latency on an
    idle agent.

``fanout``
    --clients healthy clients that read everything, plus one raw client that
    completes the WebSocket handshake with a small receive buffer and then
    never reads. A backup runs; every healthy client records every event
    with its arrival time. Reported: how many healthy clients saw every
    job's end (``backup:completed``/``backup:failed``), the largest gap
    between consecutive ``backup:progress`` events of a running job seen by
    any client, whether and when the agent disconnected the client that
    never reads (and what its kernel buffers held), and the agent's RSS
    (VmRSS every 100 ms) at start, peak and end. After the backup the run
    goes on, idle, until --observe seconds after the stuck client connected,
    so that the keepalive (ping every 20 s, 20 s timeout) has had its chance.
    ``--min-fanout 90 --observe 150`` keeps backups (and progress) going past that.

Figures are printed with their targets (ok / MISSED); nothing is asserted.

    .venv/bin/python bench/agent.py [--workdir DIR] [--quick] [--only latency|fanout]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fcntl
import json
import math
import os
import random
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from desktop_agent.protocol import BackupStart, StatusRequest, encode_command

PASSWORD = "bench-password"
MiB = 1024 * 1024
TERMINAL = ("backup:completed", "backup:failed")
TARGET_STATUS_P99_MS = 20.0
TARGET_PROGRESS_GAP_S = 2.0


# --------------------------------------------------------------------- data
def _text_table() -> bytes:
    """256 byte values onto letters, spaces and newlines with English-like skew."""
    weights = {
        " ": 40, "e": 24, "t": 18, "a": 16, "o": 15, "i": 14, "n": 14, "s": 13,
        "h": 12, "r": 12, "d": 9, "l": 8, "u": 6, "c": 6, "m": 5, "w": 5, "f": 4,
        "g": 4, "y": 4, "p": 4, "b": 3, "v": 2, "k": 2, "\n": 3, ",": 2, ".": 2,
        "x": 1, "j": 1, "q": 1, "z": 1,
    }  # fmt: skip
    table = "".join(ch * n for ch, n in weights.items())
    table = (table * 2)[:256]
    return table.encode()


def make_data(root: Path, total_mib: int) -> None:
    """70% incompressible files of 50-200 MiB, 30% text files of 20-80 MiB.

    Small runs (--quick) scale the file sizes down. Text is random bytes
    mapped onto a skewed alphabet: it compresses (about 0.6) and does not
    deduplicate.
    """
    rng = random.Random(7)
    scale = min(1.0, total_mib / 2048)
    table = _text_table()
    root.mkdir(parents=True)
    (root / "random").mkdir()
    (root / "text").mkdir()

    def write(path: Path, size: int, text: bool) -> None:
        with open(path, "wb") as fh:
            left = size
            while left:
                n = min(left, 8 * MiB)
                block = os.urandom(n)
                fh.write(block.translate(table) if text else block)
                left -= n

    budget = int(total_mib * 0.7) * MiB
    i = 0
    while budget > 0:
        size = min(budget, max(MiB, int(rng.randint(50, 200) * scale) * MiB))
        write(root / "random" / f"r{i}.bin", size, False)
        budget -= size
        i += 1
    budget = (total_mib - int(total_mib * 0.7)) * MiB
    i = 0
    while budget > 0:
        size = min(budget, max(MiB, int(rng.randint(20, 80) * scale) * MiB))
        write(root / "text" / f"t{i}.txt", size, True)
        budget -= size
        i += 1


def dataset(workdir: Path, mib: int) -> Path:
    root = workdir / "data" / f"agent-{mib}"
    marker = workdir / "data" / f"agent-{mib}.done"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    print(f"generating data set agent-{mib} ({mib} MiB) ...", flush=True)
    t = time.monotonic()
    make_data(root, mib)
    os.sync()
    marker.write_text("ok")
    print(f"  done in {time.monotonic() - t:.1f} s", flush=True)
    return root


def du(path: Path) -> int:
    return sum(
        os.lstat(os.path.join(d, f)).st_size for d, _dirs, files in os.walk(path) for f in files
    )


def touch_all(root: Path) -> None:
    """New mtimes: the next backup reads every file again (and deduplicates it)."""
    now = time.time_ns()
    for d, _dirs, files in os.walk(root):
        for f in files:
            os.utime(os.path.join(d, f), ns=(now, now))


# -------------------------------------------------------------- the agent
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_of(pid: int) -> int | None:
    """VmRSS of one process in bytes, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cpu_of(pid: int) -> float | None:
    """User + system CPU seconds of one process (all its threads), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class AgentProcess:
    """``desktop-agent --headless`` with its own config, fresh repository and log."""

    def __init__(self, workdir: Path, source: Path, tag: str, nofile: int | None) -> None:
        self.dir = workdir / f"agent-{tag}"
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "home").mkdir(parents=True)
        self.repo = self.dir / "repo"
        self.port = free_port()
        self.token = "bench-" + secrets.token_urlsafe(24)
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.headers = {"Authorization": f"Bearer {self.token}"}
        self.log_path = self.dir / "agent.log"
        self.config = self.dir / "config.toml"
        self.config.touch(mode=0o600)  # it holds the token
        self.config.write_text(
            f'[agent]\nlisten = "127.0.0.1:{self.port}"\ntoken = "{self.token}"\n'
            f'[repository]\npath = "{self.repo}"\npassword_file = ""\n'
            f'[backup]\nsources = ["{source}"]\nexclude = []\ninterval_minutes = 0\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
        env.update(DESKTOP_AGENT_PASSWORD=PASSWORD, HOME=str(self.dir / "home"))
        self.env = env
        self.nofile = nofile  # the agent's RLIMIT_NOFILE soft limit (the shell's default)
        self.proc: subprocess.Popen[bytes] | None = None

    def _cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "desktop_agent", "--config", str(self.config), *args]

    def start(self) -> None:
        r = subprocess.run(self._cmd("init"), env=self.env, capture_output=True, timeout=120)
        if r.returncode != 0:
            raise SystemExit(f"desktop-agent init failed:\n{r.stderr.decode(errors='replace')}")
        nofile = self.nofile

        def limits() -> None:
            if nofile is not None:
                hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

        log = open(self.log_path, "wb")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            self._cmd("--headless"),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=limits,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the agent exited ({self.proc.returncode}):\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"the agent did not listen on port {self.port} in 30 s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 60 s; the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_lines(self, pattern: str) -> list[tuple[float, str]]:
        """(wall-clock time, line) of agent log lines matching ``pattern``."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if re.search(pattern, line):
                m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})", line)
                t = float("nan")
                if m:
                    t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
                    t += int(m.group(2)) / 1000
                out.append((t, line))
        return out


@contextlib.contextmanager
def running_agent(
    workdir: Path, source: Path, tag: str, nofile: int | None = None
) -> Iterator[AgentProcess]:
    agent = AgentProcess(workdir, source, tag, nofile)
    agent.start()
    try:
        yield agent
    finally:
        t = time.monotonic()
        status = agent.stop()
        row(
            "agent shutdown after SIGTERM",
            f"{time.monotonic() - t:.1f} s",
            "",
            f"exit status {status}" + ("" if status == 0 else f"; log: {agent.log_path}"),
        )
        # the repository and the cache take gigabytes; the config and the log stay
        shutil.rmtree(agent.repo, ignore_errors=True)
        shutil.rmtree(agent.dir / "home", ignore_errors=True)


# ------------------------------------------------------------- statistics
def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def fmt_mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


def row(name: str, value: str, target: str = "", result: str = "") -> None:
    print(f"{name:<52}{value:>18}  {target:<10}{result}")


# ------------------------------------------------------ job bookkeeping
@dataclass
class JobSeen:
    """What one client saw of one job."""

    started: float
    first_progress: float | None = None
    last_bytes: int = 0
    ended: float | None = None
    outcome: str | None = None
    total_bytes: int = 0
    error: str | None = None
    progress: list[float] = field(default_factory=list)  # arrival times


class Follower:
    """Reads every event of one connection and keeps track of the jobs."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.jobs: dict[str, JobSeen] = {}
        self.order: list[str] = []
        self.changed = asyncio.Event()
        self.closed: str | None = None

    async def run(self) -> None:
        try:
            async for raw in self.ws:
                t = time.monotonic()
                msg = json.loads(raw)
                kind, p = msg["type"], msg["payload"]
                if kind == "backup:started":
                    self.jobs[p["job_id"]] = JobSeen(t)
                    self.order.append(p["job_id"])
                elif kind == "backup:progress":
                    job = self.jobs.get(p["job_id"])
                    if job is not None and job.ended is None:
                        if job.first_progress is None:
                            job.first_progress = t
                        job.progress.append(t)
                        job.last_bytes = p["transferred_bytes"]
                elif kind in TERMINAL:
                    job = self.jobs.get(p["job_id"])
                    if job is not None:
                        job.ended, job.outcome = t, kind
                        job.total_bytes = p.get("total_bytes", job.last_bytes)
                        job.error = p.get("error")
                self.changed.set()
        except ConnectionClosed as exc:
            self.closed = f"closed by the agent: {exc}"
        finally:
            if self.closed is None:
                self.closed = "closed"
            self.changed.set()

    def running(self) -> str | None:
        """The job that is running (has sent progress and not ended), if any."""
        for job_id, j in self.jobs.items():
            if j.first_progress is not None and j.ended is None:
                return job_id
        return None

    async def wait(self, cond: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return bool(cond())
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        return True


async def run_backups(
    ctl: Follower, source: Path, min_running: float, job_timeout: float, label: str
) -> list[str]:
    """Start backups one after another until they ran ``min_running`` seconds together."""
    ran = 0.0
    jobs: list[str] = []
    while True:
        n = len(ctl.order)
        if jobs:
            await asyncio.get_running_loop().run_in_executor(None, touch_all, source)
        await ctl.ws.send(encode_command(BackupStart()))
        if not await ctl.wait(lambda n=n: len(ctl.order) > n, 30):
            raise SystemExit(f"{label}: no backup:started within 30 s ({ctl.closed or 'open'})")
        job_id = ctl.order[n]
        jobs.append(job_id)
        job = ctl.jobs[job_id]
        if not await ctl.wait(lambda job=job: job.ended is not None, job_timeout):
            raise SystemExit(f"{label}: backup {job_id} did not end within {job_timeout:.0f} s")
        if job.outcome != "backup:completed":
            raise SystemExit(f"{label}: backup {job_id} failed: {job.error}")
        assert job.ended is not None
        ran += job.ended - (job.first_progress or job.started)
        print(
            f"  {label}: backup {len(jobs)} done, {fmt_mib(job.total_bytes)} in "
            f"{job.ended - job.started:.1f} s",
            flush=True,
        )
        if ran >= min_running:
            return jobs


def throughput_rows(ctl: Follower, jobs: list[str], sampler: Sampler) -> None:
    for i, job_id in enumerate(jobs):
        j = ctl.jobs[job_id]
        assert j.ended is not None
        secs = j.ended - j.started
        kind = "first, fresh repository" if i == 0 else "repeat, touched files re-read"
        cpus = (sampler.cpu_at(j.ended) - sampler.cpu_at(j.started)) / secs
        row(
            f"backup {i + 1} throughput ({kind})",
            f"{j.total_bytes / MiB / secs:.0f} MiB/s",
            "",
            f"{fmt_mib(j.total_bytes)} in {secs:.1f} s, agent used {cpus:.2f} CPUs",
        )


# ---------------------------------------------------------------- latency
async def status_prober(
    ws: ClientConnection, ctl: Follower, rate: float, stop: asyncio.Event, out: list[Any]
) -> None:
    """agent:status one after another (at most ``rate``/s).

    Appends (latency in s, the job that ran while the request was out or None,
    monotonic time sent).
    """
    request = encode_command(StatusRequest())
    interval = 1.0 / rate if rate > 0 else 0.0
    next_at = time.monotonic()
    while not stop.is_set():
        job = ctl.running()
        sent = time.monotonic()
        t0 = time.perf_counter()
        await ws.send(request)
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), 10)
            except TimeoutError:
                out.append((float("inf"), job, sent))
                break
            if json.loads(raw)["type"] == "agent:status":
                dt = time.perf_counter() - t0
                out.append((dt, job if ctl.running() == job else None, sent))
                break
        next_at = max(next_at + interval, time.monotonic())
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def latency_phase(agent: AgentProcess, source: Path, args: argparse.Namespace) -> None:
    sampler = Sampler(agent.pid)
    sampler.start()
    try:
        async with (
            connect(agent.url, additional_headers=agent.headers, open_timeout=30) as ctl_ws,
            connect(agent.url, additional_headers=agent.headers, open_timeout=30) as probe_ws,
        ):
            ctl = Follower(ctl_ws)
            reader = asyncio.create_task(ctl.run())
            idle: list[Any] = []
            stop = asyncio.Event()
            probe = asyncio.create_task(status_prober(probe_ws, ctl, args.status_rate, stop, idle))
            await asyncio.sleep(2.0)
            stop.set()
            await probe
            samples: list[Any] = []
            stop = asyncio.Event()
            probe = asyncio.create_task(
                status_prober(probe_ws, ctl, args.status_rate, stop, samples)
            )
            try:
                jobs = await run_backups(ctl, source, args.min_load, args.job_timeout, "latency")
            finally:
                stop.set()
                await asyncio.wait_for(probe, 15)
                reader.cancel()
    finally:
        sampler.stop_flag.set()
        sampler.join()
    idle_ms = [s[0] * 1000 for s in idle]
    under = sum(
        (ctl.jobs[j].ended or 0) - (ctl.jobs[j].first_progress or ctl.jobs[j].started) for j in jobs
    )
    rate = f"{args.status_rate:g}/s" if args.status_rate > 0 else "back to back"
    print(f"\n== agent:status round trip while a backup runs (requests {rate})")
    row(
        "time under load",
        f"{under:.1f} s",
        f">= {args.min_load:g} s",
        verdict(under >= args.min_load),
    )
    groups = [("all backups", set(jobs))]
    if len(jobs) > 1:
        groups += [("backup 1 (fresh)", {jobs[0]}), ("repeats (re-read)", set(jobs[1:]))]
    for label, which in groups:
        ms = [s * 1000 for s, job, _ in samples if job in which]
        timeouts = sum(1 for v in ms if math.isinf(v))
        p99 = pct(ms, 99)
        row(
            f"{label}: requests answered",
            f"{len(ms) - timeouts}",
            "",
            f"{timeouts} timed out (10 s)",
        )
        row(f"{label}: p50 / p90", f"{pct(ms, 50):.2f} / {pct(ms, 90):.2f} ms")
        row(
            f"{label}: p99",
            f"{p99:.2f} ms",
            f"<= {TARGET_STATUS_P99_MS:g} ms",
            verdict(p99 <= TARGET_STATUS_P99_MS),
        )
        row(f"{label}: max", f"{max(ms, default=float('nan')):.2f} ms")
    row(
        "idle agent, for scale: p50 / p99 / max",
        f"{pct(idle_ms, 50):.2f} / {pct(idle_ms, 99):.2f} / "
        f"{max(idle_ms, default=float('nan')):.2f} ms",
        "",
        f"{len(idle_ms)} requests",
    )
    slow = sorted((x for x in samples if x[1] is not None), key=lambda x: x[0], reverse=True)[:8]
    where = []
    for dt, job_id, sent in slow:
        j = ctl.jobs[job_id]
        end = j.ended or sent
        where.append(
            f"{dt * 1000:.0f} ms (backup {jobs.index(job_id) + 1}, "
            f"+{sent - j.started:.1f} s, end -{end - sent:.1f} s)"
        )
    print("  slowest under load (which backup, time since it started, time before its end):")
    for i in range(0, len(where), 3):
        print("    " + ";  ".join(where[i : i + 3]))
    throughput_rows(ctl, jobs, sampler)


# ----------------------------------------------------------------- fanout
TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
}  # fmt: skip


class StuckClient:
    """A WebSocket client that shakes hands and then never reads a byte."""

    def __init__(self, port: int, token: str) -> None:
        self.sock = socket.socket()
        # small before connect, so that the advertised window is small too
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:  # peek, then take exactly the response head
            head = self.sock.recv(65536, socket.MSG_PEEK)
            if not head:
                raise SystemExit("the stuck client's handshake got no answer")
            if b"\r\n\r\n" not in head:
                time.sleep(0.01)
        end = head.index(b"\r\n\r\n") + 4
        head = self.sock.recv(end)
        if not head.startswith(b"HTTP/1.1 101"):
            raise SystemExit(f"the stuck client's handshake failed: {head[:80]!r}")
        self.connected = time.monotonic()
        self.connected_wall = time.time()
        self.local_port = self.sock.getsockname()[1]
        self.server_port = port
        self.sock.setblocking(False)

    def state(self) -> str:
        info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        return TCP_STATES.get(info[0], str(info[0]))

    def unread(self) -> int:
        buf = bytearray(4)
        try:
            fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, buf)
        except OSError:
            return -1
        return int(struct.unpack("i", buf)[0])

    def server_side(self) -> tuple[str, int] | None:
        """(TCP state, bytes in the send queue) of the agent's end, from /proc/net/tcp."""
        want_local = f":{self.server_port:04X}"
        want_remote = f":{self.local_port:04X}"
        with open("/proc/net/tcp") as fh:
            next(fh)
            for line in fh:
                f = line.split()
                if f[1].endswith(want_local) and f[2].endswith(want_remote):
                    tx = int(f[4].split(":")[0], 16)
                    return TCP_STATES.get(int(f[3], 16), f[3]), tx
        return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Sampler(threading.Thread):
    """Every 100 ms: the agent's RSS and the stuck connection's state at both ends."""

    def __init__(self, pid: int, stuck: StuckClient | None = None) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.stuck = stuck
        self.rss: list[tuple[float, int]] = []
        self.cpu: list[tuple[float, float]] = []  # CPU seconds (user + system) of the agent
        self.stuck_log: list[tuple[float, str, int, str, int]] = []  # t, state, unread, srv, txq
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()

    def set_stuck(self, stuck: StuckClient) -> None:
        with self.lock:
            self.stuck = stuck

    def run(self) -> None:
        while not self.stop_flag.is_set():
            t = time.monotonic()
            r = rss_of(self.pid)
            if r is not None:
                self.rss.append((t, r))
            c = cpu_of(self.pid)
            if c is not None:
                self.cpu.append((t, c))
            with self.lock:
                stuck = self.stuck
            if stuck is not None:
                try:
                    srv = stuck.server_side()
                    entry = (
                        t,
                        stuck.state(),
                        stuck.unread(),
                        srv[0] if srv else "gone",
                        srv[1] if srv else 0,
                    )
                    self.stuck_log.append(entry)
                except OSError:
                    pass
            self.stop_flag.wait(0.1)

    def cpu_at(self, t: float) -> float:
        before = [c for ts, c in self.cpu if ts <= t]
        return before[-1] if before else (self.cpu[0][1] if self.cpu else 0.0)

    def rss_at(self, t: float) -> int:
        before = [r for ts, r in self.rss if ts <= t]
        return before[-1] if before else (self.rss[0][1] if self.rss else 0)


def raise_nofile(need: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < need:
            print(f"  warning: RLIMIT_NOFILE hard limit {hard} is below the {need} needed")
    return soft, hard


async def fanout_phase(
    agent: AgentProcess, source: Path, args: argparse.Namespace, sampler: Sampler
) -> None:
    await asyncio.sleep(0.5)
    t_begin = sampler.rss[0][0] if sampler.rss else time.monotonic()
    rss_idle = sampler.rss[-1][1] if sampler.rss else 0
    stuck = StuckClient(agent.port, agent.token)
    sampler.set_stuck(stuck)
    followers: list[Follower] = []
    readers: list[asyncio.Task[None]] = []
    t_conn = time.monotonic()

    async def one() -> Follower:
        ws = await connect(
            agent.url, additional_headers=agent.headers, open_timeout=60, max_queue=None
        )
        return Follower(ws)

    for start in range(0, args.clients, 50):  # the listen backlog is about 100
        batch = await asyncio.gather(*(one() for _ in range(min(50, args.clients - start))))
        for f in batch:
            followers.append(f)
            readers.append(asyncio.create_task(f.run()))
    t_connected = time.monotonic()
    print(
        f"  fanout: {len(followers)} clients + 1 that never reads connected in "
        f"{t_connected - t_conn:.1f} s",
        flush=True,
    )
    await asyncio.sleep(1.0)
    rss_connected = sampler.rss[-1][1] if sampler.rss else 0
    ctl = followers[0]
    t_backup = time.monotonic()
    own_cpu = resource.getrusage(resource.RUSAGE_SELF)
    jobs = await run_backups(ctl, source, args.min_fanout, args.job_timeout, "fanout")
    t_backup_end = time.monotonic()
    own = resource.getrusage(resource.RUSAGE_SELF)
    bench_cpus = (own.ru_utime + own.ru_stime - own_cpu.ru_utime - own_cpu.ru_stime) / (
        t_backup_end - t_backup
    )
    await asyncio.sleep(1.0)  # the end events reach everyone
    # idle until --observe seconds after the stuck client connected, or until the
    # agent has let go of it (only it can leave: the healthy clients stay)
    observe_until = stuck.connected + args.observe
    while time.monotonic() < observe_until:
        if agent.log_lines(r"disconnected \("):
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(0.3)  # one more sample of the stuck connection
    t_end = time.monotonic()
    t_end_wall = time.time()
    rss_before_close = sampler.rss[-1][1] if sampler.rss else 0
    for f in followers:
        await f.ws.close()
    await asyncio.gather(*readers, return_exceptions=True)
    stuck_final = sampler.stuck_log[-1] if sampler.stuck_log else None
    stuck.close()
    await asyncio.sleep(1.0)
    rss_after_close = sampler.rss[-1][1] if sampler.rss else 0

    # -------------------------------------------------------------- report
    n = len(followers)
    print(f"\n== {n} clients reading everything + 1 that never reads, during a backup")
    run_secs = sum(
        (ctl.jobs[j].ended or 0) - (ctl.jobs[j].first_progress or ctl.jobs[j].started) for j in jobs
    )
    row(
        "backup running (time with progress)",
        f"{run_secs:.1f} s",
        f">= {args.min_fanout:g} s",
        verdict(run_secs >= args.min_fanout),
    )
    all_ends = sum(
        1 for f in followers if all(j in f.jobs and f.jobs[j].outcome in TERMINAL for j in jobs)
    )
    row(
        f"healthy clients that saw the end of all {len(jobs)} job(s)",
        f"{all_ends} / {n}",
        f"= {n}",
        verdict(all_ends == n),
    )
    dropped = [f for f in followers if f.closed and "closed by the agent" in f.closed]
    row("healthy clients disconnected by the agent", f"{len(dropped)}", "= 0", verdict(not dropped))
    for f in dropped[:3]:
        print(f"    e.g. {f.closed}")
    max_gaps: list[float] = []
    counts: list[int] = []
    for f in followers:
        gaps = [0.0]
        count = 0
        for j in jobs:
            seen = f.jobs.get(j)
            if seen is None:
                continue
            ts = seen.progress
            count += len(ts)
            gaps.extend(b - a for a, b in zip(ts, ts[1:], strict=False))
        max_gaps.append(max(gaps))
        counts.append(count)
    worst = max(max_gaps, default=float("nan"))
    row(
        "largest gap between progress events, any client",
        f"{worst:.2f} s",
        f"<= {TARGET_PROGRESS_GAP_S:g} s",
        verdict(worst <= TARGET_PROGRESS_GAP_S),
    )
    row("per-client largest gap: p50 / p99", f"{pct(max_gaps, 50):.2f} / {pct(max_gaps, 99):.2f} s")
    row(
        "progress events per client: min / median / max",
        f"{min(counts)} / {statistics.median(counts):.0f} / {max(counts)}",
        "",
        f"{statistics.median(counts) / max(run_secs, 1e-9):.1f}/s median",
    )
    spreads = []
    for j in jobs:
        ends = [x for f in followers if j in f.jobs and (x := f.jobs[j].ended) is not None]
        if ends:
            spreads.append((max(ends) - min(ends)) * 1000)
    row(
        "end event: arrival spread over clients, max / median",
        f"{max(spreads, default=0):.0f} / {statistics.median(spreads or [0]):.0f} ms",
        "",
        f"over {len(spreads)} job(s)",
    )
    throughput_rows(ctl, jobs, sampler)
    row(
        "CPUs used by this benchmark's clients meanwhile",
        f"{bench_cpus:.2f}",
        "",
        f"of {os.cpu_count()}: they compete with the agent",
    )

    # the client that never reads
    print("  the client that never reads (SO_RCVBUF 4096, handshake then silence):")
    log = sampler.stuck_log
    since = stuck.connected
    peak_unread = max((e[2] for e in log), default=0)
    peak_txq = max((e[4] for e in log), default=0)
    full = next((e for e in log if e[4] > 0), None)
    row("  bytes waiting unread in its receive buffer (peak)", f"{peak_unread} B")
    row(
        "  bytes in the agent's kernel send queue (peak)",
        f"{peak_txq} B",
        "",
        f"first > 0 at +{full[0] - since:.1f} s" if full else "never backed up",
    )
    # the agent's end leaving ESTABLISHED: it closed or shut down the socket (a FIN
    # that cannot be delivered through a zero window leaves it in FIN_WAIT1)
    closed = next((e for e in log if e[3] != "ESTABLISHED"), None)
    drops = [
        (t, line)
        for t, line in agent.log_lines(r"dropped a client|disconnected \(")
        if stuck.connected_wall <= t <= t_end_wall
    ]
    queue_drop = [d for d in drops if "dropped a client" in d[1]]
    left = next((t for t, line in drops if "disconnected (" in line), None)
    if closed is not None:
        row(
            "  agent closed its end of the connection",
            f"+{closed[0] - since:.1f} s",
            "",
            f"agent's end {closed[3]}, client's end {closed[1]}",
        )
    if left is not None:
        secs = left - stuck.connected_wall
        if queue_drop:
            how = "by the queue limit (agent log: dropped a client that stopped reading)"
        elif 38 <= secs <= 53:
            how = "no queue overflow; fits keepalive 20 s + 20 s, close timeout 10 s"
        else:
            how = "no queue overflow (agent log: no 'dropped a client')"
        row("  agent dropped it from the fan-out (log)", f"+{secs:.1f} s", "", how)
        during = "DURING" if secs <= t_backup_end - since else "after the end of"
        print(
            f"    that was {during} the backups (they ran +{t_backup - since:.0f} .. "
            f"+{t_backup_end - since:.0f} s)"
        )
    else:
        row(
            "  agent dropped it from the fan-out (log)",
            "NEVER",
            "",
            f"within {t_end - since:.0f} s connected (backups ran +{t_backup - since:.0f} .. "
            f"+{t_backup_end - since:.0f} s)",
        )
    if stuck_final is not None:
        print(
            f"    at the end: client's end {stuck_final[1]}, agent's end {stuck_final[3]} with "
            f"{stuck_final[4]} B in its kernel send queue, {stuck_final[2]} B unread at the client"
        )
    pts = []
    next_t = since
    for e in log:
        if e[0] >= next_t:
            pts.append(f"+{e[0] - since:.0f}s:{e[4] / 1024:.0f}K/{e[3][:5]}")
            next_t = e[0] + 5
    print("    agent's kernel send queue / state every 5 s: " + "  ".join(pts))

    # memory
    print("  agent RSS (VmRSS every 100 ms):")
    rss = sampler.rss
    peak_t, peak = max(rss, key=lambda x: x[1]) if rss else (0.0, 0)
    mid = sampler.rss_at(t_backup + (t_backup_end - t_backup) / 2)
    at_end_of_backup = sampler.rss_at(t_backup_end)
    row("  idle, before any client", fmt_mib(rss_idle))
    row(f"  {n + 1} clients connected, before the backup", fmt_mib(rss_connected))
    row("  halfway through the backup", fmt_mib(mid))
    row("  end of the backup", fmt_mib(at_end_of_backup))
    row("  peak", fmt_mib(peak), "", f"at +{peak_t - t_begin:.1f} s")
    row("  end of the run, clients still connected", fmt_mib(rss_before_close))
    row("  after all clients closed", fmt_mib(rss_after_close))
    growth = at_end_of_backup - mid
    row(
        "  growth, second half of the backup",
        fmt_mib(growth),
        "bounded",
        "(looks bounded)" if growth < 32 * MiB else "(GROWS: look closer)",
    )
    print("  RSS timeline (s since sampling started: MiB):")
    step = max(1, len(rss) // 24)
    pts = [f"{t - t_begin:.0f}:{r / MiB:.0f}" for t, r in rss[::step]]
    print("    " + "  ".join(pts))


async def fanout_main(agent: AgentProcess, source: Path, args: argparse.Namespace) -> None:
    sampler = Sampler(agent.pid)
    sampler.start()
    try:
        await fanout_phase(agent, source, args, sampler)
    finally:
        sampler.stop_flag.set()
        sampler.join()


# ------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/desktop-agent-bench"))
    ap.add_argument("--data-mib", type=int, default=2048, help="size of the data set")
    ap.add_argument("--clients", type=int, default=500, help="healthy clients in fanout")
    ap.add_argument(
        "--status-rate",
        type=float,
        default=20.0,
        help="agent:status requests per second (0: back to back)",
    )
    ap.add_argument(
        "--min-load",
        type=float,
        default=10.0,
        help="latency: seconds of backup to measure under (more backups if needed)",
    )
    ap.add_argument(
        "--min-fanout",
        type=float,
        default=15.0,
        help="fanout: seconds of backup (more backups if needed)",
    )
    ap.add_argument(
        "--observe",
        type=float,
        default=60.0,
        help="fanout: keep going until this long after the stuck client connected",
    )
    ap.add_argument("--job-timeout", type=float, default=600.0)
    ap.add_argument("--only", choices=["latency", "fanout"])
    ap.add_argument(
        "--quick", action="store_true", help="sanity run: 256 MiB, 50 clients, short phases"
    )
    args = ap.parse_args()
    if args.quick:
        args.data_mib = min(args.data_mib, 256)
        args.clients = min(args.clients, 50)
        args.min_load = min(args.min_load, 3.0)
        args.min_fanout = min(args.min_fanout, 3.0)
        args.observe = min(args.observe, 5.0)
    args.workdir.mkdir(parents=True, exist_ok=True)
    source = dataset(args.workdir, args.data_mib)
    soft, _hard = raise_nofile(args.clients + 256)
    print(
        f"desktop-agent /ws benchmark; {os.cpu_count()} CPUs; workdir {args.workdir}; "
        f"data {fmt_mib(du(source))}; agent RLIMIT_NOFILE {soft}",
        flush=True,
    )
    if args.only in (None, "latency"):
        with running_agent(args.workdir, source, "latency", soft) as agent:
            asyncio.run(asyncio.wait_for(latency_phase(agent, source, args), args.job_timeout * 4))
    if args.only in (None, "fanout"):
        with running_agent(args.workdir, source, "fanout", soft) as agent:
            timeout = args.job_timeout * 4 + args.observe
            asyncio.run(asyncio.wait_for(fanout_main(agent, source, args), timeout))


if __name__ == "__main__":
    main()
