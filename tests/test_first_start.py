"""The first start does the main job by itself: a fresh headless agent makes
its default repository and backs up, with sensible default sources."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from support import write
from test_headless import free_port

from desktop_agent.config.paths import HOME_EXCLUDES, default_sources


def _env(home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_STATE_HOME": str(home / ".local/state"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "LANG": "C.UTF-8",
    }


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "desktop_agent", *args],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_default_sources_are_documents_or_the_home_folder(tmp_path: Path) -> None:
    assert default_sources(tmp_path) == (("~",), HOME_EXCLUDES)
    (tmp_path / "Documents").mkdir()
    assert default_sources(tmp_path) == (("~/Documents",), ())


def test_a_fresh_headless_agent_creates_its_repository_and_backs_up(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write(home / "notes.txt", b"my notes\n")
    write(home / "projects" / "a.py", b"print('hi')\n")
    write(home / ".cache" / "junk.bin", b"cache\n")
    write(home / ".cargo" / "registry" / "crate.tar", b"download\n")
    write(home / ".local" / "share" / "Trash" / "files" / "old.txt", b"deleted\n")
    # the very first command writes the configuration with its defaults
    assert _cli(home, "token").returncode == 0
    cfg = home / ".config" / "desktop-agent" / "config.toml"
    text = cfg.read_text()
    assert 'sources = ["~"]' in text and '"~/.cargo/registry"' in text
    port = free_port()
    cfg.write_text(text.replace('listen = "127.0.0.1:8080"', f'listen = "127.0.0.1:{port}"'))
    proc = subprocess.Popen(
        [sys.executable, "-m", "desktop_agent", "--headless"],
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        snaps: list[dict[str, object]] = []
        deadline = time.monotonic() + 60
        while not snaps and time.monotonic() < deadline:
            listing = _cli(home, "snapshots", "--json")
            if listing.returncode == 0:
                snaps = json.loads(listing.stdout)
            if not snaps:
                time.sleep(0.2)  # polling the repository for the first snapshot
        assert snaps, "no snapshot within 60 s"
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    repo = home / ".local" / "share" / "desktop-agent" / "repository"
    password_file = home / ".config" / "desktop-agent" / "repository-password"
    line = f"created a new repository at {repo}; its password is in {password_file}"
    assert line in out
    assert oct(password_file.stat().st_mode & 0o777) == "0o600"
    assert "there is no repository" not in out

    target = tmp_path / "restored"
    restored = _cli(home, "restore", "latest", "--target", str(target))
    assert restored.returncode == 0, restored.stderr
    files = {
        os.path.relpath(os.path.join(d, f), target / home.relative_to("/"))
        for d, _dirs, names in os.walk(target)
        for f in names
    }
    assert {"notes.txt", "projects/a.py"} <= files
    # caches, downloads, the trash, the repository and the agent's own files stay out
    leaked = [f for f in files if re.match(r"(\.cache|\.cargo/registry|\.local/share/)", f)]
    assert leaked == []


def test_a_chosen_repository_location_is_never_created_behind_the_users_back(
    tmp_path: Path,
) -> None:
    """An empty folder at a chosen location may be an unplugged disk's mount point."""
    home = tmp_path / "home"
    assert _cli(home, "token").returncode == 0
    cfg = home / ".config" / "desktop-agent" / "config.toml"
    chosen = tmp_path / "media" / "usb"
    chosen.mkdir(parents=True)
    text = re.sub(r'(?m)^path = ".*"$', f'path = "{chosen}"', cfg.read_text())
    cfg.write_text(text.replace("127.0.0.1:8080", f"127.0.0.1:{free_port()}"))
    from desktop_agent.app import first_start
    from desktop_agent.config import load

    os.environ["XDG_CONFIG_HOME"] = str(home / ".config")
    try:
        first_start(load(cfg))
    finally:
        del os.environ["XDG_CONFIG_HOME"]
    assert list(chosen.iterdir()) == []
