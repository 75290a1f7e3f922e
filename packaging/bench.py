"""The packaged build against the venv: cold start and backup speed.

    python packaging/bench.py FROZEN [--venv EXE] [--runs N] [--small N] [--mixed-mb N]

FROZEN is the packaged executable (dist/desktop-agent/desktop-agent or the
installed /usr/bin/desktop-agent); --venv the development one (default
.venv/bin/desktop-agent). Run it with a Python that has ``websockets``.

Cold start: a fresh process each run, ``--headless`` and then the tray app
(in one Xvfb with trayer as the system tray), timed from just before it is
started to the first ``agent:status`` answered on /ws (the client retries
every 10 ms, so the figure is at most ~10 ms late). The files are in the
page cache: this is process start-up, not a disk spinning up.

Backup speed: the same data for both (N small files of 0-16 KiB, some
identical, plus about --mixed-mb MB of large files, half random and half
compressible), a fresh repository and cache for every run, the two
executables alternating run by run; wall time of ``backup``, and its CPU
time (user + system, helper processes included: the backup waits for them).
Medians are printed, and every run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType


def _load_smoke_test() -> ModuleType:
    """packaging/smoke-test.py (a file name no import statement can spell)."""
    path = Path(__file__).resolve().parent / "smoke-test.py"
    spec = importlib.util.spec_from_file_location("smoke_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


smoke = _load_smoke_test()  # its Env (isolated HOME) and /ws helpers


def make_data(root: Path, small: int, mixed_mb: int) -> int:
    """Write the data set; returns its size in bytes."""
    rng = random.Random(7)
    total = 0
    shared = rng.randbytes(5000)
    for i in range(small):
        folder = root / "small" / f"d{i % 100:03}"
        folder.mkdir(parents=True, exist_ok=True)
        body = shared if i % 40 == 0 else rng.randbytes(rng.randint(0, 16384))
        (folder / f"f{i:06}").write_bytes(body)
        total += len(body)
    big = root / "large"
    big.mkdir()
    words = [rng.randbytes(rng.randint(3, 9)).hex().encode() for _ in range(5000)]
    size = 16 << 20
    for i in range(max(1, mixed_mb // 16)):
        if i % 2 == 0:
            body = os.urandom(size)
        else:  # text-like: compresses, and repeats across files (dedup)
            body = b" ".join(rng.choice(words) for _ in range(size // 10))[:size]
        (big / f"large-{i:03}.bin").write_bytes(body)
        total += len(body)
    return total


def cold_start(exe: str, scratch: Path, display: str | None = None) -> float:
    """Seconds from start to the first agent:status answer: headless, or the
    tray app when ``display`` (an X display with a system tray) is given."""
    env = smoke.Env(scratch, [exe])
    env.write_config()
    run_env = dict(env.vars, DISPLAY=display) if display else env.vars
    started = time.monotonic()
    proc = subprocess.Popen(
        env.cmd() if display else env.cmd("--headless"),
        env=run_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        smoke.wait_serving(proc, env.port, env.token, 30)
        seconds = time.monotonic() - started
        smoke.stop(proc, "the agent")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return seconds


def one_backup(exe: str, scratch: Path, data: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one backup of ``data`` into a fresh repository."""
    env = smoke.Env(scratch, [exe])
    env.data = data
    env.write_config()
    smoke._expect(env.run("init"), "init")
    started = time.monotonic()
    proc = subprocess.Popen(
        env.cmd("backup"),
        env=env.vars,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or b"helper" in err:
        raise SystemExit(f"backup with {exe} failed ({proc.returncode}): {err.decode()[-500:]}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("frozen")
    p.add_argument(
        "--venv", default=str(Path(__file__).resolve().parent.parent / ".venv/bin/desktop-agent")
    )
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--starts", type=int, default=7, help="cold starts per executable")
    p.add_argument("--small", type=int, default=20000)
    p.add_argument("--mixed-mb", type=int, default=320)
    p.add_argument("--no-tray", action="store_true", help="no tray cold starts (no Xvfb here)")
    p.add_argument(
        "--dir",
        help="where data and repositories go (default: the temp dir; /dev/shm takes the "
        "disk's write-back out of the comparison)",
    )
    args = p.parse_args()
    exes = {"frozen": args.frozen, "venv": args.venv}

    root = Path(tempfile.mkdtemp(prefix="desktop-agent-bench-", dir=args.dir))
    try:

        def starts(kind: str, display: str | None) -> None:
            print(f"cold start to a serving /ws ({kind}):")
            for name, exe in exes.items():
                runs = [
                    cold_start(exe, root / f"start-{kind}-{name}-{i}", display)
                    for i in range(args.starts)
                ]
                print(
                    f"  {name:6} median {statistics.median(runs):.3f} s  "
                    f"runs {' '.join(f'{r:.3f}' for r in runs)}"
                )

        starts("headless", None)
        if not args.no_tray:
            with smoke.x_display_with_tray(dict(os.environ)) as display:
                starts("tray app in Xvfb with trayer", display)
        data = root / "data"
        size = make_data(data, args.small, args.mixed_mb)
        print(
            f"backup of {args.small} small files + {args.mixed_mb} MB of large files "
            f"({size / 2**20:.0f} MiB), fresh repository each run, alternating:"
        )
        results: dict[str, list[tuple[float, float]]] = {n: [] for n in exes}
        for i in range(args.runs):
            for name, exe in exes.items():
                scratch = root / f"backup-{name}-{i}"
                results[name].append(one_backup(exe, scratch, data))
                shutil.rmtree(scratch)
        medians = {}
        for name, runs in results.items():
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            medians[name] = wall
            print(
                f"  {name:6} median {wall:.2f} s wall, {cpu:.2f} s CPU  "
                f"runs {' '.join(f'{r[0]:.2f}' for r in runs)}"
            )
        print(f"  frozen / venv = {medians['frozen'] / medians['venv']:.3f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
