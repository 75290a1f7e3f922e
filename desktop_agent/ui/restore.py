"""The restore window: pick a snapshot, tick files and folders, restore them.

Nothing here touches the repository, nor runs anything: snapshots and
folder listings come from the bridge (the repository browser's own thread,
read-only, so browsing works while a backup runs), awaited in tasks the
bridge keeps. Folders are listed when first expanded; until then they hold
a "Loading..." row.

"Restore" asks the bridge for a restore *job*: it queues behind a running
backup, a backup server sees it (``restore:started``...), and this window
is a view of it, drawn from the job's bus events exactly as a server sees
them: progress, paused, resumed, the end. Pause and Cancel are commands
through the bridge. A restore started elsewhere (by a backup server) is
shown here too, with the same buttons, while this window has none of its
own.

Restores never replace anything: the default target is a new folder, and
when the chosen one already has files in it the window says so and the
files that exist are reported, not overwritten.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QModelIndex,
    Qt,
    Signal,
)
from PySide6.QtGui import QCloseEvent, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTreeView,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)
from shiboken6 import isValid

from desktop_agent.engine.errors import EngineError
from desktop_agent.engine.restore import RestoreResult
from desktop_agent.engine.snapshot import Snapshot
from desktop_agent.jobs import JobChanged, JobError, JobState
from desktop_agent.protocol import (
    CANCELLED,
    BackupCompleted,
    JobProgress,
    RestoreCompleted,
    RestoreFailed,
    RestorePaused,
    RestoreProgress,
    RestoreResumed,
    RestoreStarted,
)
from desktop_agent.termtext import clean, human_bytes

from .bridge import TRAY, Bridge
from .icons import app_icon
from .snapshot_tree import SnapshotTreeModel, local_time

__all__ = ["RestoreWindow", "default_target"]

RESTORED_DIR = "Restored files"


def default_target(snapshot: Snapshot, base: Path | None = None) -> str:
    """A folder that does not exist yet: ``~/Restored files/<short id> <date>``."""
    root = base if base is not None else Path.home() / RESTORED_DIR
    name = f"{snapshot.short_id} {local_time(snapshot.time_ns, '%Y-%m-%d')}"
    candidate = root / name
    n = 2
    while os.path.lexists(candidate):
        candidate = root / f"{name} ({n})"
        n += 1
    return str(candidate)


class RestoreWindow(QWidget):
    """Snapshots on the left, their files on the right, where to and "Restore" below.

    Below that, the restore job this window shows: its progress bar, Pause
    (Resume) and Cancel, and its result.
    """

    restore_finished = Signal(object)  # RestoreResult, or the error message (str)

    def __init__(self, bridge: Bridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.setWindowTitle("Restore files - desktop-agent")
        self.setWindowIcon(app_icon())
        self.resize(960, 640)

        self._snapshots: list[Snapshot] = []
        self._job_id: str | None = None  # the restore job shown
        self._own = False  # ...started here (closing the window cancels it)
        self._job_target = ""
        self._paused = False
        self._pause_pending = False
        self._cancelling = False
        self._starting: asyncio.Task[Any] | None = None  # checking the target, then starting
        self._refresh_task: asyncio.Task[Any] | None = None
        self._default_target = ""
        self._target_check = 0
        self._dialog: QFileDialog | None = None
        self._stale = False  # a backup finished while the window was hidden
        self._refresh_again = False

        # left: the snapshots
        self.snapshot_list = QTreeWidget()
        self.snapshot_list.setHeaderLabels(["Time", "Host", "Paths", "Size"])
        self.snapshot_list.setRootIsDecorated(False)
        self.snapshot_list.setUniformRowHeights(True)
        self.snapshot_list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.snapshot_list.itemSelectionChanged.connect(self._snapshot_selected)
        self.snapshot_status = QLabel()
        self.snapshot_status.setWordWrap(True)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(QLabel("Snapshots:"))
        left_layout.addWidget(self.snapshot_list, 1)
        row = QHBoxLayout()
        row.addWidget(self.snapshot_status, 1)
        row.addWidget(self.refresh_button)
        left_layout.addLayout(row)

        # right: the files of the selected snapshot
        self.model = SnapshotTreeModel(
            # looked up per call, so that the bridge's listing can be swapped (tests)
            lambda snap, path: self.bridge.list_dir(snap, path),
            bridge.spawn,
            self,
        )
        self.tree = QTreeView()
        self.tree.setModel(self.model)
        self.tree.setUniformRowHeights(True)
        header = self.tree.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for col in (1, 2):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.expanded.connect(self.model.fetch)
        self.model.loaded.connect(self._folder_loaded)
        self.model.selection_changed.connect(self._update_buttons)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(QLabel("Tick the files and folders to restore:"))
        right_layout.addWidget(self.tree, 1)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 3)

        # below: where to, and the restore itself
        self.target = QLineEdit()
        self.target.setPlaceholderText("Folder to restore into")
        self.target.textChanged.connect(self._target_changed)
        self.choose_button = QPushButton("Choose...")
        self.choose_button.clicked.connect(self.choose_target)
        target_row = QHBoxLayout()
        target_row.addWidget(QLabel("Restore into:"))
        target_row.addWidget(self.target, 1)
        target_row.addWidget(self.choose_button)
        self.warning = QLabel()
        self.warning.setObjectName("warning")
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("color: #b35c00;")
        self.warning.hide()

        self.status = QLabel()
        self.status.setObjectName("status")
        self.status.setWordWrap(True)
        self.restore_button = QPushButton("Restore")
        self.restore_button.setDefault(True)
        self.restore_button.clicked.connect(self.start_restore)
        self.pause_button = QPushButton("Pause")
        self.pause_button.setToolTip("Hold the restore; Resume goes on where it stopped")
        self.pause_button.clicked.connect(self.toggle_pause)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip(
            "Stop the restore (closing this window stops a restore started here too)"
        )
        self.cancel_button.clicked.connect(self.cancel_restore)
        buttons = QHBoxLayout()
        buttons.addWidget(self.status, 1)
        buttons.addWidget(self.restore_button)
        buttons.addWidget(self.pause_button)
        buttons.addWidget(self.cancel_button)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setValue(0)
        self.result = QLabel()
        self.result.setObjectName("result")
        self.result.setWordWrap(True)
        self.result.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.errors = QPlainTextEdit()
        self.errors.setReadOnly(True)
        self.errors.setMaximumHeight(110)
        self.errors.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.errors.hide()

        layout = QVBoxLayout(self)
        layout.addWidget(splitter, 1)
        layout.addLayout(target_row)
        layout.addWidget(self.warning)
        layout.addLayout(buttons)
        layout.addWidget(self.bar)
        layout.addWidget(self.result)
        layout.addWidget(self.errors)

        bridge.bus_event.connect(self._bus_event)
        self._adopt_active()
        self._update_buttons()
        self.refresh()

    # ------------------------------------------------------------ snapshots
    @property
    def restoring(self) -> bool:
        """Whether a restore is shown that has not ended (or one is being started)."""
        return self._job_id is not None or self._starting is not None

    @property
    def job_id(self) -> str | None:
        """The restore job shown, while it has not ended."""
        return self._job_id

    def selected_snapshot(self) -> Snapshot | None:
        """The snapshot whose files are shown."""
        return self.model.snapshot

    def refresh(self) -> None:
        """Read the list of snapshots again (keeps the selection)."""
        if self._refresh_task is not None and not self._refresh_task.done():
            self._refresh_again = True  # what is being read may predate the request
            return
        self.refresh_button.setEnabled(False)
        self.snapshot_status.setText("Reading the snapshots...")
        self._refresh_task = self.bridge.spawn(self._load_snapshots())

    async def _load_snapshots(self) -> None:
        while True:
            self._refresh_again = False
            snaps: list[Snapshot] | None = None
            error = ""
            try:
                snaps = await self.bridge.snapshots()
            except EngineError as exc:
                error = str(exc)
            if not isValid(self):
                return  # the window is gone
            if not self._refresh_again:
                break
        self.refresh_button.setEnabled(True)
        if snaps is None:
            self.snapshot_status.setText(f"Could not read the snapshots: {error}")
        else:
            self._show_snapshots(snaps)

    def _show_snapshots(self, snaps: list[Snapshot]) -> None:
        current = self.selected_snapshot()
        keep = current.id if current is not None else None
        self._snapshots = snaps
        self.snapshot_list.blockSignals(True)
        self.snapshot_list.clear()
        select: QTreeWidgetItem | None = None
        for i, snap in enumerate(snaps):
            size = human_bytes(snap.summary.total_bytes_processed) if snap.summary else ""
            item = QTreeWidgetItem(
                [
                    local_time(snap.time_ns, "%Y-%m-%d %H:%M:%S"),
                    snap.hostname,
                    clean(", ".join(snap.paths)),
                    size,
                ]
            )
            item.setData(0, Qt.ItemDataRole.UserRole, i)
            item.setTextAlignment(3, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            item.setToolTip(0, f"Snapshot {snap.short_id}")
            item.setToolTip(2, "\n".join(clean(p) for p in snap.paths))
            self.snapshot_list.addTopLevelItem(item)
            if keep is not None and snap.id == keep:
                select = item
        if select is None and snaps:
            select = self.snapshot_list.topLevelItem(0)  # the newest
        for col in (0, 1, 3):
            self.snapshot_list.resizeColumnToContents(col)
        self.snapshot_list.blockSignals(False)
        n = len(snaps)
        self.snapshot_status.setText(
            f"{n} snapshot{'s' if n != 1 else ''}" if n else "No backups yet."
        )
        if select is not None:
            select.setSelected(True)
            self.snapshot_list.setCurrentItem(select)
        self._snapshot_selected()

    def _snapshot_selected(self) -> None:
        items = self.snapshot_list.selectedItems()
        snap = self._snapshots[int(items[0].data(0, Qt.ItemDataRole.UserRole))] if items else None
        current = self.selected_snapshot()
        if snap is not None and current is not None and snap.id == current.id:
            return
        self.model.set_snapshot(snap)
        if snap is not None and self._target_is_default and not self.restoring:
            self._set_default_target(snap)
        self._update_buttons()

    def _folder_loaded(self, index: QModelIndex) -> None:
        # a folder holding just one folder (/home/me...): open it too
        if self.model.rowCount(index) == 1:
            child = self.model.index(0, 0, index)
            entry = self.model.entry(child)
            if entry is not None and entry.has_children:
                self.tree.expand(child)
                self.model.fetch(child)  # expand() says nothing while hidden

    # --------------------------------------------------------------- target
    def target_path(self) -> str:
        """The chosen target folder, absolute ("" when none)."""
        text = self.target.text().strip()
        return os.path.abspath(os.path.expanduser(text)) if text else ""

    @property
    def _target_is_default(self) -> bool:
        return self.target.text() == self._default_target

    def _set_default_target(self, snap: Snapshot) -> None:
        self._default_target = default_target(snap)
        self.target.setText(self._default_target)

    def _target_changed(self, _text: str) -> None:
        self._update_buttons()
        self._target_check += 1
        self.bridge.spawn(self._check_target(self.target_path(), self._target_check))

    async def _check_target(self, path: str, generation: int) -> None:
        try:
            problem = await self.bridge.target_state(path) if path else ""
        except EngineError:
            return  # the window is gone
        if isValid(self) and generation == self._target_check:
            self._show_target_warning(path, problem)

    def _show_target_warning(self, path: str, problem: str) -> None:
        if not problem:
            self.warning.hide()
            self.warning.setText("")
            return
        text = f"{path} {problem}."
        if problem == "is not empty":
            text += (
                " Nothing in it is replaced: files that already exist are reported, not restored."
            )
        self.warning.setText(text)
        self.warning.show()

    def choose_target(self) -> None:
        """Pick the target folder in a (window-modal, non-blocking) dialog."""
        dialog = QFileDialog(self, "Restore into folder")
        dialog.setFileMode(QFileDialog.FileMode.Directory)
        dialog.setOption(QFileDialog.Option.ShowDirsOnly, True)
        start = self.target_path() or str(Path.home())
        while start and not os.path.isdir(start) and os.path.dirname(start) != start:
            start = os.path.dirname(start)
        dialog.setDirectory(start)
        dialog.fileSelected.connect(self._target_chosen)
        dialog.finished.connect(dialog.deleteLater)
        self._dialog = dialog
        dialog.open()

    def _target_chosen(self, path: str) -> None:
        self._dialog = None
        if path:
            self.target.setText(path)

    # -------------------------------------------------------------- restore
    def _update_buttons(self) -> None:
        busy = self.restoring
        self.restore_button.setEnabled(
            not busy
            and self.selected_snapshot() is not None
            and self.model.has_selection()
            and bool(self.target_path())
        )
        shown = self._job_id is not None and not self._cancelling
        view = self.bridge.job(self._job_id) if shown and self._job_id else None
        running = view is not None and view.state in (JobState.RUNNING, JobState.PAUSED)
        self.pause_button.setEnabled(running and (self._paused or not self._pause_pending))
        self.pause_button.setText("Resume" if self._paused else "Pause")
        self.cancel_button.setEnabled(shown)
        self.target.setEnabled(not busy)
        self.choose_button.setEnabled(not busy)

    def start_restore(self) -> None:
        """Restore the ticked files and folders of the selected snapshot (as a job)."""
        snap = self.selected_snapshot()
        includes = self.model.includes()
        target = self.target_path()
        if self.restoring or snap is None or not includes or not target:
            return
        self._starting = self.bridge.spawn(self._start(snap, includes, target))
        self._update_buttons()

    async def _start(self, snap: Snapshot, includes: list[str], target: str) -> None:
        self._clear_result()
        self.status.setText("Preparing the restore...")
        try:
            problem = await self.bridge.target_state(target)
        except EngineError:
            problem = ""
        if not isValid(self):
            return
        self._show_target_warning(target, problem)
        try:
            job_id = self.bridge.start_restore(snap, includes, target)
        except JobError as exc:
            self._starting = None
            self.status.setText("The restore could not start.")
            self.result.setText(clean(str(exc)))
            self._update_buttons()
            self.restore_finished.emit(str(exc))
            return
        self._starting = None
        self._follow(job_id, own=True, target=target)

    def _adopt_active(self) -> None:
        """Show a restore started elsewhere that has not ended (when none of ours is shown)."""
        if self.restoring:
            return
        view = self.bridge.active_restore()
        if view is not None and view.restore is not None:
            self._clear_result()
            self._follow(view.id, own=view.origin == TRAY, target=view.restore.target)

    def _follow(self, job_id: str, *, own: bool, target: str) -> None:
        self._job_id = job_id
        self._own = own
        self._job_target = target
        self._paused = False
        self._pause_pending = False
        self._cancelling = False
        view = self.bridge.job(job_id)
        if not own and view is not None and view.restore is not None:
            who = "a backup server" if view.origin == "/ws" else "elsewhere"
            self.result.setText(
                f"A restore started by {who}: snapshot {view.restore.snapshot.short_id} "
                f"into {clean(target)}."
            )
        if view is not None and view.progress is not None:
            self._show_progress(view.progress)
        if view is not None and view.state is JobState.PAUSED:
            self._paused = True
            self.status.setText("Restore paused.")
        elif view is not None and view.state is JobState.QUEUED:
            self.status.setText("Waiting for the running job (a backup?) to finish...")
        else:
            self.status.setText("Restoring...")
        self._update_buttons()

    def toggle_pause(self) -> None:
        """Pause the restore shown, or resume it when it is paused."""
        if self._job_id is None:
            return
        if self._paused:
            self.bridge.resume_job(self._job_id)
        else:
            self._pause_pending = True
            self.status.setText("Pausing...")
            self.bridge.pause_job(self._job_id)
        self._update_buttons()

    def cancel_restore(self) -> None:
        """Stop the restore shown (what it wrote stays)."""
        if self._job_id is not None and not self._cancelling:
            self._cancelling = True
            self.status.setText("Cancelling...")
            self.bridge.cancel_job(self._job_id)
            self._update_buttons()

    def _bus_event(self, event: object) -> None:
        if isinstance(event, BackupCompleted):  # a new snapshot
            if self.isVisible():
                self.refresh()
            else:
                self._stale = True
            return
        if isinstance(event, RestoreStarted):
            # ours is announced while _starting is set: only others are adopted
            if not self.restoring:
                self._clear_result()
                self._follow(event.job_id, own=False, target=event.target)
            return
        if self._job_id is None or getattr(event, "job_id", None) != self._job_id:
            return
        if isinstance(event, JobChanged):
            if event.new is JobState.RUNNING and event.old is JobState.QUEUED:
                self.status.setText("Restoring...")
                self._update_buttons()
        elif isinstance(event, RestoreProgress):
            self._show_progress(event)
        elif isinstance(event, RestorePaused):
            self._paused = True
            self._pause_pending = False
            self.status.setText("Restore paused.")
            self._update_buttons()
        elif isinstance(event, RestoreResumed):
            self._paused = False
            self._pause_pending = False
            self.status.setText("Restoring...")
            self._update_buttons()
        elif isinstance(event, RestoreCompleted):
            view = self.bridge.job(event.job_id)
            result = view.result if view is not None else None
            if isinstance(result, RestoreResult):
                self._show_result(result, self._job_target)
                self._finish(result)
            else:  # forgotten already (cannot happen with the controller's history)
                self.status.setText("Restore finished.")
                self._finish(f"restored {event.total_bytes} bytes")
        elif isinstance(event, RestoreFailed):
            if event.error == CANCELLED:
                self.status.setText("Restore cancelled.")
                self.result.setText(
                    f"What was restored before the cancel is in {clean(self._job_target)}."
                )
                self._finish(CANCELLED)
            else:
                self.status.setText("Restore failed.")
                self.result.setText(clean(event.error))
                self._finish(event.error)

    def _show_progress(self, p: JobProgress) -> None:
        self.bar.setValue(int(min(100.0, p.percent) * 10))
        if self._paused or self._pause_pending or self._cancelling:
            return
        self.status.setText(
            f"Restoring: {p.files_processed:,} of {p.total_files:,} files, "
            f"{human_bytes(p.transferred_bytes)} of {human_bytes(p.total_bytes)}"
        )

    def _clear_result(self) -> None:
        self.bar.setValue(0)
        self.bar.setFormat("%p%")
        self.result.setText("")
        self.errors.clear()
        self.errors.hide()

    def _finish(self, outcome: RestoreResult | str) -> None:
        self._job_id = None
        self._own = False
        self._paused = self._pause_pending = self._cancelling = False
        snap = self.selected_snapshot()
        if self._target_is_default and snap is not None:
            # the next restore goes somewhere new again
            self._set_default_target(snap)
        else:
            self._target_changed(self.target.text())
        self._update_buttons()
        self.restore_finished.emit(outcome)

    def _show_result(self, result: RestoreResult, target: str) -> None:
        self.bar.setValue(self.bar.maximum())
        n = max(result.errors_total, len(result.errors))
        self.status.setText(
            "Restore finished."
            if not n
            else f"Restore finished with {n} problem{'s' if n != 1 else ''}."
        )
        line = (
            f"Restored {result.files:,} file{'s' if result.files != 1 else ''} "
            f"({human_bytes(result.bytes_written)}) into {clean(target)}; "
            f"{n} error{'s' if n != 1 else ''}."
        )
        self.result.setText(line)
        if n:
            self.errors.setPlainText("\n".join(clean(e) for e in result.errors))
            self.errors.show()

    # ------------------------------------------------------------ lifecycle
    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt's name
        """Catch up with backups made, and restores started, while the window was hidden."""
        if self._stale:
            self._stale = False
            self.refresh()
        self._adopt_active()
        super().showEvent(event)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt's name
        """Closing the window (or quitting) stops a restore started here.

        A restore started elsewhere (a backup server) goes on: it is not
        this window's to stop; the tray tells when it ends.
        """
        if self._own:
            self.cancel_restore()
        super().closeEvent(event)
