"""Jobs: the state machine, the event bus, the controller and the scheduler (asyncio, no Qt).

Backups, restores and upkeep (forget + prune, check: :mod:`.upkeep`) are
jobs of one queue (:mod:`.spec` says what each does); browsing a repository
(:mod:`.browse`) is not a job: it only reads.
"""

from __future__ import annotations

from .bus import BusEvent, EventBus, JobChanged
from .controller import JobController, JobError
from .job import JobView
from .spec import BackupSpec, JobKind, JobSpec, RestoreSpec, UpkeepSpec
from .state import Action, IllegalTransition, JobState
from .upkeep import UpkeepResult

__all__ = [
    "Action",
    "BackupSpec",
    "BusEvent",
    "EventBus",
    "IllegalTransition",
    "JobChanged",
    "JobController",
    "JobError",
    "JobKind",
    "JobSpec",
    "JobState",
    "JobView",
    "RestoreSpec",
    "UpkeepResult",
    "UpkeepSpec",
]
