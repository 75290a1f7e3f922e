"""Start at login: XDG autostart for real (temporary XDG dirs, the CLI in a process),
the macOS LaunchAgent's content, the Windows Run key against a fake registry."""

from __future__ import annotations

import plistlib
import subprocess
import sys
from pathlib import Path

import pytest

from desktop_agent.cli import build_parser
from desktop_agent.config.paths import default_config_path
from desktop_agent.system.autostart import (
    LAUNCH_AGENT_LABEL,
    RUN_KEY,
    STARTUP_APPROVED_KEY,
    LaunchAgentAutostart,
    RunKeyAutostart,
    Source,
    WindowsRegistry,
    XdgAutostart,
    desktop_exec,
    launch_command,
    platform_autostart,
    tray_arguments,
)
from desktop_agent.system.errors import AutostartError

COMMAND = ["/opt/desktop agent/bin/desktop-agent", "--autostart"]


def parse_exec(value: str) -> list[str]:
    """An ``Exec`` value back to argv, by the Desktop Entry Specification (as a launcher does).

    First the string-value escape (``\\\\`` is one backslash); then words split
    at spaces, a double-quoted word taking ``\\"`` ``\\``` ``\\$`` ``\\\\`` as
    escapes; then ``%%`` is a literal ``%`` (any other ``%`` would be a field code).
    """
    text = value.replace("\\\\", "\\")
    words: list[str] = []
    word: list[str] | None = None
    i = 0
    while i < len(text):
        c = text[i]
        if c == " ":
            if word is not None:
                words.append("".join(word))
            word = None
        elif c == '"':
            word = word if word is not None else []
            i += 1
            while text[i] != '"':
                if text[i] == "\\" and text[i + 1] in '"`$\\':
                    i += 1
                word.append(text[i])
                i += 1
        else:
            assert c not in "\\'\t><~|&;$*?#()`", f"unquoted {c!r} in {value!r}"
            word = (word if word is not None else []) + [c]
        i += 1
    if word is not None:
        words.append("".join(word))
    for w in words:
        assert "%" not in w.replace("%%", ""), f"a field code in {value!r}"
    return [w.replace("%%", "%") for w in words]


def entry(path: Path) -> dict[str, str]:
    keys: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            keys[key] = value
    return keys


@pytest.fixture
def xdg(tmp_path: Path) -> XdgAutostart:
    return XdgAutostart(
        tmp_path / "home-config" / "autostart",
        [tmp_path / "etc-local" / "autostart", tmp_path / "etc-xdg" / "autostart"],
        COMMAND,
    )


def system_entry(xdg: XdgAutostart, index: int = 1, extra: str = "") -> Path:
    path = xdg.system_dirs[index] / "desktop-agent.desktop"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"[Desktop Entry]\nType=Application\nName=desktop-agent\nExec=desktop-agent --autostart\n"
        f"{extra}"
    )
    return path


# ------------------------------------------------------------ XDG
def test_without_entries_it_is_disabled(xdg: XdgAutostart) -> None:
    status = xdg.status()
    assert not status.enabled and status.source is None and status.entry is None
    assert status.describe() == "disabled"


def test_enable_writes_the_packaged_entry_pointing_at_this_program(xdg: XdgAutostart) -> None:
    status = xdg.enable()

    assert status.enabled and status.source is Source.USER
    assert status.entry == str(xdg.user_entry)
    assert status.describe() == f"enabled by the user entry {xdg.user_entry}"
    keys = entry(xdg.user_entry)
    # the packaged entry, with only its Exec line replaced
    assert keys["Type"] == "Application" and keys["Name"] == "desktop-agent"
    assert keys["X-GNOME-Autostart-enabled"] == "true"
    assert parse_exec(keys["Exec"]) == COMMAND
    assert "Hidden" not in keys
    assert xdg.enable() == status  # again: nothing changes


def test_disable_without_a_system_entry_removes_the_user_entry(xdg: XdgAutostart) -> None:
    xdg.enable()
    status = xdg.disable()
    assert not status.enabled and status.describe() == "disabled"
    assert not xdg.user_entry.exists()
    assert xdg.disable() == status


