"""Hostile repositories, built by the tests themselves, against restore (CLI and
the tray's browser), check and snapshots.

Each case is an attacker's: a symlink already in the target, values that
overflow the system calls they reach, decompression bombs, a tree DAG that
explodes, JSON nested beyond the parser's stack. In every case nothing is
written outside the target (a sentinel directory is compared before and
after, metadata included), every bad entry is reported by its path, the
rest is restored, and memory stays bounded (peak RSS of the process).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from craft import (
    Crafter,
    GiB,
    Measured,
    dir_node,
    file_node,
    link_node,
    rle_bomb,
    run_measured,
    tree_state,
)
from support import FAST_KDF, PASSWORD, build_odd_tree, reopen, signature, write, write_config

from desktop_agent.config import AgentConfig, BackupConfig, Config, RepositoryConfig
from desktop_agent.engine import crypto, restoretarget
from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.check import check
from desktop_agent.engine.errors import EngineError
from desktop_agent.engine.ids import BlobType
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.restore import RestoreOptions, restore
from desktop_agent.engine.storage import FileType, LocalStorage
from desktop_agent.jobs import EventBus, JobController
from desktop_agent.jobs.browse import RepositoryBrowser
from desktop_agent.protocol import RestoreCompleted, RestoreFailed

IS_ROOT = os.geteuid() == 0
RSS_BOUND = 300 * 1024 * 1024


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalStorage(tmp_path / "repo"), PASSWORD, kdf_params=FAST_KDF)


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    """A directory outside every target, with a file, that nothing may touch."""
    root = tmp_path / "outside"
    write(root / "keep.txt", b"the user's own file\n", 1_600_000_000_000_000_000)
    (root / "sub").mkdir()
    os.chmod(root, 0o755)
    os.utime(root, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    return root


@pytest.fixture
def agent(tmp_path: Path, cli: Any) -> Any:
    """Run the CLI on the test repository: ``agent("restore", "latest", ...)``."""
    pw = tmp_path / "password"
    pw.write_text(PASSWORD + "\n")
    os.chmod(pw, 0o600)
    cfg = write_config(
        tmp_path / "config.toml", repo=tmp_path / "repo", sources=[tmp_path], password_file=pw
    )

    def run(*args: str) -> Any:
        return cli("--config", str(cfg), *args)

    run.config = cfg
    return run


def measured(tmp_path: Path, agent: Any, *args: str) -> Measured:
    """The CLI in a process of its own, with its peak memory."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_STATE_HOME": str(home / ".state"),
        "LANG": "C.UTF-8",
    }
    cmd = [sys.executable, "-m", "desktop_agent", "--config", str(agent.config), *args]
    return run_measured(cmd, env, timeout=120)


def no_traceback(proc: Any) -> None:
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr


def browser_restore(tmp_path: Path, target: Path) -> Any:
    """Restore ``latest`` the tray's way: a restore job queued in the controller."""
    os.environ["DESKTOP_AGENT_PASSWORD"] = PASSWORD
    cfg = Config(
        agent=AgentConfig(token="t" * 20),
        repository=RepositoryConfig(path=str(tmp_path / "repo"), password_file=None),
        backup=BackupConfig(sources=(str(tmp_path),), exclude=(), interval_minutes=0),
        path=tmp_path / "tray.toml",
    )

    async def scenario() -> Any:
        bus = EventBus()
        ended = asyncio.Event()
        ctl = JobController(cfg, bus)
        bus.subscribe(
            lambda e: ended.set() if isinstance(e, RestoreCompleted | RestoreFailed) else None
        )
        await ctl.start()
        browser = RepositoryBrowser(ctl)
        try:
            snaps = await browser.snapshots()
            job = ctl.start_restore(snaps[0], [], str(target), origin="tray")
            await ended.wait()
            view = ctl.job(job)
            assert view.error is None, view.error
            return view.result
        finally:
            browser.close()
            await ctl.stop()

    try:
        return asyncio.run(asyncio.wait_for(scenario(), 120))
    finally:
        del os.environ["DESKTOP_AGENT_PASSWORD"]


