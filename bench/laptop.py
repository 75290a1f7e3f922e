#!/usr/bin/env python3
"""Laptop benchmark: sleep readiness, the cost of sleeping, idle cost, catch-up.

The whole agent (:class:`desktop_agent.app.Agent`: controller, /ws server,
scheduler, and the D-Bus condition providers) runs against fake UPower,
NetworkManager and logind services (tests/dbusfakes.py) on a private
``dbus-daemon`` started here. The data set is generated in a temporary
directory (under --workdir, removed at the end): a few large incompressible
files and a few thousand small files (half random, half text), ``--size``
MiB in all (1024; ``--quick`` 200).

1. *Sleep readiness.* A scheduled backup runs on a fresh repository; at
   ``--sleeps`` random moments of it (seeded) the fake logind sends
   ``PrepareForSleep(true)``, and ``PrepareForSleep(false)`` ``--asleep``
   seconds (0.5) after the job paused and the lock was released. Printed:
   the time from the signal to the release of the delay inhibitor lock (the
   fake logind sees its fd closed), median / p90 / max, against logind's
   default budget ``InhibitDelayMaxSec`` = 5 s; whether the job was PAUSED
   when the lock was released (its ``running -> paused`` transition came
   between the signal and the release: after the release a real machine
   sleeps at once); signal -> paused; the index files written between the
   signal and the pause; wake -> running again. Nothing freezes this
   process: a job not yet paused at the release works on until it pauses.
2. *Cost of interruption.* The wall time of that backup (from running to
   completed, minus the time "asleep": from the later of the pause and the
   release to the wake signal) and its repository size, next to the same
   scheduled backup without sleeps and to ``restic backup`` (0.14,
   /usr/bin/restic) of the same data, each into a fresh repository, as
   ratios; then ``restic check --read-data`` of the repository with sleeps.
   desktop-agent's backups run inside the agent in this process (as
   scheduled backups do); restic's is its CLI (its start and key
   derivation, about 0.5 s, are in its time).
3. *Idle cost.* A headless agent (providers on the private bus, default
   scheduler tick of 30 s, upkeep off) right after a backup, nothing due
   (interval 60 min), in a child process of its own for ``--idle`` seconds
   (60; ``--quick`` 30): its CPU seconds (``time.process_time``), scheduler
   ticks and voluntary context switches (``getrusage``), per hour.
4. *Catch-up after sleep.* The agent with simulated scheduler clocks on a
   small unchanged source: after a first backup, sleep (logind signals and a
   wall clock 5 hours later, the monotonic clock unmoved), then 2 simulated
   hours driven like the scheduler's timer (a tick at the decision's recheck
   time or every 30 s) with real backups: exactly 1 catch-up
   (``wake_delay_seconds`` = 60 after the wake), then hourly (plus the
   random delay of up to 5 min).

Prints a table with the targets (ok / MISSED); asserts nothing and is never
run as a test. Needs ``dbus-daemon`` and restic. About 100 s on 2 cores
(``--quick``: about 50 s), most of it the idle phase.

    .venv/bin/python bench/laptop.py [--quick] [--size MIB] [--sleeps 10] [--idle 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/dbusfakes.py: the fake services and the bus
sys.path.insert(0, str(ROOT))

from dbusfakes import (  # type: ignore[import-not-found]  # noqa: E402
    FakeLogind,
    FakeNetworkManager,
    FakeUPower,
    Lock,
    private_bus,
    running,
)

from desktop_agent.app import Agent  # noqa: E402
from desktop_agent.config import (  # noqa: E402
    AgentConfig,
    BackupConfig,
    Config,
    RepositoryConfig,
    ScheduleConfig,
    UpkeepConfig,
)
from desktop_agent.engine.repository import Repository  # noqa: E402
from desktop_agent.engine.storage import LocalStorage  # noqa: E402
from desktop_agent.jobs import JobController  # noqa: E402
from desktop_agent.jobs.bus import BusEvent, JobChanged  # noqa: E402
from desktop_agent.jobs.conditions import ConditionHub  # noqa: E402
from desktop_agent.jobs.schedule import Decision  # noqa: E402
from desktop_agent.jobs.scheduler import Scheduler  # noqa: E402
from desktop_agent.jobs.spec import JobKind  # noqa: E402
from desktop_agent.jobs.state import TERMINAL, JobState  # noqa: E402

PASSWORD = "bench-password"
TOKEN = "laptop-bench-token-0123456789"
RESTIC = "/usr/bin/restic"
MiB = 1024 * 1024
LOGIND_BUDGET = 5.0  # InhibitDelayMaxSec's default
SIM_TICK = 30.0  # the scheduler's default tick_every
SLEEP_HOURS = 5
AFTER_HOURS = 2


# --------------------------------------------------------------------- data
def make_data(root: Path, total_mib: int, small_files: int) -> None:
    """90 % in incompressible files of up to 192 MiB; 10 % in ``small_files``
    files of 1 B to 2x their mean size, in directories of 100, half random
    and half text."""
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
    words = [w.encode() for w in "the quick brown fox jumps over a lazy dog laptop sleep".split()]
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
    """Bytes in the files under ``path``."""
    return sum(
        os.lstat(os.path.join(d, f)).st_size for d, _dirs, files in os.walk(path) for f in files
    )


def index_files(repo: Path) -> int:
    return len(os.listdir(repo / "index"))


def fmt_mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


# ---------------------------------------------------------------- the agent
def make_config(
    work: Path, name: str, repo: Path, source: Path, schedule: ScheduleConfig | None = None
) -> Config:
    """A configuration of its own (and so a schedule state file of its own)."""
    return Config(
        agent=AgentConfig(token=TOKEN),
        repository=RepositoryConfig(path=str(repo), password_file=None),
        backup=BackupConfig(sources=(str(source),), exclude=(), interval_minutes=60),
        path=work / f"{name}.toml",
        schedule=schedule or ScheduleConfig(),
        upkeep=UpkeepConfig(check_subsets=0),  # no scheduled check after the backups
    )


def fresh_repository(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    Repository.init(LocalStorage(path), PASSWORD)  # restic's baseline key derivation


class Services:
    """The fake system services on the private bus."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.upower = FakeUPower(address, on_battery=False, percent=90.0)
        self.nm = FakeNetworkManager(address, state=70, metered=2)  # up, not metered
        self.logind = FakeLogind(address)

    def all(self) -> tuple[FakeUPower, FakeNetworkManager, FakeLogind]:
        return self.upower, self.nm, self.logind


