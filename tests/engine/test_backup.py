"""The backup pipeline: incremental runs, dedup, progress, pause/resume/cancel."""

from __future__ import annotations

import os
import threading
import time

import pytest
from support import above, reopen, signature, subtree_at, tree_bytes, write

from desktop_agent.engine import crypto
from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.check import check
from desktop_agent.engine.chunker import Chunker
from desktop_agent.engine.control import Control
from desktop_agent.engine.errors import Cancelled, SourceError
from desktop_agent.engine.progress import Progress
from desktop_agent.engine.restore import RestoreOptions, restore
from desktop_agent.engine.storage import FileType


def _restore_all(repo, tmp_path, name="out"):
    target = tmp_path / name
    res = restore(
        reopen(repo), reopen(repo).find_snapshot("latest"), RestoreOptions(target=str(target))
    )
    assert res.errors == ()
    return target


def test_unchanged_files_are_not_read_again(tmp_path, mem_repo):
    src = tmp_path / "src"
    for i in range(30):
        write(src / f"d{i % 3}" / f"f{i}.bin", os.urandom(10_000 + i))
    repo = mem_repo
    first = backup(repo, BackupOptions(sources=[str(src)]))
    assert first.summary.files_new == 30

    times_above = above(src)
    second = backup(reopen(repo), BackupOptions(sources=[str(src)]))
    assert second.summary.files_unmodified == 30
    assert second.summary.files_new == second.summary.files_changed == 0
    assert second.summary.data_blobs == 0
    r = reopen(repo)
    assert subtree_at(r, second.snapshot.tree, src) == subtree_at(r, first.snapshot.tree, src)
    if above(src) == times_above:  # else another process changed /tmp: new trees above src
        assert second.summary.data_added == 0
        assert second.snapshot.tree == first.snapshot.tree
    assert second.snapshot.parent == first.snapshot.id

    write(src / "d1" / "f4.bin", b"changed")
    write(src / "d2" / "new.bin", b"brand new")
    third = backup(reopen(repo), BackupOptions(sources=[str(src)]))
    assert (
        third.summary.files_new,
        third.summary.files_changed,
        third.summary.files_unmodified,
    ) == (1, 1, 29)
    assert third.summary.dirs_unmodified >= 1  # d0 did not change
    assert signature(_restore_all(repo, tmp_path) / str(src).lstrip("/")) == signature(src)


def test_duplicate_and_shifted_data_is_stored_once(tmp_path, mem_repo):
    src = tmp_path / "src"
    data = os.urandom(12 * 1024 * 1024)
    shifted = os.urandom(333) + data
    write(src / "a.bin", data)
    write(src / "copy.bin", data)
    write(src / "shifted.bin", shifted)
    repo = mem_repo
    res = backup(repo, BackupOptions(sources=[str(src)]))
    # one copy plus exactly the chunks around the inserted bytes: the chunker
    # finds the old boundaries again after them (how far after is random, so
    # the figure is computed, not bounded)
    chunker = Chunker(crypto.chunker_seed(repo.key, repo.config.id))
    known = {crypto.sha256(c) for c in chunker.buffer(data)}
    extra = sum(len(c) for c in chunker.buffer(shifted) if crypto.sha256(c) not in known)
    # data_added counts tree blobs too (as restic's does): a few KB here
    assert len(data) + extra <= res.summary.data_added < len(data) + extra + 64 * 1024
    assert extra < len(data) / 2  # the shifted copy shares most of its chunks
    packs = sum(size for _, size in repo.storage.list(FileType.PACK))
    assert packs < len(data) + extra + 64 * 1024  # headers and trees on top


def test_compressible_data_is_compressed(tmp_path, mem_repo):
    src = tmp_path / "src"
    write(src / "text.txt", b"the quick brown fox jumps over the lazy dog\n" * 100_000)
    repo = mem_repo
    res = backup(repo, BackupOptions(sources=[str(src)]))
    assert res.summary.data_added_packed < res.summary.data_added / 20


