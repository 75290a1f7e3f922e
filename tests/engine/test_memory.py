"""The garbage collector's thresholds while a backup runs."""

from __future__ import annotations

import gc
import threading

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
