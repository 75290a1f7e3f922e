"""The /ws endpoint with a real server on a real port, a real client and real backups."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support import FAST_KDF, PASSWORD, refuse_listing, reopen, signature, tree_bytes, write
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from desktop_agent.app import Agent
from desktop_agent.config import AgentConfig, BackupConfig, Config, RepositoryConfig
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.restore import RestoreOptions, restore
from desktop_agent.engine.storage import FileType, LocalStorage
from desktop_agent.jobs import EventBus, JobController
from desktop_agent.server import AgentServer

TOKEN = "test-token-abcdefghijklmnop"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SEED_PROGRESS_FIELDS = {
    "job_id": str,
    "percent": float,
    "transferred_bytes": int,
    "total_bytes": int,
    "bytes_per_second": int,
    "eta_seconds": int,
    "current_file": (str, type(None)),
    "files_processed": int,
    "total_files": int,
}


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def make_config(tmp_path: Path, sources: list[Path], origins: tuple[str, ...] = ()) -> Config:
    repo = tmp_path / "repo"
    if not repo.exists():
        Repository.init(LocalStorage(repo), PASSWORD, kdf_params=FAST_KDF)
    return Config(
        agent=AgentConfig(token=TOKEN, allowed_origins=origins),
        repository=RepositoryConfig(path=str(repo), password_file=None),
        backup=BackupConfig(sources=tuple(str(s) for s in sources), exclude=(), interval_minutes=0),
        path=tmp_path / "config.toml",
    )


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 120))


class Agented:
    """An Agent on port 0 for the duration of an async block."""

    def __init__(self, config: Config) -> None:
        self.agent = Agent(config, host="127.0.0.1", port=0, schedule=False)

    async def __aenter__(self) -> Agent:
        await self.agent.start()
        return self.agent

    async def __aexit__(self, *exc: object) -> None:
        await self.agent.stop()


def client(agent: Agent, **kw: Any) -> Any:
    kw.setdefault("additional_headers", AUTH)
    return connect(agent.server.url, **kw)


async def send(ws: ClientConnection, type_: str, payload: Any) -> None:
    await ws.send(json.dumps({"type": type_, "payload": payload}))


async def until(
    ws: ClientConnection, pred: Callable[[dict[str, Any]], bool], timeout: float = 60
) -> list[dict[str, Any]]:
    """Messages received up to and including the first that matches."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            msg = json.loads(await ws.recv())
            got.append(msg)
            if pred(msg):
                return got


