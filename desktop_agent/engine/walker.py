"""Walking the backup sources and deciding what must be read.

See docs/design.md, sections 4 and 5. One thread walks the sources
depth-first in name order with an explicit stack (a hierarchy thousands of
levels deep cannot exhaust Python's stack). Each directory is listed
(sorted, filtered by the excludes), its subdirectories are walked first,
then its other entries are decided:

* with the **directory cache** (:mod:`.dircache`) of the parent snapshot, a
  directory whose listing signature matches and whose subdirectories are
  all unchanged keeps its tree id: no tree is loaded, no node built;
* otherwise against the parent snapshot's tree: a file for which
  :func:`file_unchanged` holds and whose blobs are all in the index keeps
  its content list without being read;
* anything else goes to the :class:`~.filesaver.FileSaver`, and the
  directory, its entries handed out, to the :class:`~.treesaver.TreeSaver`.
  The walker never waits for a file.

The directories above the sources are walked through a trie of the
sources' path components (:func:`source_trie`), listing only the entries
that lead to a source. :func:`scan` is the counting pass that runs beside
the backup for the progress display's totals.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat as st
import sys
import threading
from collections.abc import Sequence

from .control import Control
from .dircache import FAILED, VOLATILE, DirCache, DirEntrySig, identity, signature
from .errors import EngineError
from .filesaver import FileSaver
from .filter import ExcludeFilter
from .ids import BlobId, BlobType
from .journal import JournalRun
from .pipeline import BackupStats, DirJob, Notices
from .progress import ProgressState
from .repository import Repository
from .tree import Node, NodeType, go_mode
from .treesaver import TreeSaver

__all__ = [
    "Listing",
    "Trie",
    "Walker",
    "file_unchanged",
    "node_from_stat",
    "scan",
    "source_trie",
]

# (name, path, lstat) of a directory's entries, sorted by name
Listing = list[tuple[bytes, bytes, os.stat_result]]
# path components of the sources: a nested dict, None marking a source
Trie = dict[bytes, "Trie | None"]

# Listing a directory through a descriptor of it (POSIX); elsewhere with
# scandir. O_NOFOLLOW: a directory replaced by a symlink since its parent was
# listed is not followed (it is reported as not listable, like any other
# failure). listdir(fd) gives str names: they go back to bytes as
# os.fsencode does, without its function call per name.
_LIST_BY_FD = os.listdir in os.supports_fd and os.stat in os.supports_dir_fd
_DIR_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_DIRECTORY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOFOLLOW", 0)
)
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()

_users: dict[int, str] = {}
_groups: dict[int, str] = {}


def user_name(uid: int) -> str:
    """The name of a user id ('' when unknown), as nodes record it."""
    name = _users.get(uid)
    if name is None:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = ""
        _users[uid] = name
    return name


def group_name(gid: int) -> str:
    """The name of a group id ('' when unknown), as nodes record it."""
    name = _groups.get(gid)
    if name is None:
        try:
            name = grp.getgrgid(gid).gr_name
        except KeyError:
            name = ""
        _groups[gid] = name
    return name


def node_from_stat(name: bytes, s: os.stat_result) -> Node:
    """A node with the metadata restic records for an lstat result."""
    mode = s.st_mode
    fmt = st.S_IFMT(mode)
    if fmt == st.S_IFREG:
        ntype = NodeType.FILE
    elif fmt == st.S_IFDIR:
        ntype = NodeType.DIR
    elif fmt == st.S_IFLNK:
        ntype = NodeType.SYMLINK
    elif fmt == st.S_IFCHR:
        ntype = NodeType.CHARDEV
    elif fmt == st.S_IFBLK:
        ntype = NodeType.DEV
    elif fmt == st.S_IFIFO:
        ntype = NodeType.FIFO
    elif fmt == st.S_IFSOCK:
        ntype = NodeType.SOCKET
    else:
        ntype = NodeType.IRREGULAR
    links = s.st_nlink if ntype != NodeType.DIR else 0
    uid = s.st_uid
    gid = s.st_gid
    mtime = s.st_mtime_ns
    user = _users.get(uid)
    group = _groups.get(gid)
    # positional, in Node's field order: made once per entry of every listing
    node = Node(
        name,
        ntype,
        go_mode(mode),
        mtime,
        mtime,  # atime as restic without --with-atime: reading must not change trees
        s.st_ctime_ns,
        uid,
        gid,
        user_name(uid) if user is None else user,
        group_name(gid) if group is None else group,
        s.st_ino,
        # the device only matters to tell hard links apart; it changes across
        # mounts, so (like restic >= 0.17) keep it only for hard-linked files
        s.st_dev if links > 1 else 0,
        s.st_size if ntype == NodeType.FILE else 0,
        links,
    )
    if ntype in (NodeType.CHARDEV, NodeType.DEV):
        node.device = s.st_rdev
    return node


def file_unchanged(old: Node, new: Node) -> bool:
    """Whether a file may keep the content of its node in the parent snapshot.

    Both are regular files with the same size, mtime, ctime and inode. The
    caller also checks that the old content's blobs are all in the index.
    """
    return (
        old.type == NodeType.FILE
        and new.type == NodeType.FILE
        and old.size == new.size
        and old.mtime == new.mtime
        and old.ctime == new.ctime
        and old.inode == new.inode
    )


def source_trie(sources: Sequence[bytes]) -> Trie:
    """Nested dict of path components; ``None`` marks a source (a leaf).

    A source inside another source adds nothing: the enclosing one covers it.
    """
    root: Trie = {}
    for src in sorted(sources, key=len):
        comps = [c for c in src.split(b"/") if c]
        node = root
        for i, comp in enumerate(comps):
            if i == len(comps) - 1:
                node[comp] = None
                break
            child = node.get(comp, {})
            if child is None:  # an enclosing directory is already a source
                break
            node[comp] = child
            node = child
    return root


class _DirFrame:
    """A directory on the walk's stack: its listing and the subdirectories walked so far."""

    __slots__ = ("job", "trie", "listing", "cached", "old_nodes", "subdirs", "_pos")

    def __init__(self, job: DirJob, trie: Trie | None, listing: Listing) -> None:
        self.job = job
        self.trie = trie
        self.listing = listing
        self.cached: DirEntrySig | None = None
        self.old_nodes: dict[bytes, Node] | None = None
        self.subdirs: dict[bytes, DirJob] = {}
        self._pos = 0

    def next_subdir(self) -> tuple[DirJob, Trie | None] | None:
        """The next subdirectory to walk (and its part of the trie), or None."""
        listing = self.listing
        while self._pos < len(listing):
            name, path, s = listing[self._pos]
            self._pos += 1
            if not st.S_ISDIR(s.st_mode):
                continue
            old = self.old_nodes
            prev = old.get(name) if old is not None else None
            sub = DirJob(
                path,
                node_from_stat(name, s),
                prev.subtree if prev is not None and prev.type == NodeType.DIR else None,
            )
            sub.ident = identity(s)
            sub.dev = s.st_dev
            if self.job.dev not in (-1, s.st_dev):
                sub.flags = VOLATILE  # a mount point: always listed
            self.subdirs[name] = sub
            return sub, self.trie[name] if self.trie is not None else None
        return None


