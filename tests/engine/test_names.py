"""Names that are not UTF-8 in the engine's messages: one form, os.fsdecode's.

The engine puts a path into a warning, a skipped path or a restore or
check error as ``os.fsdecode`` gives it: an undecodable byte is a surrogate
escape (``b"\\xff"`` -> ``"\\udcff"``), never ``\\xff`` or ``\\udcff`` spelled
out. The display layers (``termtext.clean``, which the UI uses too) turn that
into one visible form, ``\\xff``.
"""

from __future__ import annotations

import os
from pathlib import Path

from support import refuse_listing, reopen, write

from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.check import check
from desktop_agent.engine.ids import BlobType
from desktop_agent.engine.progress import Progress
from desktop_agent.engine.restore import RestoreOptions, restore
from desktop_agent.engine.storage import FileType
from desktop_agent.engine.tree import NodeType, decode_tree
from desktop_agent.termtext import clean

RAW = b"caf\xe9-\xff"  # Latin-1 and a stray byte
SHOWN = "caf\\xe9-\\xff"


def raw_path(directory: Path) -> bytes:
    return os.fsencode(directory) + b"/" + RAW


def test_a_skipped_path_is_named_in_the_fsdecode_form(tmp_path, mem_repo, monkeypatch) -> None:
    src = tmp_path / "src"
    write(src / "a.txt", b"a")
    unreadable = raw_path(src)
    os.mkdir(unreadable)
    # refused as the kernel would for a directory without permissions (root has them)
    refuse_listing(monkeypatch, {unreadable})
    res = backup(mem_repo, BackupOptions(sources=[str(src)], scan=False))
    (skipped,) = res.skipped
    assert skipped.path == os.fsdecode(unreadable)
    assert skipped.reason == "cannot list directory: Permission denied"
    assert "\udcff" in skipped.path and "\\" not in skipped.path
    assert clean(skipped.path) == f"{src}/{SHOWN}"


def test_a_warning_names_the_file_in_the_fsdecode_form(tmp_path, mem_repo) -> None:
    src = tmp_path / "src"
    write(src / "a-stays.txt", b"a")
    doomed = raw_path(src)
    with open(doomed, "wb") as fh:
        fh.write(b"b")
    write(src / "z-stays.txt", b"c")

    def on_progress(p: Progress) -> None:
        # small files are read in batches after the directory is listed
        if p.current_file.endswith("z-stays.txt") and os.path.lexists(doomed):
            os.unlink(doomed)

    res = backup(
        mem_repo,
        BackupOptions(sources=[str(src)], helpers=0),
        progress=on_progress,
        progress_interval=0,
    )
    (warning,) = res.warnings
    assert warning == f"{os.fsdecode(doomed)} vanished during the backup; not included"
    assert clean(warning) == f"{src}/{SHOWN} vanished during the backup; not included"


def test_restore_errors_name_entries_in_the_fsdecode_form(tmp_path, mem_repo) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(raw_path(src), "wb") as fh:
        fh.write(b"x")
    backup(mem_repo, BackupOptions(sources=[str(src)]))
    target = tmp_path / "out"
    snap = reopen(mem_repo).find_snapshot("latest")
    assert restore(reopen(mem_repo), snap, RestoreOptions(target=str(target))).errors == ()
    again = restore(reopen(mem_repo), snap, RestoreOptions(target=str(target)))
    where = raw_path(target / str(src).lstrip("/"))
    assert again.errors == (f"{os.fsdecode(where)}: exists; not overwritten",)


def test_check_names_affected_paths_in_the_fsdecode_form(tmp_path, mem_repo) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(raw_path(src), "wb") as fh:
        fh.write(b"only this file's data")
    backup(mem_repo, BackupOptions(sources=[str(src)]))
    repo = reopen(mem_repo)
    repo.ensure_index()
    (blob,) = repo.index.blob_ids(BlobType.DATA)
    entry = repo.index.lookup(BlobType.DATA, blob)
    assert entry is not None
    repo.storage.remove(FileType.PACK, entry.pack.hex())
    result = check(reopen(mem_repo))
    (affected,) = result.affected
    assert affected.paths == (os.fsdecode(raw_path(src)),)
    (error,) = result.errors
    assert error.endswith(f": {os.fsdecode(raw_path(src))}")


def test_a_bad_name_in_a_tree_is_named_in_the_fsdecode_form() -> None:
    (node,) = decode_tree(b'{"nodes":[{"name":"a/\\\\xff","type":"file"}]}')
    assert node.type == NodeType.INVALID
    assert node.invalid.endswith('name "a/\udcff" cannot be a file name')