@dataclass
class Transition:
    at: float  # time.monotonic()
    old: JobState | None
    new: JobState


@dataclass
class BackupWatch:
    """The state changes of the backup jobs, as the agent's event bus tells them."""

    clock: Callable[[], float] = time.monotonic
    changes: list[Transition] = field(default_factory=list)
    started: list[float] = field(default_factory=list)  # clock() at queued -> running
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    final: JobState | None = None

    def __call__(self, event: BusEvent) -> None:
        if not isinstance(event, JobChanged) or event.kind is not JobKind.BACKUP:
            return
        now = time.monotonic()
        self.changes.append(Transition(now, event.old, event.new))
        if event.old is JobState.QUEUED and event.new is JobState.RUNNING:
            self.started.append(self.clock())
            self.ended.clear()
        if event.new in TERMINAL:
            self.final = event.new
            self.ended.set()

    def until(self, old: JobState, new: JobState, after: float) -> Callable[[], bool]:
        """A condition: the job ended, or changed from ``old`` to ``new`` after ``after``."""
        return lambda: self.ended.is_set() or self.first(old, new, after) is not None

    def first(self, old: JobState, new: JobState, after: float) -> float | None:
        for t in self.changes:
            if t.old is old and t.new is new and t.at >= after:
                return t.at
        return None


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what} after {timeout:.0f} s")
        await asyncio.sleep(0.002)


async def stop_agent(agent: Agent) -> None:
    """Stop the agent, not in the same loop step as a job's end.

    On Python 3.11 ``asyncio.wait_for`` swallows a cancel that arrives while
    the awaited future completes: the scheduler's timer (``Scheduler._run``)
    then goes on waiting for a poke, and ``Scheduler.stop`` never returns,
    when it is stopped right after a job ended (which pokes it).
    """
    await asyncio.sleep(0.2)
    try:
        await asyncio.wait_for(agent.stop(), 120)
    except TimeoutError:
        raise SystemExit("the agent did not stop within 120 s") from None


@dataclass
class Cycle:
    """One sleep/wake cycle during the backup."""

    at: float  # seconds of backup (asleep time excluded) when the signal was sent
    ready: float  # signal -> delay lock released
    paused: float | None  # signal -> job paused (None: not within 5 s after the release)
    paused_at_release: bool  # the job was paused when the lock was released
    indexes: int  # index files written between the signal and the pause (or release)
    resumed: float | None  # wake signal -> job running again