def test_a_system_entry_enables_it_and_a_hidden_user_entry_turns_it_off(
    xdg: XdgAutostart,
) -> None:
    system = system_entry(xdg)
    status = xdg.status()
    assert status.enabled and status.source is Source.SYSTEM and status.entry == str(system)
    assert status.describe() == f"enabled by the system entry {system}"

    status = xdg.disable()
    assert not status.enabled and status.source is Source.USER
    assert entry(xdg.user_entry)["Hidden"] == "true"
    assert system.exists()  # never touched (it belongs to the package)
    assert status.describe() == (
        f"disabled by the user entry {xdg.user_entry} (it hides the system entry {system})"
    )

    status = xdg.enable()
    assert not xdg.user_entry.exists()  # the hiding entry is gone: the package's entry applies
    assert status.enabled and status.source is Source.SYSTEM


def test_gnome_switched_off_user_entry_counts_as_disabled(xdg: XdgAutostart) -> None:
    system_entry(xdg)
    xdg.user_dir.mkdir(parents=True)
    xdg.user_entry.write_text(
        "[Desktop Entry]\nType=Application\nExec=desktop-agent\nX-GNOME-Autostart-enabled=false\n"
    )
    assert not xdg.status().enabled
    assert xdg.enable().enabled
    assert not xdg.user_entry.exists()


def test_the_first_system_directory_decides(xdg: XdgAutostart) -> None:
    system_entry(xdg, index=1)
    system_entry(xdg, index=0, extra="Hidden=true\n")  # higher precedence, hidden: no entry
    assert xdg.system_entry() is None
    assert not xdg.status().enabled
    # with no system entry in force, disable removes the user entry instead of hiding
    xdg.enable()
    assert xdg.user_entry.exists() and "Hidden" not in entry(xdg.user_entry)
    xdg.disable()
    assert not xdg.user_entry.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["/usr/bin/desktop-agent", "--autostart"],
        ["/home/me/my apps/venv/bin/desktop-agent", "--autostart", "--config", "/x/y z.toml"],
        ['/tmp/odd"quote$dollar`tick\\back', "100%", "a'b", "#hash", "~tilde"],
    ],
)
def test_exec_quoting_round_trips(argv: list[str]) -> None:
    assert parse_exec(desktop_exec(argv)) == argv


def test_exec_refuses_what_an_entry_cannot_hold() -> None:
    with pytest.raises(AutostartError):
        desktop_exec(["/tmp/new\nline"])


def test_from_environment_follows_the_basedir_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "conf"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", f"relative/ignored:{tmp_path / 'a'}:{tmp_path / 'b'}")
    xdg = XdgAutostart.from_environment(COMMAND)
    assert xdg.user_dir == tmp_path / "conf" / "autostart"
    assert xdg.system_dirs == [tmp_path / "a" / "autostart", tmp_path / "b" / "autostart"]
    monkeypatch.setenv("XDG_CONFIG_HOME", "")
    monkeypatch.delenv("XDG_CONFIG_DIRS")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    xdg = XdgAutostart.from_environment(COMMAND)
    assert xdg.user_dir == tmp_path / "home" / ".config" / "autostart"
    assert xdg.system_dirs == [Path("/etc/xdg/autostart")]


def test_a_user_entry_that_cannot_be_written_is_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    xdg = XdgAutostart(blocker / "autostart", [tmp_path / "none"], COMMAND)
    with pytest.raises(AutostartError, match="cannot write"):
        xdg.enable()


# ------------------------------------------------------------ what starts
def test_launch_command_prefers_the_running_installation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    python = venv / "python"
    python.write_text("")
    monkeypatch.setattr(sys, "executable", str(python))
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delattr(sys, "frozen", raising=False)
    on_path = tmp_path / "path"
    on_path.mkdir()
    (on_path / "desktop-agent").write_text("#!/bin/sh\n")
    (on_path / "desktop-agent").chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path))

    # no entry point script next to the interpreter: the one on PATH
    assert launch_command() == [str(on_path / "desktop-agent")]
    # the installation that runs now (a venv, a checkout's .venv) beats PATH
    (venv / "desktop-agent").write_text("")
    assert launch_command() == [str(venv / "desktop-agent")]
    # frozen: the bundle's executable itself
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert launch_command() == [str(python)]
    # nothing at all: the interpreter with -m
    monkeypatch.delattr(sys, "frozen")
    (venv / "desktop-agent").unlink()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert launch_command() == [str(python), "-m", "desktop_agent"]