# ------------------------------------------------- symlinks in the target
def _two_snapshots(tmp_path: Path, repo: Repository, sentinel: Path) -> Path:
    """Snapshot A holds ``x/link -> sentinel`` and ``x/f -> sentinel/keep.txt``;
    snapshot B (newer) holds a real directory ``x/link`` (setgid, sticky,
    owned by uid 4242) with files and a regular file ``x/f``."""
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    os.symlink(sentinel, src / "x" / "link")
    os.symlink(sentinel / "keep.txt", src / "x" / "f")
    backup(repo, BackupOptions(sources=[str(src)]))
    os.unlink(src / "x" / "link")
    os.unlink(src / "x" / "f")
    write(src / "x" / "link" / "keep.txt", b"the attacker's version\n")
    write(src / "x" / "link" / "new.txt", b"planted\n")
    write(src / "x" / "f", b"a regular file\n")
    os.chmod(src / "x" / "link", 0o3777)
    if IS_ROOT:
        os.chown(src / "x" / "link", 4242, 4242)
        os.chown(src / "x" / "link" / "new.txt", 4242, 4242)
    backup(reopen(repo), BackupOptions(sources=[str(src)]))
    return src


def _ids(repo: Repository) -> list[str]:
    return [s.id.hex() for s in reopen(repo).list_snapshots() if s.id]


