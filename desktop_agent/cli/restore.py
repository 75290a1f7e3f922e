"""``restore``: a snapshot, or some of its paths, into a directory.

Each path lands under the target at its full original path, as restic lays
it out. Existing files are left alone unless ``--overwrite``; every file
that could not be restored is named on stderr, and the command exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from desktop_agent.engine.limits import DEFAULT_MAX_TREE_REPEATS
from desktop_agent.engine.memory import steady_buffers
from desktop_agent.termtext import ProgressLine, clean, human_bytes, human_duration

from .common import (
    EXIT_OK,
    CliError,
    Subparsers,
    load_config,
    open_repository,
    reading,
    warn_damaged,
)

__all__ = ["add_restore", "cmd_restore"]

# imported while the repository's key is derived (see common.open_repository)
_ENGINE = "desktop_agent.engine.restore"


def _positive_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def add_restore(sub: Subparsers) -> None:
    """``desktop-agent restore SNAPSHOT --target DIR [--include PATH...]``."""
    r = sub.add_parser("restore", help="restore a snapshot into a directory")
    r.add_argument("snapshot", metavar="SNAPSHOT", help="snapshot id, id prefix or `latest`")
    r.add_argument("--target", metavar="DIR", required=True, help="directory to restore into")
    r.add_argument(
        "--include",
        metavar="PATH",
        nargs="+",
        action="extend",
        default=[],
        help="restore only these paths (as in the snapshot)",
    )
    r.add_argument(
        "--overwrite", action="store_true", help="replace files that already exist in DIR"
    )
    r.add_argument(
        "--max-tree-repeats",
        metavar="N",
        type=_positive_count,
        default=DEFAULT_MAX_TREE_REPEATS,
        help="refuse a directory tree reached more than N times in the snapshot "
        f"(a repository built to explode on restore); default {DEFAULT_MAX_TREE_REPEATS}",
    )
    r.set_defaults(run=cmd_restore)


def cmd_restore(args: argparse.Namespace) -> int:
    """Restore under a shared lock; exit 1 when any file could not be restored."""
    repo = open_repository(load_config(args), imports=[_ENGINE])
    from desktop_agent.engine.restore import RestoreOptions, restore  # noqa: PLC0415 - loaded above

    snap = repo.find_snapshot(args.snapshot)
    warn_damaged(repo)  # `latest` is the newest readable one
    line = ProgressLine("restore")
    started = time.monotonic()
    with reading(repo), steady_buffers():  # this process's malloc policy: see engine.memory
        try:
            result = restore(
                repo,
                snap,
                RestoreOptions(
                    target=args.target,
                    includes=args.include,
                    overwrite=args.overwrite,
                    max_tree_repeats=args.max_tree_repeats,
                ),
                progress=line if line.enabled else None,
            )
        finally:
            line.done()
    for err in result.errors:
        print(f"error: {clean(err)}", file=sys.stderr)
    if result.errors_total > len(result.errors):
        print(f"error: ... and {result.errors_total - len(result.errors)} more", file=sys.stderr)
    print(
        f"restored snapshot {snap.short_id}: {result.files} files, "
        f"{human_bytes(result.bytes_written)} into {clean(os.path.abspath(args.target))} "
        f"in {human_duration(time.monotonic() - started)}"
    )
    if result.errors:
        raise CliError(
            f"{result.errors_total} problem(s) during restore; some data was not restored"
        )
    return EXIT_OK
