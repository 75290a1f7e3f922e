"""Start the tray app at login: one small interface, one implementation per platform.

- Linux and the BSDs: XDG autostart (the Desktop Application Autostart
  Specification). A user entry ``$XDG_CONFIG_HOME/autostart/desktop-agent.desktop``
  overrides a system one of the same name in ``$XDG_CONFIG_DIRS/autostart``
  (``/etc/xdg/autostart``, where the .deb installs it); a user entry with
  ``Hidden=true`` (or GNOME's ``X-GNOME-Autostart-enabled=false``) turns
  autostart off even though the system entry exists. ``enable`` removes such a
  hiding entry when a system entry exists, and otherwise writes a user entry
  (the packaged autostart entry with its ``Exec`` line pointing at this
  program); ``disable`` writes a hiding entry when a system entry exists and
  removes the user entry otherwise.
- macOS: a LaunchAgent, ``~/Library/LaunchAgents/<LAUNCH_AGENT_LABEL>.plist``
  with ``RunAtLoad``.
- Windows: the value ``desktop-agent`` of ``HKCU\\...\\CurrentVersion\\Run``,
  pointing at the windowed executable (no console window at login). A
  "disabled" mark that Task Manager's Startup tab writes under
  ``StartupApproved\\Run`` is honoured by :meth:`status` and cleared by
  :meth:`enable`.

Which program the entry starts (:func:`launch_command`): the frozen
executable when packaged; otherwise the ``desktop-agent`` entry point script
of the Python installation that runs now (a virtualenv or a checkout's
``.venv``: the code you are running is the code that starts at login); then
``desktop-agent`` found on PATH; at last ``python -m desktop_agent``. The
argument ``--autostart`` is added, and ``--config PATH`` when the
configuration in use is not the default one.
"""

from __future__ import annotations

import enum
import os
import plistlib
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Protocol

from desktop_agent.config.atomicfile import write_atomic
from desktop_agent.config.paths import APP_NAME, default_config_path
from desktop_agent.system.errors import AutostartError

__all__ = [
    "AUTOSTART_FLAG",
    "ENTRY_NAME",
    "LAUNCH_AGENT_LABEL",
    "RUN_KEY",
    "STARTUP_APPROVED_KEY",
    "WINDOWED_EXECUTABLE",
    "Autostart",
    "AutostartStatus",
    "LaunchAgentAutostart",
    "Registry",
    "RunKeyAutostart",
    "Source",
    "WindowsRegistry",
    "XdgAutostart",
    "desktop_exec",
    "launch_agent_plist",
    "launch_command",
    "platform_autostart",
    "tray_arguments",
]

AUTOSTART_FLAG = "--autostart"
ENTRY_NAME = f"{APP_NAME}.desktop"
TEMPLATE = "desktop-agent-autostart.desktop"  # package data: desktop_agent.resources
# the bundle identifier of the packaged macOS app (packaging/pyinstaller/desktop-agent.spec)
LAUNCH_AGENT_LABEL = "org.desktop-agent.agent"
RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
STARTUP_APPROVED_KEY = r"Software\Microsoft\Windows\CurrentVersion\Explorer\StartupApproved\Run"
RUN_VALUE = APP_NAME
# The packaged Windows build's GUI-subsystem executable, next to the console one
# (packaging/pyinstaller/desktop-agent.spec).
WINDOWED_EXECUTABLE = f"{APP_NAME}-tray.exe"


# ------------------------------------------------------------ the interface
class Source(enum.Enum):
    """What decides whether desktop-agent starts at login."""

    USER = "user"  # this user's entry (written by enable/disable, or by hand)
    SYSTEM = "system"  # a system-wide entry (installed by a package)


@dataclass(frozen=True)
class AutostartStatus:
    """Whether desktop-agent starts at login, and which entry decides it.

    ``entry`` is the file or registry value that decides (None when there
    is none); ``system_entry`` a system-wide entry that exists, whether or
    not it is hidden by the user's.
    """

    enabled: bool
    source: Source | None = None
    entry: str | None = None
    system_entry: str | None = None

    def describe(self) -> str:
        """One line: ``enabled by the user entry ...``, ``disabled``, ..."""
        if self.enabled:
            source = self.source.value if self.source else "user"
            return f"enabled by the {source} entry {self.entry}"
        if self.entry is None:
            return "disabled"
        hides = f" (it hides the system entry {self.system_entry})" if self.system_entry else ""
        return f"disabled by the user entry {self.entry}{hides}"


