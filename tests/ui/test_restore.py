"""The restore window on the qasync loop, against a real agent and a real backup.

The tests wait with the ``run`` fixture (the qasync loop runs, Qt events
flow): ``qtbot.waitUntil`` processes Qt events outside the asyncio loop, so a
task stepped from there finds no running loop and asyncio primitives fail.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtWidgets import QFileDialog
from support import signature, write

from desktop_agent.engine.repository import hostname
from desktop_agent.engine.restore import RestoreResult
from desktop_agent.jobs import JobState
from desktop_agent.jobs.browse import split_path
from desktop_agent.ui.bridge import Bridge
from desktop_agent.ui.restore import RestoreWindow

BAD = b"bad\xffname.txt"
CHECK = Qt.ItemDataRole.CheckStateRole


async def wait_for(pred: Callable[[], Any], timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


def back_up(agent: Any, run: Any) -> None:
    ctl = agent.controller
    job = ctl.start_backup()
    run(wait_for(lambda: ctl.job(job).state in (JobState.COMPLETED, JobState.FAILED)), 300)
    assert ctl.job(job).state is JobState.COMPLETED, ctl.job(job).error


@pytest.fixture
def window(agent: Any, qtbot: Any, run: Any) -> Any:
    bridge = Bridge(agent)
    win = RestoreWindow(bridge)
    qtbot.addWidget(win)
    win.show()
    # settle before pytest-qt processes events outside the loop
    run(wait_for(lambda: "No backups yet" in win.snapshot_status.text()))
    yield win
    win.close()
    settle(bridge, run)
    bridge.close()


def settle(bridge: Bridge, run: Any) -> None:
    """Let every task the window started end (before its widgets are deleted)."""
    run(wait_for(lambda: not bridge._tasks))


def open_window(window: RestoreWindow, run: Any) -> RestoreWindow:
    """Wait for the snapshot list (refreshed by the backup's completion)."""
    run(wait_for(lambda: "1 snapshot" in window.snapshot_status.text()))
    return window


def child(window: RestoreWindow, parent: QModelIndex, raw: bytes) -> QModelIndex:
    model = window.model
    for row in range(model.rowCount(parent)):
        index = model.index(row, 0, parent)
        entry = model.entry(index)
        if entry is not None and entry.raw_name == raw:
            return index
    raise AssertionError(f"{raw!r} not listed under {model.entry(parent)}")


def find(window: RestoreWindow, run: Any, path: Path) -> QModelIndex:
    """The row of ``path``, waiting for folders listed on their own (no expanding)."""
    index = QModelIndex()
    for comp in split_path(str(path)):
        parent = index
        run(wait_for(lambda p=parent: window.model.is_loaded(p)))  # type: ignore[misc]
        index = child(window, parent, comp)
    return index


def finished(window: RestoreWindow, run: Any, start: Callable[[], None]) -> Any:
    """Start a restore and wait for its outcome."""
    got: list[Any] = []
    window.restore_finished.connect(got.append)
    try:
        start()
        run(wait_for(lambda: got), 300)
    finally:
        window.restore_finished.disconnect(got.append)
    return got[0]


def test_lists_the_snapshot_and_folders_lazily(
    agent: Any, source: Path, run: Any, window: RestoreWindow
) -> None:
    with open(os.fsencode(source / "d1") + b"/" + BAD, "wb") as fh:
        fh.write(b"odd\n")
    back_up(agent, run)
    listed: list[str] = []
    real = window.bridge.list_dir

    async def recording(snap: Any, path: str) -> Any:
        listed.append(path)
        return await real(snap, path)

    window.bridge.list_dir = recording  # type: ignore[method-assign]
    open_window(window, run)
    window.refresh_button.click()
    assert window.snapshot_status.text() == "Reading the snapshots..."
    open_window(window, run)

    item = window.snapshot_list.topLevelItem(0)
    assert item.isSelected()
    assert item.text(1) == hostname()
    assert item.text(2) == str(source)
    assert item.text(3).endswith("KiB")
    assert item.text(0)[:2] == "20"
    assert "1 snapshot" in window.snapshot_status.text()

    # the chain of single folders down to the source opens by itself...
    src = find(window, run, source)
    run(wait_for(lambda: window.model.is_loaded(src)))
    assert window.tree.isExpanded(src)
    names = [window.model.index(r, 0, src).data() for r in range(window.model.rowCount(src))]
    assert names == ["d0", "d1"]
    # ...but nothing below it is listed before it is expanded
    d0 = child(window, src, b"d0")
    d1 = child(window, src, b"d1")
    assert not window.model.is_loaded(d0)
    assert window.model.rowCount(d0) == 1
    assert window.model.index(0, 0, d0).data() == "Loading..."
    assert window.model.entry(window.model.index(0, 0, d0)) is None
    assert f"{source}/d0" not in listed

    window.tree.expand(d1)
    run(wait_for(lambda: window.model.is_loaded(d1)))
    assert listed.count(f"{source}/d1") == 1
    assert not window.model.is_loaded(d0)
    rows = {
        window.model.index(r, 0, d1).data(): window.model.index(r, 1, d1).data()
        for r in range(window.model.rowCount(d1))
    }
    assert rows["f1.txt"] == "1.4 KiB" and "bad\\xffname.txt" in rows
    bad = child(window, d1, BAD)
    assert window.model.entry(bad).size == 4  # type: ignore[union-attr]

    # expanding again lists nothing again: no listing task is even started
    settle(window.bridge, run)
    window.tree.collapse(d1)
    window.tree.expand(d1)
    assert not window.bridge._tasks
    assert listed.count(f"{source}/d1") == 1


def test_ticking(agent: Any, source: Path, run: Any, window: RestoreWindow) -> None:
    back_up(agent, run)
    open_window(window, run)
    model = window.model
    src = find(window, run, source)
    run(wait_for(lambda: model.is_loaded(src)))
    d0 = child(window, src, b"d0")
    assert not window.restore_button.isEnabled()

    # a folder ticked before it is listed: what is listed later is ticked too
    model.setData(d0, Qt.CheckState.Checked.value, CHECK)
    assert model.includes() == [f"{source}/d0"]
    assert window.restore_button.isEnabled()
    assert model.data(src, CHECK) == Qt.CheckState.PartiallyChecked
    window.tree.expand(d0)
    run(wait_for(lambda: model.is_loaded(d0)))
    files = [model.index(r, 0, d0) for r in range(model.rowCount(d0))]
    assert len(files) == 5 and all(model.data(f, CHECK) == Qt.CheckState.Checked for f in files)

    # one file out: the folder is partly ticked and the others stand for themselves
    model.setData(files[0], Qt.CheckState.Unchecked, CHECK)
    assert model.data(d0, CHECK) == Qt.CheckState.PartiallyChecked
    assert model.includes() == [f"{source}/d0/f{i}.txt" for i in (2, 4, 6, 8)]
    model.setData(files[0], Qt.CheckState.Checked, CHECK)
    assert model.data(d0, CHECK) == Qt.CheckState.Checked
    assert model.includes() == [f"{source}/d0"]

    # clicking a partly ticked folder ticks all of it; unticking clears everything
    model.setData(src, Qt.CheckState.Checked, CHECK)
    # the source is all its parents hold: the topmost of them stands for it
    assert model.includes() == ["/" + split_path(str(source))[0].decode()]
    assert model.data(child(window, src, b"d1"), CHECK) == Qt.CheckState.Checked
    model.setData(src, Qt.CheckState.Unchecked, CHECK)
    assert model.includes() == [] and not window.restore_button.isEnabled()
    assert model.data(d0, CHECK) == Qt.CheckState.Unchecked
    assert not model.flags(model.index(0, 0, child(window, src, b"d1"))) & (
        Qt.ItemFlag.ItemIsUserCheckable
    )


def test_restore_a_folder_then_again(
    agent: Any, source: Path, run: Any, window: RestoreWindow, tmp_path: Path
) -> None:
    back_up(agent, run)
    open_window(window, run)
    src = find(window, run, source)
    run(wait_for(lambda: window.model.is_loaded(src)))
    window.model.setData(child(window, src, b"d0"), Qt.CheckState.Checked, CHECK)
    out = tmp_path / "out"
    window.target.setText(str(out))
    settle(window.bridge, run)  # the target has been checked
    assert window.warning.isHidden()
    values: list[int] = []
    window.bar.valueChanged.connect(values.append)

    result = finished(window, run, window.restore_button.click)
    assert isinstance(result, RestoreResult)
    restored = out / source.relative_to("/")
    assert os.listdir(restored) == ["d0"]
    assert signature(restored / "d0") == signature(source / "d0")
    assert window.bar.value() == window.bar.maximum() and window.bar.text() == "100%"
    assert max(values) == window.bar.maximum()
    assert window.status.text() == "Restore finished."
    assert window.result.text() == f"Restored 5 files (6.8 KiB) into {out}; 0 errors."
    assert window.errors.isHidden()
    assert window.target.text() == str(out)  # a chosen target stays
    run(wait_for(lambda: window.warning.isVisible()))
    assert "is not empty" in window.warning.text()
    assert window.restore_button.isEnabled() and not window.cancel_button.isEnabled()

    before = signature(out)
    result = finished(window, run, window.restore_button.click)
    assert isinstance(result, RestoreResult) and result.files == 0
    assert window.status.text() == "Restore finished with 5 problems."
    assert window.result.text() == f"Restored 0 files (0 B) into {out}; 5 errors."
    lines = window.errors.toPlainText().splitlines()
    assert len(lines) == 5 and all(line.endswith("exists; not overwritten") for line in lines)
    assert window.errors.isVisible() and window.warning.isVisible()
    assert signature(out) == before


def test_cancel_a_big_restore(
    agent: Any, source: Path, run: Any, window: RestoreWindow, tmp_path: Path
) -> None:
    write(source / "big.bin", os.urandom(200 * 1024 * 1024))
    back_up(agent, run)
    open_window(window, run)
    src = find(window, run, source)
    run(wait_for(lambda: window.model.is_loaded(src)))
    window.model.setData(child(window, src, b"big.bin"), Qt.CheckState.Checked, CHECK)
    window.target.setText(str(tmp_path / "out"))
    assert not window.cancel_button.isEnabled()

    def cancel_once_running(value: int) -> None:
        if value > 0 and window.cancel_button.isEnabled():
            window.cancel_button.click()

    window.bar.valueChanged.connect(cancel_once_running)
    result = finished(window, run, window.restore_button.click)
    assert result == "cancelled"
    assert window.status.text() == "Restore cancelled."
    assert 0 < window.bar.value() < window.bar.maximum()
    assert not window.restoring and window.restore_button.isEnabled()
    big = tmp_path / "out" / source.relative_to("/") / "big.bin"
    assert not big.exists() or big.stat().st_blocks * 512 < 200 * 1024 * 1024


def test_default_target_and_choosing_one(
    agent: Any,
    source: Path,
    run: Any,
    window: RestoreWindow,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    back_up(agent, run)
    open_window(window, run)
    snap = window.selected_snapshot()
    assert snap is not None
    base = home / "Restored files"
    # the window opened before the backup: a new snapshot is picked up and a new folder proposed
    first = window.target.text()
    assert first.startswith(f"{base}/{snap.short_id} 20")
    os.makedirs(first)
    write(Path(first) / "x", b"x")
    window.refresh()
    run(wait_for(lambda: not window._refresh_task or window._refresh_task.done()))
    # same snapshot: the target is kept, and it says that it is not empty
    assert window.target.text() == first
    window.target.setText("")
    window.target.setText(first)
    run(wait_for(lambda: window.warning.isVisible()))

    chosen = tmp_path / "chosen"
    window.choose_button.click()
    dialog = window.findChild(QFileDialog)
    assert dialog is not None and dialog.isVisible()
    assert dialog.fileMode() == QFileDialog.FileMode.Directory
    dialog.fileSelected.emit(str(chosen))
    dialog.reject()
    assert window.target.text() == str(chosen)
    run(wait_for(lambda: window.warning.isHidden()))


def test_two_snapshots_and_a_hidden_window(
    agent: Any, source: Path, run: Any, window: RestoreWindow
) -> None:
    back_up(agent, run)
    open_window(window, run)
    first = window.selected_snapshot()
    assert first is not None
    window.hide()
    write(source / "later.txt", b"later\n")
    back_up(agent, run)
    settle(window.bridge, run)
    assert window.snapshot_list.topLevelItemCount() == 1  # nothing is read while hidden
    assert window._refresh_task is not None and window._refresh_task.done()
    window.show()  # ...but on showing
    run(wait_for(lambda: "2 snapshots" in window.snapshot_status.text()))
    assert window.selected_snapshot() is first  # the selection is kept
    src = find(window, run, source)
    run(wait_for(lambda: window.model.is_loaded(src)))
    assert window.model.rowCount(src) == 2  # d0, d1

    newest = window.snapshot_list.topLevelItem(0)
    window.snapshot_list.setCurrentItem(newest)
    second = window.selected_snapshot()
    assert second is not None and second.time_ns > first.time_ns
    assert f"/{second.short_id} " in window.target.text()
    src = find(window, run, source)
    run(wait_for(lambda: window.model.is_loaded(src)))
    names = [window.model.index(r, 0, src).data() for r in range(window.model.rowCount(src))]
    assert names == ["d0", "d1", "later.txt"]

    # a path typed by hand stays when another snapshot is chosen
    window.target.setText("/somewhere/else")
    window.snapshot_list.setCurrentItem(window.snapshot_list.topLevelItem(1))
    assert window.selected_snapshot().id == first.id  # type: ignore[union-attr]
    assert window.target.text() == "/somewhere/else"


def test_no_repository_is_reported(
    agent: Any, run: Any, qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    shutil.rmtree(tmp_path / "repo")
    win = RestoreWindow(Bridge(agent))
    qtbot.addWidget(win)
    run(wait_for(lambda: "Could not read" in win.snapshot_status.text()))
    assert "no repository" in win.snapshot_status.text()
    assert win.snapshot_list.topLevelItemCount() == 0
    assert not win.restore_button.isEnabled()
    settle(win.bridge, run)
    win.bridge.close()
