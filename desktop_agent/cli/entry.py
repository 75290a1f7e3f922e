"""The command line's entry point: the parser, the dispatch, the exit status.

:func:`main` first dispatches the internal modes the program starts itself
in (``--engine-helper FD``, ``--selftest-qt``: a frozen build has no
``python -m``), then parses the arguments with the parser
:func:`build_parser` assembles from the command modules, sets up logging
and runs the command, or starts the agent when there is none.

Exit status: 0 success, 1 failure (one line on stderr), 2 bad usage,
3 backup finished but skipped unreadable files (listed on stderr).
Nothing here prints a traceback at a user: unexpected errors are logged to
the log directory and summarized in one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from desktop_agent import __version__
from desktop_agent.config import ConfigError
from desktop_agent.engine.errors import EngineError
from desktop_agent.logsetup import setup_logging
from desktop_agent.system.errors import AlreadyRunning, IntegrationError
from desktop_agent.termtext import clean

from . import agent, backup, remote_args, repository, restore, retention
from .common import EXIT_FAIL, CliError, Parser, Subparsers, log

__all__ = ["main", "build_parser"]

# in the order `desktop-agent --help` lists them (and argparse's "invalid choice")
_COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    repository.add_init,
    backup.add_backup,
    repository.add_snapshots,
    restore.add_restore,
    repository.add_check,
    retention.add_forget,
    retention.add_prune,
    agent.add_token,
    agent.add_autostart,
    agent.add_selftest,
    remote_args.add_remote,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the CLI)."""
    p = Parser(prog="desktop-agent", description="Backups you can keep an eye on.")
    p.add_argument(
        "--config",
        metavar="PATH",
        help="configuration file (default: platform config dir; env DESKTOP_AGENT_CONFIG)",
    )
    p.add_argument("--version", action="version", version=f"desktop-agent {__version__}")
    agent.add_agent_options(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for add in _COMMANDS:
        add(sub)
    return p


def _internal(argv: Sequence[str]) -> int | None:
    """Modes the program starts itself in, dispatched before the parser sees them.

    A packaged (frozen) program has no ``python -m``: the engine's helper
    processes and the selftest's Qt probe are this same executable run with
    these flags.
    """
    if len(argv) == 2 and argv[0] == "--engine-helper":
        from desktop_agent.engine.smallfiles import helper_entry

        helper_entry(argv[1])
        return 0
    if list(argv) == ["--selftest-qt"]:
        from desktop_agent.selftest import qt_probe

        return qt_probe()
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (``sys.exit`` is the caller's).

    Run as the program (``argv`` None), a command that finished ends the
    process here, once its output and log are flushed: the interpreter's
    teardown (freeing every object, joining idle pools) costs a command
    about 20 ms and does nothing a finished command needs. Every command
    waits for its own work before it returns; the agent exits normally.
    """
    args_list = sys.argv[1:] if argv is None else list(argv)
    internal = _internal(args_list)
    if internal is not None:
        return internal
    parser = build_parser()
    args = parser.parse_args(args_list)
    agent.check_agent_options(parser, args)
    status = _run(args)
    if argv is None and args.command is not None:
        _exit_now(status)
    return status


def _exit_now(status: int) -> None:
    """End the process with ``status`` without the interpreter's teardown."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe: nothing more can be said
    os._exit(status)


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command (or the agent); the exit status."""
    headless = agent.runs_headless(args)
    log_path = setup_logging(stderr=headless)
    try:
        if args.command is None:
            return agent.start_agent(args, headless=headless, log_path=log_path)
        run: Callable[[argparse.Namespace], int] = args.run
        return run(args)
    except AlreadyRunning as exc:
        # not logged: the headless agent logs to stderr too, and this is one line
        print(f"desktop-agent: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except (EngineError, ConfigError, CliError, IntegrationError) as exc:
        log.info("%s failed: %s", args.command or "agent", exc)
        # the message may quote a name or an error text from the repository
        print(f"desktop-agent: error: {clean(str(exc))}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print("desktop-agent: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_FAIL
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        log.error("unexpected error in %s:\n%s", args.command or "agent", traceback.format_exc())
        where = f"; details in {log_path}" if log_path else ""
        print(
            f"desktop-agent: internal error: {type(exc).__name__}: {clean(str(exc))}{where}",
            file=sys.stderr,
        )
        return EXIT_FAIL
