"""``desktop-agent selftest``: what it checks, and that each check can fail."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pyfastcdc
import pytest
from pyfastcdc import py as pure_python

from desktop_agent import selftest


def test_every_check_passes_here(cli) -> None:  # type: ignore[no-untyped-def]
    proc = cli("selftest", env={"QT_QPA_PLATFORM": "offscreen"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [["ok", c.name] for c in selftest.CHECKS]
    assert lines[-1] == "selftest: all checks passed"


def test_a_pure_python_chunker_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a bundle that missed pyfastcdc's compiled module silently runs."""
    monkeypatch.setattr(pyfastcdc, "FastCDC", pure_python.FastCDC)
    lines: list[str] = []
    monkeypatch.setattr(selftest, "CHECKS", [c for c in selftest.CHECKS if c.name == "chunker"])
    assert selftest.run(lines.append) == 1
    assert lines[0].startswith("FAIL chunker") and "pure-Python fallback" in lines[0]
    assert lines[-1] == "selftest: 1 check(s) failed"


def test_a_missing_icon_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from desktop_agent.ui import resources

    def missing(*parts: str) -> bytes:
        raise resources.ResourceMissing(f"{'/'.join(parts)} is missing from the installation")

    monkeypatch.setattr(resources, "resource_bytes", missing)
    monkeypatch.setattr(selftest, "CHECKS", [c for c in selftest.CHECKS if c.name == "icons"])
    lines: list[str] = []
    assert selftest.run(lines.append) == 1
    assert "icons/app.svg is missing" in lines[0]


def test_a_frozen_program_starts_its_helpers_as_itself(tmp_path: Path) -> None:
    """A frozen program starts helper processes as ``<itself> --engine-helper FD``:
    the entry point must dispatch that before argparse (which would refuse it)."""
    exe = tmp_path / "desktop-agent"
    exe.write_text(
        f"#!/bin/sh\nexec {sys.executable} -c "
        "'import sys; from desktop_agent.cli import main; sys.exit(main())' \"$@\"\n"
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    script = (
        "import sys\n"
        f"sys.frozen = True; sys.executable = {str(exe)!r}\n"
        "from desktop_agent import selftest\n"
        "selftest.CHECKS = [c for c in selftest.CHECKS if c.name in ('helpers', 'qt')]\n"
        "sys.exit(selftest.run())\n"
    )
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok   helpers" in proc.stdout and "ok   qt" in proc.stdout