@dataclass
class BackupRun:
    wall: float  # running -> completed, asleep time excluded
    asleep: float
    size: int
    indexes: int
    cycles: list[Cycle]
    final: JobState | None


async def scheduled_backup(
    work: Path, name: str, source: Path, services: Services, moments: list[float], asleep: float
) -> BackupRun:
    """The agent's first scheduled backup into a fresh repository, with a sleep
    and a wake at each of ``moments`` (seconds of backup, asleep time excluded)."""
    repo = work / f"repo-{name}"
    fresh_repository(repo)
    os.sync()
    logind = services.logind
    agent = Agent(
        make_config(work, name, repo, source),
        host="127.0.0.1",
        port=0,
        system_bus=services.address,
    )
    watch = BackupWatch()
    agent.bus.subscribe(watch)
    await agent.start()
    cycles: list[Cycle] = []
    asleep_total = 0.0
    naps: list[tuple[float, float]] = []  # (asleep since, wake sent)
    try:
        # no backup yet: the scheduler starts one at once
        await wait_for(lambda: bool(watch.started), 60, "the scheduled backup to start")
        t0 = watch.first(JobState.QUEUED, JobState.RUNNING, 0.0) or time.monotonic()
        for moment in moments:
            delay = t0 + asleep_total + moment - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            # the job runs (again, after the last wake): the agent holds a delay lock
            await wait_for(
                lambda: watch.ended.is_set() or any(lk.mode == "delay" for lk in logind.held()),
                30,
                "a delay inhibitor lock",
            )
            if watch.ended.is_set():
                break
            lock: Lock = next(lk for lk in logind.held() if lk.mode == "delay")
            before = index_files(repo)
            sent = logind.prepare_for_sleep(True)
            if not await asyncio.to_thread(lock.released.wait, 30) or lock.released_at is None:
                raise SystemExit("the agent did not release its delay lock within 30 s")
            released = lock.released_at
            # the pause may come after the release: wait for it (a few seconds at most)
            try:
                await wait_for(
                    watch.until(JobState.RUNNING, JobState.PAUSED, sent),
                    5,
                    "the pause",
                )
            except SystemExit:
                pass
            paused_at = watch.first(JobState.RUNNING, JobState.PAUSED, sent)
            written = index_files(repo) - before
            at = sent - t0 - asleep_total
            # the machine sleeps; the job's time stands still from when it is
            # paused and the lock is released (it works on until the pause)
            since = max(released, paused_at) if paused_at is not None else None
            await asyncio.sleep(asleep)
            woke = logind.prepare_for_sleep(False)
            if since is not None:
                asleep_total += max(0.0, woke - since)
                naps.append((since, woke))
            resumed = None
            if paused_at is not None:
                await wait_for(
                    watch.until(JobState.PAUSED, JobState.RUNNING, woke),
                    30,
                    "the backup to resume after the wake",
                )
                back = watch.first(JobState.PAUSED, JobState.RUNNING, woke)
                resumed = back - woke if back is not None else None
            cycles.append(
                Cycle(
                    at,
                    released - sent,
                    paused_at - sent if paused_at is not None else None,
                    paused_at is not None and paused_at <= released,
                    written,
                    resumed,
                )
            )
        await asyncio.wait_for(watch.ended.wait(), 3600)
        t1 = watch.changes[-1].at
    finally:
        await stop_agent(agent)
    asleep_total = sum(max(0.0, min(b, t1) - a) for a, b in naps)
    return BackupRun(
        t1 - t0 - asleep_total, asleep_total, du(repo), index_files(repo), cycles, watch.final
    )


# ------------------------------------------------------------------- restic
def restic_env(work: Path) -> dict[str, str]:
    return dict(os.environ, RESTIC_PASSWORD=PASSWORD, RESTIC_CACHE_DIR=str(work / "restic-cache"))


def restic_backup(work: Path, source: Path) -> tuple[float, int]:
    """Wall seconds of ``restic backup`` into a fresh repository, and its size."""
    repo = work / "repo-restic"
    env = restic_env(work)
    quiet = {"env": env, "check": True, "stdout": subprocess.DEVNULL}
    subprocess.run([RESTIC, "-r", str(repo), "-q", "init"], **quiet)  # type: ignore[call-overload]
    os.sync()
    start = time.perf_counter()
    subprocess.run([RESTIC, "-r", str(repo), "-q", "backup", str(source)], **quiet)  # type: ignore[call-overload]
    wall = time.perf_counter() - start
    return wall, du(repo)


