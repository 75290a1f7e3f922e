# PyInstaller's hook for PySide6.QtNetwork, minus the Qt plugins and translations
# the spec leaves out: see ../qt_trim.py (the spec puts it on sys.path).
from qt_trim import hook  # noqa: F401
