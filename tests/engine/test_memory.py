"""The garbage collector's thresholds while a backup runs."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading

import pytest
from support import PASSWORD, write

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
_FAULTS = """
import contextlib, resource, sys
from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.memory import steady_buffers
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import LocalStorage
repo = Repository.open(LocalStorage(sys.argv[1]), sys.argv[4])
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
with steady_buffers() if sys.argv[3] == "steady" else contextlib.nullcontext():
    backup(repo, BackupOptions(sources=[sys.argv[2]], helpers=0))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_backup_keeps_its_buffers_instead_of_faulting_them_in_again(tmp_path, new_repo):
    """Large files' chunks pass through buffers of a few MiB: in steady_buffers
    (the command line's backup) they stay with the process (page faults are
    counted: no timing)."""
    src = tmp_path / "src"
    for i in range(4):
        write(src / f"big{i}.bin", os.urandom(24 << 20))
    faults = {}
    for mode in ("plain", "steady"):
        where = tmp_path / f"repo-{mode}"
        new_repo(where)
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS, str(where), str(src), mode, PASSWORD],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        faults[mode] = int(out.split()[-1])
    assert faults["steady"] < 0.6 * faults["plain"], faults


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
