"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat
import time
from collections.abc import Container
from pathlib import Path
from typing import Any

import pytest

from desktop_agent.engine import crypto
from desktop_agent.engine.repository import Repository

PASSWORD = "correct horse battery staple"
# scrypt parameters small enough for tests; restic accepts any valid set.
FAST_KDF = crypto.KDFParams(n=1024, r=8, p=1)


def reopen(repo: Repository) -> Repository:
    """A fresh Repository object on the same storage (as a new process would)."""
    return Repository.open(repo.storage, PASSWORD)


def write(path: Path, data: bytes, mtime_ns: int | None = None) -> Path:
    """Create a file (and its parents) with content and optional mtime."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def build_odd_tree(root: Path) -> Path:
    """A tree with every kind of entry and awkward names."""
    rng = random.Random(42)
    root.mkdir(parents=True, exist_ok=True)
    write(root / "empty", b"")
    write(root / "small.txt", b"hello world\n" * 10, 1_600_000_000_123_456_789)
    write(root / "big-random.bin", rng.randbytes(3 * 1024 * 1024 + 17))
    words = [b"alpha", b"beta", b"gamma", b"delta", b"epsilon"]
    write(root / "big-text.txt", b" ".join(rng.choice(words) for _ in range(400_000)))
    write(root / "dir" / "nested" / "deep.txt", b"deep\n")
    write(root / "Grüße ünïcødé.txt", b"unicode\n")
    rawdir = os.fsencode(root)
    with open(rawdir + b"/bad\xffname", "wb") as fh:
        fh.write(b"not utf-8 name\n")
    write(root / 'quote"back\\slash', b"q\n")
    write(root / "tab\tand\nnewline", b"t\n")
    write(root / "exec.sh", b"#!/bin/sh\necho hi\n")
    os.chmod(root / "exec.sh", 0o755)
    write(root / "private", b"secret\n")
    os.chmod(root / "private", 0o600)
    os.symlink("small.txt", root / "link-rel")
    os.symlink("/nonexistent/target", root / "link-dangling")
    os.symlink(b"target\xfe", rawdir + b"/link-bad-target")
    os.link(root / "small.txt", root / "dir" / "hardlink.txt")
    os.mkfifo(root / "fifo")
    (root / "emptydir").mkdir()
    os.chmod(root / "dir", 0o750)
    for d in (root / "dir" / "nested", root / "emptydir"):
        os.utime(d, ns=(1_500_000_000_000_000_001, 1_500_000_000_000_000_001))
    return root


def signature(
    root: Path, *, times: bool = True, dir_times: bool = True
) -> dict[bytes, tuple[Any, ...]]:
    """Everything that must survive a backup and restore, per relative path."""
    base = os.fsencode(root)
    out: dict[bytes, tuple[Any, ...]] = {}
    inodes: dict[int, list[bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            s = os.lstat(full)
            kind = stat.S_IFMT(s.st_mode)
            entry: tuple[Any, ...]
            if stat.S_ISREG(s.st_mode):
                h = hashlib.sha256(Path(os.fsdecode(full)).read_bytes()).hexdigest()
                entry = ("file", stat.S_IMODE(s.st_mode), s.st_size, h)
                if s.st_nlink > 1:
                    inodes.setdefault(s.st_ino, []).append(rel)
            elif stat.S_ISLNK(s.st_mode):
                entry = ("symlink", os.readlink(full))
            elif stat.S_ISDIR(s.st_mode):
                entry = ("dir", stat.S_IMODE(s.st_mode))
            else:
                entry = ("other", kind, stat.S_IMODE(s.st_mode))
            if times and (dir_times or not stat.S_ISDIR(s.st_mode)):
                entry += (s.st_mtime_ns,)
            out[rel] = entry
    groups = sorted(sorted(g) for g in inodes.values())
    out[b"<hardlink groups>"] = tuple(tuple(g) for g in groups)
    return out


def write_config(
    path: Path,
    *,
    repo: Path,
    sources: list[Path],
    exclude: list[str] | None = None,
    password_file: Path | None = None,
) -> Path:
    """A config file for CLI tests."""
    lines = [
        "[agent]",
        'listen = "127.0.0.1:8080"',
        'token = "test-token-0123456789"',
        "[repository]",
        f'path = "{repo}"',
        f'password_file = "{password_file or ""}"',
        "[backup]",
        "sources = [" + ", ".join(f'"{s}"' for s in sources) + "]",
        "exclude = [" + ", ".join(f'"{e}"' for e in (exclude or [])) + "]",
    ]
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


def tree_bytes(root: str | os.PathLike[str]) -> int:
    """Bytes in the files under ``root`` (files renamed or removed meanwhile are skipped)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                pass
    return total


class JumpingClock:
    """The ``time`` module as code under test sees it, with a jump (the computer slept)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def time_ns(self) -> int:
        return time.time_ns() + int(self.offset * 1e9)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (for a server a test starts later)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def subtree_at(repo: Repository, root: bytes, path: str | os.PathLike[str]) -> bytes:
    """The id of the tree a snapshot (root tree ``root``) holds for directory ``path``.

    Comparing a source's tree rather than the root's leaves out the folders
    above it (``/tmp`` and the like), which other processes change anytime.
    """
    tree = root
    for comp in os.fsencode(os.fspath(path)).strip(b"/").split(b"/"):
        node = next(n for n in repo.load_tree(tree) if n.name == comp)
        assert node.subtree is not None, f"{comp!r} is not a directory"
        tree = node.subtree
    return bytes(tree)


def above(path: str | os.PathLike[str]) -> list[tuple[int, int]]:
    """The times (mtime, ctime) of the directories above ``path``.

    Other processes change ``/tmp`` anytime (restic's check makes its cache
    there): a test that wants a second backup to rebuild no tree at all can
    expect it only when these are the same before and after.
    """
    out = []
    parent = os.path.dirname(os.path.abspath(path))
    while True:
        st = os.stat(parent)
        out.append((st.st_mtime_ns, st.st_ctime_ns))
        if parent == os.path.dirname(parent):
            return out
        parent = os.path.dirname(parent)


def refuse_listing(monkeypatch: pytest.MonkeyPatch, blocked: Container[bytes]) -> None:
    """Play the kernel refusing to list the ``blocked`` directories (EACCES), as it
    would for a user without permission on them; root reads everything. Every
    way in is refused: opening the directory, scandir and listdir. ``blocked``
    is consulted on each call, so a test may change it as it goes."""
    real_open, real_scandir, real_listdir = os.open, os.scandir, os.listdir
    directory = getattr(os, "O_DIRECTORY", 0)

    def refuse(path: Any) -> None:
        if isinstance(path, (str, bytes, os.PathLike)) and os.fsencode(path) in blocked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & directory and kwargs.get("dir_fd") is None:
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def scandir(path: Any = ".") -> Any:
        refuse(path)
        return real_scandir(path)

    def listdir(path: Any = ".") -> Any:
        refuse(path)
        return real_listdir(path)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "listdir", listdir)
