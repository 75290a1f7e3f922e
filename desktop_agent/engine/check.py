"""Verifying a repository: structure always, every byte with ``read_data``.

Structure: every key file's content matches its name; every index file
parses; every pack the index names exists with the size the index implies;
every snapshot parses and every tree reachable from it decodes and
references only indexed blobs. With ``read_data``: every pack's file name
matches its SHA-256, its header matches the index, and every blob decrypts,
decompresses and hashes to its id. A subset of the packs can be read
instead, chosen exactly as restic's ``--read-data-subset`` chooses them, so
that both tools verify the same packs.

Problems are collected, each naming the object it concerns, never raised;
paths in them are :func:`os.fsdecode` text (undecodable bytes as surrogate
escapes, shown by the display layers).
A damaged or missing pack is reported once, with the snapshots and paths
whose data it held (found by walking the trees again, only when something
is damaged).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import crypto
from .control import Control
from .errors import EngineError
from .ids import BlobId, BlobType, PackId, SnapshotId
from .index import decode_index
from .limits import MAX_KEY_FILE, MAX_PACK_FILE
from .pack import PackedBlob, parse_pack_tail
from .progress import ProgressState, Reporter
from .repository import Repository
from .snapshot import Snapshot
from .storage import FileType
from .tree import NodeType

__all__ = [
    "Affected",
    "CheckResult",
    "MAX_PATHS",
    "MAX_SUBSET_GROUPS",
    "check",
    "packs_in_subset",
    "parse_subset",
]

MAX_PATHS = 20  # paths named per damaged pack
MAX_SUBSET_GROUPS = 256  # restic's limit: the group is chosen by the id's first byte
_MAX_PROBLEMS = 5  # problems spelled out per pack


@dataclass(frozen=True)
class Affected:
    """What a damaged or missing pack takes with it.

    ``snapshots`` pairs each affected snapshot's short id with how many of
    its paths (files, or directories whose listing was in the pack) lost
    data; ``paths`` names at most :data:`MAX_PATHS` of them.
    """

    pack: PackId
    snapshots: tuple[tuple[str, int], ...]
    paths: tuple[str, ...]
    more: bool  # more paths are affected than ``paths`` lists

    def describe(self) -> str:
        """One clause for an error message."""
        if not self.snapshots:
            return "no snapshot uses its damaged data"
        snaps = ", ".join(
            f"snapshot {sid} ({n} path{'s' if n != 1 else ''})" for sid, n in self.snapshots
        )
        tail = ", …" if self.more else ""
        return f"affects {snaps}: {', '.join(self.paths)}{tail}"


@dataclass
class CheckResult:
    """Findings of a check; ``ok`` when there are no errors."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    snapshots: int = 0
    trees: int = 0
    packs: int = 0
    packs_read: int = 0
    affected: list[Affected] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.errors


