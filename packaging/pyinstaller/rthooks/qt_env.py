# Run-time hook, in place of PyInstaller's pyi_rth_pyside6 (desktop-agent.spec
# drops that one): the same environment for Qt, without importing PySide6.
#
# The upstream hook imports PySide6.QtCore at every start, only to find that
# the PyPI wheels register their own relocatable qt.conf (its fallback is for
# other Qt builds). That import, with shiboken6 and its signature machinery,
# costs 55 ms in every process: each CLI command, and each of the engine's
# helper processes, which a backup of many small files waits for. Qt is
# imported when the tray starts, and not at all elsewhere.
#
# Left out from upstream: QML2_IMPORT_PATH (no QML here) and macOS's
# DYLD_LIBRARY_PATH for the OpenSSL of Qt's TLS backend (not collected).


def _qt_environment():
    import os
    import sys

    if sys.platform.startswith("win"):
        qt_dir = os.path.join(sys._MEIPASS, "PySide6")
        # Qt's DLLs and plugins find their dependencies through PATH
        os.environ["PATH"] = sys._MEIPASS + os.pathsep + os.environ.get("PATH", "")
    else:
        qt_dir = os.path.join(sys._MEIPASS, "PySide6", "Qt")
    os.environ["QT_PLUGIN_PATH"] = os.path.join(qt_dir, "plugins")


_qt_environment()
del _qt_environment
