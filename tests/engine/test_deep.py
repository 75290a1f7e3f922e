"""Directory hierarchies thousands of levels deep: no recursion anywhere.

Paths of a 10,000-level tree (20,000 bytes with one-letter names) are far
beyond PATH_MAX (4,096 on Linux): restore creates them relative to directory
descriptors, so it restores every level; backup reads by path, so it backs
up every level the OS can name and reports the deeper ones as skipped.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from craft import Crafter, dir_node, file_node
from support import FAST_KDF, PASSWORD, reopen, write_config

from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.check import check
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import LocalStorage

DEPTH = 10_000


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalStorage(tmp_path / "repo"), PASSWORD, kdf_params=FAST_KDF)


@pytest.fixture
def agent(tmp_path: Path, cli: Any) -> Any:
    pw = tmp_path / "password"
    pw.write_text(PASSWORD + "\n")
    cfg = write_config(
        tmp_path / "config.toml", repo=tmp_path / "repo", sources=[tmp_path], password_file=pw
    )
    return lambda *args: cli("--config", str(cfg), *args, timeout=300)


@contextmanager
def deep_dirs(root: Path) -> Iterator[Path]:
    """``root``, removed afterwards with ``rm -rf`` (shutil.rmtree recurses)."""
    try:
        yield root
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def make_chain(root: Path, depth: int, files_at: dict[int, bytes]) -> None:
    """``root/d/d/.../d`` (``depth`` levels) made through descriptors, with a
    file ``f`` holding ``files_at[level]`` at those levels."""
    root.mkdir(parents=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(1, depth + 1):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
            if level in files_at:
                out = os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
                os.write(out, files_at[level])
                os.close(out)
    finally:
        os.close(fd)


def read_chain(root: Path, depth: int) -> dict[int, bytes]:
    """The files of a chain made by :func:`make_chain`, read through descriptors;
    asserts that it is exactly ``depth`` levels of real directories."""
    found: dict[int, bytes] = {}
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    level = 0
    try:
        while True:
            names = sorted(os.listdir(fd))
            if "f" in names:
                f = os.open("f", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
                found[level] = os.read(f, 1 << 16)
                os.close(f)
            if "d" not in names:
                break
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
            level += 1
    finally:
        os.close(fd)
    assert level == depth
    return found


def test_a_10000_level_snapshot_restores_and_checks(
    tmp_path: Path, repo: Repository, agent: Any
) -> None:
    c = Crafter(repo)
    tree = c.tree([file_node("f", [c.data(b"at the bottom\n")], 14)])
    for level in range(DEPTH - 1, 0, -1):
        nodes = [dir_node("d", tree)]
        if level % 2500 == 0:
            text = f"level {level}\n".encode()
            nodes.append(file_node("f", [c.data(text)], len(text)))
        tree = c.tree(nodes)
    c.snapshot(c.tree([dir_node("d", tree)]), paths=("/d",))
    c.close()

    proc = agent("check", "--read-data")
    assert proc.returncode == 0, proc.stderr
    with deep_dirs(tmp_path / "target") as target:
        proc = agent("restore", "latest", "--target", str(target))
        assert proc.returncode == 0, proc.stderr
        assert "restored snapshot" in proc.stdout
        found = read_chain(target, DEPTH)
        assert found == {
            2500: b"level 2500\n",
            5000: b"level 5000\n",
            7500: b"level 7500\n",
            DEPTH: b"at the bottom\n",
        }


def test_a_10000_level_directory_backs_up_as_deep_as_paths_reach(
    tmp_path: Path, repo: Repository, agent: Any
) -> None:
    """Backup reads by path: levels beyond PATH_MAX are reported, nothing crashes;
    what it stored restores level for level."""
    with deep_dirs(tmp_path / "src") as src:
        make_chain(src, DEPTH, {1: b"one\n", 1500: b"deep\n", DEPTH: b"unreachable\n"})
        proc = agent("backup")
        assert proc.returncode == 3, proc.stderr  # finished, with paths left out
        assert "Traceback" not in proc.stderr and "Recursion" not in proc.stderr
        assert "File name too long" in proc.stderr
        result = check(reopen(repo), read_data=True)
        assert result.ok, result.errors
        with deep_dirs(tmp_path / "target") as target:
            proc = agent("restore", "latest", "--target", str(target))
            assert proc.returncode == 0, proc.stderr
            out = target / src.relative_to("/")
            fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
            try:
                found = {}
                level = 0
                while "d" in os.listdir(fd):
                    nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                    os.close(fd)
                    fd = nxt
                    level += 1
                    if "f" in os.listdir(fd):
                        f = os.open("f", os.O_RDONLY, dir_fd=fd)
                        found[level] = os.read(f, 100)
                        os.close(f)
            finally:
                os.close(fd)
        # PATH_MAX bytes of path: the tree under the temporary directory
        assert 1500 < level < 2100
        assert found == {1: b"one\n", 1500: b"deep\n"}


def test_restics_1200_level_snapshot_both_ways(
    tmp_path: Path, repo: Repository, agent: Any, restic: Any
) -> None:
    """restic 0.14 backs up and restores 1,200 levels; so do we, in both directions."""
    with deep_dirs(tmp_path / "src") as src:
        make_chain(src, 1200, {600: b"middle\n", 1200: b"bottom\n"})
        restic_repo = tmp_path / "restic-repo"
        restic(restic_repo, "init")
        restic(restic_repo, "backup", str(src))
        theirs = Repository.open(LocalStorage(restic_repo), PASSWORD)
        assert check(theirs, read_data=True).ok
        with deep_dirs(tmp_path / "from-restic") as target:
            from desktop_agent.engine.restore import RestoreOptions, restore

            result = restore(
                theirs, theirs.find_snapshot("latest"), RestoreOptions(target=str(target))
            )
            assert result.errors == ()
            assert read_chain(target / src.relative_to("/"), 1200) == {
                600: b"middle\n",
                1200: b"bottom\n",
            }
        # ours, read by restic
        backup(repo, BackupOptions(sources=[str(src)]))
        restic(tmp_path / "repo", "check", "--read-data")
        with deep_dirs(tmp_path / "by-restic") as target:
            restic(tmp_path / "repo", "restore", "latest", "--target", str(target))
            assert read_chain(target / src.relative_to("/"), 1200) == {
                600: b"middle\n",
                1200: b"bottom\n",
            }
