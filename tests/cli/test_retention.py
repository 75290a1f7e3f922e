"""``forget`` and ``prune`` (:mod:`desktop_agent.cli.retention`), on restic-made
snapshots with controlled times."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from clisupport import HOSTILE_HOST, HOSTILE_HOST_SHOWN, WIDE_HOST, safe_lines
from support import FAST_KDF, PASSWORD, write_config

from desktop_agent.engine.lock import Lock
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import FileType, LocalStorage
from desktop_agent.termtext import columns

ENV = {"DESKTOP_AGENT_PASSWORD": PASSWORD}

# (host, local time, tag); all of one source directory
SNAPSHOTS = [
    ("laptop", "2024-01-01 10:00:00", ""),
    ("laptop", "2024-01-01 12:00:00", "important"),
    ("laptop", "2024-01-02 09:00:00", ""),
    ("laptop", "2024-01-03 09:00:00", ""),
    ("laptop", "2024-01-03 18:00:00", ""),
    ("desktop", "2024-01-02 08:00:00", ""),
]


def _no_traceback(proc) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


def _error_line(proc, status: int) -> str:
    _no_traceback(proc)
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("desktop-agent")
    return line


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A repository with restic snapshots at fixed times, made once per module."""
    exe = shutil.which("restic")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("restic is required in CI (make test installs it)")
        pytest.skip("restic is not installed")
    base = tmp_path_factory.mktemp("forget-template")
    repo_dir = base / "repo"
    Repository.init(LocalStorage(repo_dir), PASSWORD, kdf_params=FAST_KDF)
    src = base / "src"
    src.mkdir()
    env = dict(os.environ, RESTIC_PASSWORD=PASSWORD, RESTIC_CACHE_DIR=str(base / "cache"))
    for host, when, tag in SNAPSHOTS:
        (src / "f.txt").write_text(f"{host} {when}\n" * 1000)
        extra = ["--tag", tag] if tag else []
        cmd = [exe, "-r", str(repo_dir), "backup", "-q", "--host", host, "--time", when]
        subprocess.run([*cmd, *extra, str(src)], env=env, check=True, capture_output=True)
    return repo_dir, src


@pytest.fixture
def setup(tmp_path, restic, template):
    """A fresh copy of the template repository, and a config naming it."""
    repo_dir = tmp_path / "repo"
    shutil.copytree(template[0], repo_dir)
    cfg = write_config(tmp_path / "config.toml", repo=repo_dir, sources=[template[1]])

    def snapshot_ids() -> set[str]:
        return {s["id"] for s in json.loads(restic(repo_dir, "snapshots", "--json").stdout)}

    listed = json.loads(restic(repo_dir, "snapshots", "--json").stdout)
    ids = {(s["hostname"], s["time"][:19].replace("T", " ")): s["id"] for s in listed}
    assert len(ids) == len(SNAPSHOTS)
    return ["--config", str(cfg)], repo_dir, ids, snapshot_ids


def test_an_empty_policy_is_bad_usage(tmp_path, cli):
    cfg = write_config(tmp_path / "config.toml", repo=tmp_path / "none", sources=[tmp_path])
    proc = cli("--config", str(cfg), "forget", "--dry-run", env=ENV)
    assert _error_line(proc, 2) == (
        "desktop-agent: error: nothing to keep: give at least one --keep-* option"
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--keep-last", "-3"], "negative"),
        (["--keep-daily", "many"], "not a number"),
        (["--keep-within", "1w"], "unknown unit"),
        (["--keep-within", "7"], "no unit"),
    ],
)
def test_bad_values_are_bad_usage(tmp_path, cli, args, needle):
    cfg = write_config(tmp_path / "config.toml", repo=tmp_path / "none", sources=[tmp_path])
    proc = cli("--config", str(cfg), "forget", *args, env=ENV)
    assert needle in _error_line(proc, 2)


def test_dry_run_shows_the_plan_and_changes_nothing(cli, setup):
    c, _repo, ids, snapshot_ids = setup
    proc = cli(*c, "forget", "--keep-daily", "2", "--dry-run", "--prune", env=ENV)
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Applying policy: keep 2 daily snapshots" in out
    assert "snapshots of host laptop, paths [" in out and "snapshots of host desktop" in out
    assert "would remove 3 snapshots:" in out
    assert "dry run: 3 snapshots would be removed; nothing was changed" in out
    assert "prune skipped: dry run" in out
    kept = ids[("laptop", "2024-01-03 18:00:00")][:8]
    kept_line = next(line for line in out.splitlines() if line.startswith(kept))
    assert "2024-01-03 18:00:00" in kept_line and "daily snapshot" in kept_line
    # the keep table comes before the remove table, oldest first in each
    removed = [ids[("laptop", t)][:8] for t in ("2024-01-01 10:00:00", "2024-01-03 09:00:00")]
    assert out.index(kept) < out.index(removed[0]) < out.index(removed[1])
    assert snapshot_ids() == set(ids.values())


