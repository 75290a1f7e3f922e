"""``init``, ``snapshots`` and ``check``: create, list and verify the repository.

Each command's parser is beside its code: :func:`add_init`,
:func:`add_snapshots` and :func:`add_check` add them to the command line.
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys
from typing import TYPE_CHECKING

from desktop_agent.config import read_password, write_password_file
from desktop_agent.termtext import ProgressLine, clean, human_bytes

from .common import (
    EXIT_OK,
    CliError,
    Subparsers,
    emit,
    load_config,
    open_repository,
    plural,
    print_table,
    reading,
    warn_damaged,
)

if TYPE_CHECKING:
    from desktop_agent.engine.snapshot import Snapshot

__all__ = ["add_init", "add_snapshots", "add_check", "cmd_init", "cmd_snapshots", "cmd_check"]

# the engine is imported when a command runs (see common.open_repository)
_CHECK = "desktop_agent.engine.check"


# ------------------------------------------------------------------- init
def add_init(sub: Subparsers) -> None:
    """``desktop-agent init``."""
    sub.add_parser("init", help="create the repository named in the config").set_defaults(
        run=cmd_init
    )


def cmd_init(args: argparse.Namespace) -> int:
    """Create the configured repository; without a password, make one up or ask for one."""
    from desktop_agent.engine.repository import Repository  # noqa: PLC0415 - see above
    from desktop_agent.engine.storage import storage_for  # noqa: PLC0415

    config = load_config(args)
    storage = storage_for(config)
    password = read_password(config)
    generated = False
    if not password:
        pw_file = config.password_file_path
        if pw_file is not None:
            password = secrets.token_urlsafe(24)
            write_password_file(pw_file, password)
            generated = True
        elif sys.stdin.isatty():
            password = getpass.getpass("new repository password: ")
            if password != getpass.getpass("repeat the password: "):
                raise CliError("the passwords do not match")
        else:
            raise CliError("no password: set DESKTOP_AGENT_PASSWORD or [repository] password_file")
    repo = Repository.init(storage, password)
    print(f"created repository {repo.config.id[:10]} at {storage.location}")
    if generated:
        print(
            f"a random password was written to {config.password_file_path}\n"
            "keep a copy somewhere safe: without it the backups cannot be restored"
        )
    return EXIT_OK


# -------------------------------------------------------------- snapshots
def add_snapshots(sub: Subparsers) -> None:
    """``desktop-agent snapshots [--json]``."""
    s = sub.add_parser("snapshots", help="list snapshots")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(run=cmd_snapshots)


def cmd_snapshots(args: argparse.Namespace) -> int:
    """List the readable snapshots; exit 1 when some cannot be read (they are named)."""
    repo = open_repository(load_config(args))
    snaps = repo.list_snapshots(skip_damaged=True)
    try:
        return _show_snapshots(snaps, as_json=args.json)
    finally:
        if warn_damaged(repo):
            # the list is incomplete: say so in the exit status too
            raise CliError(f"{len(repo.damaged_snapshots)} snapshot(s) cannot be read; see above")


def _show_snapshots(snaps: list[Snapshot], *, as_json: bool) -> int:
    if as_json:
        emit([s.to_listing_json() for s in snaps])
        return EXIT_OK
    if not snaps:
        print("no snapshots yet")
        return EXIT_OK
    rows: list[list[str | list[str]]] = []
    for s in snaps:
        t = s.time.replace("T", " ")[:19]
        size = human_bytes(s.summary.total_bytes_processed) if s.summary else ""
        rows.append([s.short_id, t, s.hostname, list(s.tags), size, list(s.paths)])
    print_table(["ID", "Time", "Host", "Tags", "Size", "Paths"], rows, right={4})
    print(f"{len(snaps)} snapshot{'s' if len(snaps) != 1 else ''}")
    return EXIT_OK


# ------------------------------------------------------------------ check
def _subset(text: str) -> tuple[int, int] | float:
    try:
        from desktop_agent.engine.check import parse_subset  # noqa: PLC0415 - see above

        return parse_subset(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_check(sub: Subparsers) -> None:
    """``desktop-agent check [--read-data | --read-data-subset n/t|x%]``."""
    c = sub.add_parser("check", help="verify the repository")
    reading_data = c.add_mutually_exclusive_group()
    reading_data.add_argument(
        "--read-data", action="store_true", help="also read and verify every blob"
    )
    reading_data.add_argument(
        "--read-data-subset",
        metavar="n/t|x%",
        type=_subset,
        help="read only group n of t (as restic picks them: by the pack id's first byte), "
        "or x%% of the packs at random",
    )
    c.set_defaults(run=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    """Verify the repository under a shared lock; exit 1 when anything is wrong."""
    repo = open_repository(load_config(args), imports=[_CHECK])
    from desktop_agent.engine.check import check  # noqa: PLC0415 - loaded above

    line = ProgressLine("check")
    with reading(repo):
        try:
            subset = args.read_data_subset
            result = check(
                repo,
                read_data=args.read_data,
                read_data_subset=subset if isinstance(subset, tuple) else None,
                read_data_percent=subset if isinstance(subset, float) else None,
                progress=line if line.enabled else None,
                log=lambda m: print(clean(m), flush=True),
            )
        finally:
            line.done()
    for w in result.warnings:
        print(f"warning: {clean(w)}")
    for e in result.errors:
        print(f"error: {clean(e)}", file=sys.stderr)
    if not result.ok:
        raise CliError(f"the repository has {len(result.errors)} error(s); see above")
    print(
        f"no errors were found ({plural(result.snapshots, 'snapshot')}, "
        f"{plural(result.trees, 'tree')}, {plural(result.packs, 'pack')})"
    )
    return EXIT_OK