def test_launch_command_on_windows_is_windowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe = tmp_path / "desktop-agent.exe"
    exe.write_text("")
    monkeypatch.setattr(sys, "executable", str(exe))
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert launch_command(windowed=True) == [str(exe)]  # no tray executable: the one there is
    (tmp_path / "desktop-agent-tray.exe").write_text("")
    assert launch_command(windowed=True) == [str(tmp_path / "desktop-agent-tray.exe")]
    monkeypatch.delattr(sys, "frozen")
    python = tmp_path / "python.exe"
    monkeypatch.setattr(sys, "executable", str(python))
    (tmp_path / "pythonw.exe").write_text("")
    assert launch_command(windowed=True) == [str(tmp_path / "pythonw.exe"), "-m", "desktop_agent"]


def test_tray_arguments_name_a_configuration_that_is_not_the_default(tmp_path: Path) -> None:
    assert tray_arguments(None) == ["--autostart"]
    assert tray_arguments(default_config_path()) == ["--autostart"]
    other = tmp_path / "work.toml"
    assert tray_arguments(other) == ["--autostart", "--config", str(other)]


def test_the_parser_takes_the_autostart_entrys_command_line() -> None:
    parser = build_parser()
    assert parser.parse_args(["--autostart"]).autostart is True
    assert parser.parse_args([]).autostart is False
    args = parser.parse_args(["autostart", "status"])
    assert args.command == "autostart" and args.action == "status"


def test_platform_autostart_picks_the_platforms_implementation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert isinstance(platform_autostart(), LaunchAgentAutostart)
    monkeypatch.setattr(sys, "platform", "win32")
    assert isinstance(platform_autostart(), RunKeyAutostart)
    monkeypatch.setattr(sys, "platform", "linux")
    assert isinstance(platform_autostart(), XdgAutostart)


# ------------------------------------------------------------ the CLI, for real
@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, str]:
    """The environment of a login: temporary XDG config dirs (no real /etc/xdg)."""
    return {"XDG_CONFIG_DIRS": str(tmp_path / "etc-xdg")}


