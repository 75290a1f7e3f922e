"""The tray on the one qasync loop: a click reaches /ws clients, a /ws command reaches the tray."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import shiboken6
from PySide6.QtGui import QImage
from support import write
from uisupport import TOKEN
from websockets.asyncio.client import connect

from desktop_agent.ui.bridge import Bridge
from desktop_agent.ui.icons import KINDS, SIZES, render, state_icon
from desktop_agent.ui.tray import Tray

AUTH = {"Authorization": f"Bearer {TOKEN}"}


_made: list[Any] = []


@pytest.fixture(autouse=True)
def _delete_qt_objects(qapp: Any) -> Iterator[None]:
    """Delete the test's Qt objects while the QApplication lives: Qt objects
    collected at interpreter exit crash it."""
    yield
    while _made:
        obj = _made.pop()
        if isinstance(obj, Bridge):
            obj.close()
        if isinstance(obj, Tray):
            obj.hide()
            shiboken6.delete(obj.menu)
        shiboken6.delete(obj)
    qapp.processEvents()


def make_tray(agent: Any) -> tuple[Bridge, Tray, list[str]]:
    bridge = Bridge(agent)
    _made.append(bridge)
    opened: list[str] = []
    tray = Tray(
        bridge,
        open_progress=lambda: opened.append("progress"),
        open_restore=lambda: opened.append("restore"),
        open_settings=lambda: opened.append("settings"),
        open_log=lambda: opened.append("log"),
        quit_app=lambda: opened.append("quit"),
    )
    _made.append(tray)
    return bridge, tray, opened


def big(source: Any) -> None:
    for i in range(6):
        write(source / f"big{i}.bin", os.urandom(40 * 1024 * 1024))


async def until(ws: Any, kind: str, timeout: float = 60) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            msg = json.loads(await ws.recv())
            if msg["type"] == kind:
                return msg


async def wait_for(pred: Any, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


def menu_texts(tray: Tray) -> list[str]:
    tray.rebuild()
    return [a.text() for a in tray.menu.actions() if not a.isSeparator()]


def test_menu_is_rebuilt_from_state(agent, run):
    bridge, tray, opened = make_tray(agent)
    texts = menu_texts(tray)
    assert texts[2:] == [
        "Back up now",
        "Pause",
        "Cancel backup",
        "Show progress...",
        "Restore files...",
        "Settings...",
        "Show log",
        "Quit",
    ]
    assert texts[1] == "Last backup: never"
    assert not tray.action("Pause").isEnabled() and not tray.action("Cancel backup").isEnabled()
    for name, key in [
        ("Restore files...", "restore"),
        ("Settings...", "settings"),
        ("Show log", "log"),
        ("Quit", "quit"),
    ]:
        tray.action(name).trigger()
        assert opened[-1] == key
    # the state's words are in the tooltip too
    assert "no backup yet" in tray.icon.toolTip()


def test_a_tray_click_reaches_ws_clients(agent, run, source):
    big(source)
    bridge, tray, _ = make_tray(agent)

    async def scenario() -> None:
        async with connect(agent.server.url, additional_headers=AUTH) as ws:
            tray.action("Back up now").trigger()
            started = await until(ws, "backup:started")
            job_id = started["payload"]["job_id"]
            await wait_for(
                lambda: (
                    bridge.model.progress is not None
                    and bridge.model.progress.transferred_bytes > 0
                )
            )
            assert tray.action("Pause").isEnabled()
            assert not tray.action("Back up now").isEnabled()
            tray.action("Pause").trigger()
            paused = await until(ws, "backup:paused")
            assert paused["payload"] == {"job_id": job_id}
            assert bridge.model.kind() == "paused"
            assert "Resume" in menu_texts(tray)
            tray.action("Resume").trigger()
            resumed = await until(ws, "backup:resumed")
            assert resumed["payload"] == {"job_id": job_id}
            tray.action("Cancel backup").trigger()
            failed = await until(ws, "backup:failed")
            assert failed["payload"] == {"job_id": job_id, "error": "cancelled"}

    run(scenario())
    assert bridge.model.kind() in ("idle", "warning")


def test_a_ws_command_changes_the_tray(agent, run, source):
    big(source)
    bridge, tray, _ = make_tray(agent)

    async def scenario() -> None:
        async with connect(agent.server.url, additional_headers=AUTH) as ws:
            await ws.send(json.dumps({"type": "backup:start", "payload": {}}))
            job_id = (await until(ws, "backup:started"))["payload"]["job_id"]
            await wait_for(lambda: bridge.model.kind() == "running" and bridge.model.percent > 0)
            assert tray._shown is not None and tray._shown[0] == "running"
            assert tray.icon.toolTip().startswith("desktop-agent\nBacking up: ")
            await ws.send(json.dumps({"type": "backup:pause", "payload": {"job_id": job_id}}))
            await until(ws, "backup:paused")
            await wait_for(lambda: bridge.model.kind() == "paused")
            assert tray._shown is not None and tray._shown[0] == "paused"
            assert "Paused at" in tray.icon.toolTip()
            assert "Resume" in menu_texts(tray)
            await ws.send(json.dumps({"type": "backup:resume", "payload": {"job_id": job_id}}))
            await until(ws, "backup:completed", timeout=120)
            await wait_for(lambda: bridge.model.kind() == "idle")
            assert tray._shown is not None and tray._shown[0] == "idle"
            assert menu_texts(tray)[1] == "Last backup: just now"

    run(scenario())


def test_failures_and_completions_notify(agent, run, source):
    bridge, tray, _ = make_tray(agent)
    notices: list[tuple[str, str, bool]] = []
    bridge.notify.connect(lambda t, m, e: notices.append((t, m, e)))

    async def scenario() -> None:
        bridge.back_up_now()
        await wait_for(lambda: any(n[0] == "Backup complete" for n in notices))
        bridge.notify_success = False
        missing = replace(agent.config.backup, sources=("/nonexistent/x",))
        agent.controller.update_config(replace(agent.config, backup=missing))
        bridge.back_up_now()
        await wait_for(lambda: any(n[0] == "Backup failed" for n in notices))

    run(scenario())
    assert notices[0][0] == "Backup complete" and not notices[0][2]
    failed = [n for n in notices if n[0] == "Backup failed"]
    assert failed and failed[0][2] and "no backup source exists" in failed[0][1]
    assert sum(1 for n in notices if n[0] == "Backup complete") == 1  # muted afterwards
    assert bridge.model.kind() == "error"


def test_icons_are_crisp_at_every_size_and_show_progress(qapp):
    for kind in KINDS:
        for size in SIZES:
            image: QImage = render(kind, size).toImage()
            assert image.width() == size
            assert image.pixelColor(size // 2, size // 2).alpha() > 0  # something is drawn
        assert not state_icon(kind).isNull()
    empty = render("running", 64, 0.0).toImage()
    half = render("running", 64, 50.0).toImage()
    # the ring covers the right half at 50%: a pixel on the right edge changes
    assert empty.pixelColor(60, 32) != half.pixelColor(60, 32)


def test_a_missing_icon_is_an_error_not_a_crash(tmp_path):
    """Rendering a missing or damaged icon raises before any QPainter exists
    (one left open crashed Qt when the pixmap went away)."""
    script = (
        "import sys\n"
        "from PySide6.QtWidgets import QApplication\n"
        "app = QApplication([])\n"
        "from desktop_agent.ui import icons, resources\n"
        "for bad in (b'not an svg', None):\n"
        "    icons._svg.cache_clear()\n"
        "    def broken(*parts, bad=bad):\n"
        "        if bad is None:\n"
        "            raise resources.ResourceMissing('icons/idle.svg is missing')\n"
        "        return bad\n"
        "    icons.resource_bytes = broken\n"
        "    try:\n"
        "        icons.state_icon('idle')\n"
        "    except resources.ResourceMissing as exc:\n"
        "        print('refused:', exc)\n"
        "    else:\n"
        "        sys.exit('no error')\n"
        "del app\n"
    )
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("refused:") == 2