def restic_version() -> str:
    out = subprocess.run([RESTIC, "version"], capture_output=True, text=True).stdout
    return " ".join(out.split()[:2]) or "restic (version unknown)"


def restic_check(work: Path, repo: Path) -> tuple[bool, list[str]]:
    """``restic check --read-data``: clean or not, and what it printed."""
    proc = subprocess.run(
        [RESTIC, "-r", str(repo), "--no-cache", "check", "--read-data"],
        env=restic_env(work),
        capture_output=True,
        text=True,
    )
    lines = [line.split("\r")[-1].rstrip() for line in (proc.stdout + proc.stderr).splitlines()]
    return proc.returncode == 0, [line for line in lines if line.strip()]


# --------------------------------------------------------------------- idle
class CountingScheduler(Scheduler):
    """The default scheduler, counting its steps."""

    ticks = 0

    def tick(self) -> Decision:
        CountingScheduler.ticks += 1
        return super().tick()


async def idle_measure(
    work: Path, source: Path, repo: Path, bus: str, seconds: float
) -> dict[str, Any]:
    """In the child process: the headless agent, idle for ``seconds``."""
    agent = Agent(
        make_config(work, "idle", repo, source),
        host="127.0.0.1",
        port=0,
        system_bus=bus,
        scheduler=CountingScheduler,
    )
    await agent.start()
    try:
        sched = agent.scheduler
        assert sched is not None
        await wait_for(
            lambda: (
                sched.history.last_success is not None and sched.status().next_backup is not None
            ),
            60,
            "the scheduler to learn the last backup",
        )
        await asyncio.sleep(2.0)  # settled
        providers = [
            str(getattr(p, "service_label", type(p).__name__))
            for p in (agent.providers.parts if agent.providers else ())
        ]
        ticks0, cpu0 = CountingScheduler.ticks, time.process_time()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        ticks = CountingScheduler.ticks - ticks0
        status = sched.status()
        rss = 0
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
        return {
            "elapsed": elapsed,
            "cpu": cpu,
            "ticks": ticks,
            "voluntary": ru1.ru_nvcsw - ru0.ru_nvcsw,
            "involuntary": ru1.ru_nivcsw - ru0.ru_nivcsw,
            "rss": rss,
            "providers": providers,
            "tick_every": sched.tick_every,
            "reason": status.reason,
            "jobs": agent.controller.status().active_jobs,
        }
    finally:
        await stop_agent(agent)


def idle_child(args: argparse.Namespace) -> None:
    result = asyncio.run(
        idle_measure(args.workdir, Path(args.source), Path(args.repo), args.bus, args.idle)
    )
    print(json.dumps(result))


def idle_cost(work: Path, source: Path, repo: Path, bus: str, seconds: float) -> dict[str, Any]:
    """The idle agent in a process of its own (none of this process's work counts)."""
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--idle-child",
            "--workdir",
            str(work),
            "--source",
            str(source),
            "--repo",
            str(repo),
            "--bus",
            bus,
            "--idle",
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# ----------------------------------------------------------------- catch-up
class SimClock:
    """The scheduler's clocks: real time plus simulated time."""

    def __init__(self) -> None:
        self.wall_offset = 0.0
        self.mono_offset = 0.0

    def wall(self) -> float:
        return time.time() + self.wall_offset

    def mono(self) -> float:
        return time.monotonic() + self.mono_offset

    def awake(self, seconds: float) -> None:
        self.wall_offset += seconds
        self.mono_offset += seconds

    def asleep(self, seconds: float) -> None:
        self.wall_offset += seconds  # the monotonic clock stands still during suspend


@dataclass
class CatchUp:
    before: int  # scheduled runs before the sleep (the first backup)
    runs: list[float]  # simulated start times of the runs after the wake, minus the wake
    ticks: int  # scheduler steps in the simulated hours after the wake
    logind_wake: bool  # the scheduler heard the wake from logind (not only the clock)
    random_delay: int
    wake_delay: int
    final: JobState | None


