"""The headless agent as a user runs it: a process, a real port, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from support import FAST_KDF, PASSWORD, free_port, write
from websockets.sync.client import connect

from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import FileType, LocalStorage

TOKEN = "headless-token-0123456789"


def start_agent(
    tmp_path: Path, source: Path, *, headless_flag: bool = True
) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    repo = tmp_path / "repo"
    Repository.init(LocalStorage(repo), PASSWORD, kdf_params=FAST_KDF)
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[agent]\nlisten = "127.0.0.1:{port}"\ntoken = "{TOKEN}"\n'
        f'[repository]\npath = "{repo}"\npassword_file = ""\n'
        f'[backup]\nsources = ["{source}"]\nexclude = []\ninterval_minutes = 0\n'
    )
    os.chmod(cfg, 0o600)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "DESKTOP_AGENT_PASSWORD": PASSWORD,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "desktop_agent", "--config", str(cfg)]
        + (["--headless"] if headless_flag else []),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the agent did not start: {proc.communicate()[0]}")


def test_sigterm_cancels_the_running_backup_and_exits_cleanly(tmp_path, restic):
    src = tmp_path / "src"
    for i in range(8):
        write(src / f"f{i}.bin", os.urandom(40 * 1024 * 1024))
    proc, port = start_agent(tmp_path, src)
    try:
        with connect(
            f"ws://127.0.0.1:{port}/ws", additional_headers={"Authorization": f"Bearer {TOKEN}"}
        ) as ws:
            ws.send('{"type":"backup:start","payload":{}}')
            while True:
                msg = json.loads(ws.recv(timeout=30))
                if msg["type"] == "backup:progress" and msg["payload"]["transferred_bytes"] > 0:
                    break
            proc.send_signal(signal.SIGTERM)
            ends = []
            try:
                while True:
                    msg = json.loads(ws.recv(timeout=30))
                    if msg["type"] in ("backup:failed", "backup:completed"):
                        ends.append(msg)
            except Exception:  # noqa: BLE001 - the connection closes when the agent stops
                pass
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert [m["payload"]["error"] for m in ends] in (["cancelled"], [])
    storage = LocalStorage(tmp_path / "repo")
    assert list(storage.list(FileType.LOCK)) == []
    assert list(storage.list(FileType.SNAPSHOT)) == []
    restic(tmp_path / "repo", "check", "--read-data")
    log = tmp_path / "state" / "desktop-agent" / "log" / "desktop-agent.log"
    text = log.read_text() if log.exists() else out
    assert TOKEN not in text and TOKEN not in out


def test_without_a_display_the_plain_command_runs_headless(tmp_path):
    src = write(tmp_path / "src" / "a.txt", b"a").parent
    # start_agent's environment has neither DISPLAY nor QT_QPA_PLATFORM
    proc, _port = start_agent(tmp_path, src, headless_flag=False)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "no display found: running headless" in out
