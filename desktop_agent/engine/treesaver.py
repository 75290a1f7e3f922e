"""Saving directories as trees, once all their entries are done.

See docs/design.md, section 5. The walker never waits for a file: each
directory it has handed out becomes a pending :class:`~.pipeline.DirJob`.
Directories are queued in post-order (every directory after its
subdirectories), so saving them through one FIFO, each as soon as the
files in it are done, gives every parent its children's tree ids. A saved
directory drops its nodes: memory holds only the directories still waiting.
"""

from __future__ import annotations

import os
from collections import deque

from . import crypto
from .dircache import FAILED, VOLATILE, DirCache, DirEntrySig
from .ids import BlobId, BlobType
from .pipeline import BackupStats, DirJob, FileJob, Notices
from .tree import Node, encode_tree
from .writer import BlobWriter

__all__ = ["TreeSaver"]


class TreeSaver:
    """Finalizes pending directories in order: nodes, JSON, tree blob (walker thread)."""

    def __init__(self, writer: BlobWriter, notices: Notices, new_cache: DirCache | None) -> None:
        self.writer = writer
        self.notices = notices
        # the directory cache this run builds for the next (None: none is kept)
        self.new_cache = new_cache
        self.pending: deque[DirJob] = deque()
        self.stats = BackupStats()

    def add(self, job: DirJob) -> None:
        """Queue a directory whose entries are all handed out."""
        self.pending.append(job)

    def waiting(self) -> bool:
        """The next directory to save still waits for a file."""
        return bool(self.pending) and not self.pending[0].ready()

    def drain(self) -> None:
        """Save every directory at the head of the queue that is ready."""
        pending = self.pending
        while pending and pending[0].ready():
            self.finalize(pending.popleft())

    def reused(self, job: DirJob, tree_id: BlobId) -> None:
        """A directory unchanged since the parent snapshot keeps its tree as is."""
        job.tree_id = tree_id
        job.hit = True
        assert self.new_cache is not None and job.sig is not None
        self.remember(job, tree_id)

    def remember(self, job: DirJob, tree_id: BlobId) -> None:
        """Put a directory into the cache for the next run."""
        assert self.new_cache is not None and job.sig is not None
        if job.flags & FAILED:
            return  # the next run tries again rather than reuse a tree without it
        self.new_cache.put_entry(
            job.path,
            DirEntrySig(job.sig, tree_id, job.ident, job.files, job.nbytes, job.dirs, job.flags),
        )

    def finalize(self, job: DirJob) -> None:
        """Encode and store a directory's tree (its entries are all done)."""
        nodes: list[Node] = []
        for e in job.entries:
            if isinstance(e, Node):
                nodes.append(e)
            elif isinstance(e, DirJob):
                assert e.node is not None and e.tree_id is not None
                e.node.subtree = e.tree_id
                nodes.append(e.node)
                job.flags |= e.flags & VOLATILE  # found out since the walker tallied
            else:
                node = self.finish_file(e)
                if node is not None:
                    nodes.append(node)
                elif e.vanished or e.error is not None:
                    job.flags |= VOLATILE | FAILED
        data = encode_tree(nodes)
        tree_id = BlobId(crypto.sha256(data))
        stats = self.stats
        if job.parent_subtree is None:
            stats.dirs_new += 1
        elif job.parent_subtree == tree_id:
            stats.dirs_unmodified += 1
        else:
            stats.dirs_changed += 1
        res = self.writer.save(BlobType.TREE, data, tree_id)
        if res.new:
            stats.add_blob(len(data), res.stored, tree=True)
        job.tree_id = tree_id
        job.entries = []  # the parent needs only the id: let the nodes go
        if self.new_cache is not None and job.sig is not None:
            self.remember(job, tree_id)

    def finish_file(self, job: FileJob) -> Node | None:
        """A file's node with its content list; None when it is left out."""
        if job.batch is not None:
            job.batch.result()  # re-raise worker failures (storage errors, cancel)
        for f in job.futures:
            f.result()
        if job.vanished:
            self.notices.warn(f"{os.fsdecode(job.path)} vanished during the backup; not included")
            return None
        if job.error is not None:
            self.notices.skip(job.path, job.error)
            return None
        node = job.node
        if job.content is not None:
            node.content = job.content
        else:
            node.content = [f.result().id for f in job.futures]
        if job.size >= 0 and job.size != node.size:
            node.size = job.size
        if job.changed:
            self.notices.warn(
                f"{os.fsdecode(job.path)} changed while it was backed up; "
                "the snapshot holds what was read"
            )
        return node