def test_cli_restore_never_writes_through_a_symlink_in_the_target(
    tmp_path: Path, repo: Repository, sentinel: Path, agent: Any
) -> None:
    src = _two_snapshots(tmp_path, repo, sentinel)
    first, second = _ids(repo)
    before = tree_state(sentinel)
    target = tmp_path / "target"
    x = target / src.relative_to("/") / "x"

    proc = agent("restore", first, "--target", str(target))
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(x / "link") == str(sentinel)

    proc = agent("restore", second, "--target", str(target))
    assert proc.returncode == 1
    no_traceback(proc)
    assert f"{x}/link: exists and is not a directory" in proc.stderr
    assert f"{x}/f: exists; not overwritten" in proc.stderr
    assert tree_state(sentinel) == before
    assert os.readlink(x / "link") == str(sentinel)

    # --overwrite removes the links themselves, never what they point to
    proc = agent("restore", second, "--target", str(target), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert tree_state(sentinel) == before
    assert not os.path.islink(x / "link") and os.path.isdir(x / "link")
    assert (x / "link" / "keep.txt").read_bytes() == b"the attacker's version\n"
    assert not os.path.islink(x / "f") and (x / "f").read_bytes() == b"a regular file\n"
    mode = os.stat(x / "link").st_mode & 0o7777
    assert mode == 0o3777
    if IS_ROOT:
        assert os.stat(x / "link").st_uid == 4242


def test_tray_restore_never_writes_through_a_symlink_in_the_target(
    tmp_path: Path, repo: Repository, sentinel: Path
) -> None:
    src = _two_snapshots(tmp_path, repo, sentinel)
    before = tree_state(sentinel)
    target = tmp_path / "target"
    x = target / src.relative_to("/") / "x"
    (x).mkdir(parents=True)
    os.symlink(sentinel, x / "link")  # planted where the newest snapshot has a directory
    os.symlink(sentinel / "keep.txt", x / "f")
    result = browser_restore(tmp_path, target)
    assert tree_state(sentinel) == before
    assert any(e.startswith(f"{x}/link: exists and is not a directory") for e in result.errors)
    assert f"{x}/f: exists; not overwritten" in result.errors


def test_a_symlink_above_the_restored_paths_is_not_followed(
    tmp_path: Path, repo: Repository, sentinel: Path, agent: Any
) -> None:
    src = _two_snapshots(tmp_path, repo, sentinel)
    before = tree_state(sentinel)
    target = tmp_path / "target"
    top = target / src.relative_to("/").parts[0]
    target.mkdir()
    os.symlink(sentinel, top)  # TARGET/tmp -> outside
    proc = agent("restore", "latest", "--target", str(target))
    assert proc.returncode == 1
    no_traceback(proc)
    assert f"{top}: exists and is not a directory" in proc.stderr
    assert tree_state(sentinel) == before


def test_a_tree_that_names_an_entry_twice(
    tmp_path: Path, repo: Repository, sentinel: Path, agent: Any
) -> None:
    """A symlink and a directory of the same name in one tree: the second is refused."""
    c = Crafter(repo)
    inner = c.tree([file_node("planted.txt", [c.data(b"planted\n")], 8)])
    x = c.tree([link_node("link", str(sentinel)), dir_node("link", inner)])
    c.snapshot(c.tree([dir_node("src", c.tree([dir_node("x", x)]))]))
    before = tree_state(sentinel)
    target = tmp_path / "target"
    proc = agent("restore", "latest", "--target", str(target))
    assert proc.returncode == 1
    no_traceback(proc)
    assert f"{target}/src/x/link: left out: a second entry of the same name" in proc.stderr
    assert os.readlink(target / "src" / "x" / "link") == str(sentinel)
    assert tree_state(sentinel) == before


# --------------------------------------------------------------- bad values
BAD_NODES = {
    "nul-name": '{"name":"a\\u0000b","type":"file","content":[]}',
    "slash-name": '{"name":"../../escape","type":"file","content":[]}',
    "dotdot-dir": '{"name":"..","type":"dir","subtree":"' + "ab" * 32 + '"}',
    "nul-target": '{"name":"badlink","type":"symlink","linktarget":"/etc\\u0000x"}',
    "size-2^64": '{"name":"huge","type":"file","size":18446744073709551616,"content":[]}',
    "uid-2^40": '{"name":"uid","type":"file","uid":1099511627776,"content":[]}',
    "gid-negative": '{"name":"gid","type":"file","gid":-1,"content":[]}',
    "mode-float": '{"name":"mode","type":"file","mode":4.5,"content":[]}',
    "year-99999": '{"name":"time","type":"file","mtime":"99999-01-01T00:00:00Z","content":[]}',
    "dev-2^70": '{"name":"dev","type":"chardev","device":1180591620717411303424}',
}


def test_bad_values_are_errors_for_their_entries_only(
    tmp_path: Path, repo: Repository, sentinel: Path, agent: Any
) -> None:
    c = Crafter(repo)
    good = c.data(b"good content\n")
    nodes = [file_node("a-first.txt", [good], 13)]
    nodes += BAD_NODES.values()
    nodes.append(file_node("z-last.txt", [good], 13))
    c.snapshot(c.tree([dir_node("src", c.tree(nodes))]))
    before = tree_state(sentinel)
    target = tmp_path / "target"

    proc = agent("restore", "latest", "--target", str(target))
    assert proc.returncode == 1
    no_traceback(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(BAD_NODES), proc.stderr
    for needle in ("a\\x00b", "size", "uid", "gid", "mode", "mtime", "device", "NUL"):
        assert needle in proc.stderr, needle
    assert all(f"{target}/src/" in e for e in errors)
    # the entries after the bad ones are restored
    assert (target / "src" / "a-first.txt").read_bytes() == b"good content\n"
    assert (target / "src" / "z-last.txt").read_bytes() == b"good content\n"
    assert sorted(os.listdir(target / "src")) == ["a-first.txt", "z-last.txt"]
    assert tree_state(sentinel) == before

    proc = agent("check")
    assert proc.returncode == 1
    no_traceback(proc)
    assert proc.stderr.count("invalid entry") == len(BAD_NODES)

    result = browser_restore(tmp_path, tmp_path / "tray-target")
    assert result.errors_total == len(BAD_NODES)
    assert (tmp_path / "tray-target" / "src" / "z-last.txt").exists()


def test_index_entries_beyond_their_pack(
    tmp_path: Path, repo: Repository, sentinel: Path, agent: Any
) -> None:
    """Offsets and lengths from a rewritten index: each file they hit is an
    error, the others are restored."""
    c = Crafter(repo)
    blobs = {n: c.data(n.encode() * 1000) for n in ("beyond", "huge", "far", "fine")}
    files = [file_node(n, [b], len(n) * 1000) for n, b in blobs.items()]
    c.snapshot(c.tree([dir_node("src", c.tree(files))]))
    c.close()
    fresh = reopen(repo)
    (index_name,) = [n for n, _ in fresh.storage.list(FileType.INDEX)]
    doc = fresh.load_json(FileType.INDEX, index_name)
    for pack in doc["packs"]:
        for b in pack["blobs"]:
            if b["id"] == blobs["beyond"].hex():
                b["offset"] = 50_000_000
            elif b["id"] == blobs["huge"].hex():
                b["length"] = 2**32 - 1
            elif b["id"] == blobs["far"].hex():
                b["offset"] = 2**39
    fresh.save_json(FileType.INDEX, doc)
    fresh.storage.remove(FileType.INDEX, index_name)
    before = tree_state(sentinel)
    target = tmp_path / "target"
    m = measured(tmp_path, agent, "restore", "latest", "--target", str(target))
    print(f"index beyond packs: restore peak RSS {m.max_rss >> 20} MiB")
    assert m.returncode == 1, m.stderr
    assert "Traceback" not in m.stderr and "internal error" not in m.stderr
    for n in ("beyond", "huge", "far"):
        assert f"{target}/src/{n}: content lost: the index places it beyond the end" in m.stderr
    assert (target / "src" / "fine").read_bytes() == b"fine" * 1000
    assert m.max_rss < RSS_BOUND
    assert tree_state(sentinel) == before


# -------------------------------------------------------- decompression bombs
@pytest.fixture(scope="module")
def bomb() -> bytes:
    return rle_bomb(3 * GiB)


def _bomb_repository(tmp_path: Path, repo: Repository, bomb: bytes) -> Crafter:
    """One snapshot holding a data bomb (a file), a tree bomb (a directory), a
    tree whose frame hides its size, a blob the index says is 3 GiB, and good files;
    plus a snapshot file that is a bomb itself."""
    c = Crafter(repo)
    good = c.data(b"still here\n")
    data_bomb = crypto.sha256(b"data bomb")
    c.sealed_blob(BlobType.DATA, data_bomb, bomb, 1 << 20)  # the index says 1 MiB
    tree_bomb = crypto.sha256(b"tree bomb")
    c.sealed_blob(BlobType.TREE, tree_bomb, bomb, 4096)
    hidden = crypto.sha256(b"hidden size")
    c.sealed_blob(BlobType.TREE, hidden, rle_bomb(3 * GiB, known_size=False), 4096)
    claimed = crypto.sha256(b"index claims 3 GiB")
    c.sealed_blob(BlobType.DATA, claimed, bomb, 3 * GiB)
    src = c.tree(
        [
            file_node("a-good.txt", [good], 11),
            file_node("data-bomb", [data_bomb], 1 << 20),
            file_node("index-claims", [claimed], 3 * GiB),
            dir_node("tree-bomb", tree_bomb),
            dir_node("tree-hidden", hidden),
            file_node("z-good.txt", [good], 11),
        ]
    )
    c.snapshot(c.tree([dir_node("src", src)]))
    c.raw_snapshot(b"\x02" + bomb)
    c.close()
    return c


def test_decompression_bombs_stay_bounded(
    tmp_path: Path, repo: Repository, sentinel: Path, agent: Any, bomb: bytes
) -> None:
    _bomb_repository(tmp_path, repo, bomb)
    before = tree_state(sentinel)
    target = tmp_path / "target"

    m = measured(tmp_path, agent, "restore", "latest", "--target", str(target))
    print(f"bombs: restore peak RSS {m.max_rss >> 20} MiB in {m.seconds:.2f} s")
    assert m.returncode == 1, m.stderr
    assert "Traceback" not in m.stderr and "internal error" not in m.stderr
    assert m.max_rss < RSS_BOUND, m.max_rss
    assert f"{target}/src/data-bomb: content lost" in m.stderr
    assert f"{target}/src/index-claims: content lost" in m.stderr
    assert f"{target}/src/tree-bomb: directory contents lost" in m.stderr
    assert f"{target}/src/tree-hidden: directory contents lost" in m.stderr
    assert "claims 3221225472 bytes" in m.stderr
    assert (target / "src" / "a-good.txt").read_bytes() == b"still here\n"
    assert (target / "src" / "z-good.txt").read_bytes() == b"still here\n"
    assert tree_state(sentinel) == before

    m = measured(tmp_path, agent, "snapshots")
    print(f"bombs: snapshots peak RSS {m.max_rss >> 20} MiB")
    assert m.returncode == 1  # one snapshot file cannot be read: said, and the rest listed
    assert m.max_rss < RSS_BOUND, m.max_rss
    assert "cannot be read" in m.stderr and "Traceback" not in m.stderr

    m = measured(tmp_path, agent, "check", "--read-data")
    print(f"bombs: check --read-data peak RSS {m.max_rss >> 20} MiB")
    assert m.returncode == 1
    assert m.max_rss < RSS_BOUND, m.max_rss
    assert "Traceback" not in m.stderr and "internal error" not in m.stderr
    assert "claims 3221225472 bytes" in m.stderr


def test_a_tree_dag_that_explodes_is_cut_off(
    tmp_path: Path, repo: Repository, sentinel: Path, agent: Any
) -> None:
    """24 levels, each holding the next twice: 16 million paths from 25 trees."""
    c = Crafter(repo)
    level = c.tree([file_node("leaf.txt", [c.data(b"leaf\n")], 5)])
    for _ in range(24):
        level = c.tree([dir_node("a", level), dir_node("b", level)])
    c.snapshot(
        c.tree(
            [
                dir_node("src", c.tree([file_node("ok.txt", [c.data(b"ok\n")], 3)])),
                dir_node("z-dag", level),
            ]
        )
    )
    c.close()
    size = sum(s for _n, s in LocalStorage(tmp_path / "repo").list(FileType.PACK))
    assert size < 200_000
    before = tree_state(sentinel)
    target = tmp_path / "target"
    m = measured(
        tmp_path, agent, "restore", "latest", "--target", str(target), "--max-tree-repeats", "50"
    )
    print(f"DAG: restore peak RSS {m.max_rss >> 20} MiB in {m.seconds:.2f} s")
    assert m.returncode == 1, m.stderr
    assert "reached more than 50 times" in m.stderr
    assert m.seconds < 60 and m.max_rss < RSS_BOUND
    assert (target / "src" / "ok.txt").read_bytes() == b"ok\n"
    made = sum(len(d) + len(f) for _p, d, f in os.walk(target))
    assert made < 50 * 2 * 25 * 2
    assert tree_state(sentinel) == before
    # check reads each tree once: the DAG costs it nothing
    assert check(reopen(repo)).ok


def test_json_nested_beyond_the_parsers_stack(tmp_path: Path, repo: Repository, agent: Any) -> None:
    c = Crafter(repo)
    deep = c.raw_tree(b'{"nodes":' + b"[" * 200_000 + b"]" * 200_000 + b"}")
    deep_field = c.raw_tree(
        b'{"nodes":[{"name":"x","type":"file","generic_attributes":'
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}]}"
    )
    c.snapshot(
        c.tree(
            [
                dir_node("a-deep", deep),
                dir_node("b-deep-field", deep_field),
                file_node("c.txt", [c.data(b"c\n")], 2),
            ]
        ),
        paths=("/",),
    )
    c.close()
    target = tmp_path / "target"
    proc = agent("restore", "latest", "--target", str(target))
    assert proc.returncode == 1
    no_traceback(proc)
    assert f"{target}/a-deep: directory contents lost" in proc.stderr
    assert f"{target}/b-deep-field: directory contents lost" in proc.stderr
    assert (target / "c.txt").read_bytes() == b"c\n"
    proc = agent("check")
    assert proc.returncode == 1
    no_traceback(proc)
    assert proc.stderr.count("cannot be read") >= 2

    # the tray's folder view
    os.environ["DESKTOP_AGENT_PASSWORD"] = PASSWORD
    try:
        cfg = Config(
            agent=AgentConfig(token="t" * 20),
            repository=RepositoryConfig(path=str(tmp_path / "repo"), password_file=None),
            backup=BackupConfig(sources=(str(tmp_path),), exclude=(), interval_minutes=0),
            path=tmp_path / "tray.toml",
        )
        browser = RepositoryBrowser(JobController(cfg, EventBus()))

        async def listing() -> None:
            (snap,) = await browser.snapshots()
            top = await browser.list_dir(snap, "/")
            assert sorted(e.name for e in top) == ["a-deep", "b-deep-field", "c.txt"]
            with pytest.raises(EngineError, match="tree is malformed"):
                await browser.list_dir(snap, "/a-deep")

        asyncio.run(asyncio.wait_for(listing(), 60))
        browser.close()
    finally:
        del os.environ["DESKTOP_AGENT_PASSWORD"]


