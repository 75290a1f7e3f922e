#!/usr/bin/env python3
"""Scale benchmark: a repository of 1,000,000 blobs, desktop-agent against restic.

Builds (once, kept in --workdir) a repository of one million distinct small
data blobs in real packs, with index files of 50,000 blobs as restic writes
them; restic checks it (structure) after the first build. Then:

* index load, in a child process: desktop-agent cold (JSON index files) and
  warm (the local index cache), wall time and resident memory per blob;
  restic's per-blob cost is the difference between a tiny backup into this
  repository and into an empty one (its index load is the rest);
* a tiny backup (a folder of a few small files, one of them changed before
  each run) into the 1M-blob repository: wall time and peak RSS (wait4 and
  the sampled RSS of the process tree) of ``desktop-agent backup`` (the CLI)
  against ``restic backup`` of the same folder, each on its own copy of the
  repository (hard links: stored files are never changed in place).

Every figure is the median of ``--repeat`` runs. Targets (from the issue):
tiny backup <= 0.5x restic's time and RSS; bytes per index entry <= 0.6x
restic's.

    .venv/bin/python bench/scale.py [--workdir DIR] [--blobs 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# bench/engine.py, beside this file (the script's folder is on sys.path): the
# measured command runs, restic's CLI and the running-agent runs, shared
from engine import PASSWORD, Restic, compile_package, run_output, warm_agent  # noqa: E402

MiB = 1024 * 1024
TARGETS = {
    "tiny backup time": 0.5,
    "tiny backup RSS": 0.5,
    "bytes per index entry": 0.6,
    # the first load on a machine (no local cache) faster than restic's load
    "cold index load time": 1.0,
}

# ------------------------------------------------------------------ trees
TREE_FILES = 200_000


def make_tree(root: Path, files: int) -> None:
    """``files`` small files (100 B - 4 KiB) in folders of 100, three levels deep."""
    import random

    rng = random.Random(200)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for i in range(files):
        d = tmp / f"a{i // 10_000:02d}" / f"b{i // 1000 % 10}" / f"c{i // 100 % 10}"
        if i % 100 == 0:
            d.mkdir(parents=True)
        (d / f"f{i}.txt").write_bytes(rng.randbytes(rng.randrange(100, 4096)))
    tmp.rename(root)


# ---------------------------------------------------------- the repository
def build_repository(base: Path, blobs: int) -> None:
    """``blobs`` distinct data blobs in packs of 20,000, indexed 50,000 per file."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from desktop_agent.engine import crypto
    from desktop_agent.engine.ids import BlobId, BlobType
    from desktop_agent.engine.index import MAX_BLOBS_PER_FILE, index_bytes
    from desktop_agent.engine.pack import PackBuilder
    from desktop_agent.engine.repository import Repository
    from desktop_agent.engine.storage import FileType, LocalStorage

    repo = Repository.init(LocalStorage(str(base)), PASSWORD)
    spool = repo.storage.spool_dir()
    per_pack = 20_000
    batch: list = []
    count = 0
    salt = os.urandom(16).hex().encode()
    for start in range(0, blobs, per_pack):
        builder = PackBuilder(repo.key, spool)
        plains = [b"scale %s %d" % (salt, i) for i in range(start, min(blobs, start + per_pack))]
        sealed = crypto.encrypt_many(repo.key, plains)
        builder.add_many(
            [
                (BlobType.DATA, BlobId(crypto.sha256(p)), s, 0)
                for p, s in zip(plains, sealed, strict=True)
            ]
        )
        pack_id, path, packed, _size = builder.finish()
        repo.storage.save_file(FileType.PACK, pack_id.hex(), path)
        batch.append((pack_id, packed))
        count += len(packed)
        if count >= MAX_BLOBS_PER_FILE:
            repo.save_unpacked(FileType.INDEX, index_bytes(batch))
            batch, count = [], 0
    if batch:
        repo.save_unpacked(FileType.INDEX, index_bytes(batch))


