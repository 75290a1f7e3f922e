#!/usr/bin/env python3
"""Prune benchmark: desktop-agent's prune against restic's, same repository.

Builds one repository with desktop-agent: ``--snapshots`` backups of a
source of ``--mib`` MiB (half random, half text, files of 1 MiB), where
before each backup after the first ``--change`` of the files get new
content. Then restic forgets every second snapshot (the same ones for both
tools), and the repository is copied twice. restic prunes one copy,
desktop-agent the other; both are timed (wall, peak RSS of the process and
its children) and both results are checked with ``restic check`` (outside
the timing). Every figure is the median of ``--repeat`` fresh copies.

restic runs as it would by default (a local cache in a fresh directory) and
with ``--no-cache``; the ratio uses the faster of the two. Both tools open
the same key file, so the key derivation costs them the same.

The repository size after pruning is printed for both: restic's prune
leaves up to 5 % unused data in partly used packs by default
(``--max-unused 5%``), desktop-agent repacks a pack when a tenth of it is
unused, so the two do not do exactly the same amount of work.

    .venv/bin/python bench/prune.py [--workdir DIR] [--mib 1024] [--snapshots 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine import PASSWORD, Ours, du, fmt_mib, prepare, run  # noqa: E402  (bench/engine.py)

MiB = 1024 * 1024


def _text(rng: random.Random, size: int) -> bytes:
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(3000)
    ]
    out = bytearray()
    while len(out) < size:
        out += (" ".join(rng.choices(words, k=800)) + "\n").encode()
    return bytes(out[:size])


def write_file(path: Path, rng: random.Random, index: int) -> None:
    if index % 2:
        path.write_bytes(_text(rng, MiB))
    else:
        path.write_bytes(os.urandom(MiB))


def build(workdir: Path, args: argparse.Namespace) -> Path:
    """The shared repository with every second snapshot forgotten."""
    base = workdir / "prune-base"
    marker = workdir / "prune-base.done"
    tag = f"{args.mib}-{args.snapshots}-{args.change}"
    if marker.exists() and marker.read_text() == tag:
        return base
    shutil.rmtree(base, ignore_errors=True)
    source = workdir / "prune-source"
    shutil.rmtree(source, ignore_errors=True)
    files = [source / f"d{i // 64:02d}" / f"f{i:04d}" for i in range(args.mib)]
    rng = random.Random(5)
    for i, f in enumerate(files):
        f.parent.mkdir(parents=True, exist_ok=True)
        write_file(f, rng, i)
    ours = Ours(workdir, source)
    ours.init(base)
    print(f"building: {args.snapshots} backups of {args.mib} MiB", flush=True)
    for n in range(args.snapshots):
        if n:
            for i in rng.sample(range(len(files)), max(1, int(len(files) * args.change))):
                write_file(files[i], rng, i)
        ours.backup(base)
    env = restic_env(workdir)
    listing = subprocess.run(
        ["restic", "-r", str(base), "--no-cache", "snapshots", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    snaps = sorted(json.loads(listing.stdout), key=lambda s: s["time"])
    forget = [s["id"] for s in snaps[1::2]]
    subprocess.run(
        ["restic", "-r", str(base), "--no-cache", "-q", "forget", *forget],
        env=env,
        check=True,
    )
    print(f"forgot {len(forget)} of {len(snaps)} snapshots", flush=True)
    shutil.rmtree(source, ignore_errors=True)
    marker.write_text(tag)
    return base


def restic_env(workdir: Path, cache: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, RESTIC_PASSWORD=PASSWORD)
    env["RESTIC_CACHE_DIR"] = str(cache or workdir / "restic-cache-prune")
    return env


def copy(base: Path, dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    subprocess.run(["cp", "-a", str(base), str(dest)], check=True)
    os.sync()


def restic_check(repo: Path, env: dict[str, str]) -> str:
    r = subprocess.run(
        ["restic", "-r", str(repo), "--no-cache", "check"], env=env, capture_output=True, text=True
    )
    return "check ok" if r.returncode == 0 else f"CHECK FAILED: {r.stdout[-300:]}{r.stderr[-300:]}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/desktop-agent-bench"))
    ap.add_argument("--mib", type=int, default=1024, help="source size (files of 1 MiB)")
    ap.add_argument("--snapshots", type=int, default=16)
    ap.add_argument("--change", type=float, default=0.3, help="share of files changed per run")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    prepare(args.workdir)
    base = build(args.workdir, args)
    print(f"repository before prune: {fmt_mib(du(base)).strip()}", flush=True)

    ours_tool = Ours(args.workdir, args.workdir)
    results: dict[str, list[tuple[float, int, int]]] = {
        "desktop-agent": [],
        "restic": [],
        "restic --no-cache": [],
    }
    checks: dict[str, str] = {}
    for i in range(args.repeat):
        for name in results:
            repo = args.workdir / f"prune-{name.split()[0]}-{'nc' if 'no-cache' in name else 'c'}"
            copy(base, repo)
            cache = args.workdir / "restic-cache-prune-run"
            shutil.rmtree(cache, ignore_errors=True)
            env = restic_env(args.workdir, cache)
            if name == "desktop-agent":
                wall, rss = run(ours_tool._cmd(repo, "prune"), ours_tool.env)
            elif name == "restic":
                wall, rss = run(["restic", "-r", str(repo), "-q", "prune"], env)
            else:
                wall, rss = run(["restic", "-r", str(repo), "-q", "--no-cache", "prune"], env)
            results[name].append((wall, rss, du(repo)))
            checks[name] = restic_check(repo, env)
            shutil.rmtree(repo, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
        print(f"  run {i + 1}/{args.repeat} done", flush=True)

    med = {
        k: (
            statistics.median(w for w, _, _ in v),
            int(statistics.median(m for _, m, _ in v)),
            int(statistics.median(s for _, _, s in v)),
        )
        for k, v in results.items()
    }
    print(f"\n{'prune':<20}{'time':>10}{'peak RSS':>14}{'size after':>14}   restic check")
    for name, (wall, rss, size) in med.items():
        print(f"{name:<20}{wall:>8.2f} s{fmt_mib(rss):>14}{fmt_mib(size):>14}   {checks[name]}")
    ours = med["desktop-agent"]
    best = min(med["restic"], med["restic --no-cache"], key=lambda m: m[0])
    print(
        f"\nratio ours / restic (faster variant): time {ours[0] / best[0]:.2f}, "
        f"peak memory {ours[1] / best[1]:.2f}, size after {ours[2] / best[2]:.2f}"
    )


if __name__ == "__main__":
    main()
