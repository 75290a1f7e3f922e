"""The ``desktop-agent`` command line (see ``CONTRACT.md``).

Exit status: 0 success, 1 failure (one line on stderr), 2 bad usage,
3 backup finished but skipped unreadable files (listed on stderr).
Nothing here prints a traceback at a user: unexpected errors are logged to
the log directory and summarized in one line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import logging
import os
import secrets
import sys
import time
import traceback
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, NoReturn

from desktop_agent import __version__
from desktop_agent.config import (
    Config,
    ConfigError,
    load_or_create,
    read_password,
    resolve_config_path,
    user_cache_dir,
    write_password_file,
)
from desktop_agent.engine.backup import BackupOptions, BackupResult, backup
from desktop_agent.engine.check import check, parse_subset
from desktop_agent.engine.errors import EngineError, RepositoryNotFound, StorageError
from desktop_agent.engine.forget import (
    Duration,
    ForgetGroup,
    ForgetResult,
    KeepPolicy,
    forget,
    parse_duration,
)
from desktop_agent.engine.lock import Lock
from desktop_agent.engine.progress import Progress
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.restore import DEFAULT_MAX_TREE_REPEATS, RestoreOptions, restore
from desktop_agent.engine.snapshot import Snapshot
from desktop_agent.engine.storage import open_storage
from desktop_agent.logsetup import setup_logging
from desktop_agent.remote import RemoteError, RemoteUsageError
from desktop_agent.remote import add_arguments as add_remote_arguments
from desktop_agent.remote import run as run_remote
from desktop_agent.system.errors import AlreadyRunning, IntegrationError
from desktop_agent.termprogress import ProgressLine, human_bytes, human_duration
from desktop_agent.termtext import clean, columns, json_text, pad

__all__ = ["main", "build_parser"]

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_SKIPPED = 3

log = logging.getLogger("desktop_agent.cli")


class CliError(Exception):
    """A failure to report in one line (exit status 1)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the CLI)."""
    p = _Parser(prog="desktop-agent", description="Backups you can keep an eye on.")
    p.add_argument(
        "--config",
        metavar="PATH",
        help="configuration file (default: platform config dir; env DESKTOP_AGENT_CONFIG)",
    )
    p.add_argument("--version", action="version", version=f"desktop-agent {__version__}")
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
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    sub.add_parser("init", help="create the repository named in the config")

    b = sub.add_parser("backup", help="back up the configured sources once, then exit")
    b.add_argument("--json", action="store_true", help="print status and summary as JSON lines")
    b.add_argument(
        "--tag", action="append", default=[], help="add a tag to the snapshot (repeatable)"
    )

    s = sub.add_parser("snapshots", help="list snapshots")
    s.add_argument("--json", action="store_true", help="print JSON")

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

    c = sub.add_parser("check", help="verify the repository")
    reading = c.add_mutually_exclusive_group()
    reading.add_argument("--read-data", action="store_true", help="also read and verify every blob")
    reading.add_argument(
        "--read-data-subset",
        metavar="n/t|x%",
        type=_subset,
        help="read only group n of t (as restic picks them: by the pack id's first byte), "
        "or x%% of the packs at random",
    )

    _add_forget_arguments(
        sub.add_parser(
            "forget",
            help="remove snapshots by a keep policy, per host and paths (as restic forget)",
            description=(
                "Apply a keep policy to each group of snapshots with the same host and paths "
                "and remove the snapshots it does not keep. Only the snapshots are removed: "
                "their data stays in the repository until prune runs (--prune). Calendar "
                "buckets (hour, day, ISO week, month, year) use the time each snapshot was "
                "taken at; durations such as 1y5m7d2h count back from the newest snapshot, "
                "not from now."
            ),
        )
    )

    pr = sub.add_parser(
        "prune",
        help="remove data no snapshot references (repacks partly used packs)",
        description=(
            "Delete the packs no snapshot uses and repack those that are at least a tenth "
            "unused, in restic's safe order: new packs and index first, deletions last. "
            "Takes an exclusive lock: no backup can run meanwhile."
        ),
    )
    pr.add_argument("--json", action="store_true", help="print the summary as JSON")

    sub.add_parser("token", help="print the /ws access token")
    a = sub.add_parser(
        "autostart",
        help="start the tray app at login: enable, disable, or show the status",
        description="Start the tray app when you log in (XDG autostart entry on Linux, "
        "LaunchAgent on macOS, the Run key on Windows). One line of output; exit 0.",
    )
    a.add_argument("action", choices=["enable", "disable", "status"])
    sub.add_parser(
        "selftest",
        help="check this installation: compiled extensions, helper processes, keyring, "
        "icons, Qt (one line each; exit 1 on a failure)",
    )
    add_remote_arguments(
        sub.add_parser(
            "remote",
            help="talk to a running agent over /ws: status, start, pause, resume, cancel, watch",
        )
    )
    return p


_KEEP_COUNTS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
_KEEP_SPANS = (
    "within",
    "within-hourly",
    "within-daily",
    "within-weekly",
    "within-monthly",
    "within-yearly",
)


def _positive_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def _keep_count(text: str) -> int:
    """A --keep-* count: 0 or more, or `unlimited` (also -1, as restic < 0.17 wrote it)."""
    if text.strip().lower() == "unlimited":
        return -1
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number (give a count, or `unlimited`)"
        ) from None
    if value < -1:
        raise argparse.ArgumentTypeError(
            f"{value} is negative (give a count, or `unlimited` to keep all)"
        )
    return value


def _keep_duration(text: str) -> str:
    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_forget_arguments(f: argparse.ArgumentParser) -> None:
    """The options of `forget` (restic's names)."""
    for name in _KEEP_COUNTS:
        what = "snapshots" if name == "last" else f"{name} snapshots"
        f.add_argument(
            f"--keep-{name}",
            type=_keep_count,
            default=0,
            metavar="N",
            help=f"keep the last N {what} (`unlimited`: all)",
        )
    for name in _KEEP_SPANS:
        kind = name.partition("-")[2]
        f.add_argument(
            f"--keep-{name}",
            type=_keep_duration,
            metavar="DURATION",
            help=(
                f"keep {f'{kind} snapshots' if kind else 'all snapshots'} made within DURATION "
                "(e.g. 1y5m7d2h) of the newest snapshot"
            ),
        )
    f.add_argument(
        "--keep-tag",
        action="append",
        default=[],
        metavar="TAG[,TAG...]",
        help="keep snapshots that have all these tags (repeatable: any of the lists; '' "
        "matches untagged snapshots)",
    )
    f.add_argument("-n", "--dry-run", action="store_true", help="only show what would be removed")
    f.add_argument(
        "--prune",
        action="store_true",
        help="then remove the data no snapshot references any more",
    )
    f.add_argument(
        "--json",
        action="store_true",
        help="print restic's forget JSON (a list of groups with keep, remove and reasons)",
    )


# --------------------------------------------------------------- helpers
def _subset(text: str) -> tuple[int, int] | float:
    try:
        return parse_subset(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _password(config: Config) -> str:
    pw = read_password(config)
    if pw:
        return pw
    if sys.stdin.isatty():
        pw = getpass.getpass(f"password for repository {config.repository_path}: ")
        if pw:
            return pw
    raise CliError(
        "no repository password: set DESKTOP_AGENT_PASSWORD, or [repository] password_file "
        f"in {config.path}"
    )


def _open(config: Config) -> Repository:
    storage = open_storage(config.repository_path)
    if not storage.exists():
        raise RepositoryNotFound(
            f"there is no repository at {storage.location} (create one with `desktop-agent init`)"
        )
    return Repository.open(storage, _password(config))


@contextlib.contextmanager
def _reading(repo: Repository) -> Iterator[None]:
    """Hold a shared lock while reading, as restic does: a prune (exclusive)
    cannot delete what we read, and we refuse to read while one runs.

    A repository where no lock can be written (read-only media) is read
    without one, with a warning.
    """
    lock = Lock(repo, exclusive=False)
    try:
        lock.acquire()
    except StorageError as exc:
        print(
            f"warning: cannot lock the repository ({clean(str(exc))}); reading it without a lock",
            file=sys.stderr,
        )
    try:
        yield
    finally:
        lock.release()  # a lock never taken has nothing to remove


def _snapshot_json(s: Snapshot) -> dict[str, Any]:
    doc = s.to_json()
    if s.id is not None:
        doc["id"] = s.id.hex()
        doc["short_id"] = s.short_id
    return doc


def _emit(obj: Any) -> None:
    # exact JSON (json.loads gives back every name as it is in the repository),
    # with the characters that could drive a terminal \u-escaped
    sys.stdout.write(json_text(obj) + "\n")
    sys.stdout.flush()


# -------------------------------------------------------------- commands
def cmd_init(config: Config, _args: argparse.Namespace) -> int:
    storage = open_storage(config.repository_path)
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


def cmd_backup(config: Config, args: argparse.Namespace) -> int:
    sources = config.expanded_sources()
    if not sources:
        raise CliError(f"no backup sources configured ([backup] sources in {config.path})")
    repo = _open(config)
    line = ProgressLine("backup")
    last_json = [0.0]

    def report(p: Progress) -> None:
        line(p)
        if args.json and (p.final or time.monotonic() - last_json[0] >= 1.0):
            last_json[0] = time.monotonic()
            _emit(
                {
                    "message_type": "status",
                    "percent_done": p.bytes_done / p.bytes_total if p.bytes_total else 0.0,
                    "total_files": p.files_total,
                    "files_done": p.files_done,
                    "total_bytes": p.bytes_total,
                    "bytes_done": p.bytes_done,
                    "seconds_elapsed": round(p.elapsed, 3),
                    "current_files": [p.current_file] if p.current_file else [],
                }
            )

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
        result = backup(repo, opts, progress=report if want_progress else None)
    finally:
        line.done()
    _print_backup(result, time.monotonic() - started, args.json)
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


def _print_backup(result: BackupResult, seconds: float, as_json: bool) -> None:
    s = result.summary
    snap = result.snapshot
    if as_json:
        _emit(
            {
                "message_type": "summary",
                "files_new": s.files_new,
                "files_changed": s.files_changed,
                "files_unmodified": s.files_unmodified,
                "dirs_new": s.dirs_new,
                "dirs_changed": s.dirs_changed,
                "dirs_unmodified": s.dirs_unmodified,
                "data_blobs": s.data_blobs,
                "tree_blobs": s.tree_blobs,
                "data_added": s.data_added,
                "data_added_packed": s.data_added_packed,
                "total_files_processed": s.total_files_processed,
                "total_bytes_processed": s.total_bytes_processed,
                "total_duration": round(seconds, 3),
                "snapshot_id": snap.id.hex() if snap.id else None,
                "skipped": [{"path": k.path, "reason": k.reason} for k in result.skipped],
                "warnings": list(result.warnings),
            }
        )
        return
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
    print(f"snapshot {snap.short_id} saved")


def _warn_damaged(repo: Repository) -> int:
    """Name the snapshot files the last listing could not read; returns how many."""
    for name, exc in repo.damaged_snapshots:
        print(
            f"warning: snapshot {clean(name[:8])} cannot be read and is left out "
            f"({clean(str(exc))}); "
            "run `desktop-agent check`",
            file=sys.stderr,
        )
    return len(repo.damaged_snapshots)


def cmd_snapshots(config: Config, args: argparse.Namespace) -> int:
    repo = _open(config)
    snaps = repo.list_snapshots(skip_damaged=True)
    try:
        return _show_snapshots(snaps, args)
    finally:
        if _warn_damaged(repo):
            # the list is incomplete: say so in the exit status too
            raise CliError(f"{len(repo.damaged_snapshots)} snapshot(s) cannot be read; see above")


def _show_snapshots(snaps: list[Snapshot], args: argparse.Namespace) -> int:
    if args.json:
        _emit([_snapshot_json(s) for s in snaps])
        return EXIT_OK
    if not snaps:
        print("no snapshots yet")
        return EXIT_OK
    rows: list[list[str | list[str]]] = []
    for s in snaps:
        t = s.time.replace("T", " ")[:19]
        size = human_bytes(s.summary.total_bytes_processed) if s.summary else ""
        rows.append([s.short_id, t, s.hostname, list(s.tags), size, list(s.paths)])
    _print_table(["ID", "Time", "Host", "Tags", "Size", "Paths"], rows, right={4})
    print(f"{len(snaps)} snapshot{'s' if len(snaps) != 1 else ''}")
    return EXIT_OK


def cmd_restore(config: Config, args: argparse.Namespace) -> int:
    repo = _open(config)
    snap = repo.find_snapshot(args.snapshot)
    _warn_damaged(repo)  # `latest` is the newest readable one
    line = ProgressLine("restore")
    started = time.monotonic()
    with _reading(repo):
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


def cmd_check(config: Config, args: argparse.Namespace) -> int:
    repo = _open(config)
    line = ProgressLine("check")
    with _reading(repo):
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
        f"no errors were found ({_plural(result.snapshots, 'snapshot')}, "
        f"{_plural(result.trees, 'tree')}, {_plural(result.packs, 'pack')})"
    )
    return EXIT_OK


def _keep_policy(args: argparse.Namespace) -> KeepPolicy:
    def span(text: str | None) -> Duration | None:
        return None if text is None else parse_duration(text)

    return KeepPolicy(
        last=args.keep_last,
        hourly=args.keep_hourly,
        daily=args.keep_daily,
        weekly=args.keep_weekly,
        monthly=args.keep_monthly,
        yearly=args.keep_yearly,
        within=span(args.keep_within),
        within_hourly=span(args.keep_within_hourly),
        within_daily=span(args.keep_within_daily),
        within_weekly=span(args.keep_within_weekly),
        within_monthly=span(args.keep_within_monthly),
        within_yearly=span(args.keep_within_yearly),
        keep_tags=tuple(args.keep_tag),
    )


def _forget_json(result: ForgetResult) -> list[dict[str, Any]]:
    """restic's ``forget --json`` document (lists are [] rather than null)."""
    return [
        {
            "tags": None,
            "host": g.hostname,
            "paths": list(g.paths),
            "keep": [_snapshot_json(s) for s in g.keep],
            "remove": [_snapshot_json(s) for s in g.remove],
            "reasons": [
                {"snapshot": _snapshot_json(s), "matches": list(g.reasons[s.id])}
                for s in g.keep
                if s.id is not None
            ],
        }
        for g in result.groups
    ]


def _print_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str | Sequence[str]]],
    *,
    right: Collection[int] = (),
) -> None:
    """A restic-style table; a cell given as a list takes one line per item.

    Cells come from the repository: each is cleaned, and widths are terminal
    columns, so a wide (CJK) host name keeps the columns aligned. ``right``:
    the indexes of right-aligned columns.
    """
    cells = [
        [[clean(c)] if isinstance(c, str) else [clean(x) for x in c] or [""] for c in row]
        for row in rows
    ]
    widths = [columns(h) for h in header]
    for row in cells:
        for i, lines in enumerate(row):
            widths[i] = max(widths[i], *(columns(line) for line in lines))

    def line(items: Sequence[str]) -> str:
        return "  ".join(
            pad(item, widths[i], right=i in right) for i, item in enumerate(items)
        ).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    print(line(header))
    print(rule)
    for row in cells:
        for n in range(max(len(lines) for lines in row)):
            print(line([lines[n] if n < len(lines) else "" for lines in row]))
    print(rule)


