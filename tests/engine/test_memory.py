"""The garbage collector's thresholds and malloc's buffer policy while a backup runs."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading

import pytest
from support import write

from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.memory import FEWER_GC_PASSES, fewer_gc_passes
from desktop_agent.engine.progress import Progress


def test_thresholds_are_raised_while_a_backup_runs_and_put_back_after(tmp_path, mem_repo):
    for i in range(50):
        write(tmp_path / "src" / f"f{i}", b"x" * i)
    before = gc.get_threshold()
    seen = []

    def on_progress(p: Progress) -> None:
        seen.append(gc.get_threshold())

    opts = BackupOptions(sources=[str(tmp_path / "src")])
    backup(mem_repo, opts, progress=on_progress, progress_interval=0)
    # the walk's reports: raised (a first and last report come before and after)
    assert max(seen)[0] >= FEWER_GC_PASSES[0] > before[0]
    assert gc.get_threshold() == before


def test_overlapping_users_leave_the_thresholds_as_the_first_found_them():
    before = gc.get_threshold()
    first_in = threading.Event()
    second_in = threading.Event()
    first_out = threading.Event()
    during = []

    def second() -> None:
        first_in.wait()
        with fewer_gc_passes():
            second_in.set()
            first_out.wait()
            during.append(gc.get_threshold())  # the first has left: still raised

    t = threading.Thread(target=second)
    t.start()
    with fewer_gc_passes():
        first_in.set()
        second_in.wait()
        with fewer_gc_passes():  # nested in one thread as well
            pass
        assert gc.get_threshold()[0] == FEWER_GC_PASSES[0]
    first_out.set()
    t.join()
    assert during[0][0] == FEWER_GC_PASSES[0]
    assert gc.get_threshold() == before


# ------------------------------------------------------ steady buffers
# The pattern of a backup's large buffers, in one thread so that the count
# is the same every run: chunks of 0.5-8 MiB, a few alive at a time, each
# written in full. A whole backup's count varied by 15-30 % between runs
# (its threads' arenas), too much to tell the two policies apart reliably.
_FAULTS = """
import contextlib, random, resource, sys
from desktop_agent.engine.memory import steady_buffers
rng = random.Random(5)
sizes = [rng.randint(512 << 10, 8 << 20) for _ in range(200)]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
with steady_buffers() if sys.argv[1] == "steady" else contextlib.nullcontext():
    alive = []
    for n in sizes:
        alive.append(b"\\x01" * n)  # written: every page touched
        if len(alive) > 4:
            alive.pop(0)
    alive.clear()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_buffers_are_kept_instead_of_faulted_in_again():
    """In steady_buffers (the command line's backup and restore) large buffers
    stay with the process: page faults are counted, no timing (here: 57,464
    against 9,850, every run)."""
    faults = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True
            ).stdout
        )
        for mode in ("plain", "steady")
    }
    assert faults["steady"] < 0.5 * faults["plain"], faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_steady_buffers_nest_and_give_the_memory_back():
    code = (
        "import resource\n"
        "from desktop_agent.engine.memory import steady_buffers\n"
        "def rss():\n"
        "    return int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()\n"
        "with steady_buffers():\n"
        "    with steady_buffers():\n"
        "        for _ in range(20):\n"
        "            b = bytearray(8 << 20); del b\n"
        "    kept = rss()\n"
        "left = rss()\n"
        "print(kept, left)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    kept, left = map(int, out.stdout.split())
    # inside: the last buffers' memory is kept; outside: it is given back
    assert kept - left >= 4 << 20, (kept, left)
