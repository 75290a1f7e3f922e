"""``desktop-agent selftest``: checks what a packaged (frozen) build gets wrong.

Each check prints one line, ``ok`` or ``FAIL``, with what it found; the exit
status is 1 when any failed. What is checked is what a bundler silently
drops or replaces: the compiled extensions (chunker, zstd, cryptography),
the engine's helper processes (a frozen program must start them itself),
the keyring's backends (found through package metadata), the icons (package
data), and Qt with its SVG and offscreen plugins driven by qasync.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["run", "CHECKS"]


class CheckFailed(Exception):
    """A check found a problem (its message says which)."""


@dataclass(frozen=True)
class Check:
    """One named check: returns what it found, raises :class:`CheckFailed` otherwise."""

    name: str
    run: Callable[[], str]


def _version(dist: str) -> str:
    """A distribution's version, from its metadata (a bundle may lack it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "(version unknown)"


def _chunker() -> str:
    import pyfastcdc

    from desktop_agent.engine.chunker import Chunker

    module = pyfastcdc.FastCDC.__module__
    if not module.startswith("pyfastcdc.cy"):
        raise CheckFailed(f"pure-Python fallback in use ({module}): backups would be ~17x slower")
    data = os.urandom(16 << 20)
    started = time.perf_counter()
    chunks = sum(1 for _ in Chunker(1).buffer(data))
    seconds = time.perf_counter() - started
    rate = len(data) / seconds / 2**20
    if rate < 100:  # the C code does about 1 GiB/s; pure Python about 20 MiB/s
        raise CheckFailed(f"chunking runs at {rate:.0f} MiB/s: not the compiled code")
    return f"pyfastcdc {pyfastcdc.__version__} compiled: {chunks} chunks, {rate:.0f} MiB/s"


def _zstd() -> str:
    import zstandard

    if zstandard.backend != "cext":
        raise CheckFailed(f"zstandard uses its {zstandard.backend} backend, not the C extension")
    data = os.urandom(1 << 16) * 16
    if zstandard.ZstdDecompressor().decompress(zstandard.ZstdCompressor().compress(data)) != data:
        raise CheckFailed("a round trip changed the data")
    libzstd = ".".join(map(str, zstandard.ZSTD_VERSION))
    return f"zstandard {zstandard.__version__} (C extension, libzstd {libzstd})"


def _crypto() -> str:
    from cryptography.hazmat.backends.openssl.backend import backend

    from desktop_agent.engine import crypto

    key = crypto.new_random_key()
    if crypto.decrypt(key, crypto.encrypt(key, b"selftest")) != b"selftest":
        raise CheckFailed("AES-CTR + Poly1305 round trip failed")
    return f"cryptography with {backend.openssl_version_text()}"


def _helpers() -> str:
    """A helper process starts (the frozen entry point dispatches --engine-helper)."""
    import tempfile

    from desktop_agent.engine import crypto
    from desktop_agent.engine.smallfiles import Helpers

    with tempfile.TemporaryDirectory(prefix="desktop-agent-selftest-") as spool:
        started = time.perf_counter()
        pool = Helpers(1, crypto.new_random_key(), True, spool, 1 << 20, b"")
        try:
            pool.flush()
        finally:
            pool.close()
        return f"a helper process answered in {time.perf_counter() - started:.2f} s"


_NATIVE_KEYRING = {
    "linux": ("keyring.backends.SecretService", "Secret Service (GNOME Keyring, KWallet 6)"),
    "darwin": ("keyring.backends.macOS", "the macOS Keychain"),
    "win32": ("keyring.backends.Windows", "the Windows Credential Manager"),
}


def _keyring() -> str:
    """The platform's keyring backend ships (keyring finds backends through
    package metadata, which a bundler may drop); whether a keyring service
    answers right now depends on the session, not the build."""
    import importlib

    import keyring

    platform = "linux" if sys.platform.startswith("linux") else sys.platform
    module_name, what = _NATIVE_KEYRING.get(platform, ("", ""))
    if not module_name:
        return f"keyring {_version('keyring')}: no native backend expected on {sys.platform}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CheckFailed(f"the backend for {what} cannot be imported: {exc}") from None
    active = type(keyring.get_keyring()).__module__
    viable = bool(getattr(module.Keyring, "viable", False))
    now = "in use" if viable else "not answering in this session (a 0600 file is used)"
    return f"keyring {_version('keyring')}: {what} backend present, {now}; active {active}"


def _qt_child() -> str:
    """The part that needs a QApplication, run in a child process (offscreen)."""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    if getattr(sys, "frozen", False):  # a bundle's executable is desktop-agent itself
        cmd = [sys.executable, "--selftest-qt"]
    else:
        cmd = [sys.executable, "-m", "desktop_agent", "--selftest-qt"]
    proc = subprocess.run(
        cmd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    out = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode != 0 or not out.startswith("qt-ok "):
        detail = (proc.stderr.strip().splitlines() or [out or f"exit {proc.returncode}"])[-1]
        raise CheckFailed(detail)
    return out.removeprefix("qt-ok ")


def qt_probe() -> int:
    """In the child: icons through QtSvg, painted offscreen, on a qasync loop."""
    import asyncio

    import PySide6
    import qasync
    from PySide6.QtWidgets import QApplication

    from desktop_agent.ui.icons import KINDS, render

    app = QApplication.instance() or QApplication([])
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)

    async def paint() -> int:
        await asyncio.sleep(0)
        drawn = 0
        for kind in (*KINDS, "app"):
            image = render(kind, 32, 50.0 if kind == "running" else None).toImage()
            if image.pixelColor(16, 16).alpha() == 0:
                raise CheckFailed(f"icon {kind} painted nothing")
            drawn += 1
        return drawn

    with loop:
        drawn = loop.run_until_complete(paint())
    print(
        f"qt-ok PySide6 {PySide6.__version__}, {drawn} SVG icons painted offscreen, "
        f"qasync {_version('qasync')}"
    )
    return 0


def _icons() -> str:
    from desktop_agent.ui.resources import resource_bytes

    names = ["app", "idle", "running", "paused", "warning", "error"]
    total = sum(len(resource_bytes("icons", f"{n}.svg")) for n in names)
    desktop = resource_bytes("desktop-agent.desktop").decode()
    if "[Desktop Entry]" not in desktop:
        raise CheckFailed("desktop-agent.desktop is damaged")
    return f"{len(names)} icons ({total} bytes) and the .desktop entry are in the package"


CHECKS = [
    Check("chunker", _chunker),
    Check("zstd", _zstd),
    Check("crypto", _crypto),
    Check("helpers", _helpers),
    Check("keyring", _keyring),
    Check("icons", _icons),
    Check("qt", _qt_child),
]


def run(out: Callable[[str], None] = print) -> int:
    """Run every check, one line each; 0 when all passed, else 1."""
    failed = 0
    for check in CHECKS:
        try:
            found = check.run()
        except Exception as exc:  # noqa: BLE001 - a check that breaks has failed
            failed += 1
            text = str(exc) if isinstance(exc, CheckFailed) else f"{type(exc).__name__}: {exc}"
            out(f"FAIL {check.name:8} {text}")
        else:
            out(f"ok   {check.name:8} {found}")
    out("selftest: " + (f"{failed} check(s) failed" if failed else "all checks passed"))
    return 1 if failed else 0