def parse_subset(text: str) -> tuple[int, int] | float:
    """Parse restic's ``--read-data-subset``: ``n/t`` (a group) or ``x%`` (random packs).

    Raises ``ValueError`` with a message for the user.
    """
    text = text.strip()
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            raise ValueError(f"{text!r} is not a percentage (e.g. 10%)") from None
        if not 0.0 < pct <= 100.0:
            raise ValueError("the percentage must be above 0% and at most 100%")
        return pct
    parts = text.split("/")
    try:
        n, t = (int(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither n/t (e.g. 1/5) nor a percentage (e.g. 10%)"
        ) from None
    if not 1 <= n <= t:
        raise ValueError("n/t needs positive integers with n <= t, e.g. 1/5")
    if t > MAX_SUBSET_GROUPS:
        raise ValueError(f"n/t: t must be at most {MAX_SUBSET_GROUPS}")
    return n, t


def packs_in_subset(packs: Iterable[PackId], n: int, t: int) -> list[PackId]:
    """Group ``n`` of ``t``: the packs whose id's first byte is ``n - 1`` modulo ``t``.

    restic's ``selectPacksByBucket``; the groups 1/t … t/t partition the packs.
    """
    if not 1 <= n <= t <= MAX_SUBSET_GROUPS:
        raise ValueError(f"invalid subset {n}/{t}")
    return [p for p in packs if p[0] % t == n - 1]


def _random_packs(packs: list[PackId], percent: float) -> list[PackId]:
    """restic's ``selectRandomPacksByPercentage``: at least one pack."""
    count = int(len(packs) * percent / 100.0)
    if packs and count < 1:
        count = 1
    return random.sample(sorted(packs), count)


def _expected_size(blobs: list[PackedBlob]) -> int:
    data = sum(b.length for b in blobs)
    header = sum(41 if b.uncompressed_length else 37 for b in blobs) + crypto.OVERHEAD
    return data + header + 4


class _Damage:
    """Problems per pack, and which of its blobs are lost (None: all of them)."""

    def __init__(self) -> None:
        self.problems: dict[PackId, list[str]] = {}
        self.blobs: dict[PackId, set[tuple[BlobType, BlobId]] | None] = {}
        self._reported: set[tuple[BlobType, BlobId]] = set()

    def add(
        self,
        pack: PackId,
        problem: str,
        blobs: Iterable[tuple[BlobType, BlobId]] | None = (),
        *,
        blob: tuple[BlobType, BlobId] | None = None,
    ) -> None:
        """Record a problem; one about a single ``blob`` is recorded once."""
        if blob is not None:
            if blob in self._reported:
                return
            self._reported.add(blob)
        self.problems.setdefault(pack, []).append(problem)
        if blobs is None:
            self.blobs[pack] = None
            return
        have = self.blobs.setdefault(pack, set())
        if have is not None:
            have.update(blobs)


def check(
    repo: Repository,
    *,
    read_data: bool = False,
    read_data_subset: tuple[int, int] | None = None,
    read_data_percent: float | None = None,
    progress: Reporter | None = None,
    control: Control | None = None,
    log: Callable[[str], None] | None = None,
) -> CheckResult:
    """Check the repository and return what was found.

    ``read_data`` reads every pack; ``read_data_subset=(n, t)`` only group
    ``n`` of ``t`` (:func:`packs_in_subset`); ``read_data_percent`` that
    share of the packs, chosen at random. At most one of the three.
    """
    if sum((read_data, read_data_subset is not None, read_data_percent is not None)) > 1:
        raise ValueError("read_data, read_data_subset and read_data_percent exclude each other")
    control = control or Control()
    res = CheckResult()
    say = log or (lambda _m: None)
    damage = _Damage()

    # --- key files: a damaged one silently stops its password from working
    for name, _ in repo.storage.list(FileType.KEY):
        try:
            raw = repo.storage.load(FileType.KEY, name, max_size=MAX_KEY_FILE)
        except EngineError as exc:
            res.errors.append(f"key {name}: cannot be read: {exc}")
            continue
        if crypto.sha256(raw).hex() != name:
            res.errors.append(
                f"key {name}: content does not match its name (the key file is damaged; "
                "the password it held may no longer open the repository)"
            )

    # --- index files
    say("load indexes")
    index_packs: dict[PackId, list[PackedBlob]] = {}
    superseded: set[bytes] = set()
    loaded: list[tuple[str, list[bytes], list[tuple[PackId, list[PackedBlob]]]]] = []
    for name, _ in repo.storage.list(FileType.INDEX):
        try:
            sup, packs = decode_index(repo.load_unpacked(FileType.INDEX, name))
            loaded.append((name, sup, packs))
            superseded.update(sup)
        except EngineError as exc:
            res.errors.append(
                f"index {name}: {exc} (`restic repair index`, in restic 0.14 `restic "
                "rebuild-index`, rebuilds the index from the packs)"
            )
    for name, _sup, packs in loaded:
        if bytes.fromhex(name) in superseded:
            continue
        for pack_id, blobs in packs:
            if pack_id in index_packs and sorted(b.id for b in index_packs[pack_id]) != sorted(
                b.id for b in blobs
            ):
                res.errors.append(f"pack {pack_id.hex()} is listed differently by two index files")
            index_packs[pack_id] = blobs
            repo.index.add_pack(pack_id, blobs)
    repo._index_loaded = True  # noqa: SLF001 - check builds the index itself

    # --- packs on storage vs index
    say("check all packs")
    stored = {PackId(bytes.fromhex(n)): size for n, size in repo.storage.list(FileType.PACK)}
    for pack_id, blobs in index_packs.items():
        size = stored.get(pack_id)
        if size is None:
            damage.add(pack_id, "listed in the index but missing from the repository", None)
        elif size != _expected_size(blobs):
            damage.add(
                pack_id,
                f"size {size} does not match the {_expected_size(blobs)} bytes its index "
                "entry implies",
                None,
            )
    for pack_id in stored.keys() - index_packs.keys():
        res.warnings.append(
            f"pack {pack_id.hex()}: not referenced by any index (left by an interrupted run; "
            f"prune removes it)"
        )
    res.packs = len(stored)

    # --- snapshots and trees
    say("check snapshots, trees and blobs")
    snaps: list[Snapshot] = []
    for name, _ in repo.storage.list(FileType.SNAPSHOT):
        try:
            doc = repo.load_json(FileType.SNAPSHOT, name)
            snaps.append(Snapshot.from_json(doc, SnapshotId(bytes.fromhex(name))))
        except EngineError as exc:
            res.errors.append(f"snapshot {name}: {exc}")
    snaps.sort(key=lambda s: (s.time_ns, s.id or b""))  # errors name them oldest first
    res.snapshots = len(snaps)
    _check_trees(repo, snaps, res, damage, control)

    if read_data or read_data_subset is not None or read_data_percent is not None:
        to_read = [p for p in index_packs if p in stored]
        total = len(to_read)
        if read_data_subset is not None:
            n, t = read_data_subset
            to_read = packs_in_subset(to_read, n, t)
            say(f"read group {n}/{t}: {len(to_read)} of {total} packs")
        elif read_data_percent is not None:
            to_read = _random_packs(to_read, read_data_percent)
            say(f"read {read_data_percent:.1f}% of the packs ({len(to_read)} of {total})")
        else:
            say("read all data")
        _read_data(repo, index_packs, to_read, stored, res, damage, progress, control)

    if damage.problems:
        _report_damage(repo, snaps, index_packs, damage, res, control)
    return res


def _sid(snap: Snapshot) -> str:
    return snap.id.hex()[:8] if snap.id else "?"


def _check_trees(
    repo: Repository, snaps: list[Snapshot], res: CheckResult, damage: _Damage, control: Control
) -> None:
    """Walk every snapshot's trees once; report unreadable trees and unindexed blobs.

    An unreadable tree is also recorded against its pack, whose error then
    names every snapshot that contains the directory.
    """
    seen: set[bytes] = set()
    bad_trees: dict[bytes, str] = {}
    for snap in snaps:
        stack: list[tuple[BlobId, str]] = [(snap.tree, "/")]
        while stack:
            control.checkpoint()
            tree_id, path = stack.pop()
            if tree_id in seen:
                if tree_id in bad_trees:
                    res.errors.append(f"snapshot {_sid(snap)} path {path}: {bad_trees[tree_id]}")
                continue
            seen.add(tree_id)
            entry = repo.index.lookup(BlobType.TREE, tree_id)
            if entry is None:
                msg = f"tree {tree_id.hex()} is missing from the index"
                bad_trees[tree_id] = msg
                res.errors.append(f"snapshot {_sid(snap)} path {path}: {msg}")
                continue
            try:
                nodes = repo.load_tree(tree_id)
            except EngineError as exc:
                msg = f"tree {tree_id.hex()} in pack {entry.pack.hex()} cannot be read: {exc}"
                bad_trees[tree_id] = msg
                res.errors.append(f"snapshot {_sid(snap)} path {path}: {msg}")
                key = (BlobType.TREE, tree_id)
                damage.add(entry.pack, f"tree blob {tree_id.hex()}: {exc}", [key], blob=key)
                continue
            res.trees += 1
            for node in nodes:
                npath = path.rstrip("/") + "/" + os.fsdecode(node.name)
                if node.type == NodeType.INVALID:
                    res.errors.append(
                        f"snapshot {_sid(snap)} path {npath}: invalid entry in tree "
                        f"{tree_id.hex()[:12]}: {node.invalid}"
                    )
                    if node.subtree is not None:
                        stack.append((node.subtree, npath))
                    continue
                if node.type == NodeType.FILE:
                    if node.content is None:
                        res.errors.append(f"tree {tree_id.hex()}: file {npath} has no content list")
                        continue
                    for blob in node.content:
                        if not repo.index.has(BlobType.DATA, blob):
                            res.errors.append(
                                f"file {npath}: data blob {blob.hex()} not found in index "
                                f"(tree {tree_id.hex()[:12]})"
                            )
                elif node.type == NodeType.DIR:
                    if node.subtree is None:
                        res.errors.append(f"tree {tree_id.hex()}: directory {npath} has no subtree")
                    else:
                        stack.append((node.subtree, npath))
                if not node.name:
                    res.errors.append(f"tree {tree_id.hex()}: node with empty name")


def _read_data(
    repo: Repository,
    index_packs: dict[PackId, list[PackedBlob]],
    packs: list[PackId],
    stored: dict[PackId, int],
    res: CheckResult,
    damage: _Damage,
    progress: Reporter | None,
    control: Control,
) -> None:
    state = ProgressState(progress, 0.2)
    state.add_total(len(packs), sum(stored[p] for p in packs))
    state.finish_scan()

    def verify(pack_id: PackId) -> list[tuple[str, list[tuple[BlobType, BlobId]] | None]]:
        """(problem, lost blobs) found in one pack."""
        control.checkpoint()
        found: list[tuple[str, list[tuple[BlobType, BlobId]] | None]] = []
        name = pack_id.hex()
        try:
            raw = repo.storage.load(FileType.PACK, name, max_size=MAX_PACK_FILE)
        except EngineError as exc:
            return [(f"cannot be read: {exc}", None)]
        if hashlib.sha256(raw).digest() != pack_id:
            found.append(("content does not match its name (corrupted file)", []))
        try:
            header = parse_pack_tail(
                repo.key, raw[-(16 << 20) :] if len(raw) > (16 << 20) else raw, len(raw)
            )
        except EngineError as exc:
            found.append((f"header unreadable: {exc}", []))
            header = index_packs[pack_id]
        else:
            want = {(b.id, b.type, b.offset, b.length) for b in index_packs[pack_id]}
            have = {(b.id, b.type, b.offset, b.length) for b in header}
            if want - have:
                missing = [(t, i) for i, t, _o, _l in want - have]
                found.append(
                    (
                        f"header does not list {len(missing)} blob(s) the index places there",
                        [(t, BlobId(i)) for t, i in missing],
                    )
                )
        view = memoryview(raw)
        for b in header:
            try:
                repo.decode_blob(
                    b.type, b.id, view[b.offset : b.offset + b.length], b.uncompressed_length
                )
            except EngineError as exc:
                problem = str(exc)
                if b.id.hex() not in problem:
                    problem = f"{b.type.label} blob {b.id.hex()}: {problem}"
                found.append((problem, [(b.type, b.id)]))
        state.add_done(nbytes=len(raw), files=1)
        state.maybe_report()
        return found

    with ThreadPoolExecutor(max_workers=2) as pool:
        for pack_id, found in zip(packs, pool.map(verify, packs), strict=True):
            for problem, lost in found:
                one = lost[0] if lost is not None and len(lost) == 1 else None
                damage.add(pack_id, problem, lost, blob=one)
            res.packs_read += 1
    state.report_final()


def _report_damage(
    repo: Repository,
    snaps: list[Snapshot],
    index_packs: dict[PackId, list[PackedBlob]],
    damage: _Damage,
    res: CheckResult,
    control: Control,
) -> None:
    """One error per damaged pack: its problems and the paths that lost data."""
    lost: dict[tuple[BlobType, BlobId], PackId] = {}
    for pack_id, blobs in damage.blobs.items():
        if blobs is None:
            blobs = {(b.type, b.id) for b in index_packs.get(pack_id, [])}
        for key in blobs:
            lost[key] = pack_id
    affected = _affected(repo, snaps, lost, control) if lost else {}
    for pack_id, problems in damage.problems.items():
        text = "; ".join(problems[:_MAX_PROBLEMS])
        if len(problems) > _MAX_PROBLEMS:
            text += f"; and {len(problems) - _MAX_PROBLEMS} more problem(s)"
        what = affected.get(pack_id)
        if what is None and damage.blobs.get(pack_id) != set():
            what = Affected(pack_id, (), (), False)
        if what is not None:
            res.affected.append(what)
            text += f"; {what.describe()}"
        res.errors.append(f"pack {pack_id.hex()}: {text}")


# per tree: pack -> (paths below the tree that lost data there, a few of them)
_Memo = dict[PackId, tuple[int, list[str]]]


def _merge(into: _Memo, pack: PackId, count: int, paths: Iterable[str]) -> None:
    n, sample = into.get(pack, (0, []))
    for p in paths:
        if len(sample) >= MAX_PATHS:
            break
        sample.append(p)
    into[pack] = (n + count, sample)


def _affected(
    repo: Repository,
    snaps: list[Snapshot],
    lost: dict[tuple[BlobType, BlobId], PackId],
    control: Control,
) -> dict[PackId, Affected]:
    """Which snapshots and paths use the lost blobs, per pack.

    Each tree is summarized once (shared subtrees are common), bottom-up
    with an explicit stack: a deep directory hierarchy cannot exhaust
    Python's recursion limit.
    """
    memo: dict[BlobId, _Memo] = {}
    per_pack: dict[PackId, tuple[list[tuple[str, int]], list[str], bool]] = {}
    for snap in snaps:
        stack: list[tuple[BlobId, bool]] = [(snap.tree, False)]
        nodes_of: dict[BlobId, list[tuple[str, str, list[BlobId] | None, BlobId | None]]] = {}
        while stack:
            control.checkpoint()
            tree_id, expanded = stack.pop()
            if tree_id in memo:
                continue
            if not expanded:
                try:
                    nodes = repo.load_tree(tree_id)
                except EngineError:
                    memo[tree_id] = {}  # reported by the tree walk; nothing below is known
                    continue
                nodes_of[tree_id] = [
                    (os.fsdecode(n.name), n.type, n.content, n.subtree) for n in nodes
                ]
                stack.append((tree_id, True))
                for _name, ntype, _content, subtree in nodes_of[tree_id]:
                    if ntype == NodeType.DIR and subtree is not None and subtree not in memo:
                        stack.append((subtree, False))
                continue
            summary: _Memo = {}
            for name, ntype, content, subtree in nodes_of.pop(tree_id):
                if ntype == NodeType.FILE and content:
                    hit = {lost.get((BlobType.DATA, b)) for b in content}
                    hit.discard(None)
                    for pack in hit:
                        assert pack is not None
                        _merge(summary, pack, 1, [name])
                elif ntype == NodeType.DIR and subtree is not None:
                    pack = lost.get((BlobType.TREE, subtree))
                    if pack is not None:
                        _merge(summary, pack, 1, [name + "/"])
                    for pack, (count, sample) in memo.get(subtree, {}).items():
                        _merge(summary, pack, count, (f"{name}/{p}" for p in sample))
            memo[tree_id] = summary
        top: _Memo = {}
        root_pack = lost.get((BlobType.TREE, snap.tree))
        if root_pack is not None:
            _merge(top, root_pack, 1, ["/"])
        for pack, (count, sample) in memo.get(snap.tree, {}).items():
            _merge(top, pack, count, ("/" + p for p in sample))
        for pack, (count, sample) in top.items():
            sids, paths, more = per_pack.setdefault(pack, ([], [], False))
            sids.append((_sid(snap), count))
            for p in sample:
                if p not in paths:
                    if len(paths) >= MAX_PATHS:
                        more = True
                        break
                    paths.append(p)
            per_pack[pack] = (sids, paths, more or count > len(sample))
    return {
        pack: Affected(pack, tuple(sids), tuple(paths), more)
        for pack, (sids, paths, more) in per_pack.items()
    }
