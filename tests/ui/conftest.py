"""Fixtures for the Qt tests: one qasync loop over the pytest-qt QApplication,
and a real Agent (repository, controller, /ws on port 0) behind a Bridge."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
import qasync
from support import PASSWORD, write
from uisupport import TOKEN, make_config  # noqa: F401 - re-exported for the ui tests

from desktop_agent.app import Agent

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

T = TypeVar("T")


@pytest.fixture
def loop(qapp: Any) -> Iterator[asyncio.AbstractEventLoop]:
    """A qasync loop on the test's QApplication (Qt and asyncio together)."""
    ev = qasync.QEventLoop(qapp)
    # plain threads for run_in_executor/to_thread: qasync's QThread executor
    # aborts the interpreter at exit if a QThread is still alive
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-loop")
    ev.set_default_executor(pool)
    asyncio.set_event_loop(ev)
    yield ev
    try:
        ev.run_until_complete(asyncio.sleep(0))
        ev.close()  # while Qt is alive: a loop collected at exit crashes the interpreter
    finally:
        asyncio.set_event_loop(None)


@pytest.fixture
def run(loop: asyncio.AbstractEventLoop) -> Callable[..., Any]:
    """Run a coroutine on the qasync loop until it is done (Qt events flow meanwhile).

    Unlike ``loop.run_until_complete``, which after its future is done
    processes Qt events once more with no asyncio loop running (a task
    stepped there fails in ``get_running_loop``).
    """

    def runner(coro: Awaitable[T], timeout: float = 60) -> T:
        fut = asyncio.ensure_future(asyncio.wait_for(coro, timeout), loop=loop)
        fut.add_done_callback(lambda _f: loop.stop())
        loop.run_forever()
        return fut.result()

    return runner


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Password, cache and config locations for the test."""
    monkeypatch.setenv("DESKTOP_AGENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A small source tree."""
    src = tmp_path / "src"
    for i in range(10):
        write(src / f"d{i % 2}" / f"f{i}.txt", f"file {i}\n".encode() * 200)
    return src


@pytest.fixture
def agent(env: None, tmp_path: Path, source: Path, run: Any) -> Iterator[Agent]:
    """A started Agent on 127.0.0.1, port 0, without the scheduler."""
    a = Agent(make_config(tmp_path, [source]), host="127.0.0.1", port=0, schedule=False)
    run(a.start())
    yield a
    run(a.stop())
