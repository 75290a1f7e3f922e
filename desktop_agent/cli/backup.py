"""``backup``: one backup of the configured sources, then exit.

Exit 0, or 3 when the backup finished but left out paths it could not
read (each is named on stderr). With ``--json``, restic's messages: a
``status`` line at most every second while it runs, then the ``summary``
(:meth:`~desktop_agent.engine.backup.BackupResult.to_json`).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from desktop_agent.config import user_cache_dir
from desktop_agent.engine.memory import steady_buffers
from desktop_agent.termtext import ProgressLine, clean, human_bytes, human_duration

from .common import (
    EXIT_OK,
    EXIT_SKIPPED,
    CliError,
    Subparsers,
    emit,
    load_config,
    log,
    open_repository,
)

if TYPE_CHECKING:
    from desktop_agent.engine.backup import BackupResult
    from desktop_agent.engine.progress import Progress

__all__ = ["add_backup", "cmd_backup"]

# imported while the repository's key is derived (see common.open_repository)
_ENGINE = "desktop_agent.engine.backup"

JSON_STATUS_INTERVAL = 1.0  # seconds between two --json status lines


def add_backup(sub: Subparsers) -> None:
    """``desktop-agent backup [--json] [--tag TAG]...``."""
    b = sub.add_parser("backup", help="back up the configured sources once, then exit")
    b.add_argument("--json", action="store_true", help="print status and summary as JSON lines")
    b.add_argument(
        "--tag", action="append", default=[], help="add a tag to the snapshot (repeatable)"
    )
    b.set_defaults(run=cmd_backup)


def cmd_backup(args: argparse.Namespace) -> int:
    """Back up the configured sources into the configured repository."""
    config = load_config(args)
    sources = config.expanded_sources()
    if not sources:
        raise CliError(f"no backup sources configured ([backup] sources in {config.path})")
    repo = open_repository(config, imports=[_ENGINE])
    from desktop_agent.engine.backup import BackupOptions, backup  # noqa: PLC0415 - loaded above

    line = ProgressLine("backup")
    last_json = [0.0]

    def report(p: Progress) -> None:
        line(p)
        if args.json and (p.final or time.monotonic() - last_json[0] >= JSON_STATUS_INTERVAL):
            last_json[0] = time.monotonic()
            emit(p.to_json())

    want_progress = line.enabled or args.json
    opts = BackupOptions(
        sources=sources,
        excludes=config.backup_excludes(),
        tags=args.tag,
        scan=want_progress,
        cache_dir=str(user_cache_dir() / "repositories" / repo.config.id),
    )
    started = time.monotonic()
    try:
        with steady_buffers():  # this process's malloc policy: see engine.memory
            result = backup(repo, opts, progress=report if want_progress else None)
    finally:
        line.done()
    _print_backup(result, time.monotonic() - started, as_json=args.json)
    log.info(
        "backup: snapshot %s saved, %d files, %d bytes added, %d skipped",
        result.snapshot.short_id,
        result.summary.total_files_processed,
        result.summary.data_added_packed,
        len(result.skipped),
    )
    # names from the local disk may hold escape sequences and newlines too
    for w in result.warnings:
        print(f"warning: {clean(w)}", file=sys.stderr)
    if result.skipped:
        for sk in result.skipped:
            print(f"skipped: {clean(sk.path)}: {clean(sk.reason)}", file=sys.stderr)
        print(
            f"desktop-agent: {len(result.skipped)} path(s) could not be read and are not in "
            f"the snapshot",
            file=sys.stderr,
        )
        return EXIT_SKIPPED
    return EXIT_OK


def _print_backup(result: BackupResult, seconds: float, *, as_json: bool) -> None:
    if as_json:
        emit(result.to_json(duration=seconds))
        return
    s = result.summary
    print(f"Files: {s.files_new} new, {s.files_changed} changed, {s.files_unmodified} unmodified")
    print(f"Dirs:  {s.dirs_new} new, {s.dirs_changed} changed, {s.dirs_unmodified} unmodified")
    print(
        f"Added to the repository: {human_bytes(s.data_added)} "
        f"({human_bytes(s.data_added_packed)} stored)"
    )
    print(
        f"processed {s.total_files_processed} files, {human_bytes(s.total_bytes_processed)} "
        f"in {human_duration(seconds)}"
    )
    print(f"snapshot {result.snapshot.short_id} saved")
