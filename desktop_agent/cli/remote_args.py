"""The ``remote`` command's arguments (the command itself: :mod:`.remote`).

Apart from :mod:`.remote` so that building the command line's parser does
not import the WebSocket client: every other command starts that much sooner.
"""

from __future__ import annotations

import argparse

from .common import Subparsers

__all__ = ["TOKEN_ENV", "DEFAULT_TIMEOUT", "add_remote"]

TOKEN_ENV = "DESKTOP_AGENT_TOKEN"
DEFAULT_TIMEOUT = 10.0


# ------------------------------------------------------------ arguments
def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _common_options(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    """Options accepted both before and after COMMAND.

    Only the ``remote`` parser itself sets defaults; on the sub-commands they
    are suppressed so that an option given before COMMAND is not reset.
    """

    def d(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    p.add_argument(
        "--token",
        metavar="T",
        default=d(None),
        help=f"the agent's /ws token (default: env {TOKEN_ENV}; "
        "the agent prints it with `desktop-agent token`)",
    )
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive,
        default=d(DEFAULT_TIMEOUT),
        help=f"how long to wait to connect and for an answer (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "--json",
        action="store_true",
        default=d(False),
        help="machine-readable output: the agent's JSON payloads (watch: one message a line)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=d(False),
        help="wss://: do not verify the agent's certificate (self-signed certificates)",
    )


def add_remote(sub: Subparsers) -> None:
    """``desktop-agent remote URL [options] COMMAND ...``."""
    p = sub.add_parser(
        "remote",
        help="talk to a running agent over /ws: status, start, pause, resume, cancel, watch",
    )
    p.add_argument(
        "url",
        metavar="URL",
        help="the agent's endpoint: ws://host:port/ws, or wss://... when it serves TLS",
    )
    _common_options(p, defaults=True)
    cmds = p.add_subparsers(dest="remote_command", metavar="COMMAND", required=True)

    _common_options(
        cmds.add_parser("status", help="the agent's status, active jobs and uptime"),
        defaults=False,
    )

    s = cmds.add_parser("start", help="start a backup and print its job id")
    s.add_argument(
        "paths",
        metavar="PATH",
        nargs="*",
        help="paths on the agent's machine (default: its configured sources)",
    )
    s.add_argument("--watch", action="store_true", help="then follow the job until it ends")
    _common_options(s, defaults=False)

    for verb, text in (
        ("pause", "pause a running job (waits until the pause has taken effect)"),
        ("resume", "resume a paused job"),
        ("cancel", "cancel a job (it ends as failed, error `cancelled`)"),
    ):
        c = cmds.add_parser(verb, help=text)
        c.add_argument("job", metavar="JOB", help="the job id (from `start` or `watch`)")
        _common_options(c, defaults=False)

    w = cmds.add_parser("watch", help="show live progress of every job until Ctrl-C")
    w.add_argument("--once", action="store_true", help="exit once every job seen so far has ended")
    _common_options(w, defaults=False)
    p.set_defaults(run=_cmd_remote)


def _cmd_remote(args: argparse.Namespace) -> int:
    # the client (asyncio, websockets, the protocol) is imported only to be used
    from .remote import cmd_remote

    return cmd_remote(args)
