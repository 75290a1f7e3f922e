"""The command line as a user meets it: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support import PASSWORD, signature, write, write_config

from desktop_agent.engine import crypto
from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.ids import BlobType
from desktop_agent.engine.repository import RepoConfig, Repository
from desktop_agent.engine.storage import FileType, LocalStorage
from desktop_agent.termtext import columns

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


# ------------------------------------------- names that try to drive the terminal
# A repository may be written by someone else, and a disk may hold any name:
# what the CLI prints must not move the cursor, set the title or forge lines.
FORGED = "snapshot 00000000 saved"
HOSTILE_DIR = "dir\x1b[31m"
HOSTILE_DIR_SHOWN = "dir\\x1b[31m"
# (name, as the CLI must show it)
HOSTILE_NAMES = [
    ("\x1b]0;pwned\x07title.txt", "\\x1b]0;pwned\\x07title.txt"),  # sets the window title
    ("\x1b[2Jclear.txt", "\\x1b[2Jclear.txt"),  # clears the screen
    ("cr\rforged.txt", "cr\\rforged.txt"),
    (f"nl\n{FORGED}", f"nl\\n{FORGED}"),
    ("bidi\u202etxt.exe", "bidi\\u202etxt.exe"),
    ("c1\u009b2J.txt", "c1\\u009b2J.txt"),  # the one-character CSI
]
RAW_NAME = b"raw\xff\x9bname"  # not UTF-8; 0x9b is CSI to an 8-bit terminal
RAW_NAME_SHOWN = "raw\\xff\\x9bname"
HOSTILE_HOST = f"evil\x1b]0;pwned\x07\x1b[2J\r\n{FORGED}\u202e"
HOSTILE_HOST_SHOWN = f"evil\\x1b]0;pwned\\x07\\x1b[2J\\r\\n{FORGED}\\u202e"
WIDE_HOST = "家のパソコン"  # two columns a character
HOSTILE_TAG = "tag\x1b[5m\nblink"
HOSTILE_TAG_SHOWN = "tag\\x1b[5m\\nblink"


def _safe_lines(raw: bytes) -> list[str]:
    """The lines of an output, after checking that none could drive a terminal."""
    text = raw.decode("utf-8")  # strict: no raw undecodable byte got through
    assert text == "" or text.endswith("\n"), text
    lines = text.split("\n")[:-1]
    for line in lines:
        # no ESC, BEL, CR, C1 control, bidi override, line separator...
        assert line.isprintable(), ascii(line)
        assert not line.startswith(FORGED), line
    return lines


@pytest.fixture
def raw_cli(tmp_path):
    """Run the CLI as ``cli`` does, but keep its output as bytes (and CRs as CRs)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local/share"),
            "XDG_STATE_HOME": str(home / ".local/state"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "LANG": "C.UTF-8",
            **ENV,
        }
        cmd = [sys.executable, "-m", "desktop_agent", *args]
        return subprocess.run(cmd, env=env, capture_output=True, timeout=120)

    return run


@pytest.fixture
def hostile(tmp_path, new_repo):
    """A repository (made by the engine) of a tree with hostile names, twice:
    once from a host with a hostile name and hostile tags, once from a host
    whose name is wide characters."""
    src = tmp_path / "src"
    for i, (name, _shown) in enumerate(HOSTILE_NAMES):
        write(src / HOSTILE_DIR / name, f"content {i}\n".encode())
    with open(os.fsencode(src / HOSTILE_DIR) + b"/" + RAW_NAME, "wb") as fh:
        fh.write(b"raw name\n")
    repo = new_repo(tmp_path / "repo")
    evil = backup(
        repo,
        BackupOptions(sources=[str(src)], host=HOSTILE_HOST, tags=[HOSTILE_TAG, "ok"], helpers=0),
    )
    wide = backup(repo, BackupOptions(sources=[str(src)], host=WIDE_HOST, helpers=0))
    cfg = write_config(tmp_path / "config.toml", repo=tmp_path / "repo", sources=[src])
    return src, ["--config", str(cfg)], evil.snapshot, wide.snapshot