async def drive(agent: Agent, clock: SimClock, seconds: float) -> int:
    """``seconds`` of simulated awake time, stepped like the scheduler's timer:
    a tick at the decision's recheck time, at least every 30 s; a backup that
    starts runs to its end (in real time) before simulated time goes on.
    Returns the number of ticks."""
    sched = agent.scheduler
    assert sched is not None
    end = clock.wall() + seconds
    ticks = 0
    while True:
        decision = sched.tick()
        ticks += 1
        if agent.controller.status().active_jobs:
            await wait_for(lambda: not agent.controller.status().active_jobs, 300, "the backup")
            continue  # a job end makes the scheduler look again at once
        now = clock.wall()
        step = SIM_TICK
        if decision.recheck is not None:
            step = max(1.0, min(step, decision.recheck - now))
        if now + step > end:
            clock.awake(max(0.0, end - now))
            return ticks
        clock.awake(step)


async def catch_up(work: Path, services: Services) -> CatchUp:
    source = work / "catchup-src"
    rng = random.Random(4)
    for i in range(200):
        path = source / f"d{i // 50}" / f"note{i:03}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(100, 8192)))
    repo = work / "repo-catchup"
    fresh_repository(repo)
    schedule = ScheduleConfig()  # wake_delay_seconds 60, random_delay_minutes 5
    clock = SimClock()

    def scheduler(controller: JobController, hub: ConditionHub) -> Scheduler:
        # its own timer never fires during the run: drive() steps it
        return Scheduler(
            controller, hub, wall_clock=clock.wall, monotonic=clock.mono, tick_every=3600
        )

    agent = Agent(
        make_config(work, "catchup", repo, source, schedule),
        host="127.0.0.1",
        port=0,
        system_bus=services.address,
        scheduler=scheduler,
    )
    watch = BackupWatch(clock=clock.wall)
    agent.bus.subscribe(watch)
    await agent.start()
    try:
        sched = agent.scheduler
        assert sched is not None
        await wait_for(lambda: bool(watch.started), 60, "the first scheduled backup")
        await asyncio.wait_for(watch.ended.wait(), 300)
        await drive(agent, clock, 20 * 60)  # the laptop in use for 20 minutes
        before = len(watch.started)
        services.logind.prepare_for_sleep(True)
        await asyncio.sleep(0.2)
        clock.asleep(SLEEP_HOURS * 3600)
        wake = clock.wall()
        services.logind.prepare_for_sleep(False)
        heard = True
        try:
            await wait_for(lambda: "woke up" in sched.status().reason, 10, "the wake")
        except SystemExit:
            heard = False
        ticks = await drive(agent, clock, AFTER_HOURS * 3600)
        runs = [t - wake for t in watch.started if t >= wake]
    finally:
        await stop_agent(agent)
    return CatchUp(
        before,
        runs,
        ticks,
        heard,
        schedule.random_delay_minutes,
        schedule.wake_delay_seconds,
        watch.final,
    )


# ------------------------------------------------------------------- report
def spread(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):.3f} s   p90 {pct(values, 90):.3f} s"
        f"   max {max(values):.3f} s"
    )


def report_readiness(run: BackupRun, n: int) -> None:
    print(
        f"\n== 1. sleep readiness: {n} sleeps during a scheduled backup "
        f"(logind waits {LOGIND_BUDGET:.0f} s for delay locks)"
    )
    print(
        f"{'cycle':>5}{'at':>9}{'signal->lock released':>23}{'signal->job paused':>20}"
        f"{'paused at release':>19}{'index files':>13}{'wake->running':>15}"
    )
    for i, c in enumerate(run.cycles, 1):
        took = f"{c.paused:.3f} s" if c.paused is not None else "not paused"
        back = f"{c.resumed:.3f} s" if c.resumed is not None else "-"
        print(
            f"{i:>5}{c.at:>7.2f} s{c.ready:>21.3f} s{took:>20}"
            f"{'yes' if c.paused_at_release else 'NO':>19}{c.indexes:>13}{back:>15}"
        )
    if len(run.cycles) < n:
        print(f"  (the backup ended after {len(run.cycles)} of the {n} sleeps)")
    if not run.cycles:
        return
    ready = [c.ready for c in run.cycles]
    print(
        f"{'signal -> delay lock released':<34}{spread(ready)}"
        f"   target < {LOGIND_BUDGET:.0f} s  {verdict(max(ready) < LOGIND_BUDGET)}"
    )
    at_release = sum(c.paused_at_release for c in run.cycles)
    print(
        f"{'job PAUSED when the lock went':<34}{at_release}/{len(run.cycles)}"
        f"{'':<45}target all  {verdict(at_release == len(run.cycles))}"
    )
    paused = [c.paused for c in run.cycles if c.paused is not None]
    if paused:
        in_time = len(paused) == len(run.cycles) and max(paused) < LOGIND_BUDGET
        print(
            f"{'signal -> job paused':<34}{spread(paused)}"
            f"   target < {LOGIND_BUDGET:.0f} s  {verdict(in_time)}"
        )
    resumed = [c.resumed for c in run.cycles if c.resumed is not None]
    if resumed:
        print(f"{'wake -> job running again':<34}{spread(resumed)}")
    wrote = [c.indexes for c in run.cycles]
    print(
        f"{'index files written by the pauses':<34}{sum(wrote)}"
        f" (by {sum(1 for w in wrote if w)} of {len(wrote)} pauses)"
    )