def _print_snapshots(group: ForgetGroup, snaps: Sequence[Snapshot], reasons: bool) -> None:
    # oldest first, as `snapshots` and restic's forget list them
    header = ["ID", "Time", "Host", "Tags"] + (["Reasons"] if reasons else []) + ["Paths"]
    rows: list[list[str | list[str]]] = []
    for s in reversed(snaps):
        row: list[str | list[str]] = [s.short_id, s.time.replace("T", " ")[:19], s.hostname]
        row.append(list(s.tags))
        if reasons and s.id is not None:
            row.append(list(group.reasons[s.id]))
        row.append(list(s.paths))
        rows.append(row)
    _print_table(header, rows)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _print_forget(result: ForgetResult, *, pruning: bool) -> None:
    print(f"Applying policy: {clean(result.policy.describe())}")
    if not result.groups:
        print("the repository has no snapshots")
    for g in result.groups:
        print(f"\nsnapshots of {clean(g.describe())}:")
        print(f"keep {_plural(len(g.keep), 'snapshot')}:")
        _print_snapshots(g, g.keep, reasons=True)
        if g.remove:
            verb = "would remove" if result.dry_run else "remove"
            print(f"\n{verb} {_plural(len(g.remove), 'snapshot')}:")
            _print_snapshots(g, g.remove, reasons=False)
    print()
    total = len(result.remove)
    if result.dry_run:
        print(f"dry run: {_plural(total, 'snapshot')} would be removed; nothing was changed")
    elif result.removed and pruning:
        print(f"removed {_plural(len(result.removed), 'snapshot')}")
    elif result.removed:
        print(
            f"removed {_plural(len(result.removed), 'snapshot')}; their data stays in the "
            "repository until prune runs (forget --prune)"
        )
    else:
        print("no snapshots removed")


