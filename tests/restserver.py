"""A small REST server that behaves as restic's rest-server does, for tests.

It serves restic's REST protocol (``doc/REST_backend.rst``) over a folder,
with rest-server's rules where ``rclone serve restic`` is laxer:

* a file that exists is never replaced: a second POST of a name gets 403;
* the body of an upload must hash (SHA-256) to its name, else 400
  (``verify``: the types checked; rest-server checks all of them);
* ``quota``: an upload that would take the repository past that many bytes
  gets 507 Insufficient Storage;
* ``append_only``: DELETE is refused with 403, except of locks;
* ``user``/``password``: HTTP basic auth, 401 without it;
* packs live in ``data/xx/``; a listing is v2 JSON when asked for
  (``application/vnd.x.restic.rest.v2``) and v1 (names) otherwise, or
  always v1 with ``v1_only`` (an old server);
* ``Range`` reads answer 206, or 416 when the range starts past the end.

Faults on demand: :meth:`RestServer.fail_next` answers the next requests
with an error status; :meth:`RestServer.drop_after_store` stores the next
uploads and then closes the connection without an answer (the answer was
lost); :attr:`RestServer.on_store` is called with the path of each stored
file before it is answered (a test cuts the network there). Repositories
live at any path (``/`` or ``/some/repo/``), as on rest-server. Every
request is recorded in :attr:`RestServer.requests`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import sys
import threading
from collections.abc import Callable, Collection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

__all__ = ["RestServer"]

TYPES = ("data", "index", "keys", "locks", "snapshots")
V1 = "application/vnd.x.restic.rest.v1"
V2 = "application/vnd.x.restic.rest.v2"
_OBJECT = re.compile(r"^(.*)/(data|index|keys|locks|snapshots)/([0-9a-f]{64})?$")


class RestServer:
    """rest-server's behaviour over ``root``, on 127.0.0.1 at a free port."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        user: str = "",
        password: str = "",
        append_only: bool = False,
        quota: int | None = None,
        verify: Collection[str] = TYPES,
        v1_only: bool = False,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.user, self.password = user, password
        self.append_only = append_only
        self.quota = quota
        self.verify = frozenset(verify)
        self.v1_only = v1_only
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status); 0: dropped
        self.on_store: Callable[[str], None] | None = None
        self._lock = threading.Lock()
        self._fail: list[int] = []
        self._drops = 0
        self._sockets: set[socket.socket] = set()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.rest = self  # type: ignore[attr-defined]
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        """``http://127.0.0.1:port`` (append a repository path)."""
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------ faults
    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` requests with ``status`` (the body is read first)."""
        with self._lock:
            self._fail = [status] * count

    def drop_after_store(self, count: int = 1) -> None:
        """Store the next ``count`` uploads, then close the connection unanswered."""
        with self._lock:
            self._drops = count

    def count(self, method: str, path_part: str = "", status: int | None = None) -> int:
        """How many requests of ``method`` (with ``path_part`` in the path) were made."""
        with self._lock:
            return sum(
                1
                for m, p, s in self.requests
                if m == method and path_part in p and (status is None or s == status)
            )

    # ------------------------------------------------------------ lifecycle
    def start(self) -> RestServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut the open (keep-alive) connections."""
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            open_sockets = list(self._sockets)
        for s in open_sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)

    def __enter__(self) -> RestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ helpers
    def _take_fault(self) -> int | None:
        with self._lock:
            return self._fail.pop(0) if self._fail else None

    def _take_drop(self) -> bool:
        with self._lock:
            if self._drops:
                self._drops -= 1
                return True
            return False

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    def _track(self, sock: socket.socket, live: bool) -> None:
        with self._lock:
            (self._sockets.add if live else self._sockets.discard)(sock)

    def usage(self, repo: Path) -> int:
        """Bytes stored in a repository (what the quota counts)."""
        return sum(
            os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(repo) for f in files
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # a client (or the fault proxy) that resets its connection is a normal event here
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes
    server: ThreadingHTTPServer

    @property
    def rest(self) -> RestServer:
        return self.server.rest  # type: ignore[attr-defined, no-any-return]

    def setup(self) -> None:
        super().setup()
        self.rest._track(self.connection, True)

    def finish(self) -> None:
        self.rest._track(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        pass

    # ------------------------------------------------------------ plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.rest._record(self.command, self.path, status)
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status >= 400 and not body:
            body = (self.responses.get(status, ("Error",))[0] + "\n").encode()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self) -> bool:
        if not self.rest.user:
            return True
        want = base64.b64encode(f"{self.rest.user}:{self.rest.password}".encode()).decode()
        return self.headers.get("Authorization", "") == f"Basic {want}"

    def _route(self) -> tuple[Path, str, str] | None:
        """(repository folder, type or "config" or "", id or "") of the request path."""
        path = urlsplit(self.path).path
        if ".." in path.split("/"):
            return None
        if path.endswith("/config"):
            repo, kind, name = path[: -len("/config")], "config", ""
        elif m := _OBJECT.match(path):
            repo, kind, name = m.group(1), m.group(2), m.group(3) or ""
        elif path.endswith("/"):
            repo, kind, name = path[:-1], "", ""
        else:
            return None
        return self.rest.root / repo.strip("/"), kind, name

    @staticmethod
    def _file(repo: Path, kind: str, name: str) -> Path:
        if kind == "config":
            return repo / "config"
        if kind == "data":
            return repo / "data" / name[:2] / name
        return repo / kind / name

    # ------------------------------------------------------------ methods
    def do_HEAD(self) -> None:  # noqa: N802 - http.server's names
        self._handle()

    def do_GET(self) -> None:  # noqa: N802
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle()

    def _handle(self) -> None:
        body = self._body() if self.command == "POST" else b""
        fault = self.rest._take_fault()
        if fault is not None:
            return self._reply(fault)
        if not self._authorized():
            return self._reply(401, headers={"WWW-Authenticate": 'Basic realm="restic"'})
        route = self._route()
        if route is None:
            return self._reply(404)
        repo, kind, name = route
        if kind == "":
            if self.command != "POST":
                return self._reply(405, headers={"Allow": "POST"})
            if urlsplit(self.path).query != "create=true":
                return self._reply(400)
            for t in TYPES:
                (repo / t).mkdir(parents=True, exist_ok=True)
            for i in range(256):
                (repo / "data" / f"{i:02x}").mkdir(exist_ok=True)
            return self._reply(200)
        if kind != "config" and not name:
            if self.command != "GET":
                return self._reply(405, headers={"Allow": "GET"})
            return self._list(repo, kind)
        target = self._file(repo, kind, name)
        if self.command == "HEAD":
            if not target.is_file():
                return self._reply(404)
            return self._head(target)
        if self.command == "GET":
            return self._get(target)
        if self.command == "POST":
            return self._post(repo, kind, name, target, body)
        return self._delete(kind, target)

    def _head(self, target: Path) -> None:
        self.rest._record(self.command, self.path, 200)
        self.send_response(200)
        self.send_header("Content-Length", str(target.stat().st_size))
        self.end_headers()

    def _list(self, repo: Path, kind: str) -> None:
        folder = repo / kind
        if not folder.is_dir():
            return self._reply(404)
        files = [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".tmp")]
        if self.headers.get("Accept") == V2 and not self.rest.v1_only:
            doc: list[object] = [{"name": p.name, "size": p.stat().st_size} for p in files]
            kind_header = V2
        else:
            doc, kind_header = [p.name for p in files], V1
        self._reply(200, json.dumps(doc).encode(), {"Content-Type": kind_header})

    def _get(self, target: Path) -> None:
        if not target.is_file():
            return self._reply(404)
        data = target.read_bytes()
        wanted = self.headers.get("Range")
        if not wanted:
            return self._reply(200, data)
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())
        if m is None:
            return self._reply(400)
        start = int(m.group(1))
        end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
        if start >= len(data):
            return self._reply(416, headers={"Content-Range": f"bytes */{len(data)}"})
        headers = {"Content-Range": f"bytes {start}-{end}/{len(data)}"}
        self._reply(206, data[start : end + 1], headers)

    def _post(self, repo: Path, kind: str, name: str, target: Path, body: bytes) -> None:
        if target.exists():
            return self._reply(403)
        if kind in self.rest.verify and hashlib.sha256(body).hexdigest() != name:
            return self._reply(400, b"file content does not match hash\n")
        if self.rest.quota is not None and self.rest.usage(repo) + len(body) > self.rest.quota:
            return self._reply(507)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f"{target.name}.{os.urandom(4).hex()}.tmp")
        temp.write_bytes(body)
        os.replace(temp, target)
        if self.rest.on_store is not None:
            self.rest.on_store(self.path)
        if self.rest._take_drop():
            self.rest._record(self.command, self.path, 0)
            self.close_connection = True  # stored, and the answer is lost
            return
        self._reply(200)

    def _delete(self, kind: str, target: Path) -> None:
        if self.rest.append_only and kind != "locks":
            return self._reply(403)
        try:
            target.unlink()
        except FileNotFoundError:
            return self._reply(404)
        self._reply(200)
