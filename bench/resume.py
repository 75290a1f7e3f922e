#!/usr/bin/env python3
"""Resume after kill -9: how much does the next backup store again?

For desktop-agent and for restic, on the same data in the same run: a
first backup of ``--mib`` MiB of incompressible data (files of 32 MiB) is
killed with SIGKILL when the packs in the repository reach ``--kill-at`` of
the source size. Then the repository is checked (``check --read-data`` by
the tool itself; restic's ``check`` on both, after ``restic unlock``), the
backup runs again, and the script prints how many pack bytes that second
run added, as a share of the source, and how long it took next to an
uninterrupted backup.

    .venv/bin/python bench/resume.py [--workdir DIR] [--mib 1024] [--kill-at 0.7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine import PASSWORD, Ours, Restic, du  # noqa: E402  (bench/engine.py)

MiB = 1024 * 1024


def pack_bytes(repo: Path) -> int:
    return du(repo / "data")


class Tool:
    """The commands one tool needs here."""

    def __init__(self, name: str, init, backup, check, env) -> None:  # type: ignore[no-untyped-def]
        self.name = name
        self.init = init
        self.backup = backup
        self.check = check
        self.env = env


def tools(work: Path, source: Path) -> list[Tool]:
    ours = Ours(work, source)
    restic = Restic(work, source)

    def restic_cmd(repo: Path, *args: str) -> list[str]:
        return ["restic", "-r", str(repo), "--no-cache", "-q", *args]

    return [
        Tool(
            "desktop-agent",
            lambda repo: ours._cmd(repo, "init"),
            lambda repo: ours._cmd(repo, "backup"),
            lambda repo: ours._cmd(repo, "check", "--read-data"),
            ours.env,
        ),
        Tool(
            "restic",
            lambda repo: restic_cmd(repo, "init"),
            lambda repo: restic_cmd(repo, "backup", str(source)),
            lambda repo: restic_cmd(repo, "check", "--read-data"),
            restic.env,
        ),
    ]


def measure(tool: Tool, work: Path, total: int, kill_at: float) -> dict[str, float]:
    def fresh(name: str) -> Path:
        repo = work / f"{name}-{tool.name}"
        shutil.rmtree(repo, ignore_errors=True)
        subprocess.run(tool.init(repo), env=tool.env, check=True, capture_output=True)
        os.sync()
        return repo

    repo = fresh("resume-reference")
    t = time.perf_counter()
    subprocess.run(tool.backup(repo), env=tool.env, check=True, capture_output=True)
    full = time.perf_counter() - t
    shutil.rmtree(repo)

    repo = fresh("resume-repo")
    proc = subprocess.Popen(
        tool.backup(repo), env=tool.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    t = time.perf_counter()
    while pack_bytes(repo) < kill_at * total and proc.poll() is None:
        time.sleep(0.005)
    if proc.poll() is not None:
        raise SystemExit(f"{tool.name}: the backup ended before it could be killed")
    killed = pack_bytes(repo)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ran = time.perf_counter() - t

    # restic 0.14 will not check while the killed process's lock is there
    renv = dict(os.environ, RESTIC_PASSWORD=PASSWORD)
    subprocess.run(["restic", "-r", str(repo), "--no-cache", "-q", "unlock"], env=renv, check=True)
    own = subprocess.run(tool.check(repo), env=tool.env, capture_output=True, text=True)
    rcheck = subprocess.run(
        ["restic", "-r", str(repo), "--no-cache", "check"], env=renv, capture_output=True, text=True
    )

    before = pack_bytes(repo)
    t = time.perf_counter()
    subprocess.run(tool.backup(repo), env=tool.env, check=True, capture_output=True)
    again = time.perf_counter() - t
    added = pack_bytes(repo) - before
    shutil.rmtree(repo)
    return {
        "killed_share": killed / total,
        "ran": ran,
        "own_check": own.returncode,
        "restic_check": rcheck.returncode,
        "added": added,
        "again": again,
        "full": full,
    }


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

    results = {}
    for tool in tools(work, source):
        r = measure(tool, work, total, args.kill_at)
        results[tool.name] = r
        print(
            f"{tool.name}: killed after {r['ran']:.1f} s with {r['killed_share']:.0%} of the "
            f"data in packs; own check --read-data exit {r['own_check']:.0f}, "
            f"restic check exit {r['restic_check']:.0f}"
        )
        print(
            f"{tool.name}: the next run added {r['added'] / total:.0%} of the data again "
            f"({r['added'] / MiB:.0f} of {total / MiB:.0f} MiB) in {r['again']:.1f} s; "
            f"an uninterrupted backup takes {r['full']:.1f} s"
        )
    ours, restic = results["desktop-agent"], results["restic"]
    print(
        f"stored again after the kill: desktop-agent {ours['added'] / total:.0%} (target <= 35%), "
        f"restic {restic['added'] / total:.0%}; ratio {ours['added'] / max(1, restic['added']):.2f}"
    )


if __name__ == "__main__":
    main()
