#!/usr/bin/env python3
"""Resume after kill -9: how much does the next backup store again?

A first backup of ``--mib`` MiB of incompressible data (files of 32 MiB) is
killed with SIGKILL when the packs in the repository reach ``--kill-at`` of
the source size. Then both checks run (``desktop-agent check --read-data``
and, after ``restic unlock``, ``restic check``), the backup runs again, and
the script prints how much of the data that second run stored (from its
``--json`` summary) and how long it took next to an uninterrupted backup.

    .venv/bin/python bench/resume.py [--workdir DIR] [--mib 1024] [--kill-at 0.7]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine import PASSWORD, Ours  # noqa: E402  (bench/engine.py)

MiB = 1024 * 1024


def pack_bytes(repo: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(repo / "data"):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/desktop-agent-bench"))
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--kill-at", type=float, default=0.7)
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    (work / "home").mkdir(exist_ok=True)
    source = work / f"resume-source-{args.mib}"
    if not (work / f"resume-source-{args.mib}.done").exists():
        shutil.rmtree(source, ignore_errors=True)
        source.mkdir()
        for i in range(max(1, args.mib // 32)):
            (source / f"f{i:03d}.bin").write_bytes(os.urandom(32 * MiB))
        (work / f"resume-source-{args.mib}.done").write_text("ok")
    total = sum(p.stat().st_size for p in source.iterdir())
    ours = Ours(work, source)

    def fresh(name: str) -> Path:
        repo = work / name
        shutil.rmtree(repo, ignore_errors=True)
        ours.init(repo)
        os.sync()
        return repo

    repo = fresh("resume-reference")
    t = time.perf_counter()
    subprocess.run(ours._cmd(repo, "backup"), env=ours.env, check=True, capture_output=True)
    full = time.perf_counter() - t
    shutil.rmtree(repo)

    repo = fresh("resume-repo")
    proc = subprocess.Popen(
        ours._cmd(repo, "backup"),
        env=ours.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    t = time.perf_counter()
    while pack_bytes(repo) < args.kill_at * total and proc.poll() is None:
        time.sleep(0.005)
    if proc.poll() is not None:
        raise SystemExit("the backup ended before it could be killed")
    killed = pack_bytes(repo)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    print(
        f"killed after {time.perf_counter() - t:.1f} s "
        f"with {killed / total:.0%} of the data in packs"
    )

    r = subprocess.run(
        ours._cmd(repo, "check", "--read-data"), env=ours.env, capture_output=True, text=True
    )
    print(f"desktop-agent check --read-data: exit {r.returncode}")
    renv = dict(os.environ, RESTIC_PASSWORD=PASSWORD)
    subprocess.run(["restic", "-r", str(repo), "--no-cache", "-q", "unlock"], env=renv, check=True)
    r = subprocess.run(
        ["restic", "-r", str(repo), "--no-cache", "check"], env=renv, capture_output=True, text=True
    )
    print(f"restic check: exit {r.returncode}")

    t = time.perf_counter()
    r = subprocess.run(
        ours._cmd(repo, "backup", "--json"),
        env=ours.env,
        capture_output=True,
        text=True,
        check=True,
    )
    again = time.perf_counter() - t
    summary = json.loads(r.stdout.splitlines()[-1])
    stored = summary["data_added_packed"]
    print(
        f"next run stored {stored / total:.0%} of the data again "
        f"({stored / MiB:.0f} of {total / MiB:.0f} MiB; target <= 35%)"
    )
    print(f"next run took {again:.1f} s; an uninterrupted backup takes {full:.1f} s")
    shutil.rmtree(repo)


if __name__ == "__main__":
    main()