async def quiet(ws: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    """Everything that arrives within ``seconds``."""
    got = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                got.append(json.loads(await ws.recv()))
    except TimeoutError:
        pass
    return got


def terminal(job_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: (
        m["type"] in ("backup:completed", "backup:failed") and m["payload"]["job_id"] == job_id
    )


def big_source(tmp_path: Path, files: int = 8, mib: int = 40) -> Path:
    src = tmp_path / "big"
    for i in range(files):
        write(src / f"f{i}.bin", os.urandom(mib * 1024 * 1024))
    return src


def small_source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for i in range(20):
        write(src / f"d{i % 3}" / f"f{i}.txt", f"file {i}\n".encode() * 1000)
    write(src / "blob.bin", os.urandom(3 * 1024 * 1024))
    return src


# ----------------------------------------------------------------- messages
def test_a_backup_reports_every_seed_event_to_every_client(tmp_path):
    src = small_source(tmp_path)
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())

    async def scenario() -> None:
        async with Agented(make_config(tmp_path, [src])) as agent:
            async with client(agent) as a, client(agent) as b:
                await send(a, "backup:start", {})
                got_a = await until(a, lambda m: m["type"] in ("backup:completed", "backup:failed"))
                got_b = await until(b, lambda m: m["type"] in ("backup:completed", "backup:failed"))
        started = [m for m in got_a if m["type"] == "backup:started"]
        assert len(started) == 1
        job_id = started[0]["payload"]["job_id"]
        assert got_a[-1] == {
            "type": "backup:completed",
            "payload": {"job_id": job_id, "total_bytes": total},
        }
        progress = [m["payload"] for m in got_a if m["type"] == "backup:progress"]
        assert progress, "no progress"
        for p in progress:
            assert set(p) == set(SEED_PROGRESS_FIELDS)
            for key, kind in SEED_PROGRESS_FIELDS.items():
                assert isinstance(p[key], kind), (key, p[key])
            assert p["job_id"] == job_id
        percents = [p["percent"] for p in progress]
        assert percents == sorted(percents) and percents[-1] == 100.0
        assert progress[-1]["transferred_bytes"] == progress[-1]["total_bytes"] == total
        assert progress[-1]["files_processed"] == progress[-1]["total_files"] == 21
        # both clients see the same events in the same order (progress may be merged)
        assert [m for m in got_a if m["type"] != "backup:progress"] == [
            m for m in got_b if m["type"] != "backup:progress"
        ]
        snaps = list(Repository.open(LocalStorage(tmp_path / "repo"), PASSWORD).list_snapshots())
        assert len(snaps) == 1

    run(scenario)


def test_backup_start_with_paths_and_queued_jobs(tmp_path):
    one = small_source(tmp_path)
    two = write(tmp_path / "other" / "x.txt", b"x").parent

    async def scenario() -> None:
        async with Agented(make_config(tmp_path, [one])) as agent:
            async with client(agent) as ws:
                await send(ws, "backup:start", {})
                await send(ws, "backup:start", {"paths": [str(two)]})
                started = await until(ws, lambda m: m["type"] == "backup:started")
                first = started[-1]["payload"]["job_id"]
                rest = await until(
                    ws, lambda m: m["type"] == "backup:started" and m["payload"]["job_id"] != first
                )
                second = rest[-1]["payload"]["job_id"]
                await send(ws, "agent:status", None)
                events = await until(ws, terminal(second))
        # the second job starts only after the first ended: one job per repository
        kinds = [(m["type"], m["payload"].get("job_id")) for m in events]
        first_end = kinds.index(("backup:completed", first))
        second_progress = kinds.index(("backup:progress", second))
        assert first_end < second_progress
        status = next(m["payload"] for m in events if m["type"] == "agent:status")
        assert status["status"] == "running" and status["active_jobs"] == 2
        repo = Repository.open(LocalStorage(tmp_path / "repo"), PASSWORD)
        assert sorted(s.paths for s in repo.list_snapshots()) == sorted([(str(one),), (str(two),)])

    run(scenario)


def test_status_is_answered_to_the_asker_only(tmp_path):
    async def scenario() -> None:
        async with Agented(make_config(tmp_path, [tmp_path])) as agent:
            async with client(agent) as a, client(agent) as b:
                await send(a, "agent:status", None)
                reply = json.loads(await asyncio.wait_for(a.recv(), 5))
                assert reply["type"] == "agent:status"
                assert reply["payload"]["status"] == "idle"
                assert reply["payload"]["active_jobs"] == 0
                assert isinstance(reply["payload"]["uptime_secs"], int)
                assert await quiet(b, 0.3) == []

    run(scenario)


def test_bad_commands_get_an_error_and_the_connection_stays_open(tmp_path):
    async def scenario() -> None:
        async with Agented(make_config(tmp_path, [tmp_path])) as agent:
            async with client(agent) as a, client(agent) as b:
                cases = [
                    ("garbage{", None),
                    (json.dumps({"type": "what:ever", "payload": None}), "what:ever"),
                    (
                        json.dumps({"type": "backup:pause", "payload": {"job_id": "nope"}}),
                        "backup:pause",
                    ),
                    (json.dumps({"type": "backup:resume", "payload": {}}), "backup:resume"),
                    (
                        json.dumps({"type": "backup:cancel", "payload": {"job_id": "x"}}),
                        "backup:cancel",
                    ),
                ]
                for frame, request_type in cases:
                    await a.send(frame)
                    reply = json.loads(await asyncio.wait_for(a.recv(), 5))
                    assert reply["type"] == "error", reply
                    assert reply["payload"]["request_type"] == request_type
                    assert reply["payload"]["message"]
                await a.send(b"\x00\x01binary")
                reply = json.loads(await asyncio.wait_for(a.recv(), 5))
                assert reply["type"] == "error" and "binary" in reply["payload"]["message"]
                assert await quiet(b, 0.2) == []  # errors go to the sender only
                await send(a, "agent:status", None)  # still served
                assert json.loads(await asyncio.wait_for(a.recv(), 5))["type"] == "agent:status"

    run(scenario)


def test_oversized_frames_close_only_that_connection(tmp_path):
    async def scenario() -> None:
        async with Agented(make_config(tmp_path, [tmp_path])) as agent:
            async with client(agent, max_size=None) as a, client(agent) as b:
                await a.send(
                    json.dumps({"type": "agent:status", "payload": None, "pad": "x" * 70_000})
                )
                with pytest.raises(ConnectionClosed) as info:
                    await asyncio.wait_for(a.recv(), 5)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1009
                await send(b, "agent:status", None)
                assert json.loads(await asyncio.wait_for(b.recv(), 5))["type"] == "agent:status"

    run(scenario)


# --------------------------------------------------------------- refusals
def _status_of(exc: BaseException) -> int:
    assert isinstance(exc, InvalidStatus)
    return exc.response.status_code


def test_refusals_before_the_upgrade(tmp_path):
    origin = "https://backup.example.com"

    async def scenario() -> None:
        async with Agented(make_config(tmp_path, [tmp_path], origins=(origin,))) as agent:
            url = agent.server.url
            attempts = [
                ({}, url, 401),  # no token
                ({"additional_headers": {"Authorization": "Bearer wrong"}}, url, 401),
                ({"additional_headers": {"Authorization": TOKEN}}, url, 401),  # no "Bearer"
                ({"additional_headers": AUTH}, url.replace("/ws", "/other"), 404),
                ({"additional_headers": AUTH}, url + "/deeper", 404),
                ({"additional_headers": AUTH, "origin": "https://evil.example.com"}, url, 403),
                ({"origin": origin}, url, 401),  # an allowed browser still needs the token
                (
                    {
                        "origin": origin,
                        "subprotocols": ["desktop-agent", "desktop-agent.token.wrong"],
                    },
                    url,
                    401,
                ),
            ]
            for kwargs, where, code in attempts:
                with pytest.raises(InvalidStatus) as info:
                    async with connect(where, **kwargs):
                        pass
                assert _status_of(info.value) == code, (kwargs, where)
            # the browser way: an allowed origin and the token as a subprotocol
            async with connect(
                url, origin=origin, subprotocols=["desktop-agent", f"desktop-agent.token.{TOKEN}"]
            ) as ws:
                assert ws.subprotocol == "desktop-agent"  # the token is never echoed
                await send(ws, "agent:status", None)
                assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "agent:status"
            # the query string is not a way in (it would end up in logs)
            with pytest.raises(InvalidStatus):
                async with connect(url + f"?token={TOKEN}"):
                    pass

    run(scenario)


def test_the_token_never_reaches_the_log(tmp_path, caplog):
    import logging

    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        async with Agented(make_config(tmp_path, [tmp_path])) as agent:
            async with client(agent) as ws:
                await send(ws, "agent:status", None)
                await ws.recv()
            for kwargs in ({"additional_headers": {"Authorization": f"Bearer {TOKEN}x"}}, {}):
                with pytest.raises(InvalidStatus):
                    async with connect(agent.server.url, **kwargs):
                        pass

    run(scenario)
    assert caplog.records
    assert TOKEN not in caplog.text


# ------------------------------------------------------- pause and cancel
def test_pause_holds_still_then_resume_completes(tmp_path):
    src = big_source(tmp_path)

    async def scenario() -> None:
        async with Agented(make_config(tmp_path, [src])) as agent:
            async with client(agent) as ws, client(agent) as watcher:
                await send(ws, "backup:start", {})
                first = await until(
                    ws,
                    lambda m: (
                        m["type"] == "backup:progress" and m["payload"]["transferred_bytes"] > 0
                    ),
                )
                job_id = first[-1]["payload"]["job_id"]
                asked = time.monotonic()
                await send(ws, "backup:pause", {"job_id": job_id})
                await until(ws, lambda m: m["type"] == "backup:paused")
                latency = time.monotonic() - asked
                assert latency < 5, latency
                seen = await until(watcher, lambda m: m["type"] == "backup:paused")
                assert seen[-1]["payload"] == {"job_id": job_id}
                await send(ws, "agent:status", None)
                status = await until(ws, lambda m: m["type"] == "agent:status")
                assert status[-1]["payload"]["status"] == "paused"
                on_disk = tree_bytes(tmp_path / "repo")
                # the pause window: no progress, no bytes written
                assert [m for m in await quiet(ws, 1.0) if m["type"] == "backup:progress"] == []
                assert tree_bytes(tmp_path / "repo") == on_disk
                await send(ws, "backup:pause", {"job_id": job_id})  # already paused: an error
                err = await until(ws, lambda m: m["type"] == "error")
                assert err[-1]["payload"]["request_type"] == "backup:pause"
                await send(ws, "backup:resume", {"job_id": job_id})
                rest = await until(ws, terminal(job_id))
                assert rest[0]["type"] == "backup:resumed" or any(
                    m["type"] == "backup:resumed" for m in rest
                )
                assert rest[-1]["type"] == "backup:completed"
        repo = Repository.open(LocalStorage(tmp_path / "repo"), PASSWORD)
        snap = repo.find_snapshot("latest")
        out = tmp_path / "out"
        assert restore(repo, snap, RestoreOptions(target=str(out))).errors == ()
        assert signature(out / str(src).lstrip("/")) == signature(src)

    run(scenario)


def test_cancel_ends_with_failed_cancelled_and_a_clean_repository(tmp_path, restic):
    src = big_source(tmp_path)

    async def scenario() -> None:
        async with Agented(make_config(tmp_path, [src])) as agent:
            async with client(agent) as ws:
                await send(ws, "backup:start", {})
                got = await until(
                    ws,
                    lambda m: (
                        m["type"] == "backup:progress" and m["payload"]["transferred_bytes"] > 0
                    ),
                )
                job_id = got[-1]["payload"]["job_id"]
                await send(ws, "backup:cancel", {"job_id": job_id})
                end = await until(ws, terminal(job_id))
                assert end[-1] == {
                    "type": "backup:failed",
                    "payload": {"job_id": job_id, "error": "cancelled"},
                }
                assert [m for m in end if m["type"] in ("backup:completed", "backup:failed")] == [
                    end[-1]
                ]
                await send(ws, "backup:cancel", {"job_id": job_id})
                err = await until(ws, lambda m: m["type"] == "error")
                assert "already" in err[-1]["payload"]["message"]
                # a paused job can be cancelled too
                await send(ws, "backup:start", {})
                got = await until(
                    ws,
                    lambda m: (
                        m["type"] == "backup:progress" and m["payload"]["transferred_bytes"] > 0
                    ),
                )
                job2 = got[-1]["payload"]["job_id"]
                await send(ws, "backup:pause", {"job_id": job2})
                await until(ws, lambda m: m["type"] == "backup:paused")
                await send(ws, "backup:cancel", {"job_id": job2})
                end = await until(ws, terminal(job2))
                assert end[-1]["payload"]["error"] == "cancelled"
        storage = LocalStorage(tmp_path / "repo")
        assert list(storage.list(FileType.SNAPSHOT)) == []
        assert list(storage.list(FileType.LOCK)) == []

    run(scenario)
    restic(tmp_path / "repo", "check", "--read-data")


def test_a_full_destination_ends_in_one_clear_backup_failed(tmp_path, tmpfs, restic):
    """A real 40 MB filesystem and 120 MB to back up: every client sees one
    backup:failed naming the problem; the repository checks clean, with no
    snapshot and no lock left."""
    src = big_source(tmp_path, files=3)
    repo = tmpfs / "repo"
    Repository.init(LocalStorage(repo), PASSWORD, kdf_params=FAST_KDF)
    config = make_config(tmp_path, [src])
    config = Config(
        agent=config.agent,
        repository=RepositoryConfig(path=str(repo), password_file=None),
        backup=config.backup,
        path=config.path,
    )

    async def scenario() -> None:
        async with Agented(config) as agent:
            async with client(agent) as ws, client(agent) as watcher:
                await send(ws, "backup:start", {})
                started = await until(ws, lambda m: m["type"] == "backup:started")
                job_id = started[-1]["payload"]["job_id"]
                for conn in (ws, watcher):
                    end = await until(conn, terminal(job_id))
                    assert end[-1]["type"] == "backup:failed"
                    error = end[-1]["payload"]["error"]
                    assert error.startswith(
                        "the backup destination is full (no space left) while writing "
                    ), error
                    assert "\n" not in error and "Traceback" not in error
                await send(ws, "agent:status", None)
                status = await until(ws, lambda m: m["type"] == "agent:status")
                assert status[-1]["payload"]["status"] == "idle"

    run(scenario)
    storage = LocalStorage(repo)
    assert list(storage.list(FileType.SNAPSHOT)) == []
    assert list(storage.list(FileType.LOCK)) == []
    restic(repo, "check", "--read-data")


def test_skipped_paths_are_listed_in_backup_completed(tmp_path, monkeypatch):
    """A directory that cannot be listed: the backup completes, and its event
    names the path and why (the clean backup before it carries no such fields)."""
    src = small_source(tmp_path)
    victim = src / "d1"
    blocked: set[bytes] = set()
    refuse_listing(monkeypatch, blocked)  # root reads everything: refused as for a user

    async def scenario() -> None:
        async with Agented(make_config(tmp_path, [src])) as agent:
            async with client(agent) as ws:
                await send(ws, "backup:start", {})
                clean = await until(ws, lambda m: m["type"] == "backup:completed")
                assert set(clean[-1]["payload"]) == {"job_id", "total_bytes"}
                blocked.add(os.fsencode(victim))
                # a change the change journal sees (it would not list d1 otherwise)
                os.chmod(victim, 0o700)
                await send(ws, "backup:start", {})
                done = await until(ws, lambda m: m["type"] in ("backup:completed", "backup:failed"))
                payload = done[-1]["payload"]
                assert done[-1]["type"] == "backup:completed", payload
                assert payload["skipped"] == [
                    {"path": str(victim), "reason": "cannot list directory: Permission denied"}
                ]
                assert payload["skipped_total"] == 1

    run(scenario)


def test_a_queued_job_can_be_cancelled_before_it_runs(tmp_path):
    src = big_source(tmp_path, files=3)

    async def scenario() -> None:
        async with Agented(make_config(tmp_path, [src])) as agent:
            async with client(agent) as ws:
                await send(ws, "backup:start", {})
                await send(ws, "backup:start", {})
                ids: list[str] = []

                def two_started(m: dict[str, Any]) -> bool:
                    if m["type"] == "backup:started":
                        ids.append(m["payload"]["job_id"])
                    return len(ids) == 2

                await until(ws, two_started)
                first, second = ids
                await send(ws, "backup:pause", {"job_id": second})  # not running: refused
                err = await until(ws, lambda m: m["type"] == "error")
                assert "queued" in err[-1]["payload"]["message"]
                await send(ws, "backup:cancel", {"job_id": second})
                await until(ws, terminal(second))
                end = await until(ws, terminal(first))
                assert end[-1]["type"] == "backup:completed"

    run(scenario)


# ------------------------------------------------------------- slow client
def test_a_client_that_stops_reading_is_dropped_and_the_others_are_served(tmp_path):
    """A raw client that fills its TCP window and never reads is disconnected
    once its queue overflows; a healthy client keeps getting answers."""

    async def scenario() -> None:
        config = make_config(tmp_path, [tmp_path])
        bus = EventBus()
        controller = JobController(config, bus)
        await controller.start()
        server = AgentServer(
            config.agent, controller, bus, host="127.0.0.1", port=0, queue_limit=50
        )
        await server.start()
        try:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            key = "dGhlIHNhbXBsZSBub25jZQ=="
            lines = [
                "GET /ws HTTP/1.1",
                "Host: 127.0.0.1",
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {key}",
                "Sec-WebSocket-Version: 13",
                f"Authorization: Bearer {TOKEN}",
            ]
            request = "\r\n".join(lines) + "\r\n\r\n"
            await loop.sock_sendall(sock, request.encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += await loop.sock_recv(sock, 1)
            assert head.startswith(b"HTTP/1.1 101")
            # ask for many replies (masked client frames), never read them
            frame_payload = b'{"type":"agent:status","payload":null}'
            mask = b"\x01\x02\x03\x04"
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(frame_payload))
            frame = bytes([0x81, 0x80 | len(frame_payload)]) + mask + masked
            async with connect(server.url, additional_headers=AUTH) as healthy:
                for _ in range(3000):
                    try:
                        await loop.sock_sendall(sock, frame)
                    except OSError:
                        break  # dropped
                    if len(server.clients) == 1:
                        break
                    await asyncio.sleep(0)
                deadline = time.monotonic() + 10
                while len(server.clients) > 1 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert len(server.clients) == 1, "the stuck client was not dropped"
                await send(healthy, "agent:status", None)
                assert (
                    json.loads(await asyncio.wait_for(healthy.recv(), 5))["type"] == "agent:status"
                )
            sock.close()
        finally:
            await server.stop()
            await controller.stop()

    run(scenario)


def test_a_client_whose_window_stays_full_is_dropped(tmp_path):
    """A client that reads nothing while events keep coming (merged progress
    never overflows its queue) is dropped once a frame cannot be written for
    the send timeout; the healthy client gets every event meanwhile."""
    from desktop_agent.protocol import BackupProgress, JobId

    async def scenario() -> None:
        config = make_config(tmp_path, [tmp_path])
        bus = EventBus()
        controller = JobController(config, bus)
        await controller.start()
        server = AgentServer(
            config.agent, controller, bus, host="127.0.0.1", port=0, send_timeout=1.0
        )
        await server.start()
        try:
            stuck = await _stuck_client(server.port)
            async with connect(server.url, additional_headers=AUTH, max_size=None) as healthy:
                received = []

                async def read() -> None:
                    while True:
                        received.append(json.loads(await healthy.recv()))

                reader = asyncio.create_task(read())
                big_name = "/" + "x" * 60_000
                deadline = time.monotonic() + 20
                n = 0
                while len(server.clients) > 1 and time.monotonic() < deadline:
                    n += 1
                    bus.publish(BackupProgress(JobId("j"), 1.0, n, 10**9, 0, 0, big_name, 0, 0))
                    await asyncio.sleep(0.01)
                assert len(server.clients) == 1, "the stuck client was not dropped"

                def caught_up() -> bool:
                    return bool(received) and received[-1]["payload"]["transferred_bytes"] == n

                deadline = time.monotonic() + 10
                while not caught_up() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                reader.cancel()
                assert caught_up()
            stuck.close()
        finally:
            await server.stop()
            await controller.stop()

    run(scenario)


async def _stuck_client(port: int) -> socket.socket:
    """A raw WebSocket client with a tiny receive buffer that never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    lines = [
        "GET /ws HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        f"Authorization: Bearer {TOKEN}",
    ]
    await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)
    assert head.startswith(b"HTTP/1.1 101")
    return sock


def test_progress_waiting_for_a_slow_client_is_merged(tmp_path):
    """Queued progress of a job is replaced by newer progress, not piled up."""
    from desktop_agent.protocol import BackupPaused, BackupProgress, JobId
    from desktop_agent.server.ws import _Client

    c = _Client(ws=None, limit=10)  # type: ignore[arg-type]
    for i in range(100):
        assert c.offer(BackupProgress(JobId("j"), float(i), i, 100, 0, 0, None, 0, 0))
    c.offer(BackupPaused(JobId("j")))
    c.offer(BackupProgress(JobId("j"), 100.0, 100, 100, 0, 0, None, 0, 0))
    out = []
    while (e := c.next()) is not None:
        out.append(e)
    assert [type(e).__name__ for e in out] == ["BackupProgress", "BackupPaused", "BackupProgress"]
    assert out[0].percent == 99.0 and out[2].percent == 100.0


def test_restore_after_agent_backups(tmp_path):
    """Backups made through the agent restore like any other."""
    src = small_source(tmp_path)

    async def scenario() -> None:
        async with Agented(make_config(tmp_path, [src])) as agent:
            async with client(agent) as ws:
                for _ in range(2):
                    await send(ws, "backup:start", {})
                    await until(ws, lambda m: m["type"] == "backup:completed")

    run(scenario)
    repo = Repository.open(LocalStorage(tmp_path / "repo"), PASSWORD)
    snaps = repo.list_snapshots()
    assert len(snaps) == 2 and snaps[1].parent == snaps[0].id
    assert snaps[1].summary is not None and snaps[1].summary.files_unmodified == 21
    out = tmp_path / "out"
    assert restore(reopen(repo), snaps[1], RestoreOptions(target=str(out))).errors == ()
    assert signature(out / str(src).lstrip("/")) == signature(src)