def test_excludes_apply(tmp_path, mem_repo):
    src = tmp_path / "src"
    write(src / "keep.txt", b"k")
    write(src / "drop.tmp", b"d")
    write(src / "sub" / ".cache" / "junk", b"j")
    write(src / "sub" / "keep2.txt", b"k2")
    repo = mem_repo
    backup(repo, BackupOptions(sources=[str(src)], excludes=["*.tmp", "**/.cache"]))
    out = _restore_all(repo, tmp_path) / str(src).lstrip("/")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "keep.txt",
        "sub",
        "sub/keep2.txt",
    ]


def test_progress_reports_seed_fields_and_ends_complete(tmp_path, mem_repo):
    src = tmp_path / "src"
    for i in range(40):
        write(src / f"f{i}", os.urandom(50_000))
    write(src / "large.bin", os.urandom(5 * 1024 * 1024))
    seen: list[Progress] = []
    repo = mem_repo
    backup(repo, BackupOptions(sources=[str(src)]), progress=seen.append, progress_interval=0)
    assert len(seen) > 5
    done = [p.bytes_done for p in seen]
    assert done == sorted(done)
    final = seen[-1]
    assert final.final and final.scan_finished
    total = 40 * 50_000 + 5 * 1024 * 1024
    assert final.bytes_done == final.bytes_total == total
    assert final.files_done == final.files_total == 41
    assert any(p.current_file.endswith("large.bin") for p in seen)


def _run_in_thread(fn):
    box: dict[str, object] = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    return t, box


def test_pause_holds_still_and_resume_finishes(tmp_path, new_repo):
    src = tmp_path / "src"
    for i in range(6):
        write(src / f"big{i}.bin", os.urandom(4 * 1024 * 1024))
    repo = new_repo()
    control = Control()
    started = threading.Event()
    acknowledged = threading.Event()
    reported_while_paused = threading.Event()
    seen: list[Progress] = []

    def on_progress(p: Progress) -> None:
        seen.append(p)
        if acknowledged.is_set() and control.paused:
            reported_while_paused.set()
        if p.bytes_done > 0:
            started.set()

    t, box = _run_in_thread(
        lambda: backup(
            repo,
            BackupOptions(sources=[str(src)]),
            progress=on_progress,
            control=control,
            progress_interval=0,
        )
    )
    assert started.wait(30)
    control.pause()
    # acknowledged once readers, workers and uploads have settled: from here
    # on nothing is read, written or reported until the resume
    assert control.wait_paused(5)
    acknowledged.set()
    frozen = seen[-1].bytes_done
    held = len(seen)
    on_disk = tree_bytes(repo.storage.location)
    assert not reported_while_paused.wait(0.5)  # a report that must not come
    assert seen[-1].bytes_done == frozen and len(seen) == held
    assert tree_bytes(repo.storage.location) == on_disk  # and nothing written
    assert t.is_alive()
    control.resume()
    t.join(60)
    assert "error" not in box, box.get("error")
    result = box["result"]
    assert result.summary.total_bytes_processed == 6 * 4 * 1024 * 1024
    assert signature(_restore_all(repo, tmp_path) / str(src).lstrip("/")) == signature(src)


def test_cancel_leaves_a_valid_repository_and_no_snapshot(tmp_path, new_repo, restic):
    src = tmp_path / "src"
    for i in range(8):
        write(src / f"big{i}.bin", os.urandom(4 * 1024 * 1024))
    repo = new_repo()
    control = Control()
    halfway = 12 * 1024 * 1024

    def on_progress(p: Progress) -> None:
        if p.bytes_done >= halfway:
            control.cancel()

    with pytest.raises(Cancelled):
        backup(
            repo,
            BackupOptions(sources=[str(src)]),
            progress=on_progress,
            control=control,
            progress_interval=0,
        )
    assert list(repo.storage.list(FileType.SNAPSHOT)) == []
    assert list(repo.storage.list(FileType.LOCK)) == []
    assert check(reopen(repo), read_data=True).ok
    restic(repo.storage.location, "check", "--read-data")

    # the next run reuses what the cancelled one stored
    again = backup(reopen(repo), BackupOptions(sources=[str(src)]))
    assert again.summary.data_added < 32 * 1024 * 1024 - halfway // 2
    restic(repo.storage.location, "check", "--read-data")