def cmd_forget(config: Config, args: argparse.Namespace) -> int:
    policy = _keep_policy(args)
    if policy.empty:
        print(
            "desktop-agent: error: nothing to keep: give at least one --keep-* option",
            file=sys.stderr,
        )
        return EXIT_USAGE
    repo = _open(config)
    result = forget(repo, policy, dry_run=args.dry_run)
    _warn_damaged(repo)
    if args.json:
        _emit(_forget_json(result))
    else:
        _print_forget(result, pruning=args.prune)
    log.info(
        "forget: %d kept, %d removed%s",
        len(result.keep),
        len(result.removed),
        " (dry run)" if result.dry_run else "",
    )
    for sid, reason in result.failed:
        print(f"error: cannot remove snapshot {sid.hex()[:8]}: {clean(reason)}", file=sys.stderr)
    if result.failed:
        raise CliError(f"{len(result.failed)} snapshot(s) could not be removed; see above")
    if args.prune:
        return _prune_after_forget(repo, result, as_json=args.json)
    return EXIT_OK


def _prune_after_forget(repo: Repository, result: ForgetResult, *, as_json: bool) -> int:
    # restic prunes only when forget removed something; a dry run prunes nothing
    if not result.removed:
        if not as_json:
            why = "dry run" if result.dry_run and result.remove else "no snapshot was removed"
            print(f"prune skipped: {why}")
        return EXIT_OK
    return _prune(repo, as_json=as_json)


