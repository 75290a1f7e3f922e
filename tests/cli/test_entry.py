"""The command line as a user meets it (:mod:`desktop_agent.cli.entry`): a whole
cycle of commands, usage errors, one-line failures, no tracebacks."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from clisupport import ENV, no_traceback, one_line_error
from support import signature

from desktop_agent import __version__
from desktop_agent.cli import build_parser, entry


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


def test_a_command_ends_its_process_with_output_and_log_written(tmp_path, cli, setup):
    """Run as the program, a finished command ends the process without the
    interpreter's teardown: what it printed and logged is all there."""
    _src, cfg = setup
    c = ["--config", str(cfg)]
    assert cli(*c, "init", env=ENV).returncode == 0
    done = cli(*c, "backup", env=ENV)  # printed, not flushed line by line
    assert done.returncode == 0, done.stderr
    short = done.stdout.split("snapshot ", 1)[1].split()[0]
    assert "saved" in done.stdout and len(short) == 8
    (log_file,) = (tmp_path / "home").rglob("desktop-agent.log")
    assert f"backup: snapshot {short} saved" in log_file.read_text()
    # a reader that goes away early: no traceback, no complaint at exit
    proc = subprocess.Popen(
        [sys.executable, "-m", "desktop_agent", *c, "snapshots", "--json"],
        env={**ENV, "HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_usage_errors_exit_2(cli):
    proc = cli("restore", "latest")
    assert proc.returncode == 2 and "--target" in proc.stderr
    proc = cli("frobnicate")
    assert proc.returncode == 2
    no_traceback(proc)


def test_bad_config_is_one_line(tmp_path, cli):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[agent]\nlisten = 'nowhere'\n")
    proc = cli("--config", str(cfg), "snapshots")
    one_line_error(proc, "listen")


ROOT = Path(__file__).resolve().parent.parent.parent
COMMANDS = [
    "init",
    "backup",
    "snapshots",
    "restore",
    "check",
    "forget",
    "prune",
    "token",
    "autostart",
    "selftest",
    "remote",
]


def test_every_command_in_its_place_with_its_runner() -> None:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    # the order of --help and of argparse's "invalid choice" list
    assert list(sub.choices) == COMMANDS
    for name, command in sub.choices.items():
        runner = command.get_default("run")
        assert callable(runner), name
        assert runner.__module__.startswith("desktop_agent.cli."), (name, runner)
    usage = subprocess.run(
        [sys.executable, "-m", "desktop_agent", "frobnicate"], capture_output=True, text=True
    )
    assert f"(choose from {', '.join(repr(c) for c in COMMANDS)})" in usage.stderr


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "desktop_agent"],
        [str(Path(sys.executable).parent / "desktop-agent")],
        [sys.executable, str(ROOT / "packaging" / "pyinstaller" / "desktop-agent.py")],
    ],
    ids=["python -m", "console script", "frozen entry point"],
)
def test_every_entry_point_runs_the_command_line(command: list[str]) -> None:
    if not Path(command[-1]).exists() and command[-1] != "desktop_agent":
        pytest.skip(f"{command[-1]} is not installed")
    proc = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"desktop-agent {__version__}\n"
    bad = subprocess.run([*command, "--no-such-option"], capture_output=True, text=True)
    assert bad.returncode == 2 and "desktop-agent: error:" in bad.stderr


def test_the_cli_package_exports_main_and_build_parser(capsys: pytest.CaptureFixture[str]) -> None:
    import desktop_agent.cli as cli

    assert cli.__all__ == ["main", "build_parser"]
    assert (cli.main, cli.build_parser) == (entry.main, entry.build_parser)
    # main returns the status; sys.exit is the caller's (argparse exits only on bad usage)
    with pytest.raises(SystemExit) as bad:
        cli.main(["restore", "latest"])
    assert bad.value.code == 2 and "--target" in capsys.readouterr().err
