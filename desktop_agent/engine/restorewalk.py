"""Walking a snapshot's trees: the restore's two passes, and :func:`walk_snapshot`.

See docs/design.md, section 6. :class:`TreeWalk` goes depth first with an
explicit stack (no recursion: 10,000 levels walk), takes only the entries
selected by include paths, and refuses a non-empty tree reached more often
than a bound: a DAG of trees that each hold the next one twice would
otherwise expand a few trees into millions of directories. The counts live
in a count-min sketch of fixed size (:class:`RepeatCounter`).

The restore walks twice: :func:`count_selected` first, over trees read only
as far as counting needs (:class:`Light` nodes), for the progress display's
totals; then again with full nodes, to restore.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

from .control import Control
from .errors import EngineError
from .gocompat import go_unquote_name
from .ids import BlobId, BlobType, parse_id
from .limits import DEFAULT_MAX_TREE_REPEATS, loads_json
from .progress import ProgressState
from .repository import Repository
from .snapshot import Snapshot
from .tree import Node, NodeType

__all__ = [
    "DEFAULT_MAX_TREE_REPEATS",
    "MAX_HARDLINKS",
    "Light",
    "RepeatCounter",
    "TreeWalk",
    "count_selected",
    "include_paths",
    "light_tree",
    "light_tree_by_node",
    "walk_snapshot",
]

MAX_HARDLINKS = 100_000  # hard link groups remembered; beyond, files are restored as copies


class Entry(Protocol):
    """What the walk needs of a node."""

    @property
    def name(self) -> bytes: ...
    @property
    def type(self) -> str: ...
    @property
    def subtree(self) -> BlobId | None: ...


class RepeatCounter:
    """How often each tree was reached, estimated in fixed memory.

    A count-min sketch: four rows of counters indexed by four slices of the
    tree id (a SHA-256, so uniformly spread). The estimate is never below the
    true count; with 2^17 counters per row a snapshot of ten million distinct
    directories adds about 80 to an estimate, far below any sensible bound.
    """

    _ROWS = 4
    _WIDTH = 1 << 17

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self._rows = [array("I", bytes(4 * self._WIDTH)) for _ in range(self._ROWS)]

    def reached(self, tree_id: bytes) -> bool:
        """Count one more reach; False once the tree was reached more than the bound."""
        estimate = 1 << 32
        mask = self._WIDTH - 1
        for r, row in enumerate(self._rows):
            i = int.from_bytes(tree_id[4 * r : 4 * r + 4], "little") & mask
            n = row[i]
            if n < 0xFFFFFFFF:
                n += 1
                row[i] = n
            estimate = min(estimate, n)
        return estimate <= self.bound


def include_paths(patterns: Sequence[str]) -> list[list[bytes]]:
    """Include paths as lists of path components (``.`` and empty ones dropped)."""
    return [[c for c in os.fsencode(p).split(b"/") if c and c != b"."] for p in patterns]


class _Frame:
    """One directory on the walk's stack."""

    __slots__ = ("ctx", "nodes", "pos", "below", "includes", "depth")

    def __init__(
        self,
        ctx: Any,
        nodes: Sequence[Entry],
        below: bool,
        includes: list[list[bytes]],
        depth: int,
    ) -> None:
        self.ctx = ctx
        self.nodes = nodes
        self.pos = 0
        self.below = below  # at or below an include path: everything is taken
        self.includes = includes  # the include paths this directory is an ancestor of
        self.depth = depth


class TreeWalk:
    """Depth first over a snapshot's trees with an explicit stack.

    The caller's callbacks decide what a directory becomes (``enter`` returns
    the context its children see, or None to leave it out), handle other
    entries (``entry``) and hear when a directory is done (``leave``).
    """

    def __init__(
        self,
        load: Callable[[BlobId], Sequence[Entry]],
        includes: Sequence[str],
        max_repeats: int,
        control: Control,
    ) -> None:
        self.load = load
        paths = include_paths(includes)
        # an include of "/" takes everything
        self.includes = [] if any(not p for p in paths) else paths
        self.repeats = RepeatCounter(max_repeats)
        self.max_repeats = max_repeats
        self.control = control
        self.selected = 0  # entries taken

    def run(
        self,
        root_tree: BlobId,
        root_ctx: Any,
        enter: Callable[[Any, Any], Any],
        entry: Callable[[Any, Any], None],
        leave: Callable[[Any], None],
        lost: Callable[[Any, str], None],
    ) -> None:
        """Walk from ``root_tree``; an unreadable root tree raises."""
        nodes = self.load(root_tree)
        stack = [_Frame(root_ctx, nodes, not self.includes, self.includes, 0)]
        while stack:
            frame = stack[-1]
            if frame.pos >= len(frame.nodes):
                stack.pop()
                leave(frame.ctx)
                continue
            if frame.pos % 256 == 0:
                self.control.checkpoint()
            node = frame.nodes[frame.pos]
            frame.pos += 1
            below, includes = frame.below, []
            if not below:
                taken = False
                for inc in frame.includes:
                    if inc[frame.depth] != node.name:
                        continue
                    taken = True
                    if len(inc) == frame.depth + 1:
                        below = True
                        break
                    includes.append(inc)
                # an ancestor of an include path is taken only as the directory it must be
                if not taken or (not below and node.type != NodeType.DIR):
                    continue
            self.selected += 1
            if node.type != NodeType.DIR:
                entry(frame.ctx, node)
                continue
            ctx = enter(frame.ctx, node)
            if ctx is None:
                continue
            if node.subtree is None:
                lost(ctx, "the directory has no subtree in the snapshot")
                leave(ctx)
                continue
            try:
                children = self.load(node.subtree)
            except EngineError as exc:
                lost(ctx, f"directory contents lost: {exc}")
                leave(ctx)
                continue
            if children and not self.repeats.reached(node.subtree):
                lost(
                    ctx,
                    f"its tree {node.subtree.hex()[:12]} is reached more than "
                    f"{self.max_repeats} times in this snapshot (a damaged or hostile "
                    "repository?); its contents are left out here",
                )
                leave(ctx)
                continue
            stack.append(_Frame(ctx, children, below, includes, frame.depth + 1))


