"""Render the application icon for the packages, from the one SVG in resources/.

    python packaging/icons.py OUTDIR

writes

    OUTDIR/hicolor/scalable/apps/desktop-agent.svg      (the SVG itself)
    OUTDIR/hicolor/NxN/apps/desktop-agent.png           (N = 16 22 24 32 48 64 128 256)
    OUTDIR/desktop-agent.ico                            (Windows: the executables' icon)
    OUTDIR/desktop-agent.icns                           (macOS: the .app's icon)

The PNGs are drawn by Qt's own SVG renderer (PySide6 from the build venv,
offscreen platform), so no image tool is needed on the build machine. The
.ico and .icns containers are written here: both are a small index in front
of PNG images, which every Windows since Vista and every macOS since 10.7
reads.
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path
from typing import Any

__all__ = ["render_all", "HICOLOR_SIZES"]

ROOT = Path(__file__).resolve().parent.parent
SVG = ROOT / "resources" / "desktop-agent.svg"
NAME = "desktop-agent"
HICOLOR_SIZES = (16, 22, 24, 32, 48, 64, 128, 256)
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
# icns element types that hold a PNG, by pixel size (the @2x types reuse a size)
ICNS_TYPES = (
    (b"icp4", 16),
    (b"icp5", 32),
    (b"ic11", 32),
    (b"icp6", 64),
    (b"ic12", 64),
    (b"ic07", 128),
    (b"ic08", 256),
    (b"ic13", 256),
    (b"ic09", 512),
    (b"ic14", 512),
    (b"ic10", 1024),
)
_app: Any = None


def _renderer() -> Any:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QByteArray
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtSvg import QSvgRenderer

    # text in an SVG needs fonts, and fonts need an application object; it
    # must outlive every image drawn, hence the module global
    global _app
    _app = QGuiApplication.instance() or QGuiApplication([])
    renderer = QSvgRenderer(QByteArray(SVG.read_bytes()))
    if not renderer.isValid():
        raise SystemExit(f"icons.py: {SVG} is not a valid SVG image")
    return renderer


def _png(renderer: Any, size: int) -> bytes:
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QRectF, Qt
    from PySide6.QtGui import QImage, QPainter

    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter, QRectF(0, 0, size, size))
    painter.end()
    data = QByteArray()
    buf = QBuffer(data)
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    # a str, whatever PySide6's stubs say (bytes is refused at run time)
    if not image.save(buf, "PNG"):  # type: ignore[call-overload]
        raise SystemExit(f"icons.py: Qt could not write a {size}px PNG")
    buf.close()
    return bytes(data.data())


def _ico(pngs: dict[int, bytes]) -> bytes:
    """ICONDIR + one ICONDIRENTRY per size + the PNGs (a size of 256 is written as 0)."""
    sizes = sorted(pngs)
    head = struct.pack("<HHH", 0, 1, len(sizes))
    offset = len(head) + 16 * len(sizes)
    entries, blobs = b"", b""
    for s in sizes:
        data = pngs[s]
        dim = 0 if s >= 256 else s
        entries += struct.pack("<BBBBHHII", dim, dim, 0, 0, 1, 32, len(data), offset)
        blobs += data
        offset += len(data)
    return head + entries + blobs


def _icns(pngs: dict[int, bytes]) -> bytes:
    body = b"".join(
        kind + struct.pack(">I", 8 + len(pngs[size])) + pngs[size] for kind, size in ICNS_TYPES
    )
    return b"icns" + struct.pack(">I", 8 + len(body)) + body


def render_all(out: Path) -> list[Path]:
    """Write every icon file under ``out``; returns their paths."""
    renderer = _renderer()
    sizes = sorted({*HICOLOR_SIZES, *ICO_SIZES, *(s for _, s in ICNS_TYPES)})
    pngs = {s: _png(renderer, s) for s in sizes}
    written: list[Path] = []
    scalable = out / "hicolor" / "scalable" / "apps" / f"{NAME}.svg"
    scalable.parent.mkdir(parents=True, exist_ok=True)
    scalable.write_bytes(SVG.read_bytes())
    written.append(scalable)
    for s in HICOLOR_SIZES:
        path = out / "hicolor" / f"{s}x{s}" / "apps" / f"{NAME}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pngs[s])
        written.append(path)
    ico = out / f"{NAME}.ico"
    ico.write_bytes(_ico({s: pngs[s] for s in ICO_SIZES}))
    icns = out / f"{NAME}.icns"
    icns.write_bytes(_icns(pngs))
    written += [ico, icns]
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python packaging/icons.py OUTDIR")
    for p in render_all(Path(sys.argv[1])):
        print(p)