def test_json_matches_restic_forget(cli, restic, setup):
    c, repo_dir, ids, snapshot_ids = setup
    policy = ["--keep-daily", "2", "--keep-tag", "important"]
    proc = cli(*c, "forget", *policy, "--dry-run", "--json", env=ENV)
    assert proc.returncode == 0, proc.stderr
    ours = json.loads(proc.stdout)
    theirs = json.loads(restic(repo_dir, "forget", *policy, "--dry-run", "--json").stdout)

    def decisions(doc):
        return {
            (g["host"], tuple(g["paths"])): (
                [s["id"] for s in g["keep"] or []],
                [s["id"] for s in g["remove"] or []],
                [r["matches"] for r in g["reasons"] or []],
            )
            for g in doc
        }

    assert decisions(ours) == decisions(theirs)
    laptop = next(g for g in ours if g["host"] == "laptop")
    assert {s["short_id"] for s in laptop["remove"]} == {
        ids[("laptop", t)][:8] for t in ("2024-01-01 10:00:00", "2024-01-03 09:00:00")
    }
    assert snapshot_ids() == set(ids.values())


def test_forget_removes_snapshots_and_restic_agrees(cli, restic, setup):
    c, repo_dir, ids, snapshot_ids = setup
    proc = cli(*c, "forget", "--keep-last", "1", "--keep-tag", "important", env=ENV)
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert "removed 3 snapshots" in proc.stdout
    assert snapshot_ids() == {
        ids[("laptop", "2024-01-03 18:00:00")],
        ids[("laptop", "2024-01-01 12:00:00")],
        ids[("desktop", "2024-01-02 08:00:00")],
    }
    assert not list((repo_dir / "locks").iterdir())
    restic(repo_dir, "check")


def test_a_policy_that_would_empty_a_group_is_refused(cli, setup):
    c, _repo, ids, snapshot_ids = setup
    proc = cli(*c, "forget", "--keep-tag", "important", env=ENV)
    line = _error_line(proc, 1)
    assert "refusing to delete every snapshot" in line and "host desktop" in line
    assert snapshot_ids() == set(ids.values())


def test_a_locked_repository_is_reported_in_one_line(cli, setup):
    c, repo_dir, ids, snapshot_ids = setup
    repo = Repository.open(LocalStorage(repo_dir), PASSWORD)
    with Lock(repo, exclusive=False, refresh=False):
        proc = cli(*c, "forget", "--keep-last", "1", env=ENV)
        assert "locked" in _error_line(proc, 1)
        dry = cli(*c, "forget", "--keep-last", "1", "--dry-run", env=ENV)
        assert dry.returncode == 0, dry.stderr
    assert snapshot_ids() == set(ids.values())
    assert len(list(repo.storage.list(FileType.LOCK))) == 0


def test_check_and_restore_wait_for_no_prune_but_share_with_backups(cli, setup, tmp_path):
    c, repo_dir, _ids, _snapshot_ids = setup
    repo = Repository.open(LocalStorage(repo_dir), PASSWORD)
    target = tmp_path / "out"
    with Lock(repo, exclusive=True, refresh=False):  # a prune is running
        for args in (["check"], ["restore", "latest", "--target", str(target)]):
            line = _error_line(cli(*c, *args, env=ENV), 1)
            assert line.startswith("desktop-agent: error: the repository is locked: an exclusive")
    assert not target.exists()
    with Lock(repo, exclusive=False, refresh=False):  # a backup is running
        assert cli(*c, "check", env=ENV).returncode == 0
        assert cli(*c, "restore", "latest", "--target", str(target), env=ENV).returncode == 0
    assert list(repo.storage.list(FileType.LOCK)) == []


def test_a_read_only_repository_is_checked_and_restored_without_a_lock(cli, template, tmpfs):
    repo_dir = tmpfs / "repo"
    shutil.copytree(template[0], repo_dir)
    cfg = write_config(tmpfs.parent / "config.toml", repo=repo_dir, sources=[template[1]])
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    proc = cli("--config", str(cfg), "check", "--read-data", env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "warning: cannot lock the repository" in proc.stderr
    assert "reading it without a lock" in proc.stderr
    target = tmpfs.parent / "restored"
    proc = cli("--config", str(cfg), "restore", "latest", "--target", str(target), env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert any(target.rglob("f.txt"))


def test_forget_with_prune(cli, restic, setup):
    c, repo_dir, ids, snapshot_ids = setup
    packs_before = sum(1 for p in (repo_dir / "data").rglob("*") if p.is_file())
    proc = cli(*c, "forget", "--keep-last", "1", "--prune", env=ENV)
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert "removed 4 snapshots" in proc.stdout
    assert "prune:" in proc.stdout
    assert len(snapshot_ids()) == 2
    restic(repo_dir, "check", "--read-data")
    packs_after = sum(1 for p in (repo_dir / "data").rglob("*") if p.is_file())
    assert packs_after <= packs_before


def test_forget_shows_hostile_hosts_escaped_and_json_exact(hostile, raw_cli):
    src, c, evil, wide = hostile
    proc = raw_cli(*c, "forget", "--keep-last", "1", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = safe_lines(proc.stdout)
    assert f"snapshots of host {HOSTILE_HOST_SHOWN}, paths [{src}]:" in lines
    assert f"snapshots of host {WIDE_HOST}, paths [{src}]:" in lines
    # each group has a table of its own: the wide host's row against its header
    n = next(i for i, line in enumerate(lines) if line.startswith(wide.short_id))
    row, header = lines[n], lines[n - 2]
    assert header.startswith("ID ")
    at = columns(header[: header.index("Reasons")])
    assert columns(row[: row.index("last snapshot")]) == at
    doc = raw_cli(*c, "forget", "--keep-last", "1", "--dry-run", "--json")
    assert doc.returncode == 0, doc.stderr
    (line,) = safe_lines(doc.stdout)
    assert {g["host"] for g in json.loads(line)} == {HOSTILE_HOST, WIDE_HOST}
