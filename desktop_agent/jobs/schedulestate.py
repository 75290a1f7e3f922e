"""The scheduler's memory across restarts: a small JSON file beside the configuration.

It keeps what the snapshots in the repository cannot tell: a pause the
user asked for, failed attempts (for the backoff), when upkeep last ran and
which data subset the weekly check reads next. Written atomically; an
unreadable or damaged file is logged and treated as empty (nothing of it is
precious: at worst a pause is forgotten and a check repeats a subset).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

from desktop_agent.config import Config, ConfigError
from desktop_agent.config.atomicfile import write_atomic
from desktop_agent.config.privatefile import read_regular_file

from .schedule import History

__all__ = ["load_history", "save_history", "state_path"]

log = logging.getLogger(__name__)

_LIMIT = 64 * 1024


def state_path(config: Config) -> Path:
    """``<config folder>/<config name>-schedule.json``: one per configuration."""
    return config.path.with_name(f"{config.path.stem}-schedule.json")


def load_history(path: Path) -> History:
    """The history kept in ``path``; an empty one when there is none or it is damaged."""
    try:
        raw, _info = read_regular_file(
            path, limit=_LIMIT, label=str(path), noun="a schedule state file"
        )
    except FileNotFoundError:
        return History()
    except ConfigError as exc:  # a FIFO, a device, too large: never read from
        log.warning("ignoring the schedule state: %s", exc)
        return History()
    except OSError as exc:
        log.warning("cannot read the schedule state %s: %s", path, exc.strerror or exc)
        return History()
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return _history(data)
    except (ValueError, TypeError) as exc:
        log.warning("ignoring a damaged schedule state %s: %s", path, exc)
        return History()


def _history(data: dict[str, Any]) -> History:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(History):
        if f.name not in data or data[f.name] is None:
            continue
        value = data[f.name]
        default = getattr(History(), f.name)
        if isinstance(default, bool) or f.name == "paused_forever":
            if not isinstance(value, bool):
                raise ValueError(f"{f.name}: not true or false")
        elif f.name in ("failures", "check_next"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{f.name}: not a count")
        elif f.name == "last_error":
            if not isinstance(value, str):
                raise ValueError(f"{f.name}: not text")
            value = value[:1000]
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{f.name}: not a time")
            if not math.isfinite(value):
                raise ValueError(f"{f.name}: not a time")
            value = float(value)
        values[f.name] = value
    return History(**values)


def save_history(path: Path, history: History) -> None:
    """Write ``history`` to ``path`` (atomically, mode 0600); a failure is logged."""
    data = json.dumps(dataclasses.asdict(history), indent=1, sort_keys=True).encode()
    try:
        write_atomic(path, data, mode=0o600)
    except OSError as exc:
        log.warning("cannot save the schedule state %s: %s", path, exc.strerror or exc)
