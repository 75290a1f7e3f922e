"""A repository on an SFTP server, laid out as restic's sftp backend lays it out.

``sftp:user@host:/path`` (or ``sftp://user@host:port//path``) holds
``config``, ``keys/``, ``snapshots/``, ``index/``, ``locks/`` and
``data/00`` .. ``data/ff/``, so restic reads and writes the same
repository. The connection is made with asyncssh as OpenSSH would make it:
the user's keys and SSH agent (never a password prompt), and the host key
checked against ``~/.ssh/known_hosts``. An unknown host key is refused with
a message that says how to accept it, a changed one with a warning; neither
is ever accepted silently.

asyncssh is asyncio-based and the engine is not: each :class:`SftpStorage`
runs an event loop in a daemon thread of its own, started on first use,
and the engine's threads submit coroutines to it. One SSH connection
carries up to :attr:`SftpStorage.upload_parallelism` SFTP channels (each one
a server process of its own with OpenSSH), so uploads and reads from
several engine threads run side by side.

Saves are atomic and durable: the data goes to ``<name>-tmp-<random>`` in
the final directory (a name :meth:`SftpStorage.list` skips), is fsynced
(``fsync@openssh.com``), made read-only and renamed into place
(``posix-rename@openssh.com``, else a plain rename). A retried upload whose
first try did land is accepted when the file is there with the right size.

Network trouble is retried by :class:`~.retry.Retrier`: a refused, reset or
lost connection and a request that got no answer for ``io_timeout``
seconds drop the connection, and the next try connects again. A wrong key,
an unknown host key, a permission error or a full disk fail at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import getpass
import os
import posixpath
import secrets
import stat
import warnings
import weakref
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import suppress
from typing import Any, TypeVar

from desktop_agent.config.location import Location

from ..errors import IntegrityError, NotFound, StorageError, describe_oserror
from .base import Buffer, FileType, is_storage_id, too_large
from .loopthread import LoopThread
from .retry import AuthError, Permanent, Retrier, RetryPolicy, Transient
from .sftpsession import Progress, Session
from .spool import make_spool_dir

with warnings.catch_warnings():
    # asyncssh still imports DSA support, which cryptography flags as deprecated
    # on import: a warning about a module we do not use must not reach users.
    warnings.simplefilter("ignore")
    import asyncssh
    from asyncssh import SFTPAttrs, SFTPClient, SFTPClientFile, SSHClientConnection

__all__ = ["HostKeyError", "SftpStorage"]

T = TypeVar("T")

_DIRS = [t.value for t in FileType if t is not FileType.CONFIG]
_BLOCK = 256 * 1024  # the largest SFTP read or write request we make
_IN_FLIGHT = 16  # requests outstanding per transfer (4 MiB): enough to fill a fast link
_DEFAULT_PORT = 22
# errors that mean the connection (or the channel) is gone: try again on a new one
_LOST = (asyncssh.sftp.SFTPConnectionLost, asyncssh.sftp.SFTPNoConnection)


class HostKeyError(StorageError):
    """The server's host key is unknown or changed: nothing was sent to it."""


_Op = Callable[[SFTPClient, Progress], Coroutine[Any, Any, T]]