def test_snapshots_shows_hostile_hosts_and_tags_escaped_and_aligned(hostile, raw_cli):
    src, c, evil, wide = hostile
    proc = raw_cli(*c, "snapshots")
    assert proc.returncode == 0, proc.stderr
    assert _safe_lines(proc.stderr) == []
    lines = _safe_lines(proc.stdout)
    # header, rule, the hostile snapshot (two tags: two lines), the other one, rule, count
    assert len(lines) == 7, lines
    assert HOSTILE_HOST_SHOWN in lines[2] and HOSTILE_TAG_SHOWN in lines[2]
    assert lines[3].strip() == "ok"
    assert WIDE_HOST in lines[4]
    # the paths start in the same terminal column in every row: widths are
    # counted in columns, so the wide host name does not shift its row
    header = lines[0]
    at = columns(header[: header.index("Paths")])
    for row in (lines[2], lines[4]):
        assert columns(row[: row.index(str(src))]) == at, row
    assert columns(lines[3][: lines[3].index("ok")]) == columns(header[: header.index("Tags")])


def test_snapshots_json_keeps_hostile_names_exact(hostile, raw_cli):
    _src, c, evil, wide = hostile
    proc = raw_cli(*c, "snapshots", "--json")
    assert proc.returncode == 0, proc.stderr
    (line,) = _safe_lines(proc.stdout)  # JSON-escaped: nothing raw reaches the terminal
    listed = {s["short_id"]: s for s in json.loads(line)}
    assert listed[evil.short_id]["hostname"] == HOSTILE_HOST
    assert listed[evil.short_id]["tags"] == [HOSTILE_TAG, "ok"]
    assert listed[wide.short_id]["hostname"] == WIDE_HOST


def test_restore_reports_hostile_names_escaped_one_line_each(hostile, raw_cli, tmp_path):
    src, c, evil, _wide = hostile
    target = tmp_path / "target"
    first = raw_cli(*c, "restore", evil.short_id, "--target", str(target))
    assert first.returncode == 0, first.stderr
    _safe_lines(first.stdout)
    restored = os.fsencode(target / str(src).lstrip("/") / HOSTILE_DIR)
    assert sorted(os.listdir(restored)) == sorted(
        [name.encode() for name, _shown in HOSTILE_NAMES] + [RAW_NAME]
    )
    # again: every file exists, and each is reported on a line of its own
    again = raw_cli(*c, "restore", evil.short_id, "--target", str(target))
    assert again.returncode == 1
    errors = _safe_lines(again.stderr)
    assert len(errors) == len(HOSTILE_NAMES) + 2, errors  # one per file, then the summary
    assert errors[-1].startswith("desktop-agent: error: ")
    for shown in [s for _name, s in HOSTILE_NAMES] + [RAW_NAME_SHOWN]:
        want = f"/{HOSTILE_DIR_SHOWN}/{shown}: exists; not overwritten"
        assert sum(line.startswith("error: ") and line.endswith(want) for line in errors) == 1
    _safe_lines(again.stdout)


def test_check_names_hostile_paths_escaped(hostile, raw_cli, tmp_path):
    _src, c, _evil, _wide = hostile
    repo = Repository.open(LocalStorage(tmp_path / "repo"), PASSWORD)
    repo.ensure_index()
    entry = repo.index.lookup(BlobType.DATA, hashlib.sha256(b"content 3\n").digest())
    assert entry is not None
    os.unlink(repo.storage.path(FileType.PACK, entry.pack.hex()))
    proc = raw_cli(*c, "check")
    assert proc.returncode == 1
    _safe_lines(proc.stdout)
    errors = _safe_lines(proc.stderr)
    assert errors[-1].startswith("desktop-agent: error: the repository has")
    text = "\n".join(errors)
    assert f"/{HOSTILE_DIR_SHOWN}/nl\\n{FORGED}" in text
    assert "\\x1b]0;pwned\\x07title.txt" in text


def test_forget_shows_hostile_hosts_escaped_and_json_exact(hostile, raw_cli):
    src, c, evil, wide = hostile
    proc = raw_cli(*c, "forget", "--keep-last", "1", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = _safe_lines(proc.stdout)
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
    (line,) = _safe_lines(doc.stdout)
    assert {g["host"] for g in json.loads(line)} == {HOSTILE_HOST, WIDE_HOST}


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
    assert _safe_lines(proc.stderr)[0] == f"skipped: {gone_shown}: source does not exist"
    _safe_lines(proc.stdout)
    as_json = raw_cli("--config", str(cfg), "backup", "--json")
    assert as_json.returncode == 3, as_json.stderr
    summary = json.loads(_safe_lines(as_json.stdout)[-1])
    assert summary["skipped"] == [{"path": str(gone), "reason": "source does not exist"}]
    # and the one-line error of a failed command
    only = _toml_config(tmp_path / "only.toml", tmp_path / "repo", [gone])
    failed = raw_cli("--config", str(only), "backup")
    assert failed.returncode == 1
    (error,) = _safe_lines(failed.stderr)
    assert error.startswith("desktop-agent: error: ") and gone_shown in error
