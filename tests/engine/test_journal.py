"""The change journal: backups that list only what changed, and never miss a change.

Real inotify watches, and real fanotify marks where this process may mark a
file system (root), on real directories; every journal backup is compared
with a full scan of the same tree (same root tree id).
"""

from __future__ import annotations

import mmap
import os
import random
import shutil
import time
from pathlib import Path

import pytest
from support import above, refuse_listing, reopen, subtree_at, write

from desktop_agent.engine import watch_fanotify, watch_inotify, watch_linux
from desktop_agent.engine.backup import BackupOptions, BackupResult, backup
from desktop_agent.engine.journal import ChangeJournal

pytestmark = pytest.mark.skipif(not watch_inotify.available(), reason="inotify is Linux only")


def _may_mark_file_systems() -> bool:
    try:
        watch_fanotify.FanotifyWatcher(ChangeJournal(lambda j: None)).close()
    except OSError:
        return False
    return True


FACTORIES = {"inotify": watch_inotify.start, "fanotify": watch_fanotify.start}
# every behaviour below holds for both watchers; fanotify needs CAP_SYS_ADMIN
WATCHERS = [
    pytest.param("inotify"),
    pytest.param(
        "fanotify",
        marks=pytest.mark.skipif(
            not _may_mark_file_systems(), reason="marking a file system needs CAP_SYS_ADMIN"
        ),
    ),
]