class SftpStorage:
    """Repository files on an SFTP server (see the module docstring).

    ``location``: an ``sftp`` :class:`Location`. ``spool_dir``: the local
    folder where packs are assembled before upload. ``known_hosts``: the
    file of trusted host keys (default ``~/.ssh/known_hosts`` and
    ``/etc/ssh/ssh_known_hosts``). ``client_keys``: private key files to
    log in with (default: the user's ``~/.ssh/id_*`` and SSH agent, as
    OpenSSH would; given keys are used alone). ``connect_timeout``: seconds
    to connect and log in. ``io_timeout``: seconds a request may go
    without an answer before the connection counts as dead.
    """

    upload_parallelism = 4

    def __init__(
        self,
        location: Location,
        *,
        spool_dir: str,
        retry: RetryPolicy | None = None,
        known_hosts: str | None = None,
        client_keys: list[str] | None = None,
        connect_timeout: float = 15.0,
        io_timeout: float = 30.0,
    ) -> None:
        if location.scheme != "sftp":
            raise ValueError(f"not an SFTP location: {location.display()}")
        self._loc = location
        self._where = location.display()
        self._root = location.path
        self._spool = spool_dir
        self.retrier = Retrier(self._where, retry)  # public: tests and logs read its count
        if known_hosts is not None:
            self._known_hosts = [os.path.expanduser(known_hosts)]
        else:
            self._known_hosts = [
                os.path.expanduser("~/.ssh/known_hosts"),
                "/etc/ssh/ssh_known_hosts",
            ]
        self._client_keys = None if client_keys is None else list(client_keys)
        self._connect_timeout = connect_timeout
        self._io_timeout = io_timeout
        self._port = location.port or _DEFAULT_PORT
        self._user = location.user or getpass.getuser()
        self._runner = LoopThread(f"sftp {location.host}")
        self._session = Session(self._connect, self.upload_parallelism)
        # the loop thread must not outlive the storage: a dropped storage ends it
        self._finalizer = weakref.finalize(self, self._runner.stop, self._session.close)

    # ------------------------------------------------------------ plumbing

    @property
    def location(self) -> str:
        """The location as written (SFTP locations hold no password)."""
        return self._where

    def close(self) -> None:
        """Close the connection and end the loop thread (a later call reconnects)."""
        self._runner.stop(self._session.close)

    def __enter__(self) -> SftpStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SftpStorage({self._where!r})"

    def _rel(self, ftype: FileType, name: str) -> str:
        """A file's path inside the repository."""
        if ftype is FileType.CONFIG:
            return "config"
        if not is_storage_id(name):
            raise StorageError(f"invalid file name {name!r}")
        if ftype is FileType.PACK:
            return f"data/{name[:2]}/{name}"
        return f"{ftype.value}/{name}"

    def _abs(self, rel: str) -> str:
        """A path on the server (absolute, or relative to the login folder)."""
        return posixpath.join(self._root, rel) if rel else self._root

    def _shown(self, rel: str) -> str:
        """A path for messages."""
        return f"{self._where}/{rel}" if rel else self._where

    def _call(self, what: str, rel: str, op: _Op[T]) -> T:
        """Run ``op`` on an SFTP channel, retried under the policy."""

        def request() -> T:
            try:
                return self._runner.run(self._attempt(rel, op))
            except concurrent.futures.CancelledError:
                raise StorageError(
                    f"the connection to {self._where} was closed while {what}"
                ) from None

        return self.retrier.call(what, request)

    async def _attempt(self, rel: str, op: _Op[T]) -> T:
        """One try of ``op``; failures become Transient, Permanent or our own errors."""
        conn: SSHClientConnection | None = None
        try:
            async with self._session.channel() as (conn, sftp):
                progress = Progress()
                return await self._watched(op(sftp, progress), progress)
        except (StorageError, NotFound, IntegrityError):
            raise
        except Exception as exc:
            mapped = self._classify(exc, rel)
            if isinstance(mapped, Transient):
                self._session.reset(conn)
            raise mapped from None

    async def _watched(self, coro: Coroutine[Any, Any, T], progress: Progress) -> T:
        """``coro``, abandoned when none of its requests got an answer for ``io_timeout``."""
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        try:
            while True:
                remaining = progress.last + self._io_timeout - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"no answer for {self._io_timeout:g} s")
                done, _ = await asyncio.wait({task}, timeout=remaining)
                if done:
                    return task.result()
        finally:
            if not task.done():
                task.cancel()
                with suppress(BaseException):
                    await task

    async def _connect(self) -> SSHClientConnection:
        """Connect and log in (the session shares one attempt among its callers)."""
        known = self._read_known_hosts()
        options: dict[str, Any] = {}
        if self._client_keys is not None:
            options["client_keys"] = self._client_keys
            options["agent_path"] = None
        try:
            return await asyncssh.connect(
                self._loc.host.strip("[]"),
                self._loc.port or (),
                username=self._loc.user or (),
                known_hosts=known,
                connect_timeout=self._connect_timeout,
                # a silent server for io_timeout ends the connection, even between requests
                keepalive_interval=max(self._io_timeout / 3, 0.1),
                keepalive_count_max=2,
                password_auth=False,
                kbdint_auth=False,
                gss_auth=False,
                gss_kex=False,
                agent_forwarding=False,  # whatever ~/.ssh/config says: no agent for the server
                **options,
            )
        except asyncssh.HostKeyNotVerifiable:
            raise Permanent(await self._host_key_error(known)) from None

    def _read_known_hosts(self) -> asyncssh.SSHKnownHosts:
        text = []
        for path in self._known_hosts:
            try:
                with open(path, encoding="utf-8", errors="replace") as fh:
                    text.append(fh.read())
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise Permanent(describe_oserror(exc, path)) from None
        try:
            return asyncssh.import_known_hosts("\n".join(text))
        except (ValueError, asyncssh.KeyImportError) as exc:
            raise Permanent(
                StorageError(f"cannot read the known hosts in {self._known_hosts[0]}: {exc}")
            ) from None

    async def _host_key_error(self, known: asyncssh.SSHKnownHosts) -> HostKeyError:
        """Unknown or changed: whether the known hosts hold a key for this server."""
        host = self._loc.host.strip("[]")
        addr = ""
        with suppress(OSError):
            infos = await asyncio.get_running_loop().getaddrinfo(host, self._port)
            addr = str(infos[0][4][0]) if infos else ""
        port = self._port if self._port != _DEFAULT_PORT else None
        trusted = known.match(host, addr, port)[0]
        name = host if port is None else f"[{host}]:{port}"
        where = self._known_hosts[0]
        if trusted:
            return HostKeyError(
                f"WARNING: the host key of {name} has changed since it was recorded in "
                f"{where}: someone may be intercepting the connection (or the server was "
                "reinstalled); nothing was sent to it. If you know why it changed, remove the "
                f"old key with `ssh-keygen -R '{name}' -f {where}` and connect once with ssh "
                "to accept the new one"
            )
        ssh = f"ssh -p {self._port}" if port is not None else "ssh"
        return HostKeyError(
            f"the host key of {name} is not known: connect once with `{ssh} "
            f"{self._user}@{host}` and accept it, or add it to {where}"
        )

    def _classify(self, exc: Exception, rel: str) -> Exception:
        """The Transient, Permanent or engine error for an exception of asyncssh or the OS."""
        host = self._loc.host
        who = f"{self._user}@{host}"
        if isinstance(exc, (Transient, Permanent)):
            return exc
        if isinstance(exc, asyncssh.PermissionDenied):
            return Permanent(
                AuthError(
                    f"the SSH server {host} refused the login as {who}: "
                    "check your SSH key / agent (passwords are not used)"
                )
            )
        if isinstance(exc, (asyncssh.KeyImportError, asyncssh.KeyEncryptionError)):
            return Permanent(
                AuthError(
                    f"cannot use the SSH key to log in as {who} ({exc}); "
                    "load it into your SSH agent or use a key without passphrase"
                )
            )
        if isinstance(
            exc,
            (
                asyncssh.KeyExchangeFailed,
                asyncssh.ProtocolNotSupported,
                asyncssh.ServiceNotAvailable,
                asyncssh.IllegalUserName,
            ),
        ):
            return Permanent(StorageError(f"SSH connection to {host} failed: {exc.reason}"))
        if isinstance(exc, asyncssh.DisconnectError):
            return Transient(f"SSH connection lost ({exc.reason})")
        if isinstance(exc, asyncssh.ChannelOpenError):
            return Permanent(
                StorageError(
                    f"the SSH server {host} refused an SFTP session ({exc.reason}); "
                    "is SFTP enabled on it?"
                )
            )
        if isinstance(exc, _LOST):
            return Transient("SFTP connection lost")
        if isinstance(exc, (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath)):
            return NotFound(f"{self._shown(rel)} does not exist")
        if isinstance(exc, (asyncssh.SFTPPermissionDenied, asyncssh.SFTPWriteProtect)):
            return Permanent(
                StorageError(f"permission denied on the SFTP server: {self._shown(rel)}")
            )
        if isinstance(exc, (asyncssh.SFTPNoSpaceOnFilesystem, asyncssh.SFTPQuotaExceeded)):
            return Permanent(StorageError(self._full_message(rel)))
        if isinstance(exc, asyncssh.SFTPError):
            reason = exc.reason or type(exc).__name__
            if _sounds_full(reason):
                return Permanent(StorageError(self._full_message(rel)))
            return Permanent(
                StorageError(f"the SFTP server failed at {self._shown(rel)}: {reason}")
            )
        if isinstance(exc, TimeoutError):
            return Transient(str(exc) or "timed out")
        if isinstance(exc, ConnectionRefusedError):
            return Transient("connection refused")
        if isinstance(exc, ConnectionResetError):
            return Transient("connection reset")
        if isinstance(exc, OSError):
            return Transient(exc.strerror or str(exc) or type(exc).__name__)
        if isinstance(exc, asyncssh.Error):
            return Permanent(StorageError(f"SSH connection to {host} failed: {exc.reason}"))
        return exc

    def _full_message(self, rel: str) -> str:
        return (
            "the SFTP server is full (no space left or quota exceeded) "
            f"while writing {self._shown(rel)}"
        )

    # ------------------------------------------------------------ the Storage protocol

    def exists(self) -> bool:
        """True when the repository's ``config`` is on the server."""

        async def op(sftp: SFTPClient, progress: Progress) -> bool:
            return await self._stat(sftp, progress, self._abs("config")) is not None

        return self._call("looking for the repository", "config", op)

    def create_layout(self) -> None:
        """``mkdir -p`` the folder and restic's subfolders, ``data/00`` .. ``data/ff`` included."""

        async def op(sftp: SFTPClient, progress: Progress) -> None:
            await self._makedirs(sftp, progress, self._root)
            await self._mkdirs(sftp, progress, self._root, _DIRS)
            await self._mkdirs(sftp, progress, self._abs("data"), [f"{i:02x}" for i in range(256)])

        self._call("creating the repository folders", "", op)

    def save(self, ftype: FileType, name: str, parts: Sequence[Buffer]) -> None:
        """Atomically and durably store the concatenation of ``parts``."""
        rel = self._rel(ftype, name)
        data = b"".join(parts)

        def blocks(length: int) -> Iterator[tuple[int, bytes]]:
            return ((o, data[o : o + length]) for o in range(0, len(data), length))

        self._save(ftype, rel, len(data), blocks)

    def save_file(self, ftype: FileType, name: str, path: str) -> None:
        """Upload the spooled file at ``path``, then delete it."""
        rel = self._rel(ftype, name)
        try:
            size = os.stat(path).st_size
        except OSError as exc:
            raise describe_oserror(exc, path) from None

        def blocks(length: int) -> Iterator[tuple[int, bytes]]:
            # read on the loop thread, a block at a time: a pack is never all in memory
            try:
                with open(path, "rb", buffering=0) as fh:
                    offset = 0
                    while block := fh.read(length):
                        yield offset, block
                        offset += len(block)
            except OSError as exc:
                raise describe_oserror(exc, path) from None  # local: not worth a retry

        self._save(ftype, rel, size, blocks)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise describe_oserror(exc, path) from None

    def _save(
        self,
        ftype: FileType,
        rel: str,
        size: int,
        blocks: Callable[[int], Iterator[tuple[int, bytes]]],
    ) -> None:
        final = self._abs(rel)
        mode = 0o600 if ftype is FileType.LOCK else 0o400
        tries = 0

        async def op(sftp: SFTPClient, progress: Progress) -> None:
            nonlocal tries
            tries += 1
            if tries > 1 and await self._stat_size(sftp, progress, final) == size:
                return  # the try that failed had stored it after all
            tmp = f"{final}-tmp-{secrets.token_hex(6)}"
            fh = await self._create(sftp, progress, tmp, rel)
            try:
                try:
                    block = min(_BLOCK, sftp.limits.max_write_len or _BLOCK)
                    await self._write(fh, progress, blocks(block))
                    with suppress(asyncssh.SFTPOpUnsupported):
                        await progress(fh.fsync())
                except BaseException:
                    _close_later(fh)  # without waiting on a connection that may be dead
                    raise
                await progress(fh.close())
                # read-only, as restic makes its files; some servers refuse chmod: no matter
                with suppress(asyncssh.SFTPError):
                    await progress(sftp.chmod(tmp, mode))
                await self._rename(sftp, progress, tmp, final, size)
            except asyncssh.SFTPError as exc:
                if isinstance(exc, _LOST):
                    raise  # nothing more can be said on this connection
                # before the partial file is removed, while the disk is still as full as it got
                full = isinstance(exc, asyncssh.SFTPFailure) and await self._no_space(
                    sftp, final, size
                )
                with suppress(Exception):
                    await asyncio.wait_for(sftp.remove(tmp), self._io_timeout)
                if full:
                    raise StorageError(self._full_message(rel)) from None
                raise

        self._call(f"saving {rel}", rel, op)

    async def _create(
        self, sftp: SFTPClient, progress: Progress, tmp: str, rel: str
    ) -> SFTPClientFile:
        """Open a new temporary file, making its folder when it is missing (a
        ``data/xx`` removed by another tool) but only inside a repository that
        is still there: otherwise the folder is gone, and the backup with it."""
        flags = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_EXCL
        attrs = SFTPAttrs(permissions=0o600)
        try:
            return await progress(sftp.open(tmp, flags, attrs, encoding=None, block_size=0))
        except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath):
            pass
        if await self._stat(sftp, progress, self._abs("config")) is None:
            raise StorageError(
                f"the repository at {self._where} is gone from the server (its config file "
                "is missing); nothing more was written to it"
            )
        parent = posixpath.dirname(tmp)
        await self._mkdirs(sftp, progress, posixpath.dirname(parent), [posixpath.basename(parent)])
        return await progress(sftp.open(tmp, flags, attrs, encoding=None, block_size=0))

    async def _write(
        self, fh: SFTPClientFile, progress: Progress, blocks: Iterator[tuple[int, bytes]]
    ) -> None:
        """Write the blocks, one request each, with up to _IN_FLIGHT outstanding.

        The file is open with ``block_size=0`` (asyncssh makes one request per
        call): the requests are ours to cancel and reap when a try is abandoned.
        """
        pending: set[asyncio.Future[int]] = set()

        async def settle(room: int) -> None:
            """Wait until at most ``room`` writes are outstanding; raise the first failure."""
            nonlocal pending
            while len(pending) > room:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                failures = [t.exception() for t in done]  # retrieve every one of them
                for failure in failures:
                    if failure is not None:
                        raise failure
                progress.touch()

        try:
            for offset, block in blocks:
                await settle(_IN_FLIGHT - 1)
                pending.add(asyncio.ensure_future(fh.write(block, offset)))
            await settle(0)
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _read(
        self, fh: SFTPClientFile, progress: Progress, offset: int, length: int, block: int
    ) -> bytes:
        """``length`` bytes from ``offset`` (fewer at the end of the file), one
        request per block with up to _IN_FLIGHT outstanding; a short answer
        (a server that caps its reads) is asked again for the rest."""
        buf = bytearray(length)
        todo = [(at, min(block, length - at)) for at in range(0, length, block)]
        todo.reverse()
        pending: dict[asyncio.Future[bytes], tuple[int, int]] = {}
        end = length  # lowered when the file ends early
        try:
            while todo or pending:
                while todo and len(pending) < _IN_FLIGHT:
                    at, size = todo.pop()
                    pending[asyncio.ensure_future(fh.read(size, offset + at))] = (at, size)
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                progress.touch()
                failures = [t.exception() for t in done]  # retrieve every one of them
                for failure in failures:
                    if failure is not None:
                        raise failure
                for task in done:
                    at, size = pending.pop(task)
                    got = task.result()
                    if not got:
                        end = min(end, at)
                        continue
                    buf[at : at + len(got)] = got
                    if len(got) < size:
                        todo.append((at + len(got), size - len(got)))
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        return bytes(buf[:end])

    async def _rename(
        self, sftp: SFTPClient, progress: Progress, tmp: str, final: str, size: int
    ) -> None:
        try:
            await progress(sftp.posix_rename(tmp, final))
            return
        except asyncssh.SFTPOpUnsupported:
            pass
        try:
            await progress(sftp.rename(tmp, final))
        except asyncssh.SFTPError as exc:
            # a plain SFTP rename does not replace: the same content may be there already
            if isinstance(exc, _LOST) or await self._stat_size(sftp, progress, final) != size:
                raise
            await progress(sftp.remove(tmp))

    async def _no_space(self, sftp: SFTPClient, path: str, size: int) -> bool:
        """Whether a generic failure while writing ``path`` was a full disk
        (OpenSSH reports ENOSPC as a plain "Failure")."""
        try:
            vfs = await asyncio.wait_for(sftp.statvfs(posixpath.dirname(path)), self._io_timeout)
        except (asyncssh.SFTPError, TimeoutError):
            return False
        return bool(vfs.bavail * vfs.frsize < size + 65536)

    def spool_dir(self) -> str:
        """The local folder where packs wait for upload (made private)."""
        return make_spool_dir(self._spool)

    def load(
        self,
        ftype: FileType,
        name: str,
        offset: int = 0,
        length: int | None = None,
        *,
        max_size: int | None = None,
    ) -> bytes:
        """Read a file, or ``length`` bytes of it from ``offset``."""
        rel = self._rel(ftype, name)
        shown = self._shown(rel)

        async def op(sftp: SFTPClient, progress: Progress) -> bytes:
            path = self._abs(rel)
            try:
                fh = await progress(sftp.open(path, asyncssh.FXF_READ, encoding=None, block_size=0))
            except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath):
                raise NotFound(f"{shown} does not exist") from None
            try:
                want = length
                if want is None:
                    size = (await progress(fh.stat())).size or 0
                    if max_size is not None and size > max_size:
                        raise too_large(shown, size, max_size)
                    want = max(0, size - offset)
                block = min(_BLOCK, sftp.limits.max_read_len or _BLOCK)
                data = await self._read(fh, progress, offset, want, block)
            except BaseException:
                _close_later(fh)  # without waiting on a connection that may be dead
                raise
            await progress(fh.close())
            if len(data) != want:
                raise StorageError(f"{shown}: file is shorter than expected (truncated?)")
            return data

        return self._call(f"loading {rel}", rel, op)

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        """Yield ``(name, size)`` of a type's files; temporary and foreign ones are skipped."""

        async def op(sftp: SFTPClient, progress: Progress) -> list[tuple[str, int]]:
            if ftype is FileType.CONFIG:
                attrs = await self._stat(sftp, progress, self._abs("config"))
                return [] if attrs is None else [("", attrs.size or 0)]
            base = self._abs(ftype.value)
            if ftype is not FileType.PACK:
                return _ids(await self._readdir(sftp, progress, base))
            subdirs = [
                e.filename
                for e in await self._readdir(sftp, progress, base)
                if isinstance(e.filename, str)
                and e.attrs.permissions is not None
                and stat.S_ISDIR(e.attrs.permissions)
                and e.filename not in (".", "..")
            ]
            listings = await asyncio.gather(
                *(self._readdir(sftp, progress, posixpath.join(base, d)) for d in subdirs)
            )
            return [entry for listing in listings for entry in _ids(listing)]

        yield from self._call(f"listing {ftype.value}", ftype.value, op)

    def remove(self, ftype: FileType, name: str) -> None:
        """Delete a file; a missing one is fine."""
        rel = self._rel(ftype, name)

        async def op(sftp: SFTPClient, progress: Progress) -> None:
            with suppress(asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath):
                await progress(sftp.remove(self._abs(rel)))

        self._call(f"removing {rel}", rel, op)

    # ------------------------------------------------------------ helpers on the loop

    async def _stat(self, sftp: SFTPClient, progress: Progress, path: str) -> SFTPAttrs | None:
        """The attributes of ``path``, None when it does not exist."""
        try:
            return await progress(sftp.stat(path))
        except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath):
            return None

    async def _stat_size(self, sftp: SFTPClient, progress: Progress, path: str) -> int | None:
        attrs = await self._stat(sftp, progress, path)
        return None if attrs is None else attrs.size

    async def _readdir(
        self, sftp: SFTPClient, progress: Progress, path: str
    ) -> Sequence[asyncssh.SFTPName]:
        """The entries of a folder; none when it does not exist."""
        try:
            return await progress(sftp.readdir(path))
        except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath):
            return []

    async def _makedirs(self, sftp: SFTPClient, progress: Progress, path: str) -> None:
        """``mkdir -p path``."""
        if path in ("", "/", ".") or await self._is_dir(sftp, progress, path):
            return
        parent = posixpath.dirname(path.rstrip("/"))
        if parent and parent != path:
            await self._makedirs(sftp, progress, parent)
        await self._mkdirs(sftp, progress, parent, [posixpath.basename(path.rstrip("/"))])

    async def _mkdirs(
        self, sftp: SFTPClient, progress: Progress, parent: str, names: Sequence[str]
    ) -> None:
        """Make the missing folders among ``parent/name`` (0700), all at once."""
        existing = {e.filename for e in await self._readdir(sftp, progress, parent or ".")}

        async def mkdir(name: str) -> None:
            path = posixpath.join(parent, name)
            try:
                await progress(sftp.mkdir(path, SFTPAttrs(permissions=0o700)))
            except asyncssh.SFTPFailure:
                # made meanwhile by another client (OpenSSH says "Failure" for EEXIST)
                if not await self._is_dir(sftp, progress, path):
                    raise

        await asyncio.gather(*(mkdir(n) for n in names if n not in existing))

    async def _is_dir(self, sftp: SFTPClient, progress: Progress, path: str) -> bool:
        attrs = await self._stat(sftp, progress, path)
        return attrs is not None and stat.S_ISDIR(attrs.permissions or 0)


_closing: set[asyncio.Future[None]] = set()  # strong references until they are done


def _close_later(fh: SFTPClientFile) -> None:
    """Close a file in the background, ignoring the outcome (the try failed already)."""
    task = asyncio.ensure_future(fh.close())
    _closing.add(task)
    task.add_done_callback(_reaped)


def _reaped(task: asyncio.Future[None]) -> None:
    _closing.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a failed close is no news


def _ids(entries: Sequence[asyncssh.SFTPName]) -> list[tuple[str, int]]:
    """The regular files with a valid id for a name, with their sizes."""
    return [
        (e.filename, e.attrs.size or 0)
        for e in entries
        if isinstance(e.filename, str)
        and is_storage_id(e.filename)
        and e.attrs.permissions is not None
        and stat.S_ISREG(e.attrs.permissions)
    ]


def _sounds_full(reason: str) -> bool:
    """Whether a server's error text says the disk or the quota is full."""
    text = reason.lower()
    return "no space" in text or "quota" in text or "disk full" in text
