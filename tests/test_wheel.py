"""The built wheel, installed (not editable) into a fresh virtualenv, as a user
installs it: the tray and the headless agent start from it and find their
icons and the .desktop entry as package data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_headless import TOKEN, free_port
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the wheel built from this tree installed in it."""
    where = tmp_path_factory.mktemp("wheel")
    dist = where / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("desktop_agent-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "desktop_agent/resources/icons/app.svg" in names
    assert "desktop_agent/resources/desktop-agent.desktop" in names
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr
    yield venv


def _config(tmp_path: Path, port: int) -> Path:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "a.txt").write_text("hello\n")
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[agent]\nlisten = "127.0.0.1:{port}"\ntoken = "{TOKEN}"\n'
        f'[repository]\npath = "{tmp_path / "repo"}"\npassword_file = "{tmp_path / "pw"}"\n'
        f'[backup]\nsources = ["{tmp_path / "src"}"]\nexclude = []\ninterval_minutes = 0\n'
    )
    cfg.chmod(0o600)
    return cfg


def _env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_STATE_HOME": str(home / ".state"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_RUNTIME_DIR": str(tmp_path),
        "QT_QPA_PLATFORM": "offscreen",
        "LANG": "C.UTF-8",
    }


def _status_over_ws(port: int, proc: subprocess.Popen[str]) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while True:
        try:
            with connect(
                f"ws://127.0.0.1:{port}/ws",
                additional_headers={"Authorization": f"Bearer {TOKEN}"},
                open_timeout=2,
            ) as ws:
                ws.send('{"type":"agent:status","payload":null}')
                reply: dict[str, object] = json.loads(ws.recv(timeout=10))
                return reply
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no /ws: {proc.communicate()[0]}") from None
            time.sleep(0.1)  # the server is not listening yet


@pytest.mark.parametrize("mode", ["--headless", "tray"])
def test_the_installed_wheel_runs(installed: Path, tmp_path: Path, mode: str) -> None:
    exe = installed / "bin" / "desktop-agent"
    env = _env(tmp_path)
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=env)
    assert version.returncode == 0 and version.stdout.startswith("desktop-agent ")
    port = free_port()
    cfg = _config(tmp_path, port)
    init = subprocess.run([str(exe), "--config", str(cfg), "init"], capture_output=True, env=env)
    assert init.returncode == 0, init.stderr
    args = [str(exe), "--config", str(cfg)] + (["--headless"] if mode == "--headless" else [])
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        reply = _status_over_ws(port, proc)
        assert reply["type"] == "agent:status"
        assert reply["payload"]["status"] == "idle"  # type: ignore[index]
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "FileNotFoundError" not in out
    # it ran from the installed copy, icons and all
    where = subprocess.run(
        [
            str(installed / "bin" / "python"),
            "-c",
            "import desktop_agent; print(desktop_agent.__file__)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert str(installed) in where.stdout