def test_cancel_while_paused(tmp_path, mem_repo):
    src = tmp_path / "src"
    write(src / "big.bin", os.urandom(20 * 1024 * 1024))
    repo = mem_repo
    control = Control()
    control.pause()
    t, box = _run_in_thread(
        lambda: backup(repo, BackupOptions(sources=[str(src)]), control=control)
    )
    assert control.wait_paused(10)
    control.cancel()
    t.join(30)
    assert isinstance(box.get("error"), Cancelled)
    assert list(repo.storage.list(FileType.SNAPSHOT)) == []


def test_missing_sources(tmp_path, mem_repo):
    repo = mem_repo
    with pytest.raises(SourceError, match="no backup source exists"):
        backup(repo, BackupOptions(sources=[str(tmp_path / "nope")]))
    present = write(tmp_path / "here" / "a.txt", b"a").parent
    res = backup(repo, BackupOptions(sources=[str(present), str(tmp_path / "gone")]))
    assert [s.reason for s in res.skipped] == ["source does not exist"]
    assert res.skipped[0].path == str(tmp_path / "gone")


def test_file_shrinking_while_read_is_stored_as_read(tmp_path, mem_repo):
    src = tmp_path / "src"
    big = write(src / "shrinks.bin", os.urandom(30 * 1024 * 1024))
    truncated = threading.Event()

    def on_progress(p: Progress) -> None:
        if p.current_file.endswith("shrinks.bin") and p.bytes_done > 0 and not truncated.is_set():
            os.truncate(big, 9 * 1024 * 1024)
            truncated.set()

    repo = mem_repo
    res = backup(repo, BackupOptions(sources=[str(src)]), progress=on_progress, progress_interval=0)
    assert truncated.is_set()
    assert any("changed while it was backed up" in w for w in res.warnings)
    out = _restore_all(repo, tmp_path) / str(src).lstrip("/") / "shrinks.bin"
    size = out.stat().st_size
    assert 9 * 1024 * 1024 <= size < 30 * 1024 * 1024  # what was read, consistently
    assert check(reopen(repo), read_data=True).ok
    # the next backup notices the change and stores the file as it is now
    again = backup(reopen(repo), BackupOptions(sources=[str(src)]))
    assert again.summary.files_changed == 1
    assert (
        _restore_all(repo, tmp_path, "again") / str(src).lstrip("/") / "shrinks.bin"
    ).read_bytes() == big.read_bytes()


def test_a_small_file_written_after_its_listing_is_stored_as_read(tmp_path, mem_repo, monkeypatch):
    """A small file is read some time after its directory was listed; written
    in between, it is stored as read, with the size read and the mtime it was
    listed with (older than its content), so the next backup reads it again."""
    from desktop_agent.engine import walker

    src = tmp_path / "src"
    notes = write(src / "notes.txt", b"first\n", 1_600_000_000_000_000_000)
    real_list_dir = walker.Walker.list_dir

    def list_dir(self, path):  # type: ignore[no-untyped-def]
        listing = real_list_dir(self, path)
        if path == os.fsencode(src):  # after the listing, before any read
            write(notes, b"second, and longer\n", 1_600_000_000_000_000_000)
        return listing

    monkeypatch.setattr(walker.Walker, "list_dir", list_dir)
    res = backup(mem_repo, BackupOptions(sources=[str(src)]))
    monkeypatch.undo()
    assert any(f"{notes} changed while it was backed up" in w for w in res.warnings)
    (node,) = [n for n in mem_repo.load_tree(subtree_at(mem_repo, res.snapshot.tree, src))]
    assert node.mtime == 1_600_000_000_000_000_000  # as listed
    assert node.size == len(b"second, and longer\n")  # as read
    out = _restore_all(mem_repo, tmp_path) / str(src).lstrip("/") / "notes.txt"
    assert out.read_bytes() == b"second, and longer\n"
    # its ctime moved on since the listing: the next backup reads it again
    again = backup(reopen(mem_repo), BackupOptions(sources=[str(src)]))
    assert again.summary.files_changed == 1 and not again.warnings


