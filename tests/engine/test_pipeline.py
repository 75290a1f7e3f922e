"""The values the backup's parts share: one stats type for the snapshot's summary."""

from __future__ import annotations

import dataclasses
import os
import threading
from concurrent.futures import Future

from support import write

from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.pipeline import BackupStats, DirJob, FileJob, Notices
from desktop_agent.engine.progress import ProgressState
from desktop_agent.engine.snapshot import BackupCounts, SnapshotSummary
from desktop_agent.engine.tree import Node, NodeType


def test_the_stats_are_the_summarys_counters() -> None:
    """The counters are declared once (BackupCounts); both types are built on them."""
    counters = [f.name for f in dataclasses.fields(BackupCounts)]
    assert len(counters) == 12
    assert [f.name for f in dataclasses.fields(BackupStats)] == counters
    assert [f.name for f in dataclasses.fields(SnapshotSummary)] == [
        *counters,
        "backup_start",
        "backup_end",
    ]
    # written in restic's order: the times first
    assert list(SnapshotSummary().to_json()) == ["backup_start", "backup_end", *counters]


def test_add_and_summary() -> None:
    a = BackupStats(files_new=2, dirs_new=1, total_files_processed=2, total_bytes_processed=10)
    a.add_blob(10, 8)
    b = BackupStats(files_unmodified=3, dirs_unmodified=1)
    b.add_blob(300, 120, tree=True)
    a.add(b)
    assert a == BackupStats(
        files_new=2,
        files_unmodified=3,
        dirs_new=1,
        dirs_unmodified=1,
        data_blobs=1,
        tree_blobs=1,
        data_added=310,
        data_added_packed=128,
        total_files_processed=2,
        total_bytes_processed=10,
    )
    assert b == BackupStats(
        files_unmodified=3, dirs_unmodified=1, tree_blobs=1, data_added=300, data_added_packed=120
    )
    summary = a.summary("2024-01-01T00:00:00Z", "2024-01-01T00:00:01Z")
    assert summary == SnapshotSummary(
        backup_start="2024-01-01T00:00:00Z",
        backup_end="2024-01-01T00:00:01Z",
        **dataclasses.asdict(a),
    )


def test_a_backups_summary_adds_up_every_parts_counts(tmp_path, mem_repo) -> None:
    src = tmp_path / "src"
    write(src / "a" / "small.txt", b"small\n")
    write(src / "a" / "large.bin", os.urandom(700_000))
    write(src / "b" / "empty", b"")
    first = backup(mem_repo, BackupOptions(sources=[str(src)], helpers=0)).summary
    assert (first.files_new, first.files_changed, first.files_unmodified) == (3, 0, 0)
    assert first.total_files_processed == 3
    assert first.total_bytes_processed == 6 + 700_000
    assert first.dirs_new >= 3  # a, b, src and the directories above it
    assert first.data_blobs >= 2 and first.tree_blobs == first.dirs_new
    write(src / "b" / "new.txt", b"new\n")
    second = backup(mem_repo, BackupOptions(sources=[str(src)], helpers=0)).summary
    assert (second.files_new, second.files_unmodified, second.data_blobs) == (1, 3, 1)
    assert second.dirs_unmodified >= 1  # a


def test_a_file_job_is_done_when_all_its_work_is() -> None:
    job = FileJob(b"/x", Node(name=b"x", type=NodeType.FILE))
    assert not job.done()  # not handed out yet
    job.submitted = True
    batch: Future[None] = Future()
    job.batch = batch
    assert not job.done()
    batch.set_result(None)
    assert job.done()
    job.pending = True  # a helper's answer is not durable yet
    assert not job.done()
    job.pending = False
    directory = DirJob(b"/", None, None)
    directory.entries = [Node(name=b"n", type=NodeType.FILE), job]
    assert directory.ready()


def test_notices_from_many_threads() -> None:
    progress = ProgressState(None)
    notices = Notices(progress)

    def work(i: int) -> None:
        for j in range(100):
            notices.skip(f"/t{i}/f{j}".encode(), "gone")
            notices.warn(f"w{i}-{j}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(notices.skipped) == len(notices.warnings) == progress.errors == 400
