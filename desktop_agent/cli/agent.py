"""The agent itself: starting the tray app or the headless agent, and the
commands about this installation: ``token``, ``autostart`` and ``selftest``.

Without a command, ``desktop-agent`` starts the tray app (the agent inside
it), or with ``--headless`` (or when there is no display) the agent alone:
the ``/ws`` server and the scheduler. One agent runs per configuration: a
second headless start exits 1 naming the one that runs (the tray's own
hand-over to a running tray lives in :mod:`desktop_agent.ui`).
"""

from __future__ import annotations

import argparse
import os
import sys

from desktop_agent.config import resolve_config_path
from desktop_agent.system.errors import AlreadyRunning
from desktop_agent.termtext import clean

from .common import EXIT_OK, CliError, Subparsers, load_config

__all__ = [
    "add_agent_options",
    "check_agent_options",
    "runs_headless",
    "start_agent",
    "add_token",
    "add_autostart",
    "add_selftest",
    "cmd_token",
    "cmd_autostart",
    "cmd_selftest",
]


# ------------------------------------------------------- starting the agent
def add_agent_options(p: argparse.ArgumentParser) -> None:
    """The top-level options of a start without a command."""
    p.add_argument(
        "--headless",
        action="store_true",
        help="run the agent without UI: the /ws server and the scheduler",
    )
    p.add_argument(
        "--show",
        choices=["progress", "restore", "settings", "log"],
        help="tray app: open this window at start (for desktop launchers)",
    )
    p.add_argument(
        "--autostart",
        action="store_true",
        help="tray app started at login (the autostart entry): no window opens, but the "
        "first-run one, once per login session, when there is no repository yet",
    )


def check_agent_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse options that contradict each other (exit 2)."""
    if args.autostart and (args.command is not None or args.headless):
        parser.error("--autostart starts the tray app: no command, no --headless")


def _has_display() -> bool:
    """Whether Qt can show windows here (a display server, or a chosen platform)."""
    if os.environ.get("QT_QPA_PLATFORM"):
        return True
    if sys.platform.startswith("linux") or "bsd" in sys.platform:
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True  # macOS and Windows always have one


def runs_headless(args: argparse.Namespace) -> bool:
    """Whether this process runs without UI: ``--headless``, or a start without a
    command where no tray can be shown (said on stderr)."""
    if args.command is None and not args.headless and not _has_display():
        print(
            "desktop-agent: no display found: running headless (the /ws server and the "
            "scheduler, no tray); use --headless to say so explicitly",
            file=sys.stderr,
        )
        return True
    return bool(args.headless)


def start_agent(args: argparse.Namespace, *, headless: bool, log_path: str | None) -> int:
    """Run the tray app or the headless agent until it is told to stop."""
    config = load_config(args)
    if headless:
        from desktop_agent.app import run_headless
        from desktop_agent.system.instance import InstanceLock, bind_failure

        # before anything is bound or created: a second agent says who runs and exits
        lock = InstanceLock(config.path)
        try:
            lock.acquire("headless")
        except AlreadyRunning as running:
            if running.mode == "tray":
                raise running.explained("the tray app uses this configuration") from None
            raise
        try:
            return run_headless(config)
        except OSError as exc:
            message = bind_failure(exc, config.path)
            if message is None:
                raise
            raise CliError(message) from None
        finally:
            lock.release()
    from desktop_agent.ui.bootstrap import TrayError, run_tray

    try:
        return run_tray(config, log_path=log_path, show=args.show, autostart=args.autostart)
    except TrayError as exc:
        raise CliError(str(exc)) from None


# ----------------------------------------------------------------- token
def add_token(sub: Subparsers) -> None:
    """``desktop-agent token``."""
    sub.add_parser("token", help="print the /ws access token").set_defaults(run=cmd_token)


def cmd_token(args: argparse.Namespace) -> int:
    """Print the /ws access token of the configuration."""
    print(load_config(args).agent.token)
    return EXIT_OK


# -------------------------------------------------------------- autostart
def add_autostart(sub: Subparsers) -> None:
    """``desktop-agent autostart enable|disable|status``."""
    a = sub.add_parser(
        "autostart",
        help="start the tray app at login: enable, disable, or show the status",
        description="Start the tray app when you log in (XDG autostart entry on Linux, "
        "LaunchAgent on macOS, the Run key on Windows). One line of output; exit 0.",
    )
    a.add_argument("action", choices=["enable", "disable", "status"])
    a.set_defaults(run=cmd_autostart)


def cmd_autostart(args: argparse.Namespace) -> int:
    """``autostart enable|disable|status``: needs the configuration's path, not its content."""
    from desktop_agent.system.autostart import platform_autostart

    autostart = platform_autostart(resolve_config_path(args.config))
    if args.action == "enable":
        status = autostart.enable()
    elif args.action == "disable":
        status = autostart.disable()
    else:
        status = autostart.status()
    print(f"start at login: {clean(status.describe())}")
    return EXIT_OK


# --------------------------------------------------------------- selftest
def add_selftest(sub: Subparsers) -> None:
    """``desktop-agent selftest``."""
    sub.add_parser(
        "selftest",
        help="check this installation: compiled extensions, helper processes, keyring, "
        "icons, Qt (one line each; exit 1 on a failure)",
    ).set_defaults(run=cmd_selftest)


def cmd_selftest(_args: argparse.Namespace) -> int:
    """Check this installation (a frozen build above all); needs no configuration."""
    from desktop_agent.selftest import run as run_selftest

    return run_selftest()