def test_cli_enable_status_disable(cli, tmp_path: Path, dirs: dict[str, str]) -> None:
    user_entry = tmp_path / "home" / ".config" / "autostart" / "desktop-agent.desktop"

    status = cli("autostart", "status", env=dirs)
    assert (status.returncode, status.stdout, status.stderr) == (
        0,
        "start at login: disabled\n",
        "",
    )

    enabled = cli("autostart", "enable", env=dirs)
    assert enabled.returncode == 0, enabled.stderr
    assert enabled.stdout == f"start at login: enabled by the user entry {user_entry}\n"
    argv = parse_exec(entry(user_entry)["Exec"])
    # this checkout's venv entry point (sys.executable's neighbour), then the flag
    assert argv == [str(Path(sys.executable).parent / "desktop-agent"), "--autostart"]
    version = subprocess.run([argv[0], "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("desktop-agent ")
    assert cli("autostart", "status", env=dirs).stdout == enabled.stdout

    disabled = cli("autostart", "disable", env=dirs)
    assert (disabled.returncode, disabled.stdout) == (0, "start at login: disabled\n")
    assert not user_entry.exists()
    # the configuration is not needed, so none was created
    assert not (tmp_path / "home" / ".config" / "desktop-agent").exists()


def test_cli_with_the_packages_system_entry(cli, tmp_path: Path, dirs: dict[str, str]) -> None:
    system = Path(dirs["XDG_CONFIG_DIRS"]) / "autostart" / "desktop-agent.desktop"
    system.parent.mkdir(parents=True)
    # what the .deb installs
    system.write_bytes(
        (Path(__file__).parents[2] / "resources/desktop-agent-autostart.desktop").read_bytes()
    )
    user_entry = tmp_path / "home" / ".config" / "autostart" / "desktop-agent.desktop"

    status = cli("autostart", "status", env=dirs)
    assert status.stdout == f"start at login: enabled by the system entry {system}\n"

    disabled = cli("autostart", "disable", env=dirs)
    assert disabled.returncode == 0
    assert disabled.stdout == (
        f"start at login: disabled by the user entry {user_entry} "
        f"(it hides the system entry {system})\n"
    )
    assert entry(user_entry)["Hidden"] == "true"
    assert cli("autostart", "status", env=dirs).stdout == disabled.stdout

    enabled = cli("autostart", "enable", env=dirs)
    assert enabled.stdout == f"start at login: enabled by the system entry {system}\n"
    assert not user_entry.exists()


def test_cli_errors_are_one_line(cli, tmp_path: Path, dirs: dict[str, str]) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    result = cli("autostart", "enable", env={**dirs, "XDG_CONFIG_HOME": str(blocker)})
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("desktop-agent: error: cannot write ")
    assert result.stderr.count("\n") == 1
    usage = cli("autostart", "maybe", env=dirs)
    assert usage.returncode == 2
    bad = cli("--autostart", "backup", env=dirs)
    assert bad.returncode == 2 and "--autostart starts the tray app" in bad.stderr


def test_cli_entry_names_a_configuration_given_with_config(
    cli, tmp_path: Path, dirs: dict[str, str]
) -> None:
    config = tmp_path / "work config.toml"
    enabled = cli("--config", str(config), "autostart", "enable", env=dirs)
    assert enabled.returncode == 0, enabled.stderr
    user_entry = tmp_path / "home" / ".config" / "autostart" / "desktop-agent.desktop"
    assert parse_exec(entry(user_entry)["Exec"])[1:] == ["--autostart", "--config", str(config)]
    assert not config.exists()


# ------------------------------------------------------------ macOS
def test_launch_agent_plist_round_trips(tmp_path: Path) -> None:
    agents = tmp_path / "Library" / "LaunchAgents"
    mac = LaunchAgentAutostart(agents, COMMAND)
    assert not mac.status().enabled

    status = mac.enable()
    path = agents / f"{LAUNCH_AGENT_LABEL}.plist"
    assert status.enabled and status.source is Source.USER and status.entry == str(path)
    with open(path, "rb") as fh:
        doc = plistlib.load(fh)
    assert doc["Label"] == LAUNCH_AGENT_LABEL
    assert doc["ProgramArguments"] == COMMAND
    assert doc["RunAtLoad"] is True and doc["KeepAlive"] is False
    assert doc["LimitLoadToSessionType"] == "Aqua"

    doc["Disabled"] = True  # launchctl's (or the user's) switch
    path.write_bytes(plistlib.dumps(doc))
    assert not mac.status().enabled
    assert mac.enable().enabled

    status = mac.disable()
    assert not status.enabled and not path.exists()
    path.write_text("not a plist")
    with pytest.raises(AutostartError, match="cannot read"):
        mac.status()


# ------------------------------------------------------------ Windows
class FakeRegistry:
    """A FAKE HKEY_CURRENT_USER in a dict, for these tests only: winreg exists only on
    Windows. It shows what RunKeyAutostart asks of the registry, not that Windows honours it."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], object] = {}

    def get(self, key: str, name: str) -> object | None:
        return self.values.get((key, name))

    def set_string(self, key: str, name: str, data: str) -> None:
        self.values[(key, name)] = data

    def delete(self, key: str, name: str) -> None:
        self.values.pop((key, name), None)


def test_run_key_against_a_fake_registry() -> None:
    registry = FakeRegistry()
    command = [r"C:\Program Files\desktop-agent\desktop-agent-tray.exe", "--autostart"]
    win = RunKeyAutostart(registry, command)
    assert not win.status().enabled

    status = win.enable()
    assert status.enabled and status.entry == f"HKCU\\{RUN_KEY}\\desktop-agent"
    data = registry.get(RUN_KEY, "desktop-agent")
    assert data == r'"C:\Program Files\desktop-agent\desktop-agent-tray.exe" --autostart'

    # Task Manager's Startup tab switched it off: an odd first byte
    registry.values[(STARTUP_APPROVED_KEY, "desktop-agent")] = b"\x03" + bytes(11)
    assert not win.status().enabled
    assert win.enable().enabled  # enabling clears that mark
    assert (STARTUP_APPROVED_KEY, "desktop-agent") not in registry.values
    registry.values[(STARTUP_APPROVED_KEY, "desktop-agent")] = b"\x02" + bytes(11)
    assert win.status().enabled

    assert not win.disable().enabled
    assert registry.values == {}


@pytest.mark.skipif(sys.platform == "win32", reason="the real registry is there")
def test_the_real_registry_says_it_is_windows_only() -> None:
    with pytest.raises(AutostartError, match="only on Windows"):
        WindowsRegistry().get(RUN_KEY, "desktop-agent")