def until(cond, timeout=10.0):
    """Wait for a condition the reader thread makes true."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def _failing(monkeypatch, module, call: str, err: int, when) -> None:
    """Play a kernel refusal: ``module``'s libc ``call`` fails with errno
    ``err`` whenever ``when(*args)`` says so (as root, nothing is refused)."""
    import ctypes

    real_lib = module._libc()

    class Lib:
        def __getattr__(self, name):
            real = getattr(real_lib, name)
            if name != call:
                return real

            def refused(*args):
                if when(*args):
                    ctypes.set_errno(err)
                    return -1
                return real(*args)

            return refused

    monkeypatch.setattr(module, "_libc", Lib)


def append(path, data: bytes) -> None:
    """Write ``data`` at the end of the file at ``path`` (a change the journal must see)."""
    with open(path, "ab") as fh:
        fh.write(data)


def _journal(kind: str = "inotify", **kw) -> ChangeJournal:
    return ChangeJournal(FACTORIES[kind], **kw)


@pytest.mark.parametrize("kind", WATCHERS)
def test_watcher_marks_the_changed_directory(tmp_path, kind):
    journal = _journal(kind)
    try:
        journal.begin("k", None)  # starts the watcher
        a, b = tmp_path / "a", tmp_path / "a" / "b"
        b.mkdir(parents=True)
        for d in (a, b):
            journal.watch(bytes(d))
        (b / "f").write_bytes(b"x")
        until(lambda: bytes(b) in journal._dirty)
        assert bytes(a) not in journal._dirty
        # a moved subdirectory: nothing below its old path is vouched for
        (a / "b").rename(a / "c")
        until(lambda: bytes(b) in journal._gone)
        assert bytes(a) in journal._dirty
    finally:
        journal.close()


def test_the_watch_limit_turns_the_journal_off(tmp_path):
    journal = ChangeJournal(lambda j: watch_inotify.InotifyWatcher(j, max_watches=2))
    try:
        journal.begin("k", None)
        for i in range(3):
            (tmp_path / str(i)).mkdir()
            journal.watch(bytes(tmp_path / str(i)))
        assert not journal.active
        run = journal.begin("k", b"x")
        assert run.full and "watch limit" in run.reason
    finally:
        journal.close()


class Lab:
    """A source tree, a repository, a journal, and the oracle: a full scan."""

    def __init__(self, tmp_path: Path, repo, kind: str = "inotify") -> None:
        self.kind = kind
        self.tmp = tmp_path
        self.src = tmp_path / "src"
        self.cache = tmp_path / "cache"
        self.cache.mkdir()
        self.repo = repo
        self.journal = _journal(kind, recheck=0.0)  # no re-checks: a miss must show
        self.rng = random.Random(7)
        self.counter = 0

    def close(self) -> None:
        self.journal.close()

    def build(self) -> None:
        for d in range(4):
            for s in range(3):
                for f in range(4):
                    write(self.src / f"d{d}" / f"s{s}" / f"f{f}.txt", f"{d}{s}{f}".encode() * 50)
        (self.src / "d0" / "deep" / "deeper").mkdir(parents=True)
        write(self.src / "d0" / "deep" / "deeper" / "x.bin", os.urandom(3000))
        # one file under two names in two directories
        os.link(self.src / "d1" / "s0" / "f0.txt", self.src / "d2" / "s1" / "linked.txt")

    def options(self, **kw) -> BackupOptions:
        """The journal backup's options (``kw`` overrides them)."""
        base = {
            "sources": [str(self.src)],
            "cache_dir": str(self.cache),
            "journal": self.journal,
            "scan": False,
        }
        return BackupOptions(**{**base, **kw})

    def journal_backup(self) -> BackupResult:
        return backup(reopen(self.repo), self.options())

    def tree(self, res: BackupResult) -> bytes:
        """The source's tree in a snapshot (the folders above it change anytime)."""
        return subtree_at(reopen(self.repo), res.snapshot.tree, self.src)

    def full_scan(self) -> bytes:
        # another host: not a parent of the journal's backups; no cache, no parent
        opts = BackupOptions(sources=[str(self.src)], host="oracle", scan=False, parent=None)
        return self.tree(backup(reopen(self.repo), opts))

    # ------------------------------------------------------------ mutations
    def files(self) -> list[Path]:
        return sorted(p for p in self.src.rglob("*") if p.is_file() and not p.is_symlink())

    def dirs(self) -> list[Path]:
        return sorted(p for p in self.src.rglob("*") if p.is_dir())

    def pick(self, items):
        return items[self.rng.randrange(len(items))] if items else None

    def mutate(self, kind: str) -> None:
        self.counter += 1
        n = self.counter
        files, dirs = self.files(), self.dirs()  # dirs: below src, not src itself
        if (kind in _NEEDS_FILE and not files) or (kind in _NEEDS_DIR and not dirs):
            return  # the random changes so far left nothing to change this way
        if kind == "write":
            f = self.pick(files)
            append(f, b"more %d" % n)
        elif kind == "truncate":
            f = self.pick(files)
            os.truncate(f, max(0, f.stat().st_size // 2))
        elif kind == "rename_file":
            f = self.pick(files)
            f.rename(f.with_name(f"renamed{n}.txt"))
        elif kind == "rename_dir":
            d = self.pick([d for d in dirs if d != self.src])
            d.rename(d.with_name(f"{d.name}-r{n}"))
        elif kind == "move_between":
            f = self.pick(files)
            d = self.pick([d for d in dirs if d != f.parent]) or self.src
            f.rename(d / f"moved{n}")
        elif kind == "move_dir_between":
            d = self.pick([d for d in dirs if d.parent != self.src])
            target = self.pick([t for t in dirs if t != d and d not in t.parents])
            if d is not None and target is not None and target != d.parent:
                d.rename(target / f"{d.name}-m{n}")
        elif kind == "mmap":
            f = self.pick([f for f in files if f.stat().st_size > 0])
            if f is None:
                return
            with open(f, "r+b") as fh, mmap.mmap(fh.fileno(), 0) as mm:
                mm[0:1] = b"Z" if mm[0:1] != b"Z" else b"Y"
                mm.flush()
        elif kind == "hardlink_write":
            linked = [f for f in files if f.stat().st_nlink > 1]
            if linked:
                # written through the other name: the event is for the other directory
                other = [g for g in linked if g.stat().st_ino == linked[0].stat().st_ino]
                append(other[-1], b"via link %d" % n)
        elif kind == "delete":
            f = self.pick(files)
            f.unlink()
        elif kind == "delete_dir":
            d = self.pick([d for d in dirs if d != self.src])
            shutil.rmtree(d)
        elif kind == "new_subtree":
            d = self.pick(dirs) or self.src
            base = d / f"new{n}"
            for i in range(3):
                write(base / f"a{i}" / "b" / f"g{i}.txt", b"new %d %d" % (n, i))
        elif kind == "chmod":
            f = self.pick(files)
            os.chmod(f, 0o600 if f.stat().st_mode & 0o077 else 0o644)
        elif kind == "symlink":
            d = self.pick(dirs) or self.src
            os.symlink(f"target{n}", d / f"link{n}")
        elif kind == "replace_file":  # renamed over another file
            a, b = self.pick(files), self.pick(files)
            if a is not None and b is not None and a != b:
                a.rename(b)
        elif kind == "older_mtime":
            f = self.pick(files)
            s = f.stat()
            os.utime(f, ns=(s.st_atime_ns, s.st_mtime_ns - 10**9 * self.rng.randrange(1, 100)))
        elif kind == "xattr":
            f = self.pick(files)
            try:
                os.setxattr(f, b"user.test", b"%d" % n)
            except OSError:
                pass  # a file system without user attributes
        elif kind == "file_to_dir":
            f = self.pick(files)
            f.unlink()
            write(f / "inside.txt", b"in %d" % n)
        elif kind == "dir_to_file":
            d = self.pick([d for d in dirs if d != self.src])
            shutil.rmtree(d)
            write(d, b"was a folder %d" % n)
        elif kind == "swap_dirs":
            a, b = self.pick(dirs), self.pick(dirs)
            if a != b and a not in b.parents and b not in a.parents:
                parked = a.with_name(f"swap{n}")
                a.rename(parked)
                b.rename(a)
                parked.rename(b)
        elif kind == "chmod_dir":
            d = self.pick(dirs) or self.src
            os.chmod(d, 0o700 if d.stat().st_mode & 0o077 else 0o755)
        elif kind == "same_size_same_mtime":  # new content, size and mtime put back
            f = self.pick(files)
            s = f.stat()
            f.write_bytes(f.read_bytes()[::-1])
            os.utime(f, ns=(s.st_atime_ns, s.st_mtime_ns))


# the changes that need a file, or a folder below the source, to work on
_NEEDS_FILE = {
    "write",
    "truncate",
    "rename_file",
    "move_between",
    "delete",
    "chmod",
    "replace_file",
    "older_mtime",
    "xattr",
    "file_to_dir",
    "same_size_same_mtime",
}
_NEEDS_DIR = {
    "rename_dir",
    "move_between",
    "move_dir_between",
    "delete_dir",
    "dir_to_file",
    "swap_dirs",
}


@pytest.fixture(params=WATCHERS)
def lab(tmp_path, mem_repo, request):
    """A built source tree, a repository and a journal (each watcher in turn);
    the journal closed after."""
    made = Lab(tmp_path, mem_repo, request.param)
    made.build()
    yield made
    made.close()


KINDS = [
    "write",
    "truncate",
    "rename_file",
    "rename_dir",
    "move_between",
    "move_dir_between",
    "mmap",
    "hardlink_write",
    "delete",
    "delete_dir",
    "new_subtree",
    "chmod",
    "symlink",
    "replace_file",
    "older_mtime",
    "xattr",
    "file_to_dir",
    "dir_to_file",
    "swap_dirs",
    "chmod_dir",
    "same_size_same_mtime",
]


WATCHER_TYPES = {
    "inotify": watch_inotify.InotifyWatcher,
    "fanotify": watch_fanotify.FanotifyWatcher,
}


def test_journal_backups_equal_full_scans_under_random_changes(lab):
    first = lab.journal_backup()
    assert type(lab.journal._watcher) is WATCHER_TYPES[lab.kind]
    assert lab.journal.last_run is not None and lab.journal.last_run.full
    assert lab.tree(first) == lab.full_scan()
    incremental = 0
    for round_ in range(14):
        kinds = [lab.rng.choice(KINDS) for _ in range(lab.rng.randrange(1, 5))]
        if round_ % 5 == 4:
            kinds = [kinds[0]]  # a round with a single change
        for kind in kinds:
            lab.mutate(kind)
        res = lab.journal_backup()
        run = lab.journal.last_run
        assert run is not None
        if not run.full:
            incremental += 1
        assert lab.tree(res) == lab.full_scan(), (round_, kinds, run.reason)
    # the journal did its work: most runs listed only what changed
    assert incremental >= 12


def test_unchanged_run_lists_nothing_below_the_sources(lab, monkeypatch):
    lab.journal_backup()
    times_above = above(lab.src)
    listed: list[bytes] = []
    from desktop_agent.engine import walker

    real = walker.Walker.list_dir

    def spy(self, path):
        listed.append(path)
        return real(self, path)

    monkeypatch.setattr(walker.Walker, "list_dir", spy)
    res = lab.journal_backup()
    run = lab.journal.last_run
    assert run is not None and not run.full
    # only the directories holding the hard-linked file (volatile) and their parents
    assert set(listed) == {
        bytes(lab.src),
        bytes(lab.src / "d1"),
        bytes(lab.src / "d1" / "s0"),
        bytes(lab.src / "d2"),
        bytes(lab.src / "d2" / "s1"),
    }
    assert res.summary.files_unmodified == len(lab.files())
    if above(lab.src) == times_above:  # else another process changed /tmp: its trees are new
        assert res.summary.tree_blobs == 0
    # one change: its directory and its ancestors are listed, not its siblings
    listed.clear()
    append(lab.src / "d3" / "s2" / "f1.txt", b"changed")
    res = lab.journal_backup()
    assert bytes(lab.src / "d3" / "s2") in listed
    assert bytes(lab.src / "d3" / "s0") not in listed
    assert res.summary.files_changed == 1
    assert lab.tree(res) == lab.full_scan()


def test_queue_overflow_means_a_full_scan(lab):
    lab.journal_backup()
    watcher = lab.journal._watcher
    assert isinstance(watcher, watch_linux.LinuxWatcher)
    flood = lab.src / "d0" / "s0"
    # the reader thread blocks on the watcher's lock: the kernel's queue
    # (16,384 events by default) fills up; events for other names are not
    # merged (fanotify merges a name's creation and deletion into one event)
    with watcher._lock:
        for i in range(17_000):
            (flood / f"tmp{i}").touch()
        for i in range(17_000):
            (flood / f"tmp{i}").unlink()
    append(lab.src / "d3" / "s1" / "f2.txt", b"after the overflow")
    until(lambda: lab.journal._broken is not None)
    res = lab.journal_backup()
    run = lab.journal.last_run
    assert run is not None and run.full and "overflow" in run.reason
    assert lab.tree(res) == lab.full_scan()
    # and the journal is trusted again after that full scan
    append(lab.src / "d3" / "s1" / "f2.txt", b"again")
    res = lab.journal_backup()
    assert not lab.journal.last_run.full
    assert lab.tree(res) == lab.full_scan()


def test_a_failed_run_hands_its_marks_back(lab):
    lab.journal_backup()
    append(lab.src / "d3" / "s1" / "f2.txt", b"changed")
    run = lab.journal.begin(("h",), b"p")  # taken, as a backup would
    lab.journal.abort(run)
    res = lab.journal_backup()  # the committed base is gone: full scan
    assert lab.journal.last_run.full
    assert lab.tree(res) == lab.full_scan()


def test_a_folder_deleted_and_made_again_is_not_taken_for_the_old_one(lab):
    lab.journal_backup()
    shutil.rmtree(lab.src / "d3" / "s1")
    res = lab.journal_backup()
    assert not lab.journal.last_run.full
    assert lab.tree(res) == lab.full_scan()
    # the same path again, other content: the cache still has the old entry
    write(lab.src / "d3" / "s1" / "f0.txt", b"a new folder")
    res = lab.journal_backup()
    assert not lab.journal.last_run.full
    assert lab.tree(res) == lab.full_scan()
    assert res.summary.files_new + res.summary.files_changed == 1


def test_a_run_that_stores_no_data_loads_no_index(tmp_path, new_repo, restic):
    """A new empty folder in a folder of folders: only trees change, no index is
    loaded, and the empty folder's tree, already stored, is stored again (the
    format allows it): restic's check and ours pass."""
    from desktop_agent.engine.check import check

    lab = Lab(tmp_path, new_repo(tmp_path / "repo0"))
    try:
        lab.build()
        (lab.src / "d0" / "empty").mkdir()
        lab.journal_backup()
        (lab.src / "new-empty").mkdir()
        repo = reopen(lab.repo)
        res = backup(repo, lab.options())
        assert not lab.journal.last_run.full
        assert not repo.index_loaded
        assert res.summary.files_unmodified == len(lab.files())
        assert res.summary.tree_blobs >= 2  # the source's tree and the empty one again
        assert lab.tree(res) == lab.full_scan()
        assert check(reopen(lab.repo), read_data=True).ok
        restic(tmp_path / "repo0", "check", "--read-data")
        from desktop_agent.engine import crypto
        from desktop_agent.engine.tree import encode_tree

        empty = crypto.sha256(encode_tree([])).hex()
        listed = restic(tmp_path / "repo0", "list", "blobs").stdout
        assert listed.count(f"tree {empty}") == 2
    finally:
        lab.close()


def test_folders_on_network_and_fuse_file_systems_are_always_listed(lab, tmp_path, monkeypatch):
    """Changes made on another machine raise no event here: with the source's
    device reported as sshfs by the mount table, nothing is reused unlisted."""
    real = watch_linux._mounts

    def mounts():
        ident, types = real()
        types = dict(types)
        types[os.stat(tmp_path).st_dev] = "fuse.sshfs"
        return ident, types

    monkeypatch.setattr(watch_linux, "_mounts", mounts)
    lab.journal_backup()
    res = lab.journal_backup()
    run = lab.journal.last_run
    assert run is not None and not run.full
    assert run.reused == 0
    assert res.summary.files_unmodified == len(lab.files())


def test_progress_totals_come_from_the_cache_not_a_second_walk(lab, monkeypatch):
    lab.journal_backup()
    from desktop_agent.engine import backup as backup_module

    def no_scan(*args, **kw):
        raise AssertionError("a counting walk ran")

    monkeypatch.setattr(backup_module, "scan", no_scan)
    seen = []
    backup(reopen(lab.repo), lab.options(scan=True), progress=seen.append)
    files = len(lab.files())
    assert seen and all(p.scan_finished and p.files_total == files for p in seen)


def test_other_sources_drop_the_old_watches(lab):
    lab.journal_backup()
    watcher = lab.journal._watcher
    assert isinstance(watcher, watch_linux.LinuxWatcher) and watcher.watches > 10
    one = lab.src / "d0"
    backup(reopen(lab.repo), lab.options(sources=[str(one)]))
    run = lab.journal.last_run
    assert run is not None and run.full
    fresh = lab.journal._watcher
    assert (
        fresh is not watcher and fresh.watches == len([d for d in one.rglob("*") if d.is_dir()]) + 1
    )


@pytest.mark.parametrize("kind", WATCHERS)
def test_mount_changes_and_the_daily_scan_mean_full_scans(tmp_path, mem_repo, monkeypatch, kind):
    now = [1_000_000.0]
    lab = Lab(tmp_path, mem_repo, kind)
    lab.journal.close()
    lab.journal = ChangeJournal(FACTORIES[kind], clock=lambda: now[0], recheck=0.0)
    try:
        lab.build()
        lab.journal_backup()
        lab.journal_backup()
        assert not lab.journal.last_run.full
        real = watch_linux._mounts
        extra: list[watch_linux.Mount] = []
        monkeypatch.setattr(watch_linux, "_mounts", lambda: (real()[0] + extra, real()[1]))
        # a mount elsewhere (a USB stick, a container): not the sources' concern
        extra.append((b"0:99", b"/", b"/run/media/someone/USB\\040stick"))
        lab.journal_backup()
        assert not lab.journal.last_run.full, lab.journal.last_run.reason
        # below a source, at one, above one (the file system it lies on); a
        # mountinfo path escapes a space as \\040
        for where in (lab.src / "d1" / "a b", lab.src, lab.tmp):
            extra.append((b"0:98", b"/", os.fsencode(where).replace(b" ", b"\\040")))
            lab.journal_backup()
            assert lab.journal.last_run.full and "mounted" in lab.journal.last_run.reason
            lab.journal_backup()
            assert not lab.journal.last_run.full
        extra.clear()  # unmounted again
        lab.journal_backup()
        assert lab.journal.last_run.full and "mounted" in lab.journal.last_run.reason
        now[0] += 25 * 3600
        lab.journal_backup()
        assert lab.journal.last_run.full and "daily" in lab.journal.last_run.reason
    finally:
        lab.close()


def test_a_change_the_journal_missed_is_caught_by_the_recheck(tmp_path, mem_repo, monkeypatch):
    lab = Lab(tmp_path, mem_repo)
    lab.journal.close()
    lab.journal = _journal(recheck=1.0)  # every directory it could reuse is re-listed
    try:
        lab.build()
        lab.journal_backup()
        # a watcher that hears nothing (as for a change no event reports)
        monkeypatch.setattr(lab.journal, "changed_many", lambda paths: None)
        monkeypatch.setattr(lab.journal, "changed", lambda path: None)
        append(lab.src / "d3" / "s0" / "f1.txt", b"unseen")
        res = lab.journal_backup()
        run = lab.journal.last_run
        assert not run.full and run.missed >= 1 and run.reused == 0
        assert lab.tree(res) == lab.full_scan()  # re-listed, so still right
        lab.journal_backup()
        assert lab.journal.last_run.full and "missed a change" in lab.journal.last_run.reason
    finally:
        lab.close()


def test_an_unreadable_folder_does_not_turn_the_journal_off(tmp_path, mem_repo, monkeypatch):
    """A folder the user may not read can be neither watched nor listed: it is
    skipped, and the journal goes on for everything else. (Run as root, the
    kernel's refusals are played: inotify_add_watch and scandir fail with EACCES
    for that folder as they would for a user.)"""
    lab = Lab(tmp_path, mem_repo)
    victim = lab.src / "d2" / "s2"
    blocked = {bytes(victim)}
    refuse_listing(monkeypatch, blocked)
    try:
        lab.build()
        _failing(monkeypatch, watch_inotify, "inotify_add_watch", 13, lambda fd, p, m: p in blocked)
        res = lab.journal_backup()
        assert lab.journal.active
        assert [s.path for s in res.skipped] == [str(victim)]
        # readable again (its mode changes: the event and its new ctime say so)
        blocked.clear()
        os.chmod(victim, 0o700)
        res = lab.journal_backup()
        assert not lab.journal.last_run.full and not res.skipped
        assert lab.tree(res) == lab.full_scan()
    finally:
        lab.close()


def test_a_folder_renamed_away_and_back_is_not_reused_from_its_old_entries(lab):
    """Renamed away, changed while away, renamed back: its subfolders' old cache
    entries (same identity: a rename changes only the moved folder's ctime) must
    not come back. Found in review: the old entries were carried forward."""
    lab.journal_backup()
    (lab.src / "d1").rename(lab.src / "d1-old")
    lab.journal_backup()
    lab.journal_backup()
    append(lab.src / "d1-old" / "s2" / "f3.txt", b"written while the folder was d1-old")
    lab.journal_backup()
    (lab.src / "d1-old").rename(lab.src / "d1")
    res = lab.journal_backup()
    assert not lab.journal.last_run.full
    assert lab.tree(res) == lab.full_scan()
    append(lab.src / "d1" / "s2" / "f3.txt", b"and after the rename back")
    res = lab.journal_backup()
    assert lab.tree(res) == lab.full_scan()


def test_a_file_that_could_not_be_read_once_is_read_again(lab, monkeypatch):
    """Its folder is not remembered by the cache (found in review: the folder
    was cached with the file in its signature and without it in its tree, so
    every later run, full scans included, left the file out)."""
    import errno

    from desktop_agent.engine import filesaver, smallfiles

    lab.journal_backup()
    victim = lab.src / "d3" / "s1" / "f2.txt"
    append(victim, b"signed")
    real_open = smallfiles.open_for_reading
    fails = [1]

    def flaky(path):
        if path == os.fsencode(victim) and fails[0]:
            fails[0] -= 1
            raise OSError(errno.EIO, "Input/output error")
        return real_open(path)

    monkeypatch.setattr(smallfiles, "open_for_reading", flaky)
    monkeypatch.setattr(filesaver, "open_for_reading", flaky)
    res = backup(reopen(lab.repo), lab.options(scan=True, helpers=0))
    assert [s.path for s in res.skipped] == [str(victim)]
    for full in (False, True):
        if full:
            lab.journal.invalidate("as the daily full scan")
        res = lab.journal_backup()
        assert not res.skipped
        assert lab.tree(res) == lab.full_scan()


def test_a_backup_that_fails_before_it_walks_hands_its_marks_back(lab, monkeypatch):
    from desktop_agent.engine import backup as backup_module
    from desktop_agent.engine.errors import StorageError

    lab.journal_backup()
    append(lab.src / "d0" / "s0" / "f0.txt", b"changed")
    real = backup_module.BlobWriter

    def broken(*args, **kw):
        raise StorageError("cannot create the spool folder")

    monkeypatch.setattr(backup_module, "BlobWriter", broken)
    with pytest.raises(StorageError):
        lab.journal_backup()
    monkeypatch.setattr(backup_module, "BlobWriter", real)
    res = lab.journal_backup()
    assert lab.tree(res) == lab.full_scan()


def test_a_hard_link_made_inside_the_sources_means_a_full_scan(lab):
    """link() raises no event in the original's folder; a write through the new
    name would change it unseen. Found in review."""
    lab.journal_backup()
    os.link(lab.src / "d3" / "s0" / "f1.txt", lab.src / "d0" / "s2" / "new-link")
    lab.journal_backup()
    assert lab.journal.last_run.full and "hard link" in lab.journal.last_run.reason
    append(lab.src / "d0" / "s2" / "new-link", b"through the new name")
    res = lab.journal_backup()
    assert not lab.journal.last_run.full
    assert lab.tree(res) == lab.full_scan()


def test_a_file_written_through_a_live_mapping_is_seen(lab):
    """Mapped shared and writable, its descriptor closed before the writes: no
    event at all, so the mapping itself (/proc/self/maps) marks its folder."""
    lab.journal_backup()
    target = lab.src / "d2" / "s0" / "f3.txt"
    with open(target, "r+b") as fh:
        mm = mmap.mmap(fh.fileno(), 0)
    try:
        mm[0:2] = b"ZZ"
        mm.flush()
        res = lab.journal_backup()
        assert not lab.journal.last_run.full
        assert lab.tree(res) == lab.full_scan()
        assert lab.journal.last_run.reused > 0
    finally:
        mm.close()


@pytest.mark.parametrize("kind", WATCHERS)
def test_a_folder_that_cannot_be_watched_but_listed_is_always_listed(
    tmp_path, mem_repo, monkeypatch, kind
):
    """A policy may forbid watching a folder it lets us list (found in review);
    fanotify: a folder whose handle cannot be taken."""
    lab = Lab(tmp_path, mem_repo, kind)
    victim = lab.src / "d1" / "s1"
    module = watch_inotify if kind == "inotify" else watch_fanotify
    call = "inotify_add_watch" if kind == "inotify" else "name_to_handle_at"
    _failing(monkeypatch, module, call, 13, lambda fd, path, *rest: path == bytes(victim))
    try:
        lab.build()
        lab.journal_backup()
        append(victim / "f2.txt", b"unseen by the watcher")
        res = lab.journal_backup()
        assert lab.journal.active and not lab.journal.last_run.full
        assert lab.tree(res) == lab.full_scan()
    finally:
        lab.close()


@pytest.mark.parametrize("kind", WATCHERS[1:])
def test_fanotify_drops_events_outside_the_known_folders(tmp_path, kind):
    """One mark covers the whole file system: only folders the walker listed count."""
    journal = _journal(kind)
    try:
        journal.begin("k", None)
        inside, outside = tmp_path / "in", tmp_path / "out"
        inside.mkdir()
        outside.mkdir()
        assert journal.watch(bytes(inside))
        watcher = journal._watcher
        assert isinstance(watcher, watch_fanotify.FanotifyWatcher) and watcher.marks == 1
        (outside / "f").write_bytes(b"x")
        (outside / "sub").mkdir()
        seen = watcher.events
        (inside / "g").write_bytes(b"y")
        until(lambda: bytes(inside) in journal._dirty)
        assert watcher.events > seen
        assert journal._dirty == {bytes(inside)} and not journal._gone
    finally:
        journal.close()


def test_watchers_start_takes_fanotify_when_allowed_and_inotify_otherwise(monkeypatch):
    from desktop_agent.engine import watchers

    journal = ChangeJournal(lambda j: None)
    first = watchers.start(journal)
    try:
        expected = (
            watch_fanotify.FanotifyWatcher
            if _may_mark_file_systems()
            else watch_inotify.InotifyWatcher
        )
        assert type(first) is expected
    finally:
        first.close()
    # not allowed to mark a file system (no CAP_SYS_ADMIN, EPERM): inotify
    _failing(monkeypatch, watch_fanotify, "fanotify_mark", 1, lambda *args: True)
    second = watchers.start(journal)
    try:
        assert type(second) is watch_inotify.InotifyWatcher
    finally:
        second.close()


def _mount(*args: str) -> bool:
    """Run mount/umount; False where this process may not (not root, no loop devices)."""
    import subprocess

    try:
        return subprocess.run(args, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.parametrize("kind", WATCHERS)
def test_a_real_mount_below_a_source_means_a_full_scan_one_elsewhere_does_not(
    tmp_path, mem_repo, kind
):
    """Real tmpfs mounts (root; each test process has a mount namespace of
    its own, see conftest): one beside the sources keeps the journal, one
    inside them makes the next run list everything, and its files are in
    the snapshot."""
    if not _mount("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(_mkdir(tmp_path / "t"))):
        pytest.skip("mounting a tmpfs needs root")
    _mount("umount", str(tmp_path / "t"))
    lab = Lab(tmp_path, mem_repo, kind)
    mounted: list[Path] = []
    try:
        lab.build()
        beside, inside = _mkdir(tmp_path / "beside"), _mkdir(lab.src / "d3" / "mnt")
        lab.journal_backup()
        lab.journal_backup()
        assert not lab.journal.last_run.full
        assert _mount("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(beside))
        mounted.append(beside)
        lab.journal_backup()
        assert not lab.journal.last_run.full, lab.journal.last_run.reason
        assert _mount("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(inside))
        mounted.append(inside)
        (inside / "on-the-tmpfs.txt").write_bytes(b"seen only by listing the mount point")
        res = lab.journal_backup()
        assert lab.journal.last_run.full and "mounted" in lab.journal.last_run.reason
        assert lab.tree(res) == lab.full_scan()
    finally:
        lab.close()
        for where in reversed(mounted):
            _mount("umount", str(where))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _remount_scenario(tmp: str, kind: str) -> None:
    """The body of the remount test, run in a mount namespace of its own."""
    import subprocess

    from support import FAST_KDF, PASSWORD

    from desktop_agent.engine.repository import Repository
    from desktop_agent.engine.storage import MemoryStorage

    tmp_path = Path(tmp)
    image = tmp_path / "disk.img"
    with open(image, "wb") as fh:
        fh.truncate(32 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not _mount("mount", "-o", "loop", str(image), str(mnt)):
        raise SystemExit("cannot mount a loop device here")
    spool = tmp_path / "spool"
    spool.mkdir()
    repo = Repository.init(MemoryStorage(str(spool)), PASSWORD, kdf_params=FAST_KDF)
    lab = Lab(mnt, repo, kind)
    try:
        lab.build()
        lab.journal_backup()
        lab.journal_backup()
        assert not lab.journal.last_run.full
        assert _mount("umount", str(mnt))
        assert _mount("mount", "-o", "loop", str(image), str(mnt))
        res = lab.journal_backup()
        run = lab.journal.last_run
        assert run.full and "unmounted" in run.reason, run.reason
        assert lab.tree(res) == lab.full_scan()
        # watched again: a change after the remount is seen, incrementally
        append(lab.src / "d3" / "s1" / "f2.txt", b"changed after the remount")
        res = lab.journal_backup()
        assert not lab.journal.last_run.full, lab.journal.last_run.reason
        assert lab.tree(res) == lab.full_scan()
    finally:
        lab.close()
        _mount("umount", str(mnt))


@pytest.mark.parametrize("kind", WATCHERS)
def test_a_source_file_system_unmounted_and_mounted_again_means_a_full_scan(tmp_path, kind):
    """Unmounting drops a fanotify mark without an event (found in review):
    the mark's absence is noticed, the next run lists everything, and the
    file system is marked again. Run in a mount namespace of its own, so
    that no other test's journal sees the mount table change."""
    import shutil as sh
    import subprocess
    import sys

    if sh.which("mkfs.ext4") is None or sh.which("unshare") is None:
        pytest.skip("no mkfs.ext4 or unshare")
    if not _mount("unshare", "-m", "--propagation", "private", "true"):
        pytest.skip("no mount namespaces here")
    here = str(Path(__file__).parent)
    code = (
        f"import sys; sys.path[:0] = [{here!r}, {str(Path(here).parent)!r}]; "
        f"import test_journal; test_journal._remount_scenario({str(tmp_path)!r}, {kind!r})"
    )
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=180,
    )
    if "cannot mount a loop device here" in done.stderr:
        pytest.skip("cannot mount a loop device here")
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("kind", WATCHERS[1:])
def test_folders_where_no_mark_can_be_made_get_inotify_watches(
    tmp_path, mem_repo, monkeypatch, kind
):
    """A btrfs subvolume cannot be marked (EXDEV): its folders are watched
    with inotify instead of being listed every time (found in review)."""
    lab = Lab(tmp_path, mem_repo, kind)
    src = bytes(lab.src)

    def in_sources(fd, flags, mask, dirfd, path):
        return bool(flags & watch_fanotify.FAN_MARK_ADD) and path.startswith(src)

    _failing(monkeypatch, watch_fanotify, "fanotify_mark", 18, in_sources)  # EXDEV
    try:
        lab.build()
        lab.journal_backup()
        watcher = lab.journal._watcher
        assert isinstance(watcher, watch_fanotify.FanotifyWatcher) and watcher.marks == 0
        assert watcher._inotify is not None and watcher._inotify.watches == len(lab.dirs()) + 1
        append(lab.src / "d3" / "s1" / "f2.txt", b"seen by inotify")
        res = lab.journal_backup()
        run = lab.journal.last_run
        assert not run.full and run.reused > 0
        assert lab.tree(res) == lab.full_scan()
    finally:
        lab.close()


@pytest.mark.parametrize("kind", WATCHERS[1:])
def test_fanotify_events_it_cannot_place_mean_a_full_scan(kind):
    """An event without a directory handle (the kernel could not encode
    one), of another layout version, cut short, or with a record too short
    for its handle cannot be placed: full scan, never a reader that dies."""
    meta, info = watch_fanotify._META, watch_fanotify._INFO
    modify = watch_fanotify.FAN_MODIFY
    dfid = watch_fanotify.FAN_EVENT_INFO_TYPE_DFID_NAME
    # a record that claims a 64-byte handle in 24 bytes
    short = info.pack(dfid, 0, 24) + bytes(8) + watch_fanotify._UINT.pack(64) + bytes(8)
    cases = [
        (meta.pack(meta.size, 3, 0, meta.size, modify, -1, 1), "without a file handle"),
        (meta.pack(meta.size, 4, 0, meta.size, modify, -1, 1), "could not read"),
        (meta.pack(meta.size + 40, 3, 0, meta.size, modify, -1, 1), "could not read"),  # cut
        (meta.pack(meta.size + 24, 3, 0, meta.size, modify, -1, 1) + short, "without"),
    ]
    for event, reason in cases:
        journal = _journal(kind)
        try:
            journal.begin("k", None)
            journal.commit(journal.begin("k", None), "k", b"s")  # no longer broken
            journal._broken = None
            watcher = journal._watcher
            with watcher._lock:
                watcher._handle(event)
            assert journal._broken is not None and reason in journal._broken
        finally:
            journal.close()
