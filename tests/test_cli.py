"""The command line as a user meets it: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest
from support import PASSWORD, signature, write, write_config

from desktop_agent.engine import crypto
from desktop_agent.engine.repository import RepoConfig, Repository
from desktop_agent.engine.storage import FileType, LocalStorage

ENV = {"DESKTOP_AGENT_PASSWORD": PASSWORD}


def _no_traceback(proc) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


def _one_line_error(proc, *needles: str) -> None:
    _no_traceback(proc)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert lines, "no error message"
    msg = lines[-1]
    assert msg.startswith("desktop-agent: error: ")
    for n in needles:
        assert n in msg, msg


@pytest.fixture
def setup(tmp_path, cli):
    src = tmp_path / "src"
    write(src / "a.txt", b"alpha\n")
    write(src / "sub" / "b.bin", os.urandom(200_000))
    write(src / "skip.tmp", b"tmp")
    cfg = write_config(
        tmp_path / "config.toml", repo=tmp_path / "repo", sources=[src], exclude=["*.tmp"]
    )
    return src, cfg


def test_full_cycle(tmp_path, cli, setup):
    src, cfg = setup
    c = ["--config", str(cfg)]
    init = cli(*c, "init", env=ENV)
    assert init.returncode == 0, init.stderr
    assert "created repository" in init.stdout

    first = cli(*c, "backup", env=ENV)
    assert first.returncode == 0, first.stderr
    assert "snapshot" in first.stdout and "saved" in first.stdout

    second = cli(*c, "backup", "--json", env=ENV)
    assert second.returncode == 0, second.stderr
    lines = [json.loads(line) for line in second.stdout.splitlines()]
    summary = lines[-1]
    assert summary["message_type"] == "summary"
    assert summary["files_unmodified"] == 2 and summary["files_new"] == 0
    assert all(line["message_type"] == "status" for line in lines[:-1])

    snaps = cli(*c, "snapshots", "--json", env=ENV)
    listed = json.loads(snaps.stdout)
    assert [s["id"] for s in listed][-1] == summary["snapshot_id"]
    assert listed[0]["paths"] == [str(src)]
    table = cli(*c, "snapshots", env=ENV)
    assert listed[0]["short_id"] in table.stdout and "2 snapshots" in table.stdout

    target = tmp_path / "restored"
    rest = cli(*c, "restore", listed[0]["short_id"][:6], "--target", str(target), env=ENV)
    assert rest.returncode == 0, rest.stderr
    out = target / str(src).lstrip("/")
    expected = signature(src)
    del expected[b"skip.tmp"]
    assert signature(out) == expected

    partial = tmp_path / "partial"
    inc = cli(
        *c, "restore", "latest", "--target", str(partial), "--include", str(src / "sub"), env=ENV
    )
    assert inc.returncode == 0, inc.stderr
    assert (partial / str(src).lstrip("/") / "sub" / "b.bin").exists()
    assert not (partial / str(src).lstrip("/") / "a.txt").exists()

    chk = cli(*c, "check", "--read-data", env=ENV)
    assert chk.returncode == 0 and "no errors were found" in chk.stdout


def test_restore_never_overwrites_silently(tmp_path, cli, setup):
    src, cfg = setup
    c = ["--config", str(cfg)]
    assert cli(*c, "init", env=ENV).returncode == 0
    assert cli(*c, "backup", env=ENV).returncode == 0
    target = tmp_path / "t"
    existing = write(target / str(src).lstrip("/") / "a.txt", b"my precious edits")
    again = cli(*c, "restore", "latest", "--target", str(target), env=ENV)
    _one_line_error(again, "problem")
    assert "exists; not overwritten" in again.stderr
    assert existing.read_bytes() == b"my precious edits"
    forced = cli(*c, "restore", "latest", "--target", str(target), "--overwrite", env=ENV)
    assert forced.returncode == 0
    assert existing.read_bytes() == b"alpha\n"


def test_wrong_password(cli, setup):
    _src, cfg = setup
    assert cli("--config", str(cfg), "init", env=ENV).returncode == 0
    bad = cli("--config", str(cfg), "snapshots", env={"DESKTOP_AGENT_PASSWORD": "nope"})
    _one_line_error(bad, "wrong password")


def test_not_a_repository(tmp_path, cli, setup):
    _src, cfg = setup
    proc = cli("--config", str(cfg), "backup", env=ENV)
    _one_line_error(proc, "no repository", "init")
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "holiday.jpg").write_bytes(b"jpeg")
    proc = cli("--config", str(cfg), "snapshots", env=ENV)
    _one_line_error(proc, "no repository")
    proc = cli("--config", str(cfg), "init", env=ENV)
    _one_line_error(proc, "not empty")
    assert (tmp_path / "repo" / "holiday.jpg").read_bytes() == b"jpeg"


def test_newer_repository_version_is_refused(tmp_path, cli, setup):
    _src, cfg = setup
    assert cli("--config", str(cfg), "init", env=ENV).returncode == 0
    storage = LocalStorage(tmp_path / "repo")
    repo = Repository.open(storage, PASSWORD)
    newer = RepoConfig(3, repo.config.id, repo.config.chunker_polynomial)
    os.chmod(storage.path(FileType.CONFIG, ""), 0o600)
    storage.save(FileType.CONFIG, "", [crypto.encrypt(repo.key, newer.to_bytes())])
    proc = cli("--config", str(cfg), "backup", env=ENV)
    _one_line_error(proc, "version 3", "not supported")


def test_missing_source_is_listed_and_exit_3(tmp_path, cli, setup):
    src, _cfg = setup
    cfg = write_config(
        tmp_path / "c2.toml", repo=tmp_path / "repo", sources=[src, tmp_path / "unplugged"]
    )
    assert cli("--config", str(cfg), "init", env=ENV).returncode == 0
    proc = cli("--config", str(cfg), "backup", env=ENV)
    _no_traceback(proc)
    assert proc.returncode == 3, proc.stderr
    assert f"skipped: {tmp_path / 'unplugged'}: source does not exist" in proc.stderr
    only_missing = write_config(
        tmp_path / "c3.toml", repo=tmp_path / "repo", sources=[tmp_path / "nothing"]
    )
    _one_line_error(
        cli("--config", str(only_missing), "backup", env=ENV), "no backup source exists"
    )


@pytest.fixture
def shared_tmp():
    """A world-traversable temp dir (pytest's own is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="da-test-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_unreadable_file_is_skipped_listed_and_exit_3(shared_tmp, cli):
    base = shared_tmp
    user = None
    if os.geteuid() == 0:  # root reads everything: run the CLI as nobody
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to drop root")
        pw = pwd.getpwnam("nobody")
        user = (pw.pw_uid, pw.pw_gid)
    src = base / "src"
    write(src / "readable.txt", b"fine")
    locked = write(src / "locked.txt", b"secret")
    cfg = write_config(base / "config.toml", repo=base / "repo", sources=[src])
    home = base / "home"
    home.mkdir()
    (base / "repo").mkdir()
    if user is not None:
        for p in (src, src / "readable.txt", locked, cfg, home, base / "repo"):
            os.chown(p, *user)
    os.chmod(locked, 0)
    kw = {"env": ENV, "user": user, "home_dir": home}
    init = cli("--config", str(cfg), "init", **kw)
    assert init.returncode == 0, init.stderr
    proc = cli("--config", str(cfg), "backup", **kw)
    _no_traceback(proc)
    assert proc.returncode == 3, proc.stderr
    assert f"skipped: {locked}: Permission denied" in proc.stderr
    snaps = json.loads(cli("--config", str(cfg), "snapshots", "--json", **kw).stdout)
    assert len(snaps) == 1


def test_usage_errors_exit_2(cli):
    proc = cli("restore", "latest")
    assert proc.returncode == 2 and "--target" in proc.stderr
    proc = cli("frobnicate")
    assert proc.returncode == 2
    _no_traceback(proc)


def test_version_and_token(tmp_path, cli, setup):
    _src, cfg = setup
    v = cli("--version")
    assert v.returncode == 0 and v.stdout.startswith("desktop-agent ")
    t = cli("--config", str(cfg), "token")
    assert t.stdout.strip() == "test-token-0123456789"


def test_first_start_creates_config_and_init_generates_password(tmp_path, cli):
    cfg = tmp_path / "home" / ".config" / "desktop-agent" / "config.toml"
    proc = cli("token", env={"DESKTOP_AGENT_CONFIG": str(cfg)})
    assert proc.returncode == 0 and len(proc.stdout.strip()) >= 32
    assert cfg.stat().st_mode & 0o777 == 0o600
    init = cli("init", env={"DESKTOP_AGENT_CONFIG": str(cfg)})
    assert init.returncode == 0, init.stderr
    assert "keep a copy somewhere safe" in init.stdout
    pw_file = cfg.parent / "repository-password"
    assert pw_file.stat().st_mode & 0o777 == 0o600
    listing = cli("snapshots", env={"DESKTOP_AGENT_CONFIG": str(cfg)})
    assert listing.returncode == 0 and "no snapshots" in listing.stdout


def test_bad_config_is_one_line(tmp_path, cli):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[agent]\nlisten = 'nowhere'\n")
    proc = cli("--config", str(cfg), "snapshots")
    _one_line_error(proc, "listen")


def test_restic_written_repository_via_cli(tmp_path, cli, restic, odd_tree):
    src = odd_tree(tmp_path / "src")
    restic(tmp_path / "repo", "init")
    restic(tmp_path / "repo", "backup", str(src))
    cfg = write_config(tmp_path / "config.toml", repo=tmp_path / "repo", sources=[src])
    snaps = json.loads(cli("--config", str(cfg), "snapshots", "--json", env=ENV).stdout)
    assert len(snaps) == 1
    proc = cli("--config", str(cfg), "backup", env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "0 new, 0 changed" in proc.stdout
    restic(tmp_path / "repo", "check", "--read-data")
    assert Path(tmp_path / "repo" / "config").exists()
