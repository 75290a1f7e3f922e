"""Fuzzing a live /ws server: whatever a client sends, the server answers it or
closes that one connection, keeps serving everyone else and never crashes."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import FAST_KDF, PASSWORD
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from desktop_agent.app import Agent
from desktop_agent.config import AgentConfig, BackupConfig, Config, RepositoryConfig
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import LocalStorage

TOKEN = "fuzz-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An agent on a background event loop; yields its URL."""
    base: Path = tmp_path_factory.mktemp("fuzz")
    Repository.init(LocalStorage(base / "repo"), PASSWORD, kdf_params=FAST_KDF)
    src = base / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    config = Config(
        agent=AgentConfig(token=TOKEN),
        repository=RepositoryConfig(path=str(base / "repo"), password_file=None),
        backup=BackupConfig(sources=(str(src),), exclude=(), interval_minutes=0),
        path=base / "config.toml",
    )
    loop = asyncio.new_event_loop()
    agent = Agent(config, host="127.0.0.1", port=0, schedule=False)
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(agent.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(30)
    yield agent.server.url
    asyncio.run_coroutine_threadsafe(agent.stop(), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50)
)
_json = st.recursive(
    _scalars,
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=10), c, max_size=5),
    max_leaves=15,
)
_types = st.sampled_from(
    [
        "backup:pause",
        "backup:resume",
        "backup:cancel",
        "backup:start",
        "agent:status",
        "backup:progress",
        "error",
        "?",
    ]
)
_frames = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300),
    _json.map(json.dumps),
    st.builds(lambda t, p: json.dumps({"type": t, "payload": p}), _types, _json),
    st.builds(lambda t, p: json.dumps({"type": t, "payload": {"job_id": p}}), _types, _json),
    st.integers(60_000, 80_000).map(lambda n: "x" * n),  # around the 64 KiB limit
    st.integers(60_000, 80_000).map(lambda n: b"\x00" * n),
)


_BROADCAST = {
    "backup:progress",
    "backup:failed",
    "backup:completed",
    "backup:paused",
    "backup:resumed",
}


def _status_roundtrip(url: str) -> None:
    with connect(url, additional_headers=AUTH, open_timeout=10) as ws:
        ws.send('{"type":"agent:status","payload":null}')
        reply = json.loads(ws.recv(timeout=10))
        while reply["type"] in _BROADCAST:  # the end of a backup an example cancelled
            reply = json.loads(ws.recv(timeout=10))
        assert reply["type"] == "agent:status"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frames=st.lists(_frames, min_size=1, max_size=4))
def test_random_frames_are_answered_or_close_only_their_connection(
    live: str, frames: list[Any]
) -> None:
    with connect(live, additional_headers=AUTH, max_size=None, open_timeout=10) as ws:
        for frame in frames:
            try:
                ws.send(frame)
                if isinstance(frame, str | bytes) and len(frame) > 64 * 1024:
                    with pytest.raises(ConnectionClosed) as info:
                        while True:  # events of a job an earlier frame started may come first
                            event = json.loads(ws.recv(timeout=10))
                            assert event["type"] in _BROADCAST, event
                    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
                    break
                reply = json.loads(ws.recv(timeout=10))
                while reply["type"] in _BROADCAST:  # events of jobs the fuzzer started
                    reply = json.loads(ws.recv(timeout=10))
            except ConnectionClosed as exc:
                pytest.fail(f"closed for a small frame: {exc}")
            # a small frame always gets exactly one answer of a known kind
            assert reply["type"] in ("error", "agent:status", "backup:started"), reply
            if reply["type"] == "backup:started":
                # the fuzzer started a backup: cancel it so that it does not pile up
                ws.send(json.dumps({"type": "backup:cancel", "payload": reply["payload"]}))
    _status_roundtrip(live)  # the server still serves a new client
