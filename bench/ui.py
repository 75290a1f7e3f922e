#!/usr/bin/env python3
"""UI benchmark: event-loop lag under a full-speed backup, idle CPU and memory.

1. Lag: the tray shell (agent + bridge + tray + progress window, the real
   classes) runs on one qasync loop in this process; a 10 ms Qt timer
   records how late it fires while a backup of ``--data`` runs at full
   speed. Reports p50 / p99 / max lateness (target p99 <= 20 ms).
2. Idle: the tray app is started as ``desktop-agent --config CFG`` in a
   subprocess (no scheduled backups), left alone for ``--idle-seconds``
   (60), and its CPU time (utime + stime from /proc) and memory are read.
   Target CPU < 0.5%.

Qt runs on the ``offscreen`` platform unless ``--xvfb`` is given (then
under Xvfb with a real X server; the tray needs a tray host to show, which
Xvfb alone does not have, so the main window stands in for it).

    .venv/bin/python bench/ui.py [--data DIR] [--idle-seconds 60] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

PASSWORD = "bench-password"
TOKEN = "bench-token-0123456789abc"


def write_config(workdir: Path, source: Path, repo: Path) -> Path:
    cfg = workdir / "config.toml"
    cfg.write_text(
        "[agent]\n"
        f'listen = "127.0.0.1:{_free_port()}"\n'
        f'token = "{TOKEN}"\n'
        "[repository]\n"
        f'path = "{repo}"\n'
        'password_file = ""\n'
        "[backup]\n"
        f'sources = ["{source}"]\n'
        "exclude = []\n"
        "interval_minutes = 0\n"
    )
    os.chmod(cfg, 0o600)
    return cfg


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_data(root: Path, mib: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    done = root / ".done"
    if done.exists():
        return
    per = 64
    for i in range(max(1, mib // per)):
        (root / f"r{i}.bin").write_bytes(os.urandom(per * 1024 * 1024))
    words = b"lorem ipsum dolor sit amet backup laptop tray window progress "
    (root / "text.txt").write_bytes(words * (mib * 1024 * 1024 // len(words) // 4))
    done.write_text("ok")


# ---------------------------------------------------------------- lag
def measure_lag(workdir: Path, source: Path, repeat_until: float) -> dict[str, float]:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["DESKTOP_AGENT_PASSWORD"] = PASSWORD
    os.environ["XDG_CACHE_HOME"] = str(workdir / "cache")
    import qasync
    from PySide6.QtCore import QElapsedTimer, QTimer
    from PySide6.QtWidgets import QApplication

    from desktop_agent.config import load
    from desktop_agent.engine.repository import Repository
    from desktop_agent.engine.storage import LocalStorage
    from desktop_agent.protocol import BackupCompleted, BackupFailed
    from desktop_agent.ui.bootstrap import Shell

    repo = workdir / "repo-lag"
    shutil.rmtree(repo, ignore_errors=True)
    Repository.init(LocalStorage(repo), PASSWORD)
    config = load(write_config(workdir, source, repo))

    app = QApplication.instance() or QApplication(sys.argv)
    assert isinstance(app, QApplication)
    app.setQuitOnLastWindowClosed(False)  # as the tray app does
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    shell = Shell(config)
    lateness: list[float] = []
    clock = QElapsedTimer()
    interval = 10
    expected = [0]
    timer = QTimer()
    timer.setTimerType(__import__("PySide6.QtCore", fromlist=["Qt"]).Qt.TimerType.PreciseTimer)

    def tick() -> None:
        now = clock.elapsed()
        lateness.append(max(0, now - expected[0]))
        expected[0] = now + interval

    timer.timeout.connect(tick)
    backups = [0]
    bytes_done = [0]

    async def scenario() -> float:
        await shell.agent.start()
        shell.open("progress")
        ended = asyncio.Event()

        def on(event: object) -> None:
            if isinstance(event, BackupCompleted | BackupFailed):
                if isinstance(event, BackupCompleted):
                    bytes_done[0] += event.total_bytes
                ended.set()

        shell.agent.bus.subscribe(on)
        t0 = time.monotonic()
        clock.start()
        expected[0] = interval
        timer.start(interval)
        n = 0
        while time.monotonic() - t0 < repeat_until:
            # a fresh repository each time: every byte is hashed, compressed,
            # encrypted and written (a repeat into the same one only re-reads)
            n += 1
            fresh = workdir / f"repo-lag-{n}"
            await asyncio.to_thread(shutil.rmtree, fresh, True)
            await asyncio.to_thread(Repository.init, LocalStorage(fresh), PASSWORD)
            repo_cfg = dataclasses.replace(shell.agent.config.repository, path=str(fresh))
            shell.bridge.apply_config(dataclasses.replace(shell.agent.config, repository=repo_cfg))
            ended.clear()
            shell.bridge.back_up_now()
            await ended.wait()
            backups[0] += 1
            await asyncio.to_thread(shutil.rmtree, fresh, True)
        timer.stop()
        elapsed = time.monotonic() - t0
        await shell.stop()
        return elapsed

    with loop:
        # run_forever + stop: qasync's run_until_complete steps Qt once more
        # after the future is done, without a running asyncio loop
        fut = asyncio.ensure_future(scenario(), loop=loop)
        fut.add_done_callback(lambda _f: loop.stop())
        loop.run_forever()
        elapsed = fut.result()
    lateness.sort()
    return {
        "samples": len(lateness),
        "p50": statistics.median(lateness),
        "p99": lateness[int(len(lateness) * 0.99) - 1],
        "max": lateness[-1],
        "backups": backups[0],
        "seconds": elapsed,
        "mib_per_s": bytes_done[0] / elapsed / 2**20,
    }


# --------------------------------------------------------------- idle
def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def measure_idle(workdir: Path, source: Path, seconds: float, xvfb: bool) -> dict[str, float]:
    from desktop_agent.engine.repository import Repository
    from desktop_agent.engine.storage import LocalStorage

    repo = workdir / "repo-idle"
    shutil.rmtree(repo, ignore_errors=True)
    Repository.init(LocalStorage(repo), PASSWORD)
    cfg = write_config(workdir, source, repo)
    env = dict(
        os.environ,
        DESKTOP_AGENT_PASSWORD=PASSWORD,
        XDG_CACHE_HOME=str(workdir / "cache"),
        XDG_STATE_HOME=str(workdir / "state"),
    )
    cmd = [sys.executable, "-m", "desktop_agent", "--config", str(cfg)]
    xvfb_proc = None
    if xvfb:
        display = ":97"
        xvfb_proc = subprocess.Popen(["Xvfb", display, "-screen", "0", "1280x800x24"])
        env["DISPLAY"] = display
        env.pop("QT_QPA_PLATFORM", None)
        time.sleep(1)
    else:
        env["QT_QPA_PLATFORM"] = "offscreen"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(5)  # start-up, first history lookup
        if proc.poll() is not None:
            raise SystemExit(
                f"the tray app exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        rss = []
        while time.monotonic() - t0 < seconds:
            rss.append(_rss(proc.pid))
            time.sleep(1)
        cpu1, t1 = _cpu_seconds(proc.pid), time.monotonic()
    finally:
        proc.terminate()
        proc.wait(30)
        if xvfb_proc is not None:
            xvfb_proc.terminate()
    return {
        "cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0),
        "seconds": t1 - t0,
        "rss_mib": statistics.median(rss) / 2**20,
        "rss_max_mib": max(rss) / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/desktop-agent-bench-ui"))
    ap.add_argument("--data-mib", type=int, default=1024)
    ap.add_argument(
        "--under-load", type=float, default=15.0, help="seconds of backups to sample lag over"
    )
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    ap.add_argument("--quick", action="store_true", help="256 MiB, 5 s of load, 10 s idle")
    ap.add_argument(
        "--xvfb", action="store_true", help="measure idle under Xvfb instead of offscreen"
    )
    args = ap.parse_args()
    if args.quick:
        args.data_mib, args.under_load, args.idle_seconds = 256, 5.0, 10.0
    args.workdir.mkdir(parents=True, exist_ok=True)
    source = args.workdir / f"data-{args.data_mib}"
    print(f"preparing {args.data_mib} MiB of data in {source} ...", flush=True)
    make_data(source, args.data_mib)

    # the idle measurement runs in a child process; the lag one in this process
    idle = measure_idle(args.workdir, source, args.idle_seconds, args.xvfb)
    lag = measure_lag(args.workdir, source, args.under_load)

    print("\n== tray app")
    print(
        f"event-loop lag during backups ({lag['backups']} backups, {lag['seconds']:.1f} s, "
        f"{lag['mib_per_s']:.0f} MiB/s, progress window open, "
        f"{lag['samples']} samples of a 10 ms timer):"
    )
    verdict = "ok" if lag["p99"] <= 20 else "MISSED"
    print(
        f"  p50 {lag['p50']:.1f} ms   p99 {lag['p99']:.1f} ms (target <= 20 ms: {verdict})"
        f"   max {lag['max']:.0f} ms"
    )
    verdict = "ok" if idle["cpu_percent"] < 0.5 else "MISSED"
    print(
        f"idle CPU over {idle['seconds']:.0f} s: {idle['cpu_percent']:.3f}% "
        f"(target < 0.5%: {verdict})"
    )
    print(f"idle memory: {idle['rss_mib']:.1f} MiB RSS (max {idle['rss_max_mib']:.1f} MiB)")


if __name__ == "__main__":
    main()
