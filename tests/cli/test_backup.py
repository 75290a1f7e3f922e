"""``backup`` (:mod:`desktop_agent.cli.backup`): what could not be read is listed, exit 3."""

from __future__ import annotations

import json
import os
import pwd
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
from clisupport import ENV, FORGED, no_traceback, one_line_error, safe_lines
from support import PASSWORD, write, write_config

from desktop_agent.cli import backup as cli_backup
from desktop_agent.cli import entry
from desktop_agent.cli import restore as cli_restore


def test_missing_source_is_listed_and_exit_3(tmp_path, cli, setup):
    src, _cfg = setup
    cfg = write_config(
        tmp_path / "c2.toml", repo=tmp_path / "repo", sources=[src, tmp_path / "unplugged"]
    )
    assert cli("--config", str(cfg), "init", env=ENV).returncode == 0
    proc = cli("--config", str(cfg), "backup", env=ENV)
    no_traceback(proc)
    assert proc.returncode == 3, proc.stderr
    assert f"skipped: {tmp_path / 'unplugged'}: source does not exist" in proc.stderr
    only_missing = write_config(
        tmp_path / "c3.toml", repo=tmp_path / "repo", sources=[tmp_path / "nothing"]
    )
    one_line_error(cli("--config", str(only_missing), "backup", env=ENV), "no backup source exists")


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
    no_traceback(proc)
    assert proc.returncode == 3, proc.stderr
    assert f"skipped: {locked}: Permission denied" in proc.stderr
    snaps = json.loads(cli("--config", str(cfg), "snapshots", "--json", **kw).stdout)
    assert len(snaps) == 1


def _toml_config(path: Path, repo: Path, sources: list[Path]) -> Path:
    # json.dumps spells a string the way TOML's basic strings do (\u001b, \n)
    lines = [
        "[agent]",
        'listen = "127.0.0.1:8080"',
        'token = "test-token-0123456789"',
        "[repository]",
        f"path = {json.dumps(str(repo))}",
        "[backup]",
        "sources = [" + ", ".join(json.dumps(str(s)) for s in sources) + "]",
    ]
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


def test_backup_reports_hostile_local_names_escaped(hostile, raw_cli, tmp_path):
    src, _c, _evil, _wide = hostile
    gone = tmp_path / f"gone\x1b[2J\n{FORGED}"
    gone_shown = f"{tmp_path}/gone\\x1b[2J\\n{FORGED}"
    cfg = _toml_config(tmp_path / "hostile.toml", tmp_path / "repo", [src, gone])
    proc = raw_cli("--config", str(cfg), "backup")
    assert proc.returncode == 3, proc.stderr
    assert safe_lines(proc.stderr)[0] == f"skipped: {gone_shown}: source does not exist"
    safe_lines(proc.stdout)
    as_json = raw_cli("--config", str(cfg), "backup", "--json")
    assert as_json.returncode == 3, as_json.stderr
    summary = json.loads(safe_lines(as_json.stdout)[-1])
    assert summary["skipped"] == [{"path": str(gone), "reason": "source does not exist"}]
    # and the one-line error of a failed command
    only = _toml_config(tmp_path / "only.toml", tmp_path / "repo", [gone])
    failed = raw_cli("--config", str(only), "backup")
    assert failed.returncode == 1
    (error,) = safe_lines(failed.stderr)
    assert error.startswith("desktop-agent: error: ") and gone_shown in error


def test_backup_and_restore_keep_their_buffers(tmp_path, new_repo, monkeypatch, capsys):
    """The command line (not the engine, which the agent shares) runs the
    backup and the restore inside engine.memory.steady_buffers."""
    src = tmp_path / "src"
    write(src / "a.bin", os.urandom(5000))
    new_repo(tmp_path / "repo")
    cfg = write_config(tmp_path / "config.toml", repo=tmp_path / "repo", sources=[src])
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / "cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "home" / "state"))
    inside: list[str] = []

    def recording(name):
        @contextmanager
        def steady():
            inside.append(name)
            yield

        return steady

    monkeypatch.setattr(cli_backup, "steady_buffers", recording("backup"))
    monkeypatch.setattr(cli_restore, "steady_buffers", recording("restore"))
    # the commands themselves (main would also set up this process's logging)
    parser = entry.build_parser()
    for argv in (["backup"], ["restore", "latest", "--target", str(tmp_path / "restored")]):
        args = parser.parse_args(["--config", str(cfg), *argv])
        assert args.run(args) == 0
    assert inside == ["backup", "restore"]
    capsys.readouterr()