def test_restore_in_process_reports_every_bad_entry_by_path(
    tmp_path: Path, repo: Repository
) -> None:
    """The engine API (what the agent's jobs call) gives the same result as the CLI."""
    c = Crafter(repo)
    nodes = list(BAD_NODES.values()) + [file_node("ok", [c.data(b"ok")], 2)]
    c.snapshot(c.tree([dir_node("src", c.tree(nodes))]))
    c.close()
    fresh = reopen(repo)
    result = restore(
        fresh, fresh.find_snapshot("latest"), RestoreOptions(target=str(tmp_path / "t"))
    )
    assert result.errors_total == len(BAD_NODES) == len(result.errors)
    assert result.files == 1
    assert all(e.startswith(f"{tmp_path}/t/src/") for e in result.errors)


@pytest.mark.parametrize("at", [True, False], ids=["descriptors", "paths"])
def test_restore_by_descriptors_and_by_paths(
    tmp_path: Path, repo: Repository, sentinel: Path, monkeypatch: pytest.MonkeyPatch, at: bool
) -> None:
    """The same restore where the *at calls exist (here) and where they do not
    (Windows: by path, with lstat checks): every kind of entry comes back, and
    a symlink in the target is refused or replaced, never followed."""
    monkeypatch.setattr(restoretarget, "AT", at)
    src = build_odd_tree(tmp_path / "odd")
    backup(repo, BackupOptions(sources=[str(src)]))
    fresh = reopen(repo)
    out = tmp_path / "out"
    result = restore(fresh, fresh.find_snapshot("latest"), RestoreOptions(target=str(out)))
    assert result.errors == ()
    assert signature(out / src.relative_to("/")) == signature(src)

    src2 = _two_snapshots(tmp_path, reopen(repo), sentinel)
    before = tree_state(sentinel)
    target = tmp_path / "target"
    x = target / src2.relative_to("/") / "x"
    x.mkdir(parents=True)
    os.symlink(sentinel, x / "link")
    os.symlink(sentinel / "keep.txt", x / "f")
    fresh = reopen(repo)
    latest = fresh.find_snapshot("latest")
    result = restore(fresh, latest, RestoreOptions(target=str(target), includes=[str(src2)]))
    assert tree_state(sentinel) == before
    assert f"{x}/f: exists; not overwritten" in result.errors
    result = restore(
        fresh, latest, RestoreOptions(target=str(target), includes=[str(src2)], overwrite=True)
    )
    assert result.errors == ()
    assert tree_state(sentinel) == before
    assert (x / "link" / "new.txt").read_bytes() == b"planted\n"
    assert (x / "f").read_bytes() == b"a regular file\n" and not (x / "f").is_symlink()