class Autostart(Protocol):
    """Start-at-login on one platform. Each call returns the state it leaves.

    Raises :class:`AutostartError` (one line) when the entry cannot be read
    or changed. Blocking (files, registry): call off the UI thread.
    """

    def status(self) -> AutostartStatus:
        """The current state."""
        ...

    def enable(self) -> AutostartStatus:
        """Start desktop-agent at login from now on."""
        ...

    def disable(self) -> AutostartStatus:
        """Do not start it at login any more."""
        ...


# ------------------------------------------------------------ what starts
def _frozen() -> bool:
    return bool(getattr(sys, "frozen", False))


def launch_command(*, windowed: bool = False) -> list[str]:
    """The program that starts the tray app, as an argument list (see the module doc).

    ``windowed``: Windows only, a program without a console window (the
    packaged ``desktop-agent-tray.exe``, or ``pythonw.exe -m desktop_agent``).
    """
    exe = Path(sys.executable)
    windows = sys.platform == "win32"
    if _frozen():
        if windowed and windows and (exe.parent / WINDOWED_EXECUTABLE).is_file():
            return [str(exe.parent / WINDOWED_EXECUTABLE)]
        return [str(exe)]
    if windowed and windows:
        # a console-script launcher (Scripts\desktop-agent.exe) would open a console window
        pythonw = exe.with_name("pythonw.exe")
        return [str(pythonw if pythonw.is_file() else exe), "-m", "desktop_agent"]
    script = exe.parent / (f"{APP_NAME}.exe" if windows else APP_NAME)
    if script.is_file():
        return [str(script)]
    found = shutil.which(APP_NAME)
    if found:
        return [os.path.abspath(found)]
    return [str(exe), "-m", "desktop_agent"]


def tray_arguments(config_path: Path | None) -> list[str]:
    """The arguments of the login start: ``--autostart``, and ``--config`` unless default."""
    args = [AUTOSTART_FLAG]
    if config_path is not None and os.path.abspath(config_path) != os.path.abspath(
        default_config_path()
    ):
        args += ["--config", os.path.abspath(config_path)]
    return args


# ------------------------------------------------------------ XDG
_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


def desktop_exec(argv: Sequence[str]) -> str:
    """``argv`` as the value of a desktop entry's ``Exec`` key.

    Quoted by the Desktop Entry Specification's rules: an argument with a
    reserved character goes in double quotes with ``"`` ``` ` ``` ``$``
    ``\\`` backslash-escaped; ``%`` is doubled (it starts field codes); and
    backslashes are escaped once more, as in every string value.
    """
    words = []
    for arg in argv:
        if "\n" in arg or "\r" in arg or not arg:
            raise AutostartError(f"cannot start {arg!r} from an autostart entry")
        if _RESERVED & set(arg):
            arg = '"' + "".join("\\" + c if c in '"`$\\' else c for c in arg) + '"'
        words.append(arg.replace("%", "%%"))
    return " ".join(words).replace("\\", "\\\\")


def _entry_group(text: str) -> dict[str, str]:
    """The keys of the ``[Desktop Entry]`` group (the first value of each)."""
    group: dict[str, str] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            continue
        if current == "Desktop Entry" and "=" in line:
            key, _, value = line.partition("=")
            group.setdefault(key.strip(), value.strip())
    return group


def _hides(group: dict[str, str]) -> bool:
    """An entry that is there but must be treated as absent (or as switched off)."""
    return (
        group.get("Hidden", "").lower() == "true"
        or group.get("X-GNOME-Autostart-enabled", "").lower() == "false"
    )


def _absolute_dir(value: str | None) -> Path | None:
    # the basedir spec: relative paths in these variables are invalid and ignored
    return Path(value) if value and os.path.isabs(value) else None


HIDDEN_ENTRY = (
    "[Desktop Entry]\n"
    "Type=Application\n"
    f"Name={APP_NAME}\n"
    "Comment=Turned off with `desktop-agent autostart disable` (hides the system-wide entry)\n"
    "Hidden=true\n"
)


