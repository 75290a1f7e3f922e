"""Building hostile repositories: trees, blobs, index entries and snapshots
written by hand with the engine's own writer, as an attacker would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from desktop_agent.engine import crypto
from desktop_agent.engine.gocompat import format_time, go_quote_name, json_string
from desktop_agent.engine.ids import BlobId, BlobType
from desktop_agent.engine.index import encode_index
from desktop_agent.engine.pack import PackBuilder
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.snapshot import Snapshot
from desktop_agent.engine.storage import FileType
from desktop_agent.engine.writer import BlobWriter

GiB = 1 << 30
_TIME = (
    '"mtime":"2024-05-01T12:00:00Z","atime":"2024-05-01T12:00:00Z","ctime":"2024-05-01T12:00:00Z"'
)


def rle_bomb(size: int, *, known_size: bool = True) -> bytes:
    """A zstd frame of ``size`` zero bytes in RLE blocks (3 GiB: about 98 KB).

    With ``known_size`` its header states the size (what makes a one-shot
    decompressor allocate it all); otherwise the size is found only by
    decompressing.
    """
    out = bytearray(b"\x28\xb5\x2f\xfd")
    if known_size:
        out.append(0xE0)  # 8-byte content size, single segment
        out += size.to_bytes(8, "little")
    else:
        out += bytes([0x00, (20 - 10) << 3])  # no content size; a 1 MiB window
    remaining = size
    while remaining:
        n = min(remaining, 128 * 1024)
        remaining -= n
        out += ((1 if remaining == 0 else 0) | (1 << 1) | (n << 3)).to_bytes(3, "little")
        out.append(0)
    return bytes(out)


def name(raw: bytes | str) -> str:
    """A node's JSON name field as restic writes it."""
    return json_string(go_quote_name(raw.encode() if isinstance(raw, str) else raw))


def file_node(raw: bytes | str, content: Sequence[bytes], size: int, extra: str = "") -> str:
    ids = ",".join(f'"{c.hex()}"' for c in content)
    return (
        f'{{"name":{name(raw)},"type":"file","mode":420,{_TIME},"uid":0,"gid":0,'
        f'"size":{size},"content":[{ids}]{extra}}}'
    )


def dir_node(raw: bytes | str, subtree: bytes, extra: str = "", mode: int = 2147484141) -> str:
    return (
        f'{{"name":{name(raw)},"type":"dir","mode":{mode},{_TIME},"uid":0,"gid":0'
        f'{extra},"content":null,"subtree":"{subtree.hex()}"}}'
    )


def link_node(raw: bytes | str, target: str) -> str:
    return (
        f'{{"name":{name(raw)},"type":"symlink","mode":134218239,{_TIME},"uid":0,"gid":0,'
        f'"linktarget":{json.dumps(target)},"content":null}}'
    )


class Crafter:
    """Writes blobs, trees and snapshots into a repository without the backup."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        repo.ensure_index()
        self.writer = BlobWriter(repo)

    def data(self, content: bytes) -> BlobId:
        return self.writer.save(BlobType.DATA, content).id

    def tree(self, nodes: Iterable[str | bytes]) -> BlobId:
        parts = [n.encode() if isinstance(n, str) else n for n in nodes]
        return self.writer.save(BlobType.TREE, b'{"nodes":[' + b",".join(parts) + b"]}\n").id

    def raw_tree(self, plaintext: bytes) -> BlobId:
        return self.writer.save(BlobType.TREE, plaintext).id

    def sealed_blob(self, blob_type: BlobType, blob_id: bytes, payload: bytes, ulen: int) -> None:
        """Store ``payload`` (already compressed, or raw with ``ulen`` 0) as a blob
        of its own pack, indexed with the given id and uncompressed length."""
        pb = PackBuilder(self.repo.key, self.repo.storage.spool_dir())
        pb.add(blob_type, BlobId(blob_id), crypto.encrypt(self.repo.key, payload), ulen)
        pack_id, path, blobs, _size = pb.finish()
        self.repo.storage.save_file(FileType.PACK, pack_id.hex(), path)
        self.repo.save_json(FileType.INDEX, encode_index([(pack_id, blobs)]))

    def snapshot(self, tree: bytes, paths: Sequence[str] = ("/src",), host: str = "host") -> str:
        """Flush what was written and store a snapshot of ``tree``; returns its id."""
        self.writer.flush()
        self.writer.write_index()
        snap = Snapshot(
            time=format_time(time.time_ns()), tree=BlobId(tree), paths=tuple(paths), hostname=host
        )
        return self.repo.save_snapshot(snap).hex()

    def close(self) -> None:
        self.writer.flush()
        self.writer.write_index()
        self.writer.close()

    def raw_snapshot(self, plaintext: bytes) -> str:
        """A snapshot file whose decrypted content is ``plaintext`` (as is)."""
        sealed = crypto.encrypt(self.repo.key, plaintext)
        sid = crypto.sha256(sealed).hex()
        self.repo.storage.save(FileType.SNAPSHOT, sid, [sealed])
        return sid


@dataclass
class Measured:
    """A finished command with its peak memory."""

    returncode: int
    stdout: str
    stderr: str
    max_rss: int  # bytes
    seconds: float


# Started from a small process: a child's peak RSS includes what it shared with
# its parent before exec, and a test worker may be hundreds of MiB by then.
_LAUNCHER = """
import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_pid, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    fh.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


def run_measured(cmd: Sequence[str], env: dict[str, str], timeout: float = 120) -> Measured:
    """Run ``cmd`` (its first item an absolute path) and report its own peak RSS."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as rss,
    ):
        started = time.monotonic()
        launcher = [sys.executable, "-S", "-c", _LAUNCHER, rss.name, *cmd]
        proc = subprocess.Popen(launcher, stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            raise
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        return Measured(
            proc.returncode,
            out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"),
            int(rss.read() or 0) * 1024,
            seconds,
        )


def tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under ``root`` (and ``root`` itself) with its metadata and content."""
    out: dict[str, tuple[object, ...]] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for n in [b"."] + dirnames + filenames if dirpath == base else dirnames + filenames:
            full = os.path.normpath(os.path.join(dirpath, n))
            s = os.lstat(full)
            content: object = None
            if os.path.isfile(full) and not os.path.islink(full):
                with open(full, "rb") as fh:
                    content = crypto.sha256(fh.read()).hex()
            out[os.fsdecode(os.path.relpath(full, base))] = (
                s.st_mode,
                s.st_uid,
                s.st_gid,
                s.st_size,
                s.st_mtime_ns,
                content,
            )
    return out
