"""Verifying a repository: structure always, every byte with ``read_data``.

Structure: every index file parses; every pack the index names exists with
the size the index implies; every snapshot parses and every tree reachable
from it decodes and references only indexed blobs. With ``read_data``: every
pack's file name matches its SHA-256, its header matches the index, and
every blob decrypts, decompresses and hashes to its id.

Problems are collected, each naming the object it concerns, never raised.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import crypto
from .control import Control
from .errors import EngineError
from .ids import BlobId, BlobType, PackId
from .index import decode_index
from .pack import PackedBlob, parse_pack_tail
from .progress import ProgressState, Reporter
from .repository import Repository
from .snapshot import Snapshot
from .storage import FileType
from .tree import NodeType

__all__ = ["CheckResult", "check"]


@dataclass
class CheckResult:
    """Findings of a check; ``ok`` when there are no errors."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    snapshots: int = 0
    trees: int = 0
    packs: int = 0
    packs_read: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.errors


def _expected_size(blobs: list[PackedBlob]) -> int:
    data = sum(b.length for b in blobs)
    header = sum(41 if b.uncompressed_length else 37 for b in blobs) + crypto.OVERHEAD
    return data + header + 4


def check(
    repo: Repository,
    *,
    read_data: bool = False,
    progress: Reporter | None = None,
    control: Control | None = None,
    log: Callable[[str], None] | None = None,
) -> CheckResult:
    """Check the repository and return what was found."""
    control = control or Control()
    res = CheckResult()
    say = log or (lambda _m: None)

    # --- index files
    say("load indexes")
    index_packs: dict[PackId, list[PackedBlob]] = {}
    superseded: set[bytes] = set()
    loaded: list[tuple[str, list[bytes], list[tuple[PackId, list[PackedBlob]]]]] = []
    for name, _ in repo.storage.list(FileType.INDEX):
        try:
            sup, packs = decode_index(repo.load_json(FileType.INDEX, name))
            loaded.append((name, sup, packs))
            superseded.update(sup)
        except EngineError as exc:
            res.errors.append(f"index {name}: {exc}")
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
            res.errors.append(
                f"pack {pack_id.hex()}: listed in the index but missing from the repository"
            )
        elif size != _expected_size(blobs):
            res.errors.append(
                f"pack {pack_id.hex()}: size {size} does not match the "
                f"{_expected_size(blobs)} bytes its index entry implies"
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
            snap = Snapshot.from_json(repo.load_json(FileType.SNAPSHOT, name))
            snaps.append(snap)
        except EngineError as exc:
            res.errors.append(f"snapshot {name}: {exc}")
            continue
    res.snapshots = len(snaps)
    seen: set[bytes] = set()
    bad_trees: dict[bytes, str] = {}
    for snap in snaps:
        stack: list[tuple[BlobId, str]] = [(snap.tree, "/")]
        while stack:
            control.checkpoint()
            tree_id, path = stack.pop()
            if tree_id in seen:
                if tree_id in bad_trees:
                    res.errors.append(
                        f"snapshot {snap.id.hex()[:8] if snap.id else '?'} path {path}: "
                        f"{bad_trees[tree_id]}"
                    )
                continue
            seen.add(tree_id)
            if not repo.index.has(BlobType.TREE, tree_id):
                msg = f"tree {tree_id.hex()} is missing from the index"
                bad_trees[tree_id] = msg
                res.errors.append(f"snapshot {_sid(snap, repo)} path {path}: {msg}")
                continue
            try:
                nodes = repo.load_tree(tree_id)
            except EngineError as exc:
                msg = f"tree {tree_id.hex()} cannot be read: {exc}"
                bad_trees[tree_id] = msg
                res.errors.append(f"snapshot {_sid(snap, repo)} path {path}: {msg}")
                continue
            res.trees += 1
            for node in nodes:
                npath = path.rstrip("/") + "/" + node.name.decode("utf-8", "backslashreplace")
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

    if read_data:
        say("read all data")
        _read_data(repo, index_packs, stored, res, progress, control)
    return res


def _sid(snap: Snapshot, repo: Repository) -> str:
    return snap.id.hex()[:8] if snap.id else "?"


def _read_data(
    repo: Repository,
    index_packs: dict[PackId, list[PackedBlob]],
    stored: dict[PackId, int],
    res: CheckResult,
    progress: Reporter | None,
    control: Control,
) -> None:
    state = ProgressState(progress, 0.2)
    packs = [p for p in index_packs if p in stored]
    state.add_total(len(packs), sum(stored[p] for p in packs))
    state.finish_scan()

    def verify(pack_id: PackId) -> list[str]:
        control.checkpoint()
        errs: list[str] = []
        name = pack_id.hex()
        try:
            raw = repo.storage.load(FileType.PACK, name)
        except EngineError as exc:
            return [f"pack {name}: cannot be read: {exc}"]
        if hashlib.sha256(raw).digest() != pack_id:
            errs.append(f"pack {name}: content does not match its name (corrupted file)")
        try:
            header = parse_pack_tail(
                repo.key, raw[-(16 << 20) :] if len(raw) > (16 << 20) else raw, len(raw)
            )
        except EngineError as exc:
            errs.append(f"pack {name}: header unreadable: {exc}")
            header = index_packs[pack_id]
        else:
            want = {(b.id, b.type, b.offset, b.length) for b in index_packs[pack_id]}
            have = {(b.id, b.type, b.offset, b.length) for b in header}
            if want - have:
                errs.append(
                    f"pack {name}: header does not list {len(want - have)} blob(s) the index "
                    f"places there"
                )
        view = memoryview(raw)
        for b in header:
            try:
                repo.decode_blob(
                    b.type, b.id, view[b.offset : b.offset + b.length], b.uncompressed_length
                )
            except EngineError as exc:
                errs.append(f"pack {name}: {exc}")
        state.add_done(nbytes=len(raw), files=1)
        state.maybe_report()
        return errs

    with ThreadPoolExecutor(max_workers=2) as pool:
        for errs in pool.map(verify, packs):
            res.errors.extend(errs)
            res.packs_read += 1
    state.report_final()
