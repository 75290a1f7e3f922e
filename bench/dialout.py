#!/usr/bin/env python3
"""Dial-out benchmark: the agent's own connection out to a backup server, next to /ws.

``desktop-agent --headless`` runs as a process of its own with ``[server]
url`` pointing at the reference backup server (tests/refserver.py, in this
process, on 127.0.0.1; the token in ``DESKTOP_AGENT_SERVER_TOKEN``) and a
``/ws`` client (this process) on the agent's own port, so every event goes
out over both links at once. The data set is generated in a temporary
directory (under --workdir, removed at the end): a few large incompressible
files and a few thousand small files (half random, half text), ``--size``
MiB in all (1024; ``--quick`` 200). See docs/protocol.md ("The other
direction: the agent dials out").

1. *Backup over each link.* A backup started by the server over the
   outbound link (``backup:start`` sent by the RefServer) and one started by
   the ``/ws`` client, each by a fresh agent into a fresh repository, and
   ``restic backup`` (0.14, /usr/bin/restic) of the same data into a fresh
   repository: wall time (command sent -> ``backup:completed`` received on
   the link that sent it; restic: the CLI, its start and key derivation
   included), ratios ours/restic, the agent's CPU; and for each link the
   progress events it received, their bytes on the wire (frames: payload +
   header, + 4 mask bytes on the outbound link, where the agent is the
   client) and all bytes it received, and whether both links carried the
   same events.
2. *Command round trip.* ``agent:status`` request -> reply, ``--round-trips``
   (200) on each link, alternating, the agent idle: median / p90 / max.
3. *Reconnect.* The RefServer is stopped and started again on the same port
   1 s later, 5 times: restart -> the agent's ``agent:hello`` received, with
   the default backoff (base 1 s, doubling up to 300 s, full jitter; it is
   reset only by a connection that lasted 60 s, so it grows from cycle to
   cycle here, as it does on a flapping network). Then once more with a
   backup (of one small directory) started over ``/ws`` and ended while the
   server is down: is its ``backup:completed`` resent after the hello?
4. *Idle link.* Only the outbound link open (the ``/ws`` client gone),
   nothing running, for ``--idle`` seconds (30; ``--quick`` 15): the agent
   process's CPU seconds (its threads' ``schedstat``; its scheduler's 30 s tick
   included) and the bytes the link carried each way (the websockets
   keepalive pings, every 20 s from each side), per hour.

Prints tables; asserts nothing and is never run as a test. Needs restic.
About 4 minutes (``--quick``: about 3), most of it the reconnect waits,
which are random (the backoff's jitter).

    .venv/bin/python bench/dialout.py [--quick] [--size MIB] [--round-trips 200] [--idle 30]
    .venv/bin/python bench/dialout.py --quick --settle 61   # reconnects after stable links
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/refserver.py: the reference backup server

from refserver import RefServer  # type: ignore[import-not-found]  # noqa: E402

PASSWORD = "bench-password"
SERVER_TOKEN = "dialout-bench-server-" + secrets.token_hex(8)
RESTIC = "/usr/bin/restic"
MiB = 1024 * 1024
RECONNECTS = 5
DOWN = 1.0  # seconds the server is away in each reconnect cycle


# --------------------------------------------------------------------- data
def make_data(root: Path, total_mib: int, small_files: int) -> None:
    """90 % in incompressible files of up to 192 MiB; 10 % in ``small_files``
    files of 1 B to 2x their mean size, in directories of 100, half random
    and half text (as bench/laptop.py)."""
    rng = random.Random(3)
    small_bytes = total_mib * MiB // 10
    large = total_mib * MiB - small_bytes
    count = max(2, -(-large // (192 * MiB)))
    (root / "large").mkdir(parents=True)
    for i in range(count):
        size = large // count
        with open(root / "large" / f"r{i}.bin", "wb") as fh:
            while size:
                n = min(size, 16 * MiB)
                fh.write(os.urandom(n))
                size -= n
    words = [w.encode() for w in "the quick brown fox jumps over a lazy dog backup server".split()]
    mean = max(1, small_bytes // max(1, small_files))
    for i in range(small_files):
        d = root / "small" / f"d{i // 100:03}"
        if i % 100 == 0:
            d.mkdir(parents=True)
        size = rng.randint(1, 2 * mean)
        if i % 2:
            data = os.urandom(size)
        else:
            data = b" ".join(rng.choices(words, k=size // 4 + 1))[:size]
        (d / f"f{i:05}.txt").write_bytes(data)


def du(path: Path) -> int:
    return sum(
        os.lstat(os.path.join(d, f)).st_size for d, _dirs, files in os.walk(path) for f in files
    )


def fmt_bytes(n: float) -> str:
    if n >= MiB:
        return f"{n / MiB:.2f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n:.0f} B"


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_time(pid: int) -> float:
    """CPU seconds of the live threads of one process, in nanosecond steps
    (``/proc/<pid>/task/*/schedstat``; threads that ended are not in it)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


# ----------------------------------------------------- counting connections
@dataclass
class Msg:
    at: float  # time.perf_counter() when recv() returned it
    type: str
    payload: Any
    wire: int  # bytes of its frame: header (+ mask) + payload


@dataclass
class Tally:
    """What one end of one WebSocket connection received and sent."""

    masked: bool  # the frames it receives are masked (it is the server end)
    rx: int = 0  # TCP payload bytes received (frames, pings and pongs included)
    tx: int = 0  # ... and sent
    msgs: list[Msg] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        n = len(data)
        header = 2 if n < 126 else 4 if n < 65536 else 10
        try:
            message = json.loads(data)
            kind, payload = str(message.get("type")), message.get("payload")
        except (ValueError, AttributeError):
            kind, payload = "?", None
        self.msgs.append(Msg(time.perf_counter(), kind, payload, n + header + 4 * self.masked))
        self.changed.set()

    async def wait(
        self, pred: Callable[[Msg], bool], after: int = 0, timeout: float = 60.0, what: str = ""
    ) -> Msg:
        """The first message from index ``after`` on that ``pred`` accepts."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for m in self.msgs[after:]:
                        if pred(m):
                            return m
                    after = len(self.msgs)
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise SystemExit(
                f"gave up waiting for {what or 'a message'} after {timeout:.0f} s"
            ) from None


class _CountingTransport:
    """The connection's transport, counting what is written to it."""

    def __init__(self, transport: asyncio.Transport, tally: Tally) -> None:
        self._transport = transport
        self._tally = tally

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._tally.tx += len(data)
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CountingServerConnection(ServerConnection):
    tallies: list[Tally]  # set by the subclass a CountingRefServer makes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tally = Tally(masked=True)
        self.tallies.append(self.tally)
        super().connection_made(_CountingTransport(transport, self.tally))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.tally.rx += len(data)
        super().data_received(data)

    async def recv(self, decode: bool | None = None) -> Any:
        message = await super().recv(decode)
        self.tally.add(message)
        return message


class CountingClientConnection(ClientConnection):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tally = Tally(masked=False)
        super().connection_made(_CountingTransport(transport, self.tally))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.tally.rx += len(data)
        super().data_received(data)

    async def recv(self, decode: bool | None = None) -> Any:
        message = await super().recv(decode)
        self.tally.add(message)
        return message


class CountingRefServer(RefServer):  # type: ignore[misc]
    """The reference server, its connections counting bytes and messages
    (``tallies``: one per connection, in order)."""

    port: int

    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.tallies: list[Tally] = []
        self._conn_class = type(
            "Connection", (CountingServerConnection,), {"tallies": self.tallies}
        )

    async def start(self) -> None:
        # RefServer.start, with the counting connections
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._check,
            compression=None,
            max_size=64 * 1024,
            create_connection=self._conn_class,
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]


# ---------------------------------------------------------------- the agent
class AgentProcess:
    """``desktop-agent --headless`` with a fresh repository, dialling out to ``server_url``."""

    def __init__(self, work: Path, name: str, source: Path, server_url: str) -> None:
        self.dir = work / f"agent-{name}"
        (self.dir / "home").mkdir(parents=True)
        self.port = free_port()
        self.token = "bench-" + secrets.token_urlsafe(24)
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.config = self.dir / "config.toml"
        self.config.touch(mode=0o600)  # it holds the token
        self.config.write_text(
            f'[agent]\nlisten = "127.0.0.1:{self.port}"\ntoken = "{self.token}"\n'
            f'[repository]\npath = "{self.dir / "repo"}"\npassword_file = ""\n'
            f'[backup]\nsources = ["{source}"]\nexclude = []\ninterval_minutes = 0\n'
            "[upkeep]\ncheck_subsets = 0\n"
            f'[server]\nurl = "{server_url}"\n'
        )
        self.log = self.dir / "agent.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
        env.update(
            DESKTOP_AGENT_PASSWORD=PASSWORD,
            DESKTOP_AGENT_SERVER_TOKEN=SERVER_TOKEN,
            HOME=str(self.dir / "home"),
        )
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def _cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "desktop_agent", "--config", str(self.config), *args]

    async def start(self) -> str:
        """Init the repository, start the agent; its agent id."""
        r = subprocess.run(self._cmd("init"), env=self.env, capture_output=True, timeout=120)
        if r.returncode != 0:
            raise SystemExit(f"desktop-agent init failed: {r.stderr.decode(errors='replace')}")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self._cmd("--headless"),
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        id_file = self.dir / "config-agent-id"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the agent exited ({self.proc.returncode}); see {self.log}")
            if id_file.exists() and id_file.read_text().strip():
                return id_file.read_text().strip()
            await asyncio.sleep(0.05)
        raise SystemExit(f"no agent id in {id_file} after 30 s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def open_ws(self) -> tuple[CountingClientConnection, asyncio.Task[None]]:
        """A /ws client that reads everything (its tally records it)."""
        ws = await connect(
            self.url,
            additional_headers={"Authorization": f"Bearer {self.token}"},
            compression=None,
            open_timeout=30,
            create_connection=CountingClientConnection,
        )
        assert isinstance(ws, CountingClientConnection)

        async def read() -> None:
            async for _ in ws:
                pass

        return ws, asyncio.create_task(read())

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.to_thread(self.proc.wait, 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def close_ws(ws: ClientConnection, reader: asyncio.Task[None]) -> None:
    await ws.close()
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)


# ------------------------------------------------------------------ restic
@dataclass
class Run:
    wall: float
    cpu: float


def restic_backup(work: Path, source: Path) -> Run:
    """``restic backup`` into a fresh repository: wall and CPU seconds (wait4)."""
    repo = work / "repo-restic"
    env = dict(os.environ, RESTIC_PASSWORD=PASSWORD, RESTIC_CACHE_DIR=str(work / "restic-cache"))
    subprocess.run(
        [RESTIC, "-r", str(repo), "-q", "init"], env=env, check=True, stdout=subprocess.DEVNULL
    )
    os.sync()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [RESTIC, "-r", str(repo), "-q", "backup", str(source)], env=env, stdout=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"restic backup failed ({os.waitstatus_to_exitcode(status)})")
    return Run(wall, usage.ru_utime + usage.ru_stime)


def restic_version() -> str:
    out = subprocess.run([RESTIC, "version"], capture_output=True, text=True).stdout
    return " ".join(out.split()[:2]) or "restic (version unknown)"


# ------------------------------------------------------------ 1. backups
@dataclass
class LinkView:
    """One link's view of one backup job."""

    progress: int
    progress_wire: int
    rx: int  # all bytes received during the job (pings, status... included)
    others: list[str]  # the job's non-progress events, in order


@dataclass
class BackupResult:
    run: Run
    outbound: LinkView
    ws: LinkView
    total_bytes: int


def view(tally: Tally, start: int, rx0: int, job_id: str) -> LinkView:
    mine = [
        m
        for m in tally.msgs[start:]
        if isinstance(m.payload, dict) and m.payload.get("job_id") == job_id
    ]
    progress = [m for m in mine if m.type == "backup:progress"]
    return LinkView(
        len(progress),
        sum(m.wire for m in progress),
        tally.rx - rx0,
        [m.type for m in mine if m.type != "backup:progress"],
    )


async def backup_over(
    work: Path, name: str, source: Path, server: CountingRefServer, by_server: bool
) -> BackupResult:
    """A fresh agent's backup of ``source``, started over the outbound link or over /ws."""
    agent = AgentProcess(work, name, source, server.url)
    ident = await agent.start()
    try:
        record = await server.wait_agent(ident)
        out = server.tallies[-1]
        ws, reader = await agent.open_ws()
        try:
            await out.wait(lambda m: m.type == "agent:status", what="agent:status (outbound)")
            await ws.send(json.dumps({"type": "agent:status", "payload": None}))
            await ws.tally.wait(lambda m: m.type == "agent:status", what="agent:status (/ws)")
            os.sync()
            await asyncio.sleep(0.5)
            marks = (len(out.msgs), out.rx, len(ws.tally.msgs), ws.tally.rx)
            cpu0 = cpu_of(agent.pid)
            t0 = time.perf_counter()
            if by_server:
                await server.send(record.agent_id, "backup:start", {})
            else:
                await ws.send(json.dumps({"type": "backup:start", "payload": {}}))
            mine = out if by_server else ws.tally
            started = await mine.wait(
                lambda m: m.type == "backup:started", marks[0] if by_server else marks[2]
            )
            job = started.payload["job_id"]

            def ended(m: Msg) -> bool:
                return (
                    m.type in ("backup:completed", "backup:failed")
                    and m.payload.get("job_id") == job
                )

            done = await mine.wait(ended, timeout=3600, what="the backup's end")
            wall = done.at - t0
            cpu = cpu_of(agent.pid) - cpu0
            await (ws.tally if by_server else out).wait(ended, what="the end on the other link")
            if done.type != "backup:completed":
                raise SystemExit(f"the backup failed: {done.payload}")
            return BackupResult(
                Run(wall, cpu),
                view(out, marks[0], marks[1], job),
                view(ws.tally, marks[2], marks[3], job),
                int(done.payload["total_bytes"]),
            )
        finally:
            await close_ws(ws, reader)
    finally:
        await agent.stop()


def report_backups(
    out: BackupResult, ws: BackupResult, restic: Run, version: str, size: int
) -> None:
    print(f"\n== 1. backup of {fmt_bytes(size)} (a fresh repository each; both links open)")
    print(f"{'backup':<34}{'wall':>9}{'MiB/s':>7}{'ours/restic':>13}{'CPU':>9}{'CPU/restic':>12}")
    for name, r in (
        ("started by the server (outbound)", out.run),
        ("started by a /ws client", ws.run),
        (f"{version} backup", restic),
    ):
        print(
            f"{name:<34}{r.wall:>7.2f} s{size / MiB / r.wall:>7.0f}{r.wall / restic.wall:>13.2f}"
            f"{r.cpu:>7.2f} s{r.cpu / restic.cpu:>12.2f}"
        )
    print(f"outbound-started / ws-started wall: {out.run.wall / ws.run.wall:.3f}")
    print(
        f"\n{'events received (per job)':<34}{'link':<10}{'progress':>9}{'progress on wire':>18}"
        f"{'per event':>11}{'all bytes in':>14}  other events"
    )
    for name, res in (("started by the server", out), ("started by /ws", ws)):
        for link, v in (("outbound", res.outbound), ("/ws", res.ws)):
            per = v.progress_wire / v.progress if v.progress else 0.0
            print(
                f"{name:<34}{link:<10}{v.progress:>9}{fmt_bytes(v.progress_wire):>18}"
                f"{per:>9.0f} B{fmt_bytes(v.rx):>14}  {', '.join(v.others)}"
            )
            name = ""
        same = res.outbound.others == res.ws.others and res.outbound.progress == res.ws.progress
        print(f"{'':<34}same events on both links: {'yes' if same else 'NO'}")


# --------------------------------------------------------- 2. round trips
async def round_trips(
    server: CountingRefServer, ident: str, ws: CountingClientConnection, n: int
) -> tuple[list[float], list[float]]:
    """``agent:status`` round trips (seconds) over the outbound link and /ws, alternating."""
    request = json.dumps({"type": "agent:status", "payload": None})
    outbound: list[float] = []
    direct: list[float] = []
    for _ in range(3):  # warm-up, not counted
        await server.send(ident, "agent:status")
        await ws.send(request)
    await asyncio.sleep(0.5)
    for _ in range(n):
        out = server.tallies[-1]
        after = len(out.msgs)
        t0 = time.perf_counter()
        await server.send(ident, "agent:status")
        reply = await out.wait(lambda m: m.type == "agent:status", after, 10, "agent:status")
        outbound.append(reply.at - t0)
        after = len(ws.tally.msgs)
        t0 = time.perf_counter()
        await ws.send(request)
        reply = await ws.tally.wait(lambda m: m.type == "agent:status", after, 10, "agent:status")
        direct.append(reply.at - t0)
    return outbound, direct


def report_round_trips(outbound: list[float], direct: list[float]) -> None:
    print(f"\n== 2. agent:status round trip, the agent idle ({len(outbound)} on each link)")
    print(f"{'link':<12}{'median':>10}{'p90':>10}{'max':>10}")
    for name, values in (("outbound", outbound), ("/ws", direct)):
        ms = [v * 1000 for v in values]
        print(f"{name:<12}{statistics.median(ms):>7.3f} ms{pct(ms, 90):>7.3f} ms{max(ms):>7.3f} ms")
    ratio = statistics.median(outbound) / statistics.median(direct)
    print(f"outbound / ws median: {ratio:.2f}")


# ------------------------------------------------------------ 3. reconnect
@dataclass
class Cycle:
    to_hello: float  # server restarted -> agent:hello received
    attempts: int  # upgrade requests the restarted server saw up to the hello


@dataclass
class Resend:
    job_id: str
    down: float  # seconds the server was away
    to_hello: float
    resent: bool
    after_hello: float | None  # hello -> the resent backup:completed
    order: list[str]  # the first messages of the new connection
    others: int  # other terminal events resent (ended within 5 s before the drop)


async def reconnect_once(
    server: CountingRefServer, ident: str, connections: int, during: Callable[[], Any] | None
) -> tuple[float, float, int]:
    """Stop the server, (run ``during``,) start it again at least DOWN s later;
    (seconds down, restart -> hello, attempts)."""
    stopped = time.perf_counter()
    await server.stop()
    if during is not None:
        await during()
    await asyncio.sleep(max(0.0, stopped + DOWN - time.perf_counter()))
    attempts0 = server.attempts
    await server.start()
    restarted = time.perf_counter()
    await server.wait_agent(ident, connections=connections, timeout=900)
    hello = server.tallies[-1].msgs[0]
    if hello.type != "agent:hello":
        raise SystemExit(f"the first message after the reconnection was {hello.type}")
    return restarted - stopped, hello.at - restarted, server.attempts - attempts0


async def reconnects(
    server: CountingRefServer, ident: str, ws: CountingClientConnection, small: Path, settle: float
) -> tuple[list[Cycle], Resend]:
    record = server.agents[ident]
    cycles = []
    for _ in range(RECONNECTS):
        await asyncio.sleep(settle)
        _down, wait, attempts = await reconnect_once(server, ident, record.connections + 1, None)
        cycles.append(Cycle(wait, attempts))
        print(f"  reconnected after {wait:.2f} s", flush=True)
    job: dict[str, str] = {}

    async def backup_while_down() -> None:
        after = len(ws.tally.msgs)
        command = {"type": "backup:start", "payload": {"paths": [str(small)]}}
        await ws.send(json.dumps(command))
        started = await ws.tally.wait(lambda m: m.type == "backup:started", after)
        job["id"] = started.payload["job_id"]
        await ws.tally.wait(
            lambda m: m.type == "backup:completed" and m.payload["job_id"] == job["id"], after
        )

    await asyncio.sleep(settle)
    down, wait, _ = await reconnect_once(server, ident, record.connections + 1, backup_while_down)
    link = server.tallies[-1]
    hello = link.msgs[0]
    try:
        resent = await link.wait(
            lambda m: m.type == "backup:completed" and m.payload.get("job_id") == job["id"],
            timeout=10,
        )
    except SystemExit:
        resent = None
    await asyncio.sleep(0.5)
    terminal = [
        m for m in link.msgs if m.type in ("backup:completed", "backup:failed") and m is not resent
    ]
    return cycles, Resend(
        job["id"],
        down,
        wait,
        resent is not None,
        resent.at - hello.at if resent is not None else None,
        [m.type for m in link.msgs[:4]],
        len(terminal),
    )


def report_reconnects(cycles: list[Cycle], resend: Resend, settle: float) -> None:
    print(
        f"\n== 3. reconnect: the server away {DOWN:.0f} s, then on the same port again "
        "(backoff base 1 s, cap 300 s, full jitter)"
    )
    print(f"{'cycle':>5}{'restart -> agent:hello':>25}{'upgrade requests':>19}")
    for i, c in enumerate(cycles, 1):
        print(f"{i:>5}{c.to_hello:>23.3f} s{c.attempts:>19}")
    waits = [c.to_hello for c in cycles]
    why = (
        "each cycle after a connection of >= 60 s: the backoff starts from 1 s"
        if settle >= 60
        else "the backoff grows over the cycles: each connection lasted < 60 s"
    )
    print(f"median {statistics.median(waits):.3f} s, max {max(waits):.3f} s ({why})")
    when = f"{resend.after_hello * 1000:.1f} ms after the hello" if resend.after_hello else ""
    print(
        f"a backup that ended while the server was away ({resend.down:.1f} s): "
        f"restart -> hello {resend.to_hello:.3f} s; its backup:completed resent: "
        f"{'yes' if resend.resent else 'NO'} {when}"
    )
    print(
        f"  first messages of the new connection: {', '.join(resend.order)}; "
        f"other terminal events resent: {resend.others}"
    )


# ------------------------------------------------------------------ 4. idle
@dataclass
class Idle:
    seconds: float
    cpu: float
    rx: int  # bytes the server received (from the agent)
    tx: int  # bytes the server sent
    messages: int


async def idle(server: CountingRefServer, pid: int, seconds: float) -> Idle:
    await asyncio.sleep(2.0)  # settled
    link = server.tallies[-1]
    rx0, tx0, n0 = link.rx, link.tx, len(link.msgs)
    cpu0, t0 = run_time(pid), time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    return Idle(elapsed, run_time(pid) - cpu0, link.rx - rx0, link.tx - tx0, len(link.msgs) - n0)


def report_idle(i: Idle) -> None:
    per_hour = 3600 / i.seconds
    print(f"\n== 4. idle outbound link ({i.seconds:.0f} s, no /ws client, nothing running)")
    print(
        f"{'agent CPU (all threads)':<26}{i.cpu:>8.4f} s  -> {i.cpu * per_hour:7.2f} s per hour"
        f" ({i.cpu / i.seconds * 100:.3f} % of one core)"
    )
    print(f"{'bytes agent -> server':<26}{i.rx:>8} B  -> {fmt_bytes(i.rx * per_hour)} per hour")
    print(f"{'bytes server -> agent':<26}{i.tx:>8} B  -> {fmt_bytes(i.tx * per_hour)} per hour")
    print(f"{'messages from the agent':<26}{i.messages:>8}")
    print(
        "  (each side pings every 20 s: the window holds a whole number of pings and pongs,"
        " so the per-hour bytes are rough)"
    )


# --------------------------------------------------------------------- main
async def dialout(args: argparse.Namespace, work: Path, source: Path) -> None:
    size = du(source)
    print("restic backup ...", flush=True)
    os.sync()
    restic = restic_backup(work, source)
    print(f"  {restic.wall:.2f} s", flush=True)
    server = CountingRefServer(SERVER_TOKEN)
    await server.start()
    try:
        print("desktop-agent, backup started by the server ...", flush=True)
        out = await backup_over(work, "outbound", source, server, by_server=True)
        print(f"  {out.run.wall:.2f} s", flush=True)
        print("desktop-agent, backup started over /ws ...", flush=True)
        ws_run = await backup_over(work, "ws", source, server, by_server=False)
        print(f"  {ws_run.run.wall:.2f} s", flush=True)
        report_backups(out, ws_run, restic, restic_version(), size)

        agent = AgentProcess(work, "link", source, server.url)
        ident = await agent.start()
        try:
            await server.wait_agent(ident)
            ws, reader = await agent.open_ws()
            try:
                print(f"\nround trips ({args.round_trips} on each link) ...", flush=True)
                outbound, direct = await round_trips(server, ident, ws, args.round_trips)
                report_round_trips(outbound, direct)
                print(f"\nreconnects ({RECONNECTS} + 1 with a backup) ...", flush=True)
                cycles, resend = await reconnects(
                    server, ident, ws, source / "small" / "d000", args.settle
                )
                report_reconnects(cycles, resend, args.settle)
            finally:
                await close_ws(ws, reader)
            print(f"\nidle link for {args.idle:.0f} s ...", flush=True)
            report_idle(await idle(server, agent.pid, args.idle))
        finally:
            await agent.stop()
    finally:
        await server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        default=Path("/var/tmp"),
        help="where the temporary directory goes (default /var/tmp)",
    )
    ap.add_argument("--quick", action="store_true", help="200 MiB, 15 s idle")
    ap.add_argument("--size", type=int, help="MiB of data (default 1024, --quick 200)")
    ap.add_argument("--small-files", type=int, default=3000)
    ap.add_argument("--round-trips", type=int, default=200)
    ap.add_argument("--idle", type=float, help="seconds of idle link (default 30, --quick 15)")
    ap.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds the link stays up before each reconnect cycle (61: the backoff is reset)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if args.size is None:
        args.size = 200 if args.quick else 1024
    if args.idle is None:
        args.idle = 15.0 if args.quick else 30.0
    if not os.path.exists(RESTIC):
        raise SystemExit(f"{RESTIC} is missing (apt-get install restic)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="desktop-agent-dialout-", dir=args.workdir))
    try:
        print(f"{restic_version()}; {os.cpu_count()} CPUs; workdir {work}", flush=True)
        source = work / "data"
        t = time.monotonic()
        make_data(source, args.size, args.small_files)
        os.sync()
        print(
            f"data: {fmt_bytes(du(source))} ({args.small_files} small files of "
            f"{fmt_bytes(du(source / 'small'))} in all), made in {time.monotonic() - t:.1f} s",
            flush=True,
        )
        asyncio.run(dialout(args, work, source))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