def report_cost(
    plain: BackupRun,
    slept: BackupRun,
    restic: tuple[float, int],
    check: tuple[bool, list[str]],
    version: str,
) -> None:
    n = len(slept.cycles)
    print("\n== 2. cost of interruption (same data, a fresh repository each)")
    print(
        f"{'backup':<36}{'wall':>9}{'ours/restic':>13}{'repository':>14}{'ours/restic':>13}"
        f"{'index files':>13}"
    )
    r_wall, r_size = restic
    for name, run in (
        ("desktop-agent, no sleep", plain),
        (f"desktop-agent, {n} sleep/wake cycles", slept),
    ):
        state = "" if run.final is JobState.COMPLETED else f"  ({run.final})"
        print(
            f"{name:<36}{run.wall:>7.2f} s{run.wall / r_wall:>13.2f}{fmt_mib(run.size):>14}"
            f"{run.size / r_size:>13.3f}{run.indexes:>13}{state}"
        )
    print(f"{version + ' backup':<36}{r_wall:>7.2f} s{1:>13.2f}{fmt_mib(r_size):>14}{1:>13.3f}")
    print(
        f"with sleeps / without: wall {slept.wall / plain.wall:.2f}, "
        f"size {slept.size / plain.size:.3f}, index files +{slept.indexes - plain.indexes}; "
        f"time asleep (excluded) {slept.asleep:.2f} s"
    )
    ok, lines = check
    print(
        f"restic check --read-data of the repository with sleeps: "
        f"{'clean' if ok else 'ERRORS'}  {verdict(ok)}"
    )
    for line in lines:
        print(f"    {line}")


def report_idle(idle: dict[str, Any]) -> None:
    seconds = idle["elapsed"]
    per_hour = 3600 / seconds
    print(f"\n== 3. idle cost: headless agent, nothing due, {seconds:.0f} s")
    print(
        f"providers: {', '.join(idle['providers']) or 'none'}; scheduler tick every "
        f"{idle['tick_every']:.0f} s; schedule: {idle['reason']}; active jobs {idle['jobs']}"
    )
    cpu = idle["cpu"]
    print(
        f"{'CPU (all threads)':<26}{cpu:>9.3f} s  -> {cpu * per_hour:7.2f} s per hour"
        f" ({cpu / seconds * 100:.3f} % of one core)"
    )
    print(
        f"{'scheduler ticks':<26}{idle['ticks']:>9}    -> {idle['ticks'] * per_hour:7.0f} per hour"
    )
    vol, invol = idle["voluntary"], idle["involuntary"]
    print(
        f"{'thread wakeups':<26}{vol:>9}    -> {vol * per_hour:7.0f} per hour"
        f" (voluntary context switches; involuntary {invol})"
    )
    print(f"{'RSS':<26}{fmt_mib(idle['rss']):>13}")