def test_file_vanishing_before_it_is_read(tmp_path, mem_repo):
    src = tmp_path / "src"
    write(src / "a-stays.txt", b"a")
    doomed = write(src / "b-vanishes.txt", b"b")
    write(src / "c-stays.txt", b"c")

    def on_progress(p: Progress) -> None:
        # small files are read in batches after the directory is listed
        if p.current_file.endswith("c-stays.txt") and doomed.exists():
            doomed.unlink()

    repo = mem_repo
    res = backup(repo, BackupOptions(sources=[str(src)]), progress=on_progress, progress_interval=0)
    assert res.skipped == ()
    assert any("vanished" in w for w in res.warnings)
    out = _restore_all(repo, tmp_path) / str(src).lstrip("/")
    assert sorted(p.name for p in out.iterdir()) == ["a-stays.txt", "c-stays.txt"]


def test_empty_files_dangling_links_and_a_sparse_gigabyte(tmp_path, mem_repo):
    src = tmp_path / "src"
    src.mkdir()
    (src / "empty").write_bytes(b"")
    os.symlink("missing-target", src / "dangling")
    sparse = src / "sparse.img"
    with open(sparse, "wb") as fh:
        fh.truncate(1 << 30)
        fh.seek(512 * 1024 * 1024)
        fh.write(b"middle")
    repo = mem_repo
    res = backup(repo, BackupOptions(sources=[str(src)]))
    assert res.skipped == ()
    assert res.summary.data_added_packed < 1024 * 1024  # zeros dedup and compress away
    out = _restore_all(repo, tmp_path) / str(src).lstrip("/")
    assert (out / "empty").read_bytes() == b""
    assert os.readlink(out / "dangling") == "missing-target"
    restored = out / "sparse.img"
    assert restored.stat().st_size == 1 << 30
    assert restored.stat().st_blocks * 512 < 64 * 1024 * 1024  # holes stay holes
    with open(restored, "rb") as fh:
        fh.seek(512 * 1024 * 1024)
        assert fh.read(6) == b"middle"


