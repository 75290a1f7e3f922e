"""The snapshot tree of the restore window: a lazy Qt item model with checkboxes.

Folders are listed when first expanded (through ``lister``, awaited in a
task made by ``spawn``); until then they hold a "Loading..." row. Ticking a
folder ticks everything below it; :meth:`SnapshotTreeModel.includes` gives
the fewest snapshot paths that cover the ticked entries. Names are shown in
the one display form (:func:`desktop_agent.termtext.clean`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

from PySide6.QtCore import (
    QAbstractItemModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
)
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import QFileIconProvider
from shiboken6 import isValid

from desktop_agent.engine.errors import EngineError
from desktop_agent.engine.snapshot import Snapshot
from desktop_agent.jobs.browse import Entry
from desktop_agent.termtext import clean, human_bytes

__all__ = ["SnapshotTreeModel", "local_time"]

AnyIndex = QModelIndex | QPersistentModelIndex
Lister = Callable[[Snapshot, str], Coroutine[Any, Any, list[Entry]]]
Spawner = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]

CHECKED = Qt.CheckState.Checked
UNCHECKED = Qt.CheckState.Unchecked
PARTIAL = Qt.CheckState.PartiallyChecked


def local_time(ns: int, fmt: str) -> str:
    """A snapshot or file time (ns since the epoch) in local time; "" for 0."""
    return datetime.fromtimestamp(ns / 1e9).strftime(fmt) if ns else ""


class _Item:
    """A row of the tree: an entry, the top of the snapshot, or a placeholder."""

    __slots__ = ("entry", "parent", "row", "children", "state", "loaded", "loading", "note")

    def __init__(
        self, entry: Entry | None, parent: _Item | None, row: int, state: Qt.CheckState
    ) -> None:
        self.entry = entry
        self.parent = parent
        self.row = row
        self.children: list[_Item] = []
        self.state = state
        self.loaded = False
        self.loading = False
        self.note = ""  # placeholder text

    @property
    def placeholder(self) -> bool:
        return self.entry is None and self.parent is not None

    @property
    def path(self) -> str:
        return self.entry.path if self.entry is not None else "/"

    def real_children(self) -> list[_Item]:
        return [c for c in self.children if not c.placeholder]


class SnapshotTreeModel(QAbstractItemModel):
    """The files of one snapshot, listed folder by folder as they are expanded, with checkboxes.

    Ticking a folder ticks everything in it, including what is not listed
    yet; a folder with some of its contents ticked shows a partial tick.
    """

    COLUMNS = ("Name", "Size", "Modified")

    selection_changed = Signal()
    loaded = Signal(QModelIndex)  # a folder's rows arrived (invalid index: the top)

    def __init__(self, lister: Lister, spawn: Spawner, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._lister = lister
        self._spawn = spawn
        self._snapshot: Snapshot | None = None
        self._root = _Item(None, None, 0, UNCHECKED)
        self._generation = 0
        self._icons = QFileIconProvider()
        self._folder_icon = self._icons.icon(QFileIconProvider.IconType.Folder)
        self._file_icon = self._icons.icon(QFileIconProvider.IconType.File)

    # ------------------------------------------------------------ content
    @property
    def snapshot(self) -> Snapshot | None:
        """The snapshot shown."""
        return self._snapshot

    def set_snapshot(self, snapshot: Snapshot | None) -> None:
        """Show another snapshot (its top folder is listed at once)."""
        self.beginResetModel()
        self._generation += 1  # listings still on their way are for the old one
        self._snapshot = snapshot
        # indexes point at items without holding them: the old ones must
        # outlive the reset
        old = self._root
        self._root = _Item(None, None, 0, UNCHECKED)
        if snapshot is not None:
            self._root.children = [self._placeholder(self._root)]
        self.endResetModel()
        del old
        self.selection_changed.emit()
        if snapshot is not None:
            self._fetch(self._root)

    def fetch(self, index: AnyIndex) -> None:
        """List an expanded folder, unless it is listed or being listed."""
        item = self._item(index)
        if item.entry is not None and item.entry.has_children:
            self._fetch(item)

    def is_loaded(self, index: AnyIndex) -> bool:
        """Whether a folder's contents have been listed."""
        return self._item(index).loaded

    def entry(self, index: AnyIndex) -> Entry | None:
        """The entry of a row (None for the top and for placeholders)."""
        return self._item(index).entry

    def includes(self) -> list[str]:
        """Snapshot paths of the ticked files and folders (a ticked folder stands for all in it)."""
        out: list[str] = []

        def walk(item: _Item) -> None:
            for child in item.real_children():
                if child.state == CHECKED:
                    out.append(child.path)
                elif child.state == PARTIAL:
                    walk(child)

        walk(self._root)
        return out

    def has_selection(self) -> bool:
        """Whether anything is ticked."""
        return any(c.state != UNCHECKED for c in self._root.real_children())

    def _placeholder(self, parent: _Item) -> _Item:
        item = _Item(None, parent, 0, UNCHECKED)
        item.note = "Loading..."
        return item

    def _fetch(self, item: _Item) -> None:
        if item.loaded or item.loading or self._snapshot is None:
            return
        item.loading = True
        self._set_note(item, "Loading...")
        self._spawn(self._load(item, self._snapshot, self._generation))

    async def _load(self, item: _Item, snapshot: Snapshot, generation: int) -> None:
        try:
            entries = await self._lister(snapshot, item.path)
        except EngineError as exc:
            if generation == self._generation and isValid(self):
                item.loading = False
                self._set_note(item, f"Could not list this folder: {clean(str(exc))}")
            return
        if generation != self._generation or not isValid(self):
            return  # another snapshot is shown, or the window is gone
        self._insert(item, entries)

    def _set_note(self, item: _Item, note: str) -> None:
        if item.children and item.children[0].placeholder:
            item.children[0].note = note
            index = self.createIndex(0, 0, item.children[0])
            self.dataChanged.emit(index, index)

    def _insert(self, item: _Item, entries: list[Entry]) -> None:
        parent = self._index(item)
        if item.children:
            self.beginRemoveRows(parent, 0, len(item.children) - 1)
            placeholders, item.children = item.children, []
            self.endRemoveRows()
            del placeholders  # only now that no index refers to them
        entries = sorted(entries, key=lambda e: (not e.is_dir, e.name.casefold(), e.raw_name))
        # what is listed now inherits the folder's tick
        state = CHECKED if item.state == CHECKED else UNCHECKED
        children = []
        for row, entry in enumerate(entries):
            child = _Item(entry, item, row, state)
            if entry.has_children:
                child.children = [self._placeholder(child)]
            children.append(child)
        if children:
            self.beginInsertRows(parent, 0, len(children) - 1)
            item.children = children
            self.endInsertRows()
        item.loaded = True
        item.loading = False
        self.loaded.emit(parent)

    # ------------------------------------------------------------ ticking
    def _set_state(self, item: _Item, state: Qt.CheckState) -> None:
        item.state = state
        kids = item.real_children()
        for child in kids:
            self._set_state(child, state)
        if kids:
            first = self.createIndex(0, 0, item.children[0])
            last = self.createIndex(len(item.children) - 1, 0, item.children[-1])
            self.dataChanged.emit(first, last, [Qt.ItemDataRole.CheckStateRole])

    def _update_ancestors(self, item: _Item) -> None:
        parent = item.parent
        while parent is not None and parent is not self._root:
            states = {c.state for c in parent.real_children()}
            if states == {CHECKED}:
                new = CHECKED
            elif states == {UNCHECKED}:
                new = UNCHECKED
            else:
                new = PARTIAL
            if new == parent.state:
                return
            parent.state = new
            index = self._index(parent)
            self.dataChanged.emit(index, index, [Qt.ItemDataRole.CheckStateRole])
            parent = parent.parent

    # -------------------------------------------------------- Qt's model API
    def _item(self, index: AnyIndex) -> _Item:
        if not index.isValid():
            return self._root
        item = index.internalPointer()
        assert isinstance(item, _Item)
        return item

    def _index(self, item: _Item, column: int = 0) -> QModelIndex:
        if item is self._root or item.parent is None:
            return QModelIndex()
        return self.createIndex(item.row, column, item)

    def index(self, row: int, column: int, parent: AnyIndex = QModelIndex()) -> QModelIndex:  # noqa: B008
        """Qt: the index of a cell."""
        item = self._item(parent)
        if parent.isValid() and parent.column() != 0:
            return QModelIndex()
        if not 0 <= row < len(item.children) or not 0 <= column < len(self.COLUMNS):
            return QModelIndex()
        return self.createIndex(row, column, item.children[row])

    def parent(self, child: AnyIndex | None = None) -> Any:
        """Qt: the parent of a cell (without an argument: QObject's parent)."""
        if child is None:
            return super().parent()
        if not child.isValid():
            return QModelIndex()
        item = self._item(child)
        return self._index(item.parent) if item.parent is not None else QModelIndex()

    def rowCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008, N802
        """Qt: rows under a cell."""
        if parent.isValid() and parent.column() != 0:
            return 0
        return len(self._item(parent).children)

    def columnCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008, N802
        """Qt: columns."""
        return len(self.COLUMNS)

    def headerData(  # noqa: N802
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        """Qt: column titles."""
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.COLUMNS[section]
        return None

    def flags(self, index: AnyIndex) -> Qt.ItemFlag:
        """Qt: rows can be ticked (in the first column), placeholders cannot."""
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        item = self._item(index)
        if item.placeholder:
            return Qt.ItemFlag.ItemIsEnabled
        flags = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        if index.column() == 0:
            flags |= Qt.ItemFlag.ItemIsUserCheckable
        return flags

    def data(self, index: AnyIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        """Qt: what a cell shows."""
        if not index.isValid():
            return None
        item = self._item(index)
        col = index.column()
        entry = item.entry
        if entry is None:  # placeholder
            if col == 0 and role == Qt.ItemDataRole.DisplayRole:
                return item.note
            if role == Qt.ItemDataRole.ForegroundRole:
                return QColor(Qt.GlobalColor.gray)
            if role == Qt.ItemDataRole.FontRole:
                font = QFont()
                font.setItalic(True)
                return font
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            if col == 0:
                return entry.name
            if col == 1:
                return "" if entry.is_dir else human_bytes(entry.size)
            return local_time(entry.mtime_ns, "%Y-%m-%d %H:%M")
        if role == Qt.ItemDataRole.CheckStateRole and col == 0:
            return item.state
        if role == Qt.ItemDataRole.DecorationRole and col == 0:
            return self._folder_icon if entry.is_dir else self._file_icon
        if role == Qt.ItemDataRole.TextAlignmentRole and col == 1:
            return Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        if role == Qt.ItemDataRole.ToolTipRole and col == 0:
            return clean(entry.path)
        return None

    def setData(  # noqa: N802
        self, index: AnyIndex, value: Any, role: int = Qt.ItemDataRole.EditRole
    ) -> bool:
        """Qt: a tick changed: the folder's contents and its parents follow."""
        if role != Qt.ItemDataRole.CheckStateRole or not index.isValid() or index.column():
            return False
        item = self._item(index)
        if item.placeholder:
            return False
        state = value if isinstance(value, Qt.CheckState) else Qt.CheckState(int(value))
        if state == PARTIAL:
            state = CHECKED
        self._set_state(item, state)
        self.dataChanged.emit(index, index, [Qt.ItemDataRole.CheckStateRole])
        self._update_ancestors(item)
        self.selection_changed.emit()
        return True


# -------------------------------------------------------------- the window