def report_catch_up(c: CatchUp) -> None:
    print(
        f"\n== 4. catch-up after {SLEEP_HOURS} h of sleep "
        "(simulated scheduler clocks, real backups of an unchanged source)"
    )
    after = len(c.runs)
    print(
        f"{'scheduled runs before the sleep':<36}{c.before:>6}"
        f"   (the first backup; 20 min awake after it)"
    )
    print(
        f"{f'runs in the {AFTER_HOURS} h after the wake':<36}{after:>6}"
        f"   target 2 (1 catch-up, then hourly)  {verdict(after == 2)}"
    )
    if c.runs:
        delay = c.runs[0]
        ok = c.wake_delay <= delay <= c.wake_delay + 1
        print(
            f"{'wake -> catch-up start':<36}{delay:>6.1f} s"
            f" target {c.wake_delay} s (wake_delay_seconds)  {verdict(ok)}"
        )
    top = 60 + c.random_delay
    for a, b in zip(c.runs, c.runs[1:], strict=False):
        gap = (b - a) / 60
        print(
            f"{'then the next run after':<36}{gap:>6.1f} min"
            f" target 60-{top} min (random delay)  {verdict(60 <= gap <= top + 0.02)}"
        )
    last = c.final.value if c.final is not None else None
    print(
        f"{'the wake heard from logind':<36}{'yes' if c.logind_wake else 'no':>6}"
        f"   scheduler ticks in the {AFTER_HOURS} h: {c.ticks}; last job {last}"
    )


# --------------------------------------------------------------------- main
async def laptop(args: argparse.Namespace, work: Path, source: Path, bus: str) -> None:
    services = Services(bus)
    with running(*services.all()):
        print("restic backup ...", flush=True)
        os.sync()
        restic = restic_backup(work, source)
        print(f"  {restic[0]:.2f} s", flush=True)
        print("desktop-agent, scheduled backup without sleeps ...", flush=True)
        plain = await scheduled_backup(work, "plain", source, services, [], args.asleep)
        print(f"  {plain.wall:.2f} s", flush=True)
        rng = random.Random(args.seed)
        moments = sorted(rng.uniform(0.05, 0.9) * plain.wall for _ in range(args.sleeps))
        print(f"desktop-agent, scheduled backup with {args.sleeps} sleeps ...", flush=True)
        slept = await scheduled_backup(work, "slept", source, services, moments, args.asleep)
        print(f"  {slept.wall:.2f} s (+ {slept.asleep:.2f} s asleep)", flush=True)
        print("restic check --read-data ...", flush=True)
        check = restic_check(work, work / "repo-slept")
        print(f"idle agent for {args.idle:.0f} s ...", flush=True)
        idle = idle_cost(work, source, work / "repo-plain", bus, args.idle)
        print("catch-up after sleep ...", flush=True)
        catch = await catch_up(work, services)
    report_readiness(slept, args.sleeps)
    report_cost(plain, slept, restic, check, restic_version())
    report_idle(idle)
    report_catch_up(catch)


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
    ap.add_argument("--quick", action="store_true", help="200 MiB, 30 s idle")
    ap.add_argument("--size", type=int, help="MiB of data (default 1024, --quick 200)")
    ap.add_argument("--small-files", type=int, default=3000)
    ap.add_argument("--sleeps", type=int, default=10)
    ap.add_argument("--asleep", type=float, default=0.5, help="seconds between release and wake")
    ap.add_argument("--idle", type=float, help="seconds of idle agent (default 60, --quick 30)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--verbose", action="store_true", help="the agent's log at level INFO")
    ap.add_argument("--idle-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bus", help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--repo", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.size is None:
        args.size = 200 if args.quick else 1024
    if args.idle is None:
        args.idle = 30.0 if args.quick else 60.0
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="  log: %(relativeCreated)d ms %(levelname)s %(name)s: %(message)s",
    )
    if args.idle_child:
        idle_child(args)
        return
    if not os.path.exists(RESTIC):
        raise SystemExit(f"{RESTIC} is missing (apt-get install restic)")
    if shutil.which("dbus-daemon") is None:
        raise SystemExit("dbus-daemon is missing (apt-get install dbus-daemon)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="desktop-agent-laptop-", dir=args.workdir))
    os.environ.update(
        DESKTOP_AGENT_PASSWORD=PASSWORD,
        XDG_CACHE_HOME=str(work / "cache"),
        XDG_STATE_HOME=str(work / "state"),
    )
    try:
        print(f"{restic_version()}; {os.cpu_count()} CPUs; workdir {work}", flush=True)
        source = work / "data"
        t = time.monotonic()
        make_data(source, args.size, args.small_files)
        os.sync()
        large = sorted((source / "large").iterdir())
        print(
            f"data: {fmt_mib(du(source))} ({len(large)} files of "
            f"{fmt_mib(large[0].stat().st_size)}, {args.small_files} small files of "
            f"{fmt_mib(du(source / 'small'))} in all), made in {time.monotonic() - t:.1f} s",
            flush=True,
        )
        with private_bus(work) as bus:
            asyncio.run(laptop(args, work, source, bus.address))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
