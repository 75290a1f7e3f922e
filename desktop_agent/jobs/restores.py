"""The restore job's work, and the new folder a restore asked for over /ws goes into.

Blocking functions, for the controller's worker threads. A restore takes a
shared repository lock, as restic's does: a prune elsewhere must not delete
packs it reads, while backups of other clients may run.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from desktop_agent.config import user_downloads_dir
from desktop_agent.engine.control import Control
from desktop_agent.engine.lock import Lock
from desktop_agent.engine.progress import Reporter
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.restore import RestoreOptions, RestoreResult, restore

from .spec import RestoreSpec

__all__ = ["FOLDER_PREFIX", "new_restore_folder", "run_restore"]

log = logging.getLogger(__name__)

FOLDER_PREFIX = "desktop-agent restore"
_MAX_TRIES = 1000


def new_restore_folder(short_id: str, *, base: Path | None = None, now: float | None = None) -> str:
    """Create a new, empty folder for a restore and return its absolute path.

    ``<base>/desktop-agent restore <short id> <YYYY-MM-DD HH-MM-SS>`` (local
    time, no colons: valid on every platform), with `` (2)``, `` (3)``...
    when that name is taken. The folder is made with an exclusive
    ``mkdir``, so it is never one that existed before, whoever races us.
    ``base`` defaults to the user's downloads folder (or home folder).
    Raises ``OSError`` when no folder can be made there.
    """
    root = base if base is not None else user_downloads_dir()
    stamp = time.strftime("%Y-%m-%d %H-%M-%S", time.localtime(now))
    name = f"{FOLDER_PREFIX} {short_id} {stamp}"
    for n in range(1, _MAX_TRIES + 1):
        candidate = root / (name if n == 1 else f"{name} ({n})")
        try:
            os.mkdir(candidate, 0o700)
        except FileExistsError:
            continue
        return os.path.abspath(candidate)
    raise FileExistsError(f"{root / name} and {_MAX_TRIES - 1} numbered variants exist")


def run_restore(
    repo: Repository,
    spec: RestoreSpec,
    *,
    progress: Reporter | None = None,
    control: Control | None = None,
    progress_interval: float = 0.1,
) -> RestoreResult:
    """Restore what ``spec`` says under a shared lock; never overwrites anything.

    Raises what the engine raises (``Cancelled``, ``NotFound``, other
    ``EngineError``). When ``spec.new_folder`` and the restore raised before
    putting anything into the folder, the empty folder is removed.
    """
    options = RestoreOptions(target=spec.target, includes=spec.includes, overwrite=False)
    try:
        with Lock(repo, exclusive=False):
            return restore(
                repo,
                spec.snapshot,
                options,
                progress=progress,
                control=control,
                progress_interval=progress_interval,
            )
    except BaseException:
        if spec.new_folder:
            _remove_if_empty(spec.target)
        raise


def _remove_if_empty(folder: str) -> None:
    try:
        os.rmdir(folder)  # only an empty folder goes
    except OSError:
        return
    log.info("removed the empty restore folder %s", folder)