class Walker:
    """Walks the sources and hands out their work (the walker thread).

    ``cache``: the directory cache of the parent snapshot (None: compare
    against the parent's trees). ``journal``: what the change journal says
    for this run (None: no journal); a directory it vouches for keeps its
    cached tree without being listed.
    """

    def __init__(
        self,
        repo: Repository,
        flt: ExcludeFilter,
        cache: DirCache | None,
        files: FileSaver,
        trees: TreeSaver,
        notices: Notices,
        progress: ProgressState,
        control: Control,
        journal: JournalRun | None = None,
    ) -> None:
        self.repo = repo
        self.journal = journal
        self._trusted: dict[int, bool] = {}
        self._incomplete = False  # something of the directory being handled was left out
        self.filter = flt
        self.cache = cache
        self.files = files
        self.trees = trees
        self.notices = notices
        self.progress = progress
        self.control = control
        self.signatures = trees.new_cache is not None  # for the next run's cache
        self.stats = BackupStats()

    def walk(self, root: DirJob, trie: Trie | None = None) -> None:
        """Back up a directory hierarchy, depth first, with an explicit stack.

        Each directory is listed, its subdirectories are walked first, then
        its other entries are backed up and its tree is queued. ``trie``
        limits a listing to the sources below that directory (for the
        directories above the sources).
        """
        stack = [self._open_dir(root, trie)]
        journal = self.journal
        unlisted = journal is not None and not journal.full and self.cache is not None
        while stack:
            frame = stack[-1]
            sub = frame.next_subdir()
            if sub is not None:
                if unlisted and sub[1] is None and self.reuse_unlisted(sub[0]):
                    continue
                stack.append(self._open_dir(*sub))
                continue
            stack.pop()
            self._close_dir(frame)

    def _open_dir(self, job: DirJob, trie: Trie | None) -> _DirFrame:
        """List a directory and look up what the parent snapshot knows of it."""
        self.control.checkpoint(quiesce=self.files.quiesce)
        journal = self.journal
        if journal is not None and trie is None and not journal.watch(job.path):
            # watched before the listing, so no change after it goes unseen;
            # a folder that cannot be watched is listed every time
            job.flags |= VOLATILE
        self._incomplete = False
        listing = self.list_dir(job.path) if trie is None else self.list_trie(job.path, trie)
        if self._incomplete:
            job.flags |= VOLATILE | FAILED
        frame = _DirFrame(job, trie, listing)
        if self.cache is not None:
            frame.cached = self.cache.get(job.path)
            # the cache belongs to the parent snapshot: its tree ids are the parent's
            job.parent_subtree = frame.cached.tree_id if frame.cached is not None else None
        else:
            frame.old_nodes = self.parent_nodes(job.parent_subtree)
        if self.signatures:
            job.sig = signature(listing, user_name, group_name, partial=trie is not None)
            if journal is not None and job.path in journal.rechecked:
                journal.check(job.path, frame.cached is not None and frame.cached.sig == job.sig)
        return frame

    def _close_dir(self, frame: _DirFrame) -> None:
        """Back up a directory's other entries once its subdirectories are done."""
        job, listing, subdirs = frame.job, frame.listing, frame.subdirs
        self.tally(job, listing, subdirs)
        cached = frame.cached
        if (
            cached is not None
            and cached.sig == job.sig
            and not job.flags & FAILED
            and all(d.hit for d in subdirs.values())
        ):
            self.reuse_dir(job, listing, cached.tree_id)
            return
        # loaded only when a listing holds more than the directories walked
        old_nodes = frame.old_nodes
        checkpoint = self.control.checkpoint
        quiesce = self.files.quiesce
        for name, path, s in listing:
            checkpoint(quiesce=quiesce)
            done_sub = subdirs.get(name)
            if done_sub is not None:
                job.entries.append(done_sub)
            else:
                if old_nodes is None:
                    old_nodes = self.parent_nodes(job.parent_subtree)
                self.entry(path, name, s, old_nodes.get(name), job)
            self.progress.maybe_report()
        self.trees.add(job)
        self.files.reap()
        self.trees.drain()

    def tally(self, job: DirJob, listing: Listing, subdirs: dict[bytes, DirJob]) -> None:
        """Count a directory's subtree and flag what raises no change event.

        Files with several hard links (written through another link, they
        change here unseen), mount points and directories on file systems
        whose changes raise no event are volatile: never reused unlisted.
        """
        files = 0
        nbytes = 0
        dirs = 1
        flags = job.flags
        for _name, _path, s in listing:
            if st.S_ISREG(s.st_mode):
                files += 1
                nbytes += s.st_size
                if s.st_nlink > 1:
                    flags |= VOLATILE
        for sub in subdirs.values():
            files += sub.files
            nbytes += sub.nbytes
            dirs += sub.dirs
            flags |= sub.flags
        journal = self.journal
        if journal is not None and journal.journal is not None and job.dev != -1:
            trusted = self._trusted.get(job.dev)
            if trusted is None:
                trusted = self._trusted[job.dev] = journal.journal.trusted(job.dev, job.path)
            if not trusted:
                flags |= VOLATILE
        job.files, job.nbytes, job.dirs, job.flags = files, nbytes, dirs, flags

    def reuse_unlisted(self, job: DirJob) -> bool:
        """Reuse a directory's cached tree without listing it, when the journal vouches.

        The cached entry must be for this very directory (same inode, mtime
        and ctime as its parent's listing shows now) and not volatile.
        """
        assert self.cache is not None and self.journal is not None
        cached = self.cache.get(job.path)
        if cached is None or cached.flags or cached.ident != job.ident or job.flags:
            return False
        if not self.journal.reusable(job.path):
            return False
        job.sig = cached.sig
        job.files, job.nbytes, job.dirs = cached.files, cached.nbytes, cached.dirs
        stats = self.stats
        stats.total_files_processed += cached.files
        stats.total_bytes_processed += cached.nbytes
        stats.files_unmodified += cached.files
        stats.dirs_unmodified += cached.dirs
        self.trees.reused(job, cached.tree_id)
        new_cache = self.trees.new_cache
        if new_cache is not None:
            for path, entry in self.cache.below(job.path):
                new_cache.put_entry(path, entry)
        self.progress.add_done(nbytes=cached.nbytes, files=cached.files)
        self.progress.maybe_report()
        return True

    def reuse_dir(self, job: DirJob, listing: Listing, tree_id: BlobId) -> None:
        """An unchanged directory: account for it and reuse its tree."""
        files = 0
        nbytes = 0
        for _name, _path, s in listing:
            if st.S_ISREG(s.st_mode):
                files += 1
                nbytes += s.st_size
        stats = self.stats
        stats.total_files_processed += files
        stats.total_bytes_processed += nbytes
        stats.files_unmodified += files
        stats.dirs_unmodified += 1
        self.trees.reused(job, tree_id)
        self.progress.add_done(nbytes=nbytes, files=files)
        self.progress.maybe_report()

    def entry(
        self, path: bytes, name: bytes, s: os.stat_result, old: Node | None, out: DirJob
    ) -> None:
        """Back up one directory entry (not a directory) into ``out``."""
        node = node_from_stat(name, s)
        if node.type == NodeType.FILE:
            stats = self.stats
            stats.total_files_processed += 1
            stats.total_bytes_processed += node.size
            if (
                old is not None
                and file_unchanged(old, node)
                and old.content is not None
                and all(self.repo.index.has(BlobType.DATA, b) for b in old.content)
            ):
                node.content = list(old.content)
                stats.files_unmodified += 1
                self.progress.add_done(nbytes=node.size, files=1)
                out.entries.append(node)
                return
            if old is None:
                stats.files_new += 1
            else:
                stats.files_changed += 1
            out.entries.append(self.files.add_file(path, node))
        elif node.type == NodeType.SYMLINK:
            try:
                node.linktarget = os.readlink(path)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return
                self.notices.skip(path, exc.strerror or str(exc))
                out.flags |= VOLATILE | FAILED
                return
            out.entries.append(node)
        else:
            out.entries.append(node)

    def parent_nodes(self, subtree: BlobId | None) -> dict[bytes, Node]:
        """The nodes of a directory's tree in the parent snapshot, by name."""
        if subtree is None:
            return {}
        try:
            return {n.name: n for n in self.repo.load_tree(subtree) if n.type != NodeType.INVALID}
        except EngineError as exc:
            self.notices.warn(
                f"parent tree {subtree.hex()[:12]} unreadable ({exc}); files are re-read"
            )
            return {}

    def list_dir(self, path: bytes) -> Listing:
        """Sorted, filtered ``(name, path, lstat)`` of a directory's entries.

        Where the system allows (POSIX), the directory is opened once and its
        entries are listed and stat'ed through that descriptor: no lookup of
        the whole path per entry (0.4-0.8 us each), and names and metadata
        come from the same directory even if another takes its path meanwhile.
        """
        if not _LIST_BY_FD:
            return self._list_by_scandir(path)
        try:
            fd = os.open(path, _DIR_FLAGS)
        except OSError as exc:
            return self._unlistable(path, exc)
        try:
            try:
                names = sorted([n.encode(_FS_ENCODING, _FS_ERRORS) for n in os.listdir(fd)])
            except OSError as exc:
                return self._unlistable(path, exc)
            listing = []
            flt = self.filter
            prefix = path if path.endswith(b"/") else path + b"/"
            lstat = os.stat
            for name in names:
                child = prefix + name
                if flt and flt.excluded(child):
                    continue
                try:
                    listing.append((name, child, lstat(name, dir_fd=fd, follow_symlinks=False)))
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    self._unstatable(child, exc)
            return listing
        finally:
            os.close(fd)

    def _list_by_scandir(self, path: bytes) -> Listing:
        """:meth:`list_dir` by path (Windows: each entry's stat comes with the listing)."""
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            return self._unlistable(path, exc)
        listing = []
        flt = self.filter
        for e in entries:
            if flt and flt.excluded(e.path):
                continue
            try:
                listing.append((e.name, e.path, e.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._unstatable(e.path, exc)
        return listing

    def _unlistable(self, path: bytes, exc: OSError) -> Listing:
        self.notices.skip(path, f"cannot list directory: {exc.strerror or exc}")
        self._incomplete = True
        return []

    def _unstatable(self, path: bytes, exc: OSError) -> None:
        self.notices.skip(path, exc.strerror or str(exc))
        self._incomplete = True

    def list_trie(self, path: bytes, trie: Trie) -> Listing:
        """``(name, path, lstat)`` of the sources and their parents below ``path``."""
        listing = []
        for name in sorted(trie):
            child = path.rstrip(b"/") + b"/" + name
            try:
                s = os.lstat(child)
            except OSError as exc:
                reason = (
                    "does not exist" if exc.errno == errno.ENOENT else (exc.strerror or str(exc))
                )
                self.notices.skip(child, f"source {reason}")
                self._incomplete = True
                continue
            if trie[name] is not None and not st.S_ISDIR(s.st_mode):
                self.notices.skip(child, "a parent of a source is not a directory")
                self._incomplete = True
                continue
            if trie[name] is None and self.filter and self.filter.excluded(child):
                continue  # a source that the excludes name, as restic does
            listing.append((name, child, s))
        return listing


def scan(
    sources: list[bytes], flt: ExcludeFilter, progress: ProgressState, stop: threading.Event
) -> None:
    """Count the files and bytes below the sources into ``progress``'s totals.

    Runs in its own thread beside the backup, until done or ``stop`` is set.
    """
    stack = list(sources)
    while stack and not stop.is_set():
        path = stack.pop()
        try:
            s = os.lstat(path)
        except OSError:
            continue
        if st.S_ISREG(s.st_mode):
            progress.add_total(1, s.st_size)
            continue
        if not st.S_ISDIR(s.st_mode):
            continue
        files = 0
        nbytes = 0
        try:
            with os.scandir(path) as it:
                for e in it:
                    if flt and flt.excluded(e.path):
                        continue
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        elif e.is_file(follow_symlinks=False):
                            files += 1
                            nbytes += e.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
        progress.add_total(files, nbytes)
    progress.finish_scan()
