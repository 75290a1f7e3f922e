"""Tray icons: crisp SVGs rendered per size, with a progress ring while running."""

from __future__ import annotations

from functools import cache

from PySide6.QtCore import QByteArray, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPen, QPixmap
from PySide6.QtSvg import QSvgRenderer

from .resources import ResourceMissing, resource_bytes

__all__ = ["state_icon", "app_icon", "render", "KINDS", "SIZES"]

KINDS = ("idle", "running", "paused", "warning", "error")
SIZES = (16, 22, 24, 32, 48, 64, 128)


@cache
def _svg(name: str) -> bytes:
    # Only the SVG text is cached: Qt objects kept in module globals outlive
    # the QApplication and crash the interpreter at exit.
    return resource_bytes("icons", f"{name}.svg")


def _renderer(name: str) -> QSvgRenderer:
    renderer = QSvgRenderer(QByteArray(_svg(name)))
    if not renderer.isValid():
        raise ResourceMissing(f"icon {name}.svg is not a valid SVG image; reinstall desktop-agent")
    return renderer


def render(name: str, size: int, percent: float | None = None) -> QPixmap:
    """One pixmap: the SVG at ``size``; with ``percent``, a ring around it.

    The icon is loaded before a painter exists: a QPainter left open by an
    exception crashes Qt when the pixmap is destroyed.
    """
    renderer = _renderer(name)
    pix = QPixmap(size, size)
    pix.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pix)
    try:
        _paint(painter, renderer, size, percent)
    finally:
        painter.end()
    return pix


def _paint(painter: QPainter, renderer: QSvgRenderer, size: int, percent: float | None) -> None:
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter, QRectF(0, 0, size, size))
    if percent is not None:
        width = max(2.0, size / 9)
        rect = QRectF(width / 2, width / 2, size - width, size - width)
        painter.setPen(QPen(QColor(255, 255, 255, 90), width))
        painter.drawEllipse(rect)
        pen = QPen(QColor("#1fb8ff"), width)
        pen.setCapStyle(Qt.PenCapStyle.RoundCap)
        painter.setPen(pen)
        span = int(-360 * 16 * max(0.0, min(100.0, percent)) / 100)
        painter.drawArc(rect, 90 * 16, span)


def state_icon(kind: str, percent: float | None = None) -> QIcon:
    """The tray icon for a state (``percent`` only shows while running)."""
    icon = QIcon()
    ring = percent if kind == "running" else None
    # whole percents are enough for a ring a few pixels wide
    if ring is not None:
        ring = float(int(ring))
    for size in SIZES:
        icon.addPixmap(render(kind, size, ring))
    return icon


def app_icon() -> QIcon:
    """The application's own icon (windows, notifications)."""
    icon = QIcon()
    for size in SIZES:
        icon.addPixmap(render("app", size))
    return icon
