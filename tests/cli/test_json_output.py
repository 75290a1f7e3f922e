"""``--json`` output pinned on a fixed repository (``fixtures/fixed-repo``).

The expected documents were taken from the command line before its
printers were rebuilt on the engine's ``to_json`` methods: names, order,
types and values must stay what scripts read today. Where a value depends
on the clock or the temporary directory (durations, new snapshot ids,
directory counts), its name, place and type are pinned instead.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support import PASSWORD, write, write_config

from desktop_agent.engine.backup import BackupResult, SkippedPath
from desktop_agent.engine.ids import BlobId, SnapshotId
from desktop_agent.engine.progress import Progress
from desktop_agent.engine.prune import PruneResult
from desktop_agent.engine.snapshot import Snapshot, SnapshotSummary
from desktop_agent.engine.storage import LocalStorage
from desktop_agent.termtext import json_text

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ENV = {"DESKTOP_AGENT_PASSWORD": PASSWORD}

STATUS = [
    ("message_type", str),
    ("percent_done", float),
    ("total_files", int),
    ("files_done", int),
    ("total_bytes", int),
    ("bytes_done", int),
    ("seconds_elapsed", float),
    ("current_files", list),
]
SUMMARY = [
    ("message_type", str),
    ("files_new", int),
    ("files_changed", int),
    ("files_unmodified", int),
    ("dirs_new", int),
    ("dirs_changed", int),
    ("dirs_unmodified", int),
    ("data_blobs", int),
    ("tree_blobs", int),
    ("data_added", int),
    ("data_added_packed", int),
    ("total_files_processed", int),
    ("total_bytes_processed", int),
    ("total_duration", float),
    ("snapshot_id", str),
    ("skipped", list),
    ("warnings", list),
]
PRUNE = [
    ("message_type", str),
    ("summary", str),
    ("packs_before", int),
    ("packs_after", int),
    ("packs_deleted", int),
    ("packs_repacked", int),
    ("packs_written", int),
    ("bytes_before", int),
    ("bytes_after", int),
    ("unused_blobs", int),
    ("seconds", float),
]


def _shape(line: str) -> list[tuple[str, type]]:
    """The names of a JSON object in order, each with the type of its value."""
    pairs = json.loads(line, object_pairs_hook=lambda items: items)
    return [(name, type(json.loads(json.dumps(value)))) for name, value in pairs]


def _object(line: str) -> dict[str, Any]:
    doc = json.loads(line)
    assert isinstance(doc, dict)
    return doc


@pytest.fixture
def fixed(tmp_path: Path) -> tuple[list[str], Path]:
    """A copy of the fixed repository, and a config naming it and a small source."""
    repo = tmp_path / "repo"
    shutil.copytree(FIXTURES / "fixed-repo", repo)
    LocalStorage(repo).create_layout()  # git keeps no empty directories
    src = tmp_path / "src"
    write(src / "x.txt", b"x\n")
    write(src / "d" / "y.txt", b"y" * 5000)
    cfg = write_config(tmp_path / "config.toml", repo=repo, sources=[src, tmp_path / "gone"])
    return ["--config", str(cfg)], tmp_path


def test_snapshots_json_is_unchanged(cli, fixed) -> None:
    c, _ = fixed
    proc = cli(*c, "snapshots", "--json", env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (FIXTURES / "snapshots.json").read_text()


def test_snapshots_table_is_unchanged(cli, fixed) -> None:
    c, _ = fixed
    proc = cli(*c, "snapshots", env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (FIXTURES / "snapshots.txt").read_text()


def test_forget_json_is_unchanged(cli, fixed) -> None:
    c, _ = fixed
    proc = cli(*c, "forget", "--keep-last", "1", "--dry-run", "--json", env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (FIXTURES / "forget-keep-last-1.json").read_text()


def test_forget_table_is_unchanged(cli, fixed) -> None:
    c, _ = fixed
    policy = ["--keep-last", "1", "--keep-tag", "daily"]
    proc = cli(*c, "forget", *policy, "--dry-run", env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (FIXTURES / "forget-keep-last-1-keep-tag-daily.txt").read_text()


def _check_prune(line: str, **counts: int) -> None:
    assert _shape(line) == PRUNE
    doc = _object(line)
    assert doc["message_type"] == "prune"
    assert {k: doc[k] for k in counts} == counts
    summary = re.sub(r"in \d+\.\d s$", "in N s", doc["summary"])
    assert summary == (
        f"prune: {doc['packs_deleted']} pack(s) deleted, {doc['packs_repacked']} repacked into "
        f"{doc['packs_written']} new; {doc['unused_blobs']} unused blob(s) removed; "
        "0.0 MiB -> 0.0 MiB (0.0 MiB freed) in N s"
    )


def test_forget_prune_json_is_unchanged(cli, fixed) -> None:
    c, _ = fixed
    proc = cli(*c, "forget", "--keep-last", "1", "--prune", "--json", env=ENV)
    assert proc.returncode == 0, proc.stderr
    forgotten, pruned = proc.stdout.splitlines()
    # a forget that removes prints the document its dry run prints
    assert forgotten + "\n" == (FIXTURES / "forget-keep-last-1.json").read_text()
    _check_prune(
        pruned,
        packs_before=4,
        packs_after=4,
        packs_deleted=0,
        packs_repacked=2,
        packs_written=2,
        bytes_before=3143,
        bytes_after=1851,
        unused_blobs=5,
    )


def test_prune_json_is_unchanged(cli, fixed) -> None:
    c, _ = fixed
    proc = cli(*c, "prune", "--json", env=ENV)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    _check_prune(
        line,
        packs_before=4,
        packs_after=4,
        packs_deleted=0,
        packs_repacked=0,
        packs_written=0,
        bytes_before=3143,
        bytes_after=3143,
        unused_blobs=0,
    )


def test_backup_json_is_unchanged(cli, fixed) -> None:
    c, tmp_path = fixed
    proc = cli(*c, "backup", "--json", env=ENV)
    assert proc.returncode == 3, proc.stderr  # one source is missing
    *statuses, summary = proc.stdout.splitlines()
    assert statuses, "no status line"
    for line in statuses:
        assert _shape(line) == STATUS
        assert _object(line)["message_type"] == "status"
    last = _object(statuses[-1])
    assert last["percent_done"] == 1.0 and last["bytes_done"] == last["total_bytes"] == 5002
    assert last["files_done"] == last["total_files"] == 2
    assert _shape(summary) == SUMMARY
    doc = _object(summary)
    assert doc["message_type"] == "summary"
    assert {k: doc[k] for k in ("files_new", "files_changed", "files_unmodified")} == {
        "files_new": 2,
        "files_changed": 0,
        "files_unmodified": 0,
    }
    assert doc["data_blobs"] == 2
    assert doc["total_files_processed"] == 2 and doc["total_bytes_processed"] == 5002
    assert doc["skipped"] == [{"path": str(tmp_path / "gone"), "reason": "source does not exist"}]
    assert _shape(json.dumps(doc["skipped"][0])) == [("path", str), ("reason", str)]
    assert doc["warnings"] == []
    listed = json.loads(cli(*c, "snapshots", "--json", env=ENV).stdout)
    assert re.fullmatch("[0-9a-f]{64}", doc["snapshot_id"])
    assert listed[-1]["id"] == doc["snapshot_id"]


# ------------------------------------------- the engine's documents, value by value
def test_the_backup_messages_from_fixed_values() -> None:
    progress = Progress(1024, 4096, 1, 4, "/a/b", elapsed=2.34567)
    assert json_text(progress.to_json()) == (
        '{"message_type": "status", "percent_done": 0.25, "total_files": 4, "files_done": 1, '
        '"total_bytes": 4096, "bytes_done": 1024, "seconds_elapsed": 2.346, '
        '"current_files": ["/a/b"]}'
    )
    empty = Progress(0, 0, 0, 0, "").to_json()
    assert (empty["percent_done"], empty["current_files"]) == (0.0, [])

    counts = dict(zip([name for name, _ in SUMMARY[1:13]], range(1, 13), strict=True))
    summary = SnapshotSummary(backup_start="s", backup_end="e", **counts)
    snap = Snapshot("2024-01-01T00:00:00Z", BlobId(bytes(32)), ("/a",), id=SnapshotId(b"\xab" * 32))
    result = BackupResult(
        snap, summary, (SkippedPath("/gone\x1b", "source does not exist"),), ("careful",)
    )
    assert json_text(result.to_json(duration=1.23456)) == (
        '{"message_type": "summary", "files_new": 1, "files_changed": 2, '
        '"files_unmodified": 3, "dirs_new": 4, "dirs_changed": 5, "dirs_unmodified": 6, '
        '"data_blobs": 7, "tree_blobs": 8, "data_added": 9, "data_added_packed": 10, '
        '"total_files_processed": 11, "total_bytes_processed": 12, "total_duration": 1.235, '
        f'"snapshot_id": "{"ab" * 32}", '
        '"skipped": [{"path": "/gone\\u001b", "reason": "source does not exist"}], '
        '"warnings": ["careful"]}'
    )
    no_id = BackupResult(Snapshot("2024-01-01T00:00:00Z", BlobId(bytes(32)), ()), summary)
    assert no_id.to_json(duration=0)["snapshot_id"] is None


def test_the_prune_message_from_fixed_values() -> None:
    pruned = PruneResult(5, 3, 2, 1, 1, 3 << 20, 1 << 20, 7, 0.25)
    assert json_text(pruned.to_json()) == (
        '{"message_type": "prune", "summary": "prune: 2 pack(s) deleted, 1 repacked into 1 new; '
        '7 unused blob(s) removed; 3.0 MiB -> 1.0 MiB (2.0 MiB freed) in 0.2 s", '
        '"packs_before": 5, "packs_after": 3, "packs_deleted": 2, "packs_repacked": 1, '
        '"packs_written": 1, "bytes_before": 3145728, "bytes_after": 1048576, '
        '"unused_blobs": 7, "seconds": 0.25}'
    )


def test_a_snapshot_is_listed_with_its_id_after_its_document() -> None:
    snap = Snapshot(
        "2024-01-01T00:00:00Z",
        BlobId(bytes(32)),
        ("/a",),
        hostname="h",
        extra={"future_field": 1},
        id=SnapshotId(b"\x01" * 32),
    )
    assert list(snap.to_listing_json()) == [*snap.to_json(), "id", "short_id"]
    assert snap.to_listing_json()["short_id"] == "01010101"
    assert "id" not in replace(snap, id=None).to_listing_json()
