"""A storage wrapper that fails on purpose: a full disk, I/O errors, a drive pulled out.

:class:`FaultyStorage` delegates every call to a real backend and, when a
programmed fault matches, raises the ``OSError`` the backend would have met
instead. The error is mapped by the same ``describe_oserror`` as
:class:`~.local.LocalStorage` uses, so the engine sees exactly the
:class:`~desktop_agent.engine.errors.StorageError` (same message, same path)
a real full or failing disk produces.

A failing save really starts writing: the backend receives an iterable of
parts that yields the first ``keep`` bytes and then raises, so a
LocalStorage goes through its own temp-file cleanup. A *torn* save instead
stores the partial content under the final name before failing, as a backend
that is not atomic (or a disk that lies about its writes) would.

Tests use it on top of a LocalStorage (so restic can check the result) or a
MemoryStorage (fast)::

    repo = Repository.open(LocalStorage(path), password)
    repo.storage = faulty = FaultyStorage(repo.storage)
    faulty.fail_save(FileType.PACK, errno.ENOSPC, nth=2)
"""

from __future__ import annotations

import errno as errnos
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, NoReturn, TypeVar, overload

from ..errors import describe_oserror
from .base import Buffer, FileType, Storage
from .local import LocalStorage

__all__ = ["Fault", "FaultyStorage", "Op"]

Op = Literal["save", "load", "list", "remove"]
_T = TypeVar("_T")


@dataclass
class Fault:
    """One programmed failure: which calls it hits and how they fail.

    Calls of ``op`` on ``ftype`` (``None``: any type) and, when given, only
    on the files in ``names`` are counted; the ``nth`` one and the
    ``count - 1`` after it fail (``count`` ``None``: every one from the
    ``nth`` on). A failing save first lets ``keep`` bytes
    (an int, or a fraction of the file when a float) reach the backend.
    """

    op: Op
    ftype: FileType | None
    err: int
    nth: int = 1
    count: int | None = 1
    keep: int | float = 0
    torn: bool = False
    names: frozenset[str] | None = None
    seen: int = 0
    fired: int = 0

    def matches(self, op: str, ftype: FileType, name: str) -> bool:
        """True when a call of ``op`` on a file is one this fault counts."""
        return (
            op == self.op
            and (self.ftype is None or self.ftype is ftype)
            and (self.names is None or name in self.names)
        )

    def trigger(self) -> bool:
        """Count one matching call; True when it must fail."""
        self.seen += 1
        if self.seen < self.nth:
            return False
        if self.count is not None and self.seen >= self.nth + self.count:
            return False
        self.fired += 1
        return True

    def keep_bytes(self, size: int) -> int:
        """How many of ``size`` bytes reach the backend before the error."""
        if isinstance(self.keep, float):
            return max(0, min(size, int(size * self.keep)))
        return max(0, min(size, self.keep))

    def error(self) -> OSError:
        """The OSError this fault raises."""
        return OSError(self.err, os.strerror(self.err))


class _Interrupted(Sequence[Buffer]):
    """Parts for a backend's save: the first bytes, then the write fails."""

    def __init__(self, prefix: bytes, exc: OSError) -> None:
        self._prefix = prefix
        self._exc = exc

    def __len__(self) -> int:
        return 2

    @overload
    def __getitem__(self, index: int) -> Buffer: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Buffer]: ...

    def __getitem__(self, index: int | slice) -> Buffer | Sequence[Buffer]:
        if isinstance(index, slice):
            return list(self)[index]
        if index in (0, -2):
            return self._prefix
        if index in (1, -1):
            raise self._exc
        raise IndexError(index)

    def __iter__(self) -> Iterator[Buffer]:
        if self._prefix:
            yield self._prefix
        raise self._exc