def _prune(repo: Repository, *, as_json: bool) -> int:
    from desktop_agent.engine.prune import prune

    line = ProgressLine("prune")
    try:
        pruned = prune(repo, progress=line if line.enabled else None, control=None)
    finally:
        line.done()
    if as_json:
        _emit({"message_type": "prune", "summary": pruned.summary(), **dataclasses.asdict(pruned)})
    else:
        print(clean(pruned.summary()))
    return EXIT_OK


def cmd_prune(config: Config, args: argparse.Namespace) -> int:
    return _prune(_open(config), as_json=args.json)


def cmd_token(config: Config, _args: argparse.Namespace) -> int:
    print(config.agent.token)
    return EXIT_OK


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


def cmd_remote(args: argparse.Namespace) -> int:
    """``remote URL COMMAND``: needs no local configuration, only the URL and the token."""
    try:
        return run_remote(args)
    except RemoteUsageError as exc:
        print(f"desktop-agent: error: {clean(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except RemoteError as exc:
        raise CliError(str(exc)) from None


COMMANDS: dict[str, Callable[[Config, argparse.Namespace], int]] = {
    "init": cmd_init,
    "backup": cmd_backup,
    "snapshots": cmd_snapshots,
    "restore": cmd_restore,
    "check": cmd_check,
    "forget": cmd_forget,
    "prune": cmd_prune,
    "token": cmd_token,
}


def _has_display() -> bool:
    """Whether Qt can show windows here (a display server, or a chosen platform)."""
    if os.environ.get("QT_QPA_PLATFORM"):
        return True
    if sys.platform.startswith("linux") or "bsd" in sys.platform:
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True  # macOS and Windows always have one


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
    """Entry point; returns the exit status (``sys.exit`` is the caller's)."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    internal = _internal(args_list)
    if internal is not None:
        return internal
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.autostart and (args.command is not None or args.headless):
        parser.error("--autostart starts the tray app: no command, no --headless")
    headless = args.headless
    if args.command is None and not headless and not _has_display():
        print(
            "desktop-agent: no display found: running headless (the /ws server and the "
            "scheduler, no tray); use --headless to say so explicitly",
            file=sys.stderr,
        )
        headless = True
    log_path = setup_logging(stderr=headless)
    try:
        if args.command == "remote":
            return cmd_remote(args)
        if args.command == "selftest":
            from desktop_agent.selftest import run as run_selftest

            return run_selftest()
        if args.command == "autostart":
            return cmd_autostart(args)
        config = load_or_create(resolve_config_path(args.config))
        if args.command is None and headless:
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
        if args.command is None:
            from desktop_agent.ui.bootstrap import TrayError, run_tray

            try:
                return run_tray(config, log_path=log_path, show=args.show, autostart=args.autostart)
            except TrayError as exc:
                raise CliError(str(exc)) from None
        return COMMANDS[args.command](config, args)
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
