"""Browsing snapshots, for the restore window (asyncio, no Qt): read-only.

Every engine call runs on the browser's own single worker thread, so that
browsing stays responsive and never waits for a job (a backup or a
restore holds the controller's thread for as long as it runs). Restoring
is a job: :meth:`~.controller.JobController.start_restore`.

Trees are loaded when a folder is first listed and kept per tree id: a tree
id is the hash of its content, so an entry never goes stale, and the many
snapshots that share unchanged folders share their cache entries.

The repository is opened through the controller (which remembers the
master key). :meth:`RepositoryBrowser.snapshots` opens it afresh, so that a
refresh also sees the index of backups made since; a tree missing from the
index we hold (a snapshot newer than it) makes us reopen once more.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from desktop_agent.config import ConfigError
from desktop_agent.engine.errors import EngineError, NotFound
from desktop_agent.engine.ids import BlobId
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.snapshot import Snapshot
from desktop_agent.engine.tree import Node, NodeType
from desktop_agent.termtext import clean

from .controller import JobController

__all__ = ["Entry", "RepositoryBrowser", "split_path", "target_state"]

T = TypeVar("T")

# Cached trees are bounded by their total number of entries (a Node is a few
# hundred bytes): enough for every folder a person opens in one session.
_CACHE_NODES = 200_000


def split_path(path: str) -> list[bytes]:
    """The raw components of a snapshot path (as the engine's includes split them)."""
    return [c for c in os.fsencode(path).split(b"/") if c and c != b"."]


@dataclass(frozen=True)
class Entry:
    """One file or folder of a snapshot, as the restore window shows it.

    ``path`` is the entry's absolute path in the snapshot (``/home/me/a.txt``);
    undecodable bytes of a name survive in it as surrogate escapes, so it can
    be handed back to :meth:`RepositoryBrowser.list_dir` and to a restore job
    unchanged. Show ``name``, never ``path``.
    """

    name: str
    raw_name: bytes
    type: str
    size: int
    mtime_ns: int
    path: str
    has_children: bool

    @property
    def is_dir(self) -> bool:
        """True for a folder."""
        return self.type == NodeType.DIR


class _TreeCache:
    """Decoded trees by id, least recently used dropped first (thread-safe)."""

    def __init__(self, max_nodes: int = _CACHE_NODES) -> None:
        self._max = max_nodes
        self._trees: OrderedDict[BlobId, list[Node]] = OrderedDict()
        self._nodes = 0
        self._lock = threading.Lock()

    def get(self, tree_id: BlobId) -> list[Node] | None:
        with self._lock:
            nodes = self._trees.get(tree_id)
            if nodes is not None:
                self._trees.move_to_end(tree_id)
            return nodes

    def put(self, tree_id: BlobId, nodes: list[Node]) -> None:
        with self._lock:
            if tree_id in self._trees:
                return
            self._trees[tree_id] = nodes
            self._nodes += len(nodes)
            while self._nodes > self._max and len(self._trees) > 1:
                _, dropped = self._trees.popitem(last=False)
                self._nodes -= len(dropped)

    def __contains__(self, tree_id: object) -> bool:
        with self._lock:
            return tree_id in self._trees


class RepositoryBrowser:
    """Lists snapshots and folders of the controller's repository (reads only)."""

    def __init__(self, controller: JobController) -> None:
        self._controller = controller
        self._browse = ThreadPoolExecutor(max_workers=1, thread_name_prefix="browse")
        self._repo: Repository | None = None
        self._repo_path = ""
        self._cache = _TreeCache()
        self._closed = False

    # ------------------------------------------------------------ public API
    async def snapshots(self) -> list[Snapshot]:
        """Every snapshot, newest first (reads the repository afresh)."""
        return await self._call(self._browse, self._snapshots)

    async def list_dir(self, snapshot: Snapshot, path: str) -> list[Entry]:
        """The entries of folder ``path`` (``"/"`` for the top) of ``snapshot``, by name.

        Raises :class:`NotFound` when ``path`` is not a folder of the snapshot.
        """
        return await self._call(self._browse, self._list_dir, snapshot, path)

    async def target_state(self, path: str) -> str:
        """Why restoring into ``path`` needs care: "" when it is new or empty,
        else "is not empty", "is not a folder" or "cannot be read (...)"."""
        return await self._call(self._browse, target_state, path)

    @property
    def controller(self) -> JobController:
        """The controller whose repository this browses (and which runs its restores)."""
        return self._controller

    def is_cached(self, tree_id: BlobId) -> bool:
        """Whether a tree has been loaded (and is still cached)."""
        return tree_id in self._cache

    def close(self) -> None:
        """Let the worker thread end (what it was reading is dropped)."""
        self._closed = True
        self._browse.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ internals
    async def _call(self, executor: ThreadPoolExecutor, fn: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise EngineError("the restore window has been closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, _engine_errors, fn, *args)

    # ------------------------------------------------ worker threads only
    def _open(self) -> Repository:
        return self._controller.open_repository()

    def _repository(self, *, fresh: bool = False) -> Repository:
        path = self._controller.config.repository_path
        if fresh or self._repo is None or path != self._repo_path:
            self._repo = self._open()
            self._repo_path = path
        return self._repo

    def _snapshots(self) -> list[Snapshot]:
        return list(reversed(self._repository(fresh=True).list_snapshots(skip_damaged=True)))

    def _tree(self, tree_id: BlobId) -> list[Node]:
        nodes = self._cache.get(tree_id)
        if nodes is not None:
            return nodes
        try:
            nodes = self._repository().load_tree(tree_id)
        except NotFound:
            # written after our index was read: read it again, once
            nodes = self._repository(fresh=True).load_tree(tree_id)
        self._cache.put(tree_id, nodes)
        return nodes

    def _list_dir(self, snapshot: Snapshot, path: str) -> list[Entry]:
        comps = split_path(path)
        tree_id = snapshot.tree
        for depth, comp in enumerate(comps):
            node = next((n for n in self._tree(tree_id) if n.name == comp), None)
            if node is None or node.type != NodeType.DIR or node.subtree is None:
                shown = "/" + "/".join(os.fsdecode(c) for c in comps[: depth + 1])
                raise NotFound(f"{shown} is not a folder in snapshot {snapshot.short_id}")
            tree_id = node.subtree
        prefix = "/" + "".join(os.fsdecode(c) + "/" for c in comps)
        return [
            Entry(
                name=clean(n.name),
                raw_name=n.name,
                type=n.type,
                size=n.size,
                mtime_ns=n.mtime,
                path=prefix + os.fsdecode(n.name),
                has_children=n.type == NodeType.DIR and n.subtree is not None,
            )
            for n in self._tree(tree_id)
            if n.type != NodeType.INVALID  # undecodable: a restore of the folder reports it
        ]


def target_state(path: str) -> str:
    """What :meth:`RepositoryBrowser.target_state` says, blocking."""
    try:
        if not os.path.isdir(path):
            return "is not a folder" if os.path.lexists(path) else ""
        with os.scandir(path) as it:
            return "is not empty" if next(it, None) is not None else ""
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"


def _engine_errors(fn: Callable[..., T], *args: object) -> T:
    """Run ``fn``; a configuration problem (no password...) becomes an EngineError."""
    try:
        return fn(*args)
    except ConfigError as exc:
        raise EngineError(str(exc)) from None