class Light(NamedTuple):
    """The few fields of a node the counting pass needs."""

    name: bytes
    type: str
    subtree: BlobId | None
    size: int
    links: int
    inode: int
    device_id: int


def light_tree(repo: Repository, tree_id: BlobId) -> list[Light]:
    """A tree's nodes, read only as far as counting needs (bad nodes left out)."""
    from .treedoc import light_nodes  # noqa: PLC0415 - see treedoc

    data = repo.load_blob(BlobType.TREE, tree_id)
    fast = light_nodes(data, Light)
    return fast if fast is not None else light_tree_by_node(data, tree_id)


def light_tree_by_node(data: bytes, tree_id: BlobId) -> list[Light]:
    """:func:`light_tree` with ``json``, each node looked at in Python."""
    doc = loads_json(data, f"tree {tree_id.hex()}")
    raw = doc.get("nodes") if isinstance(doc, dict) else None
    out = []
    for obj in raw if isinstance(raw, list) else ():
        try:
            subtree = obj.get("subtree")
            size = obj.get("size") or 0
            links = obj.get("links") or 0
            inode = obj.get("inode") or 0
            device_id = obj.get("device_id") or 0
            if not all(isinstance(v, int) for v in (size, links, inode, device_id)):
                continue
            out.append(
                Light(
                    go_unquote_name(obj["name"]),
                    str(obj["type"]),
                    None if subtree is None else BlobId(parse_id(subtree)),
                    size,
                    links,
                    inode,
                    device_id,
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return out


def _nothing(*_args: object) -> None:
    return None


def count_selected(
    repo: Repository,
    snap: Snapshot,
    includes: Sequence[str],
    max_repeats: int,
    progress: ProgressState,
    control: Control,
) -> int:
    """The first pass: totals for the progress display; returns the entries selected.

    A hard link counts its bytes once (for the first :data:`MAX_HARDLINKS`
    groups, as the restore links them).
    """
    seen_links: set[tuple[int, int]] = set()

    def entry(_ctx: None, node: Light) -> None:
        if node.type != NodeType.FILE:
            return
        if node.links > 1 and node.inode:
            key = (node.device_id, node.inode)
            if key in seen_links:
                progress.add_total(1, 0)
                return
            if len(seen_links) < MAX_HARDLINKS:
                seen_links.add(key)
        progress.add_total(1, node.size if 0 <= node.size < 1 << 63 else 0)

    walk = TreeWalk(lambda t: light_tree(repo, t), includes, max_repeats, control)
    walk.run(snap.tree, None, lambda _p, _n: True, entry, _nothing, _nothing)
    progress.finish_scan()
    return walk.selected


def walk_snapshot(
    repo: Repository,
    snap: Snapshot,
    includes: Sequence[str] = (),
    on_error: Callable[[list[bytes], EngineError], None] | None = None,
) -> Iterator[tuple[list[bytes], Node]]:
    """Yield ``(components, node)`` for every selected node, parents first.

    A directory whose tree cannot be read (damaged or missing) is passed to
    ``on_error`` with the error, and its contents are skipped; without
    ``on_error``, or for the snapshot's root tree, the error is raised.
    Depth first with an explicit stack.
    """
    inc = include_paths(includes)
    stack: list[tuple[list[bytes], list[Node], int]] = [([], repo.load_tree(snap.tree), 0)]
    while stack:
        prefix, nodes, pos = stack[-1]
        if pos >= len(nodes):
            stack.pop()
            continue
        stack[-1] = (prefix, nodes, pos + 1)
        node = nodes[pos]
        comps = prefix + [node.name]
        take = not inc
        descend = take
        for path in inc:
            n = min(len(path), len(comps))
            if path[:n] != comps[:n]:
                continue
            take = descend = True
        if not take:
            continue
        yield comps, node
        if node.type == NodeType.DIR and node.subtree is not None and descend:
            try:
                children = repo.load_tree(node.subtree)
            except EngineError as exc:
                if on_error is None:
                    raise
                on_error(comps, exc)
                continue
            stack.append((comps, children, 0))
