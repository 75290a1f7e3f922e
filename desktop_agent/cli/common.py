"""What every command of the command line shares.

Exit statuses and :class:`CliError` (a failure reported in one line), the
argument parser class whose usage errors exit 2, the configuration and the
repository with its password (read, or asked for on a terminal), the
shared lock held while reading, the warning about unreadable snapshots,
and the two ways results are printed: a restic-style table for people and
one line of JSON (:func:`emit`) for programs.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import importlib
import logging
import sys
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

from desktop_agent.config import Config, load_or_create, read_password, resolve_config_path
from desktop_agent.engine.errors import RepositoryNotFound, StorageError
from desktop_agent.termtext import clean, columns, json_text, pad

if TYPE_CHECKING:
    from desktop_agent.engine.repository import Repository

__all__ = [
    "EXIT_OK",
    "EXIT_FAIL",
    "EXIT_USAGE",
    "EXIT_SKIPPED",
    "CliError",
    "Parser",
    "Subparsers",
    "log",
    "load_config",
    "repository_password",
    "open_repository",
    "reading",
    "warn_damaged",
    "emit",
    "plural",
    "print_table",
]

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_SKIPPED = 3

# one logger for the whole command line: its lines read the same in the log
# whichever module wrote them
log = logging.getLogger("desktop_agent.cli")


class CliError(Exception):
    """A failure to report in one line (exit status 1)."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors exit with status 2 (bad usage)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# what add_subparsers returns: each command module adds its parser to it
Subparsers: TypeAlias = "argparse._SubParsersAction[Parser]"


def load_config(args: argparse.Namespace) -> Config:
    """The configuration ``--config`` (or the environment) names; created on a first start."""
    return load_or_create(resolve_config_path(args.config))


def repository_password(config: Config) -> str:
    """The repository password: configured, or typed at a terminal."""
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


def open_repository(config: Config, *, imports: Sequence[str] = ()) -> Repository:
    """The configured repository, opened (it must exist).

    The key is derived from the password (scrypt, about 0.1 s, which does
    not hold the interpreter's lock) on a thread while this one imports the
    engine and the modules ``imports`` names: a command's start-up pays for
    the longer of the two, not both. The command modules import the engine
    only when they run, for this.
    """
    from desktop_agent.engine.storage import storage_for  # noqa: PLC0415 - see above
    from desktop_agent.engine.unlock import unlock  # noqa: PLC0415

    storage = storage_for(config)
    if not storage.exists():
        raise RepositoryNotFound(
            f"there is no repository at {storage.location} (create one with `desktop-agent init`)"
        )
    password = repository_password(config)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="unlock") as pool:
        unlocking = pool.submit(unlock, storage, password)
        from desktop_agent.engine.repository import Repository  # noqa: PLC0415

        for name in imports:
            importlib.import_module(name)
        unlocked = unlocking.result()
    return Repository.from_unlocked(storage, unlocked)


@contextlib.contextmanager
def reading(repo: Repository) -> Iterator[None]:
    """Hold a shared lock while reading, as restic does: a prune (exclusive)
    cannot delete what we read, and we refuse to read while one runs.

    A repository where no lock can be written (read-only media) is read
    without one, with a warning.
    """
    from desktop_agent.engine.lock import Lock  # noqa: PLC0415 - see open_repository

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


def warn_damaged(repo: Repository) -> int:
    """Name the snapshot files the last listing could not read; returns how many."""
    for name, exc in repo.damaged_snapshots:
        print(
            f"warning: snapshot {clean(name[:8])} cannot be read and is left out "
            f"({clean(str(exc))}); "
            "run `desktop-agent check`",
            file=sys.stderr,
        )
    return len(repo.damaged_snapshots)


def emit(obj: Any) -> None:
    """Print ``obj`` as one line of JSON.

    Exact JSON (json.loads gives back every name as it is in the
    repository), with the characters that could drive a terminal \\u-escaped.
    """
    sys.stdout.write(json_text(obj) + "\n")
    sys.stdout.flush()


def plural(n: int, word: str) -> str:
    """``3 snapshots``, ``1 snapshot``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def print_table(
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
