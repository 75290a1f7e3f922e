"""``forget`` and ``prune``: what is kept, and removing the data nothing needs.

``forget`` applies a keep policy (restic's ``--keep-*`` options) to every
group of snapshots with the same host and paths and removes the others;
``--prune`` then runs ``prune``, which deletes and repacks the data no
snapshot references. Their ``--json`` documents are the engine's
(:meth:`~desktop_agent.engine.forget.ForgetResult.to_json`,
:meth:`~desktop_agent.engine.prune.PruneResult.to_json`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from desktop_agent.termtext import ProgressLine, clean

from .common import (
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Subparsers,
    emit,
    load_config,
    log,
    open_repository,
    plural,
    print_table,
    warn_damaged,
)

if TYPE_CHECKING:
    from desktop_agent.engine.forget import Duration, ForgetGroup, ForgetResult, KeepPolicy
    from desktop_agent.engine.repository import Repository
    from desktop_agent.engine.snapshot import Snapshot

__all__ = ["add_forget", "add_prune", "cmd_forget", "cmd_prune"]

# the engine is imported when a command runs, not for every command's parser
# (see common.open_repository)
_PRUNE = "desktop_agent.engine.prune"

_KEEP_COUNTS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
_KEEP_SPANS = (
    "within",
    "within-hourly",
    "within-daily",
    "within-weekly",
    "within-monthly",
    "within-yearly",
)


# ------------------------------------------------------------------ forget
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
    from desktop_agent.engine.forget import parse_duration  # noqa: PLC0415 - see above

    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_forget(sub: Subparsers) -> None:
    """``desktop-agent forget [--keep-* ...] [--dry-run] [--prune] [--json]`` (restic's names)."""
    f = sub.add_parser(
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
    f.set_defaults(run=cmd_forget)


def _keep_policy(args: argparse.Namespace) -> KeepPolicy:
    from desktop_agent.engine.forget import KeepPolicy, parse_duration  # noqa: PLC0415

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


def cmd_forget(args: argparse.Namespace) -> int:
    """Apply the policy (bad usage without one), then prune when asked to."""
    config = load_config(args)
    policy = _keep_policy(args)
    if policy.empty:
        print(
            "desktop-agent: error: nothing to keep: give at least one --keep-* option",
            file=sys.stderr,
        )
        return EXIT_USAGE
    repo = open_repository(config, imports=[_PRUNE] if args.prune else [])
    from desktop_agent.engine.forget import forget  # noqa: PLC0415 - see above

    result = forget(repo, policy, dry_run=args.dry_run)
    warn_damaged(repo)
    if args.json:
        emit(result.to_json())
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
    print_table(header, rows)


def _print_forget(result: ForgetResult, *, pruning: bool) -> None:
    print(f"Applying policy: {clean(result.policy.describe())}")
    if not result.groups:
        print("the repository has no snapshots")
    for g in result.groups:
        print(f"\nsnapshots of {clean(g.describe())}:")
        print(f"keep {plural(len(g.keep), 'snapshot')}:")
        _print_snapshots(g, g.keep, reasons=True)
        if g.remove:
            verb = "would remove" if result.dry_run else "remove"
            print(f"\n{verb} {plural(len(g.remove), 'snapshot')}:")
            _print_snapshots(g, g.remove, reasons=False)
    print()
    total = len(result.remove)
    if result.dry_run:
        print(f"dry run: {plural(total, 'snapshot')} would be removed; nothing was changed")
    elif result.removed and pruning:
        print(f"removed {plural(len(result.removed), 'snapshot')}")
    elif result.removed:
        print(
            f"removed {plural(len(result.removed), 'snapshot')}; their data stays in the "
            "repository until prune runs (forget --prune)"
        )
    else:
        print("no snapshots removed")


def _prune_after_forget(repo: Repository, result: ForgetResult, *, as_json: bool) -> int:
    # restic prunes only when forget removed something; a dry run prunes nothing
    if not result.removed:
        if not as_json:
            why = "dry run" if result.dry_run and result.remove else "no snapshot was removed"
            print(f"prune skipped: {why}")
        return EXIT_OK
    return _prune(repo, as_json=as_json)


# ------------------------------------------------------------------- prune
def add_prune(sub: Subparsers) -> None:
    """``desktop-agent prune [--json]``."""
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
    pr.set_defaults(run=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    """Prune the configured repository."""
    return _prune(open_repository(load_config(args), imports=[_PRUNE]), as_json=args.json)


def _prune(repo: Repository, *, as_json: bool) -> int:
    from desktop_agent.engine.prune import prune  # noqa: PLC0415 - see above

    line = ProgressLine("prune")
    try:
        pruned = prune(repo, progress=line if line.enabled else None, control=None)
    finally:
        line.done()
    if as_json:
        emit(pruned.to_json())
    else:
        print(clean(pruned.summary()))
    return EXIT_OK
