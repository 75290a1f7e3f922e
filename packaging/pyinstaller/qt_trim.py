"""The PySide6 hooks of packaging/pyinstaller/hooks/, minus what the spec leaves out.

Hooks in the spec's ``hookspath`` take precedence over PyInstaller's own, so
``hooks/hook-PySide6.QtGui.py`` and its siblings replace the upstream ones
with :func:`hook`: the same collection
(``PyInstaller.utils.hooks.qt``), then

* Qt plugins: only the types and names in ``hooksconfig["PySide6"]["plugins"]``
  (``{"platforms": ["qxcb", ...], "styles": ["*"]}``; a type not named is
  left out; ``None`` keeps everything, as upstream does);
* translations: none when ``hooksconfig["PySide6"]["translations"]`` is False.

The filtering has to happen here, before PyInstaller analyses the binaries'
dependencies: a plugin removed from the finished Analysis would already have
pulled its host libraries into the bundle (the GTK3 platform theme alone
brings libgtk-3, pango, cairo, gdk-pixbuf and about thirty more).
"""

import os

from PyInstaller.utils.hooks import get_hook_config, logger
from PyInstaller.utils.hooks.qt import get_qt_library_info


def _plugin(dest):
    """("platforms", dest) for PySide6/Qt/plugins/platforms, else None."""
    parts = dest.replace(os.sep, "/").split("/")
    if "plugins" not in parts:
        return None
    return "/".join(parts[parts.index("plugins") + 1 :])


def _keep_plugin(keep, plugin_type, src):
    wanted = keep.get(plugin_type, ())
    name = os.path.basename(src).split(".")[0].removeprefix("lib")  # libqxcb.so -> qxcb
    return "*" in wanted or name in wanted


def hook(hook_api):
    """The hook of every PySide6 module that has a file in hooks/."""
    info = get_qt_library_info("PySide6")
    hiddenimports, binaries, datas = info.collect_module(hook_api.__name__)
    keep = get_hook_config(hook_api, "PySide6", "plugins")
    if keep is not None:
        kept = []
        for src, dest in binaries:
            plugin_type = _plugin(dest)
            if plugin_type is None or _keep_plugin(keep, plugin_type, src):
                kept.append((src, dest))
            else:
                logger.info("desktop-agent: leaving out Qt plugin %s", os.path.basename(src))
        binaries = kept
    if hook_api.__name__ == "PySide6.QtNetwork" and (keep is None or "tls" in keep):
        # what the upstream hook adds: the OpenSSL libraries of Qt's TLS backend
        binaries += info.collect_qtnetwork_files()
    if get_hook_config(hook_api, "PySide6", "translations") is False:
        datas = [
            (s, d) for s, d in datas if "translations" not in d.replace(os.sep, "/").split("/")
        ]
    hook_api.add_imports(*hiddenimports)
    hook_api.add_binaries(binaries)
    hook_api.add_datas(datas)