def prepare_base(workdir: Path, blobs: int, env: dict[str, str]) -> Path:
    base = workdir / f"repo-{blobs}"
    marker = workdir / f"repo-{blobs}.done"
    if marker.exists():
        return base
    shutil.rmtree(base, ignore_errors=True)
    print(f"building a repository of {blobs:,} blobs ...", flush=True)
    t = time.monotonic()
    subprocess.run(
        [sys.executable, __file__, "--build", str(base), "--blobs", str(blobs)], check=True
    )
    print(f"  built in {time.monotonic() - t:.0f} s; restic check ...", flush=True)
    subprocess.run(["restic", "-r", str(base), "-q", "check"], env=env, check=True)
    marker.write_text("ok")
    return base


def copy_repo(base: Path, dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    subprocess.run(["cp", "-al", str(base), str(dest)], check=True)


# ----------------------------------------------------------------- running
# A child that loads the index and reports; ``cache``: a cache directory or "".
_LOAD = """
import json, os, sys, time
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import LocalStorage
def rss():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
repo = Repository.open(LocalStorage(sys.argv[1]), sys.argv[2])
repo.index_cache_dir = sys.argv[3] or None
repo.list_snapshots()
before = rss()
t = time.perf_counter()
repo.ensure_index()
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "rss": rss() - before, "entries": len(repo.index),
                  "tables": repo.index.memory()}))
"""


class Ours:
    name = "desktop-agent"

    def __init__(self, workdir: Path, source: Path, home: Path) -> None:
        self.workdir, self.source = workdir, source
        self.env = dict(os.environ, DESKTOP_AGENT_PASSWORD=PASSWORD, HOME=str(home))
        self.env.pop("XDG_CACHE_HOME", None)
        exe = Path(sys.executable).with_name("desktop-agent")
        self.exe = [str(exe)] if exe.exists() else [sys.executable, "-m", "desktop_agent"]

    def _cmd(self, repo: Path, *args: str) -> list[str]:
        config = self.workdir / f"config-{repo.name}.toml"
        config.touch(mode=0o600)
        config.write_text(
            '[agent]\ntoken = "bench-token-0123456789"\n'
            f'[repository]\npath = "{repo}"\npassword_file = ""\n'
            f'[backup]\nsources = ["{self.source}"]\nexclude = []\n'
        )
        return [*self.exe, "--config", str(config), *args]

    def backup(self, repo: Path) -> tuple[float, int]:
        wall, rss, _ = run_output(self._cmd(repo, "backup"), self.env)
        return wall, rss

    def load(self, repo: Path, cache: str) -> dict[str, float]:
        _, _, out = run_output([sys.executable, "-c", _LOAD, str(repo), PASSWORD, cache], self.env)
        return json.loads(out.strip().splitlines()[-1])


def touch(source: Path, n: int) -> None:
    """Change one small file (a new run, a new content)."""
    (source / "changing.txt").write_text(f"run {n} {time.time_ns()}\n")


def tiny_runs(
    tool: Ours | Restic, repo: Path, source: Path, repeat: int
) -> list[tuple[float, int]]:
    """A first backup (the parent), then ``repeat`` measured backups of one changed file."""
    touch(source, 0)
    tool.backup(repo)
    out = []
    for n in range(1, repeat + 1):
        touch(source, n)
        out.append(tool.backup(repo))
    return out


def med(values: list[float]) -> float:
    return statistics.median(values)


def verdict(ratio: float, target: float) -> str:
    return "ok" if ratio <= target else "MISSED"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/desktop-agent-bench/scale"))
    ap.add_argument("--blobs", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tree-files", type=int, default=TREE_FILES)
    ap.add_argument("--no-tree", action="store_true", help="skip the 200,000-file tree")
    ap.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        build_repository(args.build, args.blobs)
        return
    if shutil.which("restic") is None:
        raise SystemExit("restic is not installed (apt-get install restic)")
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    compile_package()
    version = subprocess.run(["restic", "version"], capture_output=True, text=True).stdout.strip()
    print(f"{version}; {os.cpu_count()} CPUs; workdir {workdir}")
    source = workdir / "tiny"
    source.mkdir(exist_ok=True)
    for i in range(3):
        (source / f"file{i}.txt").write_text(f"a small file {i}\n" * 10)
    restic = Restic(workdir, source)
    base = prepare_base(workdir, args.blobs, restic.env)
    home = workdir / "home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir()
    ours = Ours(workdir, source, home)

    # --- index load, in a child process each time
    mine = workdir / "repo-ours"
    copy_repo(base, mine)
    cache_dir = workdir / "index-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    cold = [ours.load(mine, "") for _ in range(args.repeat)]
    ours.load(mine, str(cache_dir))  # writes the cache
    warm = [ours.load(mine, str(cache_dir)) for _ in range(args.repeat)]
    entries = cold[0]["entries"]

    # --- tiny backups: each tool on its own copy of the 1M-blob repository, and
    # restic also on an empty repository (its index cost is the difference)
    theirs = workdir / "repo-restic"
    copy_repo(base, theirs)
    empty = workdir / "repo-restic-empty"
    shutil.rmtree(empty, ignore_errors=True)
    restic.init(empty)
    r_big = tiny_runs(restic, theirs, source, args.repeat)
    r_empty = tiny_runs(restic, empty, source, args.repeat)
    o_big = tiny_runs(ours, mine, source, args.repeat)
    cached = list((home / ".cache").rglob("index-tables"))
    o_note = "" if cached else "\nnote: the CLI wrote no index cache (every run loaded cold)"

    r_time, r_rss = med([w for w, _ in r_big]), med([m for _, m in r_big])
    r_index_time = r_time - med([w for w, _ in r_empty])
    r_per_entry = (r_rss - med([m for _, m in r_empty])) / entries
    o_time, o_rss = med([w for w, _ in o_big]), med([m for _, m in o_big])

    print(f"\nindex of {entries:,} blobs")
    print(f"{'load':<28}{'seconds':>9}{'bytes/entry (RSS)':>20}{'tables':>9}")
    for label, runs in (("desktop-agent cold (JSON)", cold), ("desktop-agent warm (cache)", warm)):
        secs = med([r["seconds"] for r in runs])
        per = med([r["rss"] for r in runs]) / entries
        print(f"{label:<28}{secs:>9.2f}{per:>20.1f}{runs[0]['tables'] / entries:>9.1f}")
    print(f"{'restic (backup 1M - empty)':<28}{r_index_time:>9.2f}{r_per_entry:>20.1f}{'':>9}")

    warm_per = med([r["rss"] for r in warm]) / entries
    cold_per = med([r["rss"] for r in cold]) / entries
    print(f"\ntiny backup (1 changed small file) into the {entries:,}-blob repository")
    print(f"{'':<28}{'desktop-agent':>14}{'restic':>10}{'ratio':>8}{'target':>8}")
    cold_secs = med([r["seconds"] for r in cold])
    rows = [
        ("cold index load time", cold_secs, r_index_time, "s"),
        ("tiny backup time", o_time, r_time, "s"),
        ("tiny backup RSS", o_rss / MiB, r_rss / MiB, "MiB"),
        ("bytes per index entry", warm_per, r_per_entry, "B"),
        ("  (cold load)", cold_per, r_per_entry, "B"),
    ]
    for label, a, b, unit in rows:
        ratio = a / b if b else float("inf")
        target = TARGETS.get(label.strip())
        mark = f"{target:>6.2f}  {verdict(ratio, target)}" if target else ""
        print(f"{label:<28}{a:>10.2f} {unit:<3}{b:>8.2f}{ratio:>8.2f}  {mark}")
    if o_note:
        print(o_note)
    print("\nrestic check of desktop-agent's copy after its backups ...", flush=True)
    subprocess.run(["restic", "-r", str(mine), "-q", "check"], env=restic.env, check=True)
    print("  ok")
    if args.no_tree:
        return

    # --- a tree of 200,000 files in the running agent, into the 1M-blob repository
    tree = workdir / f"tree-{args.tree_files}"
    if not tree.exists():
        print(f"\nmaking a tree of {args.tree_files:,} files ...", flush=True)
        make_tree(tree, args.tree_files)
    warm_agent(
        workdir,
        tree,
        args.repeat,
        label=f"{args.tree_files:,} files into the {entries:,}-blob repository",
        base_repo=base,
        copy_source=False,
    )


if __name__ == "__main__":
    main()