class FaultyStorage:
    """Any :class:`~.base.Storage`, with faults that tests program.

    Thread-safe. ``delay`` seconds are slept before every operation (a slow
    network drive). :attr:`calls` records every operation as
    ``(op, file type, name)``, faulted or not.
    """

    def __init__(self, inner: Storage, *, delay: float = 0.0) -> None:
        self.inner = inner
        self.delay = delay
        self.faults: list[Fault] = []
        self.calls: list[tuple[str, FileType | None, str]] = []
        self._lock = threading.Lock()
        self._unplugged: int | None = None  # errno every operation raises
        self._unplug_at: tuple[int, FileType | None, int] | None = None  # (saves, type, errno)

    # ------------------------------------------------------------ programming
    def fail(
        self,
        op: Op,
        ftype: FileType | None = None,
        err: int = errnos.EIO,
        *,
        nth: int = 1,
        count: int | None = 1,
        names: Iterable[str] | None = None,
    ) -> Fault:
        """Fail the ``nth`` ``op`` call on ``ftype`` (and ``names``), ``count`` times."""
        only = None if names is None else frozenset(names)
        return self._add(Fault(op, ftype, err, nth, count, names=only))

    def fail_save(
        self,
        ftype: FileType | None = None,
        err: int = errnos.ENOSPC,
        *,
        nth: int = 1,
        count: int | None = 1,
    ) -> Fault:
        """Fail the ``nth`` save of ``ftype`` (``count=None``: and every later one)."""
        return self._add(Fault("save", ftype, err, nth, count))

    def truncate_save(
        self,
        ftype: FileType | None = None,
        keep: int | float = 0.5,
        err: int = errnos.EIO,
        *,
        nth: int = 1,
        count: int | None = 1,
        torn: bool = False,
    ) -> Fault:
        """Let only ``keep`` bytes (or that fraction) of a save be written, then fail.

        ``torn``: the partial file is stored under its final name, as a
        backend that does not write atomically would leave it.
        """
        return self._add(Fault("save", ftype, err, nth, count, keep, torn))

    def fail_load(
        self,
        ftype: FileType | None = None,
        err: int = errnos.EIO,
        *,
        nth: int = 1,
        count: int | None = None,
        names: Iterable[str] | None = None,
    ) -> Fault:
        """Fail loads of ``ftype`` (only of ``names``, if given) from the ``nth`` on.

        ``count`` of them fail; ``None``: all.
        """
        return self.fail("load", ftype, err, nth=nth, count=count, names=names)

    def unplug(
        self, err: int = errnos.ENODEV, *, after_saves: int = 0, ftype: FileType | None = None
    ) -> None:
        """The drive goes away: every operation fails with ``err`` from now on.

        ``after_saves``: only once that many more saves (of ``ftype``, or of
        any type) have succeeded; the next save is the first to fail.
        """
        with self._lock:
            if after_saves <= 0:
                self._unplugged = err
                self._unplug_at = None
            else:
                self._unplug_at = (after_saves, ftype, err)

    def plug(self) -> None:
        """The drive is back: operations reach the backend again."""
        with self._lock:
            self._unplugged = None
            self._unplug_at = None

    def clear(self) -> None:
        """Remove every programmed fault and plug the drive back in."""
        with self._lock:
            self.faults = []
        self.plug()

    @property
    def unplugged(self) -> bool:
        """True while every operation fails."""
        return self._unplugged is not None

    def names(self, op: str, ftype: FileType) -> list[str]:
        """Names of ``ftype`` files that ``op`` was called on, in call order."""
        with self._lock:
            return [n for o, t, n in self.calls if o == op and t is ftype]

    def _add(self, fault: Fault) -> Fault:
        if fault.nth < 1 or (fault.count is not None and fault.count < 1):
            raise ValueError("nth and count start at 1")
        with self._lock:
            self.faults.append(fault)
        return fault

    # --------------------------------------------------------------- helpers
    def _what(self, ftype: FileType | None, name: str, op: str = "") -> str:
        """The path in messages, exactly as LocalStorage names it."""
        inner = self.inner
        if isinstance(inner, LocalStorage):
            if ftype is None:
                return (
                    os.path.join(inner.root, "tmp") if op == "spool" else f"creating {inner.root}"
                )
            if op == "list":
                return os.path.join(inner.root, ftype.value)
            return inner.path(ftype, name)
        if ftype is None:
            return inner.location
        if ftype is FileType.CONFIG:
            return f"{inner.location}/config"
        return f"{inner.location}/{ftype.value}/{name}"

    def _enter(self, op: str, ftype: FileType | None, name: str) -> Fault | None:
        """Record a call; raise when the drive is gone; return a save's fault."""
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            self.calls.append((op, ftype, name))
            if self._unplug_at is not None and op == "save":
                left, only, err = self._unplug_at
                if only is None or only is ftype:
                    if left == 0:
                        self._unplugged, self._unplug_at = err, None
                    else:
                        self._unplug_at = (left - 1, only, err)
            if self._unplugged is not None:
                raise describe_oserror(
                    OSError(self._unplugged, os.strerror(self._unplugged)),
                    self._what(ftype, name, op),
                )
            if ftype is None or op not in ("save", "load", "list", "remove"):
                return None
            for fault in self.faults:
                if fault.matches(op, ftype, name) and fault.trigger():
                    if op != "save":
                        raise describe_oserror(fault.error(), self._what(ftype, name, op))
                    return fault
        return None

    def _interrupted_save(self, fault: Fault, ftype: FileType, name: str, data: bytes) -> NoReturn:
        """Let part of ``data`` reach the backend, then fail as the backend would."""
        prefix = data[: fault.keep_bytes(len(data))]
        exc = fault.error()
        try:
            if fault.torn:
                self.inner.save(ftype, name, [prefix])
            else:
                self.inner.save(ftype, name, _Interrupted(prefix, exc))
        except OSError as inner_exc:  # a backend that does not map its errors
            raise describe_oserror(inner_exc, self._what(ftype, name)) from None
        raise describe_oserror(exc, self._what(ftype, name))

    # ---------------------------------------------------------- the protocol
    @property
    def location(self) -> str:
        """The wrapped backend's location."""
        return self.inner.location

    def exists(self) -> bool:
        """False while unplugged (a pulled drive leaves an empty mount point)."""
        if self.delay:
            time.sleep(self.delay)
        if self._unplugged is not None:
            return False
        return self.inner.exists()

    def create_layout(self) -> None:
        """Delegate, unless unplugged."""
        self._enter("create_layout", None, "")
        self._call(self.inner.create_layout, None, "")

    def save(self, ftype: FileType, name: str, parts: Sequence[Buffer]) -> None:
        """Delegate, or write part of the data and fail."""
        fault = self._enter("save", ftype, name)
        if fault is not None:
            self._interrupted_save(fault, ftype, name, b"".join(bytes(p) for p in parts))
        self._call(lambda: self.inner.save(ftype, name, parts), ftype, name)

    def save_file(self, ftype: FileType, name: str, path: str) -> None:
        """Delegate, or write part of the spooled file and fail (the file stays)."""
        fault = self._enter("save", ftype, name)
        if fault is not None:
            with open(path, "rb") as fh:
                data = fh.read()
            self._interrupted_save(fault, ftype, name, data)
        self._call(lambda: self.inner.save_file(ftype, name, path), ftype, name)

    def spool_dir(self) -> str:
        """The backend's spool directory, unless unplugged."""
        self._enter("spool", None, "")
        return self._call(self.inner.spool_dir, None, "", "spool")

    def load(
        self,
        ftype: FileType,
        name: str,
        offset: int = 0,
        length: int | None = None,
        *,
        max_size: int | None = None,
    ) -> bytes:
        """Delegate, or fail as programmed."""
        self._enter("load", ftype, name)
        return self._call(
            lambda: self.inner.load(ftype, name, offset, length, max_size=max_size), ftype, name
        )

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        """Delegate, or fail as programmed (when iterated, as LocalStorage does)."""
        self._enter("list", ftype, "")
        try:
            yield from self.inner.list(ftype)
        except OSError as exc:
            raise describe_oserror(exc, self._what(ftype, "", "list")) from None

    def remove(self, ftype: FileType, name: str) -> None:
        """Delegate, or fail as programmed."""
        self._enter("remove", ftype, name)
        self._call(lambda: self.inner.remove(ftype, name), ftype, name)

    def _call(self, fn: Callable[[], _T], ftype: FileType | None, name: str, op: str = "") -> _T:
        """Run a backend call; an OSError it lets through is mapped as LocalStorage maps it."""
        try:
            return fn()
        except OSError as exc:
            raise describe_oserror(exc, self._what(ftype, name, op)) from None

    def __repr__(self) -> str:
        return f"FaultyStorage({self.inner!r})"
