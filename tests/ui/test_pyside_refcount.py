"""Guards against a PySide6 build that mismanages reference counts.

PySide6 6.12.0 on Python 3.11 drops a reference to ``None`` on every call of a
method that returns nothing; a tray app makes thousands of such calls and
then aborts. pyproject.toml excludes that version; this test fails on any
build with the same fault.
"""

from __future__ import annotations

import sys

from PySide6.QtWidgets import QLabel, QMenu


def test_void_methods_keep_none_alive(qapp):
    label = QLabel()
    menu = QMenu()
    action = menu.addAction("x")
    before = sys.getrefcount(None)
    for _ in range(200):
        label.setText("a")
        action.setEnabled(True)
        menu.clear()
        action = menu.addAction("x")
    assert sys.getrefcount(None) - before > -20