def _helper_pids() -> list[int]:
    """Our helper processes (children running desktop_agent.engine.smallfiles)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if ppid == os.getpid() and b"desktop_agent.engine.smallfiles" in cmd:
            pids.append(int(entry))
    return pids


@pytest.mark.parametrize("by_fd", [True, False], ids=["socketpair", "loopback"])
def test_many_small_files_go_through_helper_processes(
    tmp_path, new_repo, restic, monkeypatch, by_fd
):
    """Past 2000 small files, helper processes read and seal them; duplicates
    routed to the same helper are stored once; the result is the same tree.
    Helpers get their socket by descriptor (POSIX) or connect back to a
    loopback port with a one-time token (Windows, where subprocess cannot
    pass descriptors): both are run here."""
    from desktop_agent.engine import smallfiles

    monkeypatch.setattr(smallfiles, "PASS_FDS", by_fd)

    src = tmp_path / "src"
    for i in range(2600):
        write(src / f"d{i // 500}" / f"f{i}.txt", f"file {i % 2300}\n".encode() * (i % 7 + 1))
    (src / "d1" / "empty").write_bytes(b"")
    repo = new_repo()
    saw_helper = []
    calls = [0]

    def on_progress(p: Progress) -> None:
        calls[0] += 1
        if not saw_helper and calls[0] % 25 == 0 and _helper_pids():
            saw_helper.append(True)

    res = backup(
        repo,
        BackupOptions(sources=[str(src)], helpers=2),
        progress=on_progress,
        progress_interval=0,
    )
    assert saw_helper, "no helper process was started"
    deadline = time.monotonic() + 5
    while _helper_pids() and time.monotonic() < deadline:
        time.sleep(0.01)  # they are reaped right after the backup (not waited for)
    assert not _helper_pids()
    assert res.summary.files_new == 2601
    assert res.summary.data_blobs <= 2300 * 7  # duplicates stored once
    restic(repo.storage.location, "check", "--read-data")
    assert signature(_restore_all(repo, tmp_path) / str(src).lstrip("/")) == signature(src)
    assert os.listdir(os.path.join(repo.storage.location, "tmp")) == []


def test_a_helper_that_dies_is_replaced_by_the_backup_itself(tmp_path, new_repo, restic):
    import signal

    src = tmp_path / "src"
    for i in range(4000):
        write(src / f"d{i // 400}" / f"f{i}.txt", os.urandom(200 + i % 300))
    repo = new_repo()
    killed = []

    def on_progress(p: Progress) -> None:
        if not killed and p.files_done > 1000:
            for pid in _helper_pids():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    res = backup(
        repo,
        BackupOptions(sources=[str(src)], helpers=1),
        progress=on_progress,
        progress_interval=0,
    )
    assert killed
    assert any("helper process failed" in w for w in res.warnings)
    restic(repo.storage.location, "check", "--read-data")
    assert signature(_restore_all(repo, tmp_path) / str(src).lstrip("/")) == signature(src)


def test_a_first_backup_hands_small_files_to_helpers_from_300_on(tmp_path, new_repo, restic):
    """A first backup of the sources reads every file: helpers start after 300
    small files, not 2000; with a parent snapshot it takes 2000 again."""
    src = tmp_path / "src"
    for i in range(700):
        write(src / f"d{i // 100}" / f"f{i}.txt", f"file {i}\n".encode())
    seen: list[bool] = []

    def on_progress(p: Progress) -> None:
        if not seen and _helper_pids():
            seen.append(True)

    repo = new_repo()
    opts = BackupOptions(sources=[str(src)], helpers=2)
    res = backup(repo, opts, progress=on_progress, progress_interval=0)
    assert seen, "no helper process was started"
    assert res.summary.files_new == 700
    restic(repo.storage.location, "check", "--read-data")
    assert signature(_restore_all(repo, tmp_path) / str(src).lstrip("/")) == signature(src)
    for i in range(700):
        write(src / f"d{i // 100}" / f"f{i}.txt", f"file {i} changed\n".encode())
    seen.clear()
    res = backup(reopen(repo), opts, progress=on_progress, progress_interval=0)
    assert res.summary.files_changed == 700
    assert not seen  # 700 changed files with a parent: threads do them


def test_batches_of_long_paths_never_overfill_a_helpers_socket(
    tmp_path, new_repo, restic, monkeypatch
):
    """What the walker has sent a helper and not had answered stays within
    the room of the helper's socket (a larger batch goes alone), so that the
    walker is never blocked sending while the helper is blocked answering."""
    from desktop_agent.engine import helperpool, smallfiles

    # sockets of 64 KiB: each batch of 128 such paths (230 KB) is larger
    monkeypatch.setattr(smallfiles, "SOCKET_BUFFER", 64 * 1024)

    deep = tmp_path / "src"
    for level in range(7):
        deep = deep / (f"{level}" * 250)  # paths of about 1,800 bytes
    for i in range(3000):
        write(deep / f"f{i}.txt", f"file {i}\n".encode())
    seen: list[tuple[int, int, int]] = []  # (batches queued, bytes queued, cap)
    real_send = helperpool.Helpers.send

    def send(self, helper, batch_id, *files):
        real_send(self, helper, batch_id, *files)
        pool = pools[0]
        seen.append((self.outstanding[helper], pool.queued_bytes[helper], self.room[helper]))

    pools: list[helperpool.HelperPool] = []
    real_init = helperpool.HelperPool.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        pools.append(self)

    monkeypatch.setattr(helperpool.Helpers, "send", send)
    monkeypatch.setattr(helperpool.HelperPool, "__init__", init)
    repo = new_repo()
    res = backup(repo, BackupOptions(sources=[str(tmp_path / "src")], helpers=2))
    assert res.summary.files_new == 3000
    assert len(seen) > 5
    # each batch of 128 such paths is over the room: it is only sent to an idle helper
    assert all(batches == 1 or nbytes <= cap for batches, nbytes, cap in seen)
    assert all(cap < 128 * 1800 for _, _, cap in seen)
    assert all(batches == 1 for batches, _, _ in seen)
    restic(repo.storage.location, "check", "--read-data")
    assert signature(_restore_all(repo, tmp_path) / str(tmp_path / "src").lstrip("/")) == (
        signature(tmp_path / "src")
    )


def test_a_source_matching_an_exclude_is_left_out(tmp_path, mem_repo):
    keep = write(tmp_path / "keep" / "a.txt", b"a").parent
    drop = write(tmp_path / "cache.tmp" / "b.txt", b"b").parent
    repo = mem_repo
    res = backup(repo, BackupOptions(sources=[str(keep), str(drop)], excludes=["*.tmp"]))
    assert res.summary.total_files_processed == 1