class XdgAutostart:
    """XDG autostart: a user entry in ``user_dir`` overrides the first system one found.

    ``command``: what the entry starts (:func:`launch_command` +
    :func:`tray_arguments`).
    """

    def __init__(self, user_dir: Path, system_dirs: Sequence[Path], command: Sequence[str]) -> None:
        self.user_dir = user_dir
        self.system_dirs = list(system_dirs)
        self.command = list(command)

    @classmethod
    def from_environment(cls, command: Sequence[str]) -> XdgAutostart:
        """The directories of ``$XDG_CONFIG_HOME`` and ``$XDG_CONFIG_DIRS`` (or their defaults)."""
        home = _absolute_dir(os.environ.get("XDG_CONFIG_HOME")) or Path.home() / ".config"
        dirs = [
            d
            for d in map(_absolute_dir, os.environ.get("XDG_CONFIG_DIRS", "").split(os.pathsep))
            if d is not None
        ] or [Path("/etc/xdg")]
        return cls(home / "autostart", [d / "autostart" for d in dirs], command)

    @property
    def user_entry(self) -> Path:
        """Where this user's entry is (whether or not it exists)."""
        return self.user_dir / ENTRY_NAME

    def _read(self, path: Path) -> dict[str, str] | None:
        try:
            return _entry_group(path.read_text(encoding="utf-8", errors="replace"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise AutostartError(f"cannot read {path}: {exc.strerror or exc}") from None

    def system_entry(self) -> Path | None:
        """The system-wide entry in force (the first one found that is not hidden)."""
        for directory in self.system_dirs:
            path = directory / ENTRY_NAME
            group = self._read(path)
            if group is not None:
                # the first one found decides, even when it hides itself
                return None if _hides(group) else path
        return None

    def status(self) -> AutostartStatus:
        """Enabled by the user entry, by the system entry, or disabled (and by what)."""
        system = self.system_entry()
        system_text = str(system) if system is not None else None
        user = self._read(self.user_entry)
        if user is not None:
            return AutostartStatus(
                enabled=not _hides(user),
                source=Source.USER,
                entry=str(self.user_entry),
                system_entry=system_text,
            )
        if system is not None:
            return AutostartStatus(True, Source.SYSTEM, system_text, system_text)
        return AutostartStatus(False)

    def enable(self) -> AutostartStatus:
        """Remove a user entry that hides the system one; else write the user entry."""
        current = self.status()
        if current.system_entry is not None:
            if current.source is Source.USER and not current.enabled:
                self._remove()
            return self.status()
        self._write(self.entry_text())
        return self.status()

    def disable(self) -> AutostartStatus:
        """Hide the system entry with ``Hidden=true``; else remove the user entry."""
        if self.system_entry() is not None:
            self._write(HIDDEN_ENTRY)
        else:
            self._remove()
        return self.status()

    def entry_text(self) -> str:
        """The packaged autostart entry with ``Exec`` pointing at :attr:`command`."""
        try:
            template = files("desktop_agent.resources").joinpath(TEMPLATE).read_text("utf-8")
        except (OSError, ModuleNotFoundError) as exc:
            raise AutostartError(
                f"{TEMPLATE} is missing from the installation ({exc}); reinstall desktop-agent"
            ) from None
        exec_line = f"Exec={desktop_exec(self.command)}"
        lines = template.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("Exec="):
                lines[i] = exec_line
                break
        else:
            lines.append(exec_line)
        return "\n".join(lines) + "\n"

    def _write(self, text: str) -> None:
        try:
            self.user_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.user_entry, text.encode("utf-8"), mode=0o644)
        except OSError as exc:
            raise AutostartError(f"cannot write {self.user_entry}: {exc.strerror or exc}") from None

    def _remove(self) -> None:
        try:
            self.user_entry.unlink(missing_ok=True)
        except OSError as exc:
            raise AutostartError(
                f"cannot remove {self.user_entry}: {exc.strerror or exc}"
            ) from None


# ------------------------------------------------------------ macOS
def launch_agent_plist(command: Sequence[str], label: str = LAUNCH_AGENT_LABEL) -> bytes:
    """The LaunchAgent that starts ``command`` when the user logs in (XML plist)."""
    doc = {
        "Label": label,
        "ProgramArguments": list(command),
        "RunAtLoad": True,
        # a login item, not a daemon: never restarted by launchd after Quit
        "KeepAlive": False,
        "ProcessType": "Interactive",
        "LimitLoadToSessionType": "Aqua",
    }
    return plistlib.dumps(doc, fmt=plistlib.FMT_XML)


class LaunchAgentAutostart:
    """macOS: ``<directory>/<label>.plist`` with ``RunAtLoad`` (directory: ~/Library/LaunchAgents).

    The agent takes effect at the next login; it is not loaded into the
    running session (that would start a second copy now).
    """

    def __init__(
        self, directory: Path, command: Sequence[str], label: str = LAUNCH_AGENT_LABEL
    ) -> None:
        self.path = directory / f"{label}.plist"
        self.command = list(command)
        self.label = label

    def status(self) -> AutostartStatus:
        """Enabled when the plist exists, is not ``Disabled`` and runs at load."""
        try:
            with open(self.path, "rb") as fh:
                doc = plistlib.load(fh)
        except FileNotFoundError:
            return AutostartStatus(False)
        except (OSError, plistlib.InvalidFileException, ValueError) as exc:
            raise AutostartError(f"cannot read {self.path}: {exc}") from None
        enabled = isinstance(doc, dict) and doc.get("RunAtLoad") is True and not doc.get("Disabled")
        return AutostartStatus(enabled, Source.USER, str(self.path))

    def enable(self) -> AutostartStatus:
        """Write the LaunchAgent."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, launch_agent_plist(self.command, self.label), mode=0o644)
        except OSError as exc:
            raise AutostartError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        return self.status()

    def disable(self) -> AutostartStatus:
        """Remove the LaunchAgent."""
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            raise AutostartError(f"cannot remove {self.path}: {exc.strerror or exc}") from None
        return self.status()


# ------------------------------------------------------------ Windows
class Registry(Protocol):
    """The few operations on ``HKEY_CURRENT_USER`` that autostart needs."""

    def get(self, key: str, name: str) -> object | None:
        """The data of value ``name`` under ``key``, or None when either is missing."""
        ...

    def set_string(self, key: str, name: str, data: str) -> None:
        """Create or replace a ``REG_SZ`` value (and its key)."""
        ...

    def delete(self, key: str, name: str) -> None:
        """Remove a value; nothing happens when it is missing."""
        ...


class WindowsRegistry:
    """:class:`Registry` through ``winreg`` (Windows only)."""

    def get(self, key: str, name: str) -> object | None:
        """See :class:`Registry`."""
        if sys.platform != "win32":
            raise AutostartError("the Windows registry exists only on Windows")
        import winreg

        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, key) as handle:
                data, _kind = winreg.QueryValueEx(handle, name)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AutostartError(f"cannot read HKCU\\{key}\\{name}: {exc}") from None
        return data

    def set_string(self, key: str, name: str, data: str) -> None:
        """See :class:`Registry`."""
        if sys.platform != "win32":
            raise AutostartError("the Windows registry exists only on Windows")
        import winreg

        try:
            with winreg.CreateKeyEx(winreg.HKEY_CURRENT_USER, key, 0, winreg.KEY_SET_VALUE) as h:
                winreg.SetValueEx(h, name, 0, winreg.REG_SZ, data)
        except OSError as exc:
            raise AutostartError(f"cannot write HKCU\\{key}\\{name}: {exc}") from None

    def delete(self, key: str, name: str) -> None:
        """See :class:`Registry`."""
        if sys.platform != "win32":
            raise AutostartError("the Windows registry exists only on Windows")
        import winreg

        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, key, 0, winreg.KEY_SET_VALUE) as h:
                winreg.DeleteValue(h, name)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise AutostartError(f"cannot remove HKCU\\{key}\\{name}: {exc}") from None


class RunKeyAutostart:
    """Windows: the value ``desktop-agent`` of ``HKCU\\...\\Run`` starts ``command`` at login.

    ``registry`` is :class:`WindowsRegistry` in the program; tests pass an
    in-memory one.
    """

    def __init__(self, registry: Registry, command: Sequence[str], name: str = RUN_VALUE) -> None:
        self.registry = registry
        self.command = list(command)
        self.name = name

    @property
    def command_line(self) -> str:
        """The value's data: the command quoted as Windows parses it (CommandLineToArgvW)."""
        return subprocess.list2cmdline(self.command)

    def status(self) -> AutostartStatus:
        """Enabled when the Run value exists and Task Manager did not switch it off."""
        where = f"HKCU\\{RUN_KEY}\\{self.name}"
        if self.registry.get(RUN_KEY, self.name) is None:
            return AutostartStatus(False)
        approved = self.registry.get(STARTUP_APPROVED_KEY, self.name)
        # Task Manager's mark: the first byte is even when enabled, odd when disabled
        off = isinstance(approved, bytes) and len(approved) > 0 and approved[0] & 1 == 1
        return AutostartStatus(not off, Source.USER, where)

    def enable(self) -> AutostartStatus:
        """Write the Run value and clear a "disabled" mark."""
        self.registry.set_string(RUN_KEY, self.name, self.command_line)
        self.registry.delete(STARTUP_APPROVED_KEY, self.name)
        return self.status()

    def disable(self) -> AutostartStatus:
        """Remove the Run value (and its mark)."""
        self.registry.delete(RUN_KEY, self.name)
        self.registry.delete(STARTUP_APPROVED_KEY, self.name)
        return self.status()


# ------------------------------------------------------------ factory
def platform_autostart(config_path: Path | None = None) -> Autostart:
    """This platform's :class:`Autostart`, starting the tray app for ``config_path``."""
    windows = sys.platform == "win32"
    command = launch_command(windowed=windows) + tray_arguments(config_path)
    if sys.platform == "darwin":
        return LaunchAgentAutostart(Path.home() / "Library" / "LaunchAgents", command)
    if windows:
        return RunKeyAutostart(WindowsRegistry(), command)
    return XdgAutostart.from_environment(command)
