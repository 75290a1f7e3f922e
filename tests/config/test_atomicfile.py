"""The one durable-write recipe: fsync (F_FULLFSYNC on macOS), rename (retried on Windows), cleanup.

The other platforms' branches are played on this one by flipping the
module's platform flags and replacing the system calls they make; what is
checked is our control flow around those calls, which is all that differs.
"""

from __future__ import annotations

import errno
import os
import stat
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from desktop_agent.config import atomicfile
from desktop_agent.engine.errors import StorageError
from desktop_agent.engine.storage import FileType, LocalStorage

NAME = "ab" * 32


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """An empty directory (tmp_path also holds the config tests' private HOME)."""
    directory = tmp_path / "work"
    directory.mkdir()
    return directory


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses the Windows retry loop asks for (taken, not slept)."""
    taken: list[float] = []
    monkeypatch.setattr(atomicfile, "_sleep", taken.append)
    return taken


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the Windows branches of the recipe."""
    monkeypatch.setattr(atomicfile, "_WINDOWS", True)


def flaky_replace(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[tuple[str, str]]:
    """Make os.replace refuse ``failures`` times (PermissionError), then work; returns the calls."""
    calls: list[tuple[str, str]] = []
    real = os.replace

    def replace(src: str, dst: str) -> None:
        calls.append((os.fspath(src), os.fspath(dst)))
        if len(calls) <= failures:
            raise PermissionError(errno.EACCES, "The process cannot access the file", dst)
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return calls


def leftovers(directory: Path, *keep: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


# ---------------------------------------------------------------- the recipe


def test_writes_the_content_with_the_exact_mode_whatever_the_umask(work: Path) -> None:
    old = os.umask(0o277)  # would turn 0600 into 0400
    try:
        atomicfile.write_durable(work / "f", [b"one ", bytearray(b"two "), memoryview(b"3")])
    finally:
        os.umask(old)
    assert (work / "f").read_bytes() == b"one two 3"
    assert stat.S_IMODE((work / "f").stat().st_mode) == 0o600
    assert leftovers(work, "f") == []


def test_replaces_an_existing_file_and_leaves_no_temporary(work: Path) -> None:
    (work / "f").write_bytes(b"old")
    assert atomicfile.write_durable(work / "f", [b"new"], mode=0o400) is True
    assert (work / "f").read_bytes() == b"new"
    assert stat.S_IMODE((work / "f").stat().st_mode) == 0o400
    assert leftovers(work, "f") == []


def test_create_only_leaves_an_existing_file_alone(work: Path) -> None:
    (work / "f").write_bytes(b"theirs")
    assert atomicfile.write_durable(work / "f", [b"mine"], replace=False) is False
    assert (work / "f").read_bytes() == b"theirs"
    assert atomicfile.write_durable(work / "g", [b"mine"], replace=False) is True
    assert (work / "g").read_bytes() == b"mine"
    assert leftovers(work, "f", "g") == []


def test_create_only_without_hard_links_creates_exclusively(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    assert atomicfile.write_durable(work / "f", [b"mine"], replace=False) is True
    assert atomicfile.write_durable(work / "f", [b"again"], replace=False) is False
    assert (work / "f").read_bytes() == b"mine"
    assert leftovers(work, "f") == []


def test_a_failed_write_removes_the_temporary_and_keeps_the_old_file(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (work / "f").write_bytes(b"old")

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space left"):
        atomicfile.write_durable(work / "f", [b"new"])
    assert (work / "f").read_bytes() == b"old"
    assert leftovers(work, "f") == []


def test_the_named_temporary_is_used_and_removed_on_failure(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def replace(src: str, dst: str) -> None:
        seen.append(os.fspath(src))
        assert Path(src).read_bytes() == b"data"  # complete before the rename
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="Input/output"):
        atomicfile.write_durable(work / "f", [b"data"], temp=str(work / "f-tmp-1"))
    assert seen == [str(work / "f-tmp-1")]
    assert leftovers(work) == []


def test_file_systems_that_cannot_fsync_are_tolerated_but_io_errors_are_not(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = [errno.EINVAL]

    def fsync(fd: int) -> None:
        raise OSError(error[0], os.strerror(error[0]))

    monkeypatch.setattr(os, "fsync", fsync)
    atomicfile.write_durable(work / "f", [b"ok"])
    assert (work / "f").read_bytes() == b"ok"

    error[0] = errno.EIO
    with pytest.raises(OSError, match="Input/output"):
        atomicfile.write_durable(work / "f", [b"lost"])
    assert (work / "f").read_bytes() == b"ok"
    assert leftovers(work, "f") == []


# ---------------------------------------------------------------- macOS


@pytest.fixture
def fake_fcntl(monkeypatch: pytest.MonkeyPatch) -> Callable[[Exception | None], list]:
    """Pretend to be macOS with an fcntl module whose F_FULLFSYNC is recorded (or refused)."""
    monkeypatch.setattr(atomicfile, "_MACOS", True)
    fsyncs: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)

    def install(refusal: Exception | None) -> list:
        calls: list[tuple[str, int, int]] = []

        def fcntl(fd: int, cmd: int) -> int:
            calls.append(("F_FULLFSYNC", fd, cmd))
            if refusal is not None:
                raise refusal
            return 0

        monkeypatch.setattr(atomicfile, "fcntl", types.SimpleNamespace(F_FULLFSYNC=51, fcntl=fcntl))
        return [calls, fsyncs]

    return install


def test_macos_uses_full_fsync_for_the_file_and_the_directory(
    work: Path, fake_fcntl: Callable[[Exception | None], list]
) -> None:
    calls, fsyncs = fake_fcntl(None)
    atomicfile.write_durable(work / "f", [b"x"])
    assert [(name, cmd) for name, _fd, cmd in calls] == [("F_FULLFSYNC", 51)] * 2
    assert fsyncs == []  # F_FULLFSYNC replaces fsync, it does not add to it
    assert (work / "f").read_bytes() == b"x"


def test_macos_falls_back_to_fsync_where_full_fsync_is_refused(
    work: Path, fake_fcntl: Callable[[Exception | None], list]
) -> None:
    calls, fsyncs = fake_fcntl(OSError(errno.ENOTSUP, "Operation not supported"))
    atomicfile.write_durable(work / "f", [b"x"])
    assert len(calls) == 2
    assert [fd for _name, fd, _cmd in calls] == fsyncs  # the same files, fsynced instead


def test_other_systems_never_ask_for_full_fsync(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(atomicfile, "_MACOS", False)
    calls: list[int] = []
    monkeypatch.setattr(
        atomicfile,
        "fcntl",
        types.SimpleNamespace(F_FULLFSYNC=51, fcntl=lambda fd, cmd: calls.append(cmd)),
    )
    atomicfile.write_durable(work / "f", [b"x"])
    assert calls == []


# ---------------------------------------------------------------- Windows


def test_windows_retries_a_rename_a_scanner_holds_up(
    work: Path, monkeypatch: pytest.MonkeyPatch, windows: None, sleeps: list[float]
) -> None:
    calls = flaky_replace(monkeypatch, failures=2)
    atomicfile.write_durable(work / "f", [b"x"])
    assert len(calls) == 3
    assert sleeps == [0.05, 0.1]  # short, growing pauses
    assert (work / "f").read_bytes() == b"x"
    assert leftovers(work, "f") == []


def test_windows_gives_up_after_a_few_seconds_and_cleans_up(
    work: Path, monkeypatch: pytest.MonkeyPatch, windows: None, sleeps: list[float]
) -> None:
    calls = flaky_replace(monkeypatch, failures=10_000)
    with pytest.raises(PermissionError):
        atomicfile.write_durable(work / "f", [b"x"])
    assert len(calls) == atomicfile._RENAME_ATTEMPTS
    assert len(sleeps) == atomicfile._RENAME_ATTEMPTS - 1
    assert 1 < sum(sleeps) < 15
    assert leftovers(work) == []


def test_windows_does_not_retry_other_errors(
    work: Path, monkeypatch: pytest.MonkeyPatch, windows: None, sleeps: list[float]
) -> None:
    calls: list[str] = []

    def replace(src: str, dst: str) -> None:
        calls.append(dst)
        raise FileNotFoundError(errno.ENOENT, "gone", dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(FileNotFoundError):
        atomicfile.replace_file(work / "a", work / "b")
    assert len(calls) == 1 and sleeps == []


def test_windows_skips_the_directory_fsync(
    work: Path, monkeypatch: pytest.MonkeyPatch, windows: None
) -> None:
    opened: list[str] = []
    real_open = os.open

    def open_(path: str, flags: int, mode: int = 0o777) -> int:
        opened.append(os.fspath(path))
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", open_)
    atomicfile.write_durable(work / "f", [b"x"])
    assert str(work) not in opened  # a directory cannot be opened there
    assert len(opened) == 1  # the temporary file only


def test_posix_does_not_retry_a_refused_rename(
    work: Path, monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    monkeypatch.setattr(atomicfile, "_WINDOWS", False)
    calls = flaky_replace(monkeypatch, failures=1)
    with pytest.raises(PermissionError):
        atomicfile.write_durable(work / "f", [b"x"])
    assert len(calls) == 1 and sleeps == []
    assert leftovers(work) == []


# ---------------------------------------------------------------- the engine uses it


def test_the_repository_store_retries_renames_on_windows(
    work: Path, monkeypatch: pytest.MonkeyPatch, windows: None, sleeps: list[float]
) -> None:
    store = LocalStorage(work / "repo")
    store.create_layout()
    calls = flaky_replace(monkeypatch, failures=2)
    store.save(FileType.SNAPSHOT, NAME, [b"snap"])
    assert store.load(FileType.SNAPSHOT, NAME) == b"snap"
    assert len(calls) == 3 and len(sleeps) == 2
    assert calls[-1][0].startswith(store.path(FileType.SNAPSHOT, NAME) + "-tmp-")

    spooled = Path(store.spool_dir()) / "spooled"
    spooled.write_bytes(b"pack")
    calls = flaky_replace(monkeypatch, failures=1)
    store.save_file(FileType.PACK, NAME, str(spooled))
    assert store.load(FileType.PACK, NAME) == b"pack"
    assert len(calls) == 2


def test_the_repository_store_maps_a_rename_that_never_succeeds(
    work: Path, monkeypatch: pytest.MonkeyPatch, windows: None, sleeps: list[float]
) -> None:
    store = LocalStorage(work / "repo")
    store.create_layout()
    flaky_replace(monkeypatch, failures=10_000)
    with pytest.raises(StorageError, match="permission denied"):
        store.save(FileType.SNAPSHOT, NAME, [b"snap"])
    assert os.listdir(work / "repo" / "snapshots") == []


def test_durable_write_is_still_importable_from_the_engine(work: Path) -> None:
    from desktop_agent.engine.storage.local import durable_write

    durable_write(str(work / "f"), [b"x"], 0o400)
    assert (work / "f").read_bytes() == b"x"
    assert stat.S_IMODE((work / "f").stat().st_mode) == 0o400


# ---------------------------------------------------------------- links


def test_write_atomic_follows_a_chain_of_links(work: Path) -> None:
    (work / "real").mkdir()
    (work / "real" / "file").write_bytes(b"old")
    (work / "middle").symlink_to(work / "real" / "file")
    (work / "link").symlink_to("middle")  # relative
    atomicfile.write_atomic(work / "link", b"new")
    assert os.readlink(work / "link") == "middle"
    assert os.readlink(work / "middle") == str(work / "real" / "file")
    assert (work / "real" / "file").read_bytes() == b"new"
    assert leftovers(work, "real", "middle", "link") == []
    assert leftovers(work / "real", "file") == []
