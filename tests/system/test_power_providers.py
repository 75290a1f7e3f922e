"""The condition providers against fake UPower, NetworkManager and logind on a
private dbus-daemon, reporting into a real ConditionHub; the psutil poller
with an injected sensor; the Windows keep-awake's level logic."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jeepney import DBusAddress, message_bus, new_signal
from jeepney.io.blocking import open_dbus_connection

from desktop_agent.jobs.conditions import ConditionHub, Conditions, Inhibit
from desktop_agent.system.power import Providers, psutil_battery, start_providers
from desktop_agent.system.power import providers as providers_module
from desktop_agent.system.power.psutil_battery import BatteryPoller, psutil_sensors
from desktop_agent.system.power.windows import KeepAwake

WAIT = 5.0
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt's qapp, as tests/ui do


import dbusfakes as fakes  # noqa: E402

FakeLogind = fakes.FakeLogind
FakeNetworkManager = fakes.FakeNetworkManager
FakeUPower = fakes.FakeUPower
PrivateBus = fakes.PrivateBus
private_bus = fakes.private_bus
running = fakes.running


@pytest.fixture
def bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateBus]:
    """A private bus, named as both the system and the session bus."""
    with private_bus(tmp_path) as private:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", private.address)
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", private.address)
        yield private


async def until(hub: ConditionHub, predicate: Callable[[Conditions], bool]) -> Conditions:
    """Wait (at most WAIT seconds) for the hub's conditions to satisfy ``predicate``."""
    if predicate(hub.current):
        return hub.current
    reached: asyncio.Future[Conditions] = asyncio.get_running_loop().create_future()

    def on(conditions: Conditions) -> None:
        if predicate(conditions) and not reached.done():
            reached.set_result(conditions)

    unsubscribe = hub.listen(on)
    try:
        return await asyncio.wait_for(reached, WAIT)
    finally:
        unsubscribe()


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Wait for something a fake does (a blocking wait) without blocking the loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


# ------------------------------------------------------------------ UPower
def test_battery_changes_reach_the_hub(bus: PrivateBus) -> None:
    upower = FakeUPower(bus.address, on_battery=True, percent=80)

    async def scenario() -> dict[str, tuple[str, ...]]:
        hub = ConditionHub()
        providers = await start_providers(hub, system_bus=bus.address)
        try:
            # the first values are there when start_providers returns
            assert (hub.current.on_battery, hub.current.battery_percent) == (True, 80.0)

            upower.set_on_battery(False)
            await until(hub, lambda c: c.on_battery is False)
            upower.set_device(Percentage=15.0)
            now = await until(hub, lambda c: c.battery_percent == 15.0)
            assert now.on_battery is False

            # a value announced as invalidated is read again
            upower.invalidate(upower.device, "org.freedesktop.UPower.Device", Percentage=14.5)
            await until(hub, lambda c: c.battery_percent == 14.5)
            upower.set_on_battery(True)
            await until(hub, lambda c: c.on_battery is True)
            # the battery is taken out: no percentage
            upower.set_device(IsPresent=False)
            await until(hub, lambda c: c.battery_percent is None)
            assert hub.current.on_battery is True
            return hub.sources()
        finally:
            await providers.close()

    with running(upower):
        sources = asyncio.run(scenario())
    assert sources["upower"] == ("battery_percent", "on_battery")


def test_a_signal_from_another_process_is_not_believed(bus: PrivateBus) -> None:
    upower = FakeUPower(bus.address, on_battery=False, percent=60)

    async def scenario() -> None:
        hub = ConditionHub()
        heard: list[Conditions] = []
        hub.listen(heard.append)
        providers = await start_providers(hub, system_bus=bus.address)
        try:
            assert hub.current.on_battery is False
            impostor = open_dbus_connection(bus.address)
            try:
                changed = {"OnBattery": ("b", True)}
                impostor.send(
                    new_signal(
                        DBusAddress(upower.path, interface="org.freedesktop.DBus.Properties"),
                        "PropertiesChanged",
                        "sa{sv}as",
                        ("org.freedesktop.UPower", changed, []),
                    )
                )
                # a round trip: the bus has handled the impostor's signal before
                # it answers, so it was routed before the real change below
                await in_thread(impostor.send_and_get_reply, message_bus.GetId(), timeout=WAIT)
            finally:
                impostor.close()
            upower.set_device(Percentage=59.0)
            await until(hub, lambda c: c.battery_percent == 59.0)
            # the impostor's OnBattery=true never arrived
            assert [(c.on_battery, c.battery_percent) for c in heard] == [
                (False, 60.0),
                (False, 59.0),
            ]
        finally:
            await providers.close()

    with running(upower):
        asyncio.run(scenario())


# ---------------------------------------------------------- NetworkManager
def test_metered_and_network_state_reach_the_hub(bus: PrivateBus) -> None:
    nm = FakeNetworkManager(bus.address, state=70, metered=2)

    async def scenario() -> None:
        hub = ConditionHub()
        providers = await start_providers(hub, system_bus=bus.address)
        try:
            assert (hub.current.metered, hub.current.network_up) == (False, True)
            steps: list[tuple[dict[str, int], Callable[[Conditions], bool]]] = [
                ({"Metered": 3}, lambda c: c.metered is True),  # guess yes
                ({"Metered": 4}, lambda c: c.metered is False),  # guess no
                ({"Metered": 1}, lambda c: c.metered is True),  # yes
                ({"Metered": 0}, lambda c: c.metered is False),  # unknown
                ({"State": 20}, lambda c: c.network_up is False),  # disconnected
                ({"State": 60}, lambda c: c.network_up is True),  # site
                ({"State": 50}, lambda c: c.network_up is False),  # local only
                ({"State": 0}, lambda c: c.network_up is None),  # unknown
                ({"State": 70, "Metered": 3}, lambda c: c.network_up and c.metered is True),
            ]
            for values, reached in steps:
                nm.change(**values)
                await until(hub, reached)
            nm.invalidate(nm.path, nm.interface, State=40)  # connecting
            await until(hub, lambda c: c.network_up is False)
        finally:
            await providers.close()

    with running(nm):
        asyncio.run(scenario())


# ------------------------------------------------------------------ logind
def test_sleep_runs_the_hooks_then_releases_the_delay_lock_and_wake_takes_it_again(
    bus: PrivateBus,
) -> None:
    logind = FakeLogind(bus.address)

    async def scenario() -> None:
        hub = ConditionHub()
        hook_done: list[float] = []

        async def checkpoint() -> None:  # a backup that needs a moment to pause
            await asyncio.sleep(0.2)
            hook_done.append(time.monotonic())

        hub.on_sleep(checkpoint)
        woke = asyncio.Event()
        hub.on_wake(woke.set)
        hub.want_inhibit(Inhibit.DELAY)
        providers = await start_providers(hub, system_bus=bus.address)
        try:
            lock = await in_thread(logind.wait_for_lock, "delay")
            assert (lock.what, lock.who, lock.why) == (
                "sleep",
                "desktop-agent",
                "a backup is running",
            )
            sent = logind.prepare_for_sleep(True)
            assert await in_thread(lock.released.wait, WAIT)
            assert lock.released_at is not None
            assert hook_done and hook_done[0] <= lock.released_at
            assert 0.2 <= lock.released_at - sent < 5.0  # within logind's InhibitDelayMaxSec
            assert not woke.is_set()

            taken = len(logind.locks)
            logind.prepare_for_sleep(False)
            await asyncio.wait_for(woke.wait(), WAIT)
            again = await in_thread(logind.wait_for_lock, "delay", after=taken)
            assert again.what == "sleep"
            (provider,) = providers.parts
            await asyncio.wait_for(provider.wait_idle(), WAIT)
            assert provider.held == "delay"
            inhibits = [body[3] for _, member, body in logind.calls if member == "Inhibit"]
            assert inhibits == ["delay", "delay"]  # nothing taken while asleep
        finally:
            await providers.close()
        assert await in_thread(again.released.wait, WAIT)  # close() released the fd
        assert provider.held is None

    with running(logind):
        asyncio.run(scenario())


def test_a_slow_sleep_hook_does_not_hold_sleep_past_loginds_delay(
    bus: PrivateBus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    logind = FakeLogind(bus.address, delay_usec=1_000_000)  # InhibitDelayMaxSec=1

    async def scenario() -> None:
        hub = ConditionHub()
        finish = asyncio.Event()
        finished: list[float] = []

        async def slow() -> None:
            await finish.wait()
            finished.append(time.monotonic())

        hub.on_sleep(slow)
        hub.want_inhibit(Inhibit.DELAY)
        providers = await start_providers(hub, system_bus=bus.address)
        try:
            lock = await in_thread(logind.wait_for_lock, "delay")
            sent = logind.prepare_for_sleep(True)
            assert await in_thread(lock.released.wait, WAIT)
            assert lock.released_at is not None
            assert lock.released_at - sent < 1.0
            assert not finished  # released while the hook still ran
            finish.set()
            while not finished:
                await asyncio.sleep(0)
        finally:
            await providers.close()

    with running(logind):
        asyncio.run(scenario())
    assert "not ready for sleep after 0.5 s" in caplog.text


def test_block_takes_a_sleep_idle_block_lock_and_none_releases_all(bus: PrivateBus) -> None:
    logind = FakeLogind(bus.address)

    async def scenario() -> None:
        hub = ConditionHub()
        providers = await start_providers(hub, system_bus=bus.address)
        try:
            assert len(providers.parts) == 1
            hub.want_inhibit(Inhibit.DELAY)
            delay = await in_thread(logind.wait_for_lock, "delay")
            hub.want_inhibit(Inhibit.BLOCK)
            block = await in_thread(logind.wait_for_lock, "block")
            assert (block.what, block.who, block.why) == (
                "sleep:idle",
                "desktop-agent",
                "a backup is running (keep awake is on)",
            )
            assert await in_thread(delay.released.wait, WAIT)
            assert logind.held() == [block]  # the block lock and nothing else

            hub.want_inhibit(Inhibit.NONE)
            assert await in_thread(logind.wait_until, lambda: not logind.held())

            hub.want_inhibit(Inhibit.BLOCK)
            again = await in_thread(logind.wait_for_lock, "block", after=2)
            (provider,) = providers.parts
            await asyncio.wait_for(provider.wait_idle(), WAIT)
            assert provider.held == "block"
        finally:
            await providers.close()
        assert await in_thread(again.released.wait, WAIT)  # close() released the fd
        assert provider.held is None

    with running(logind):
        asyncio.run(scenario())


def test_level_changes_during_an_inhibit_call_are_applied_after_it(bus: PrivateBus) -> None:
    logind = FakeLogind(bus.address)

    async def scenario() -> None:
        hub = ConditionHub()
        providers = await start_providers(hub, system_bus=bus.address)
        try:
            logind.gate.clear()  # Inhibit calls wait for the gate
            hub.want_inhibit(Inhibit.DELAY)
            assert await in_thread(logind.inhibit_called.wait, WAIT)
            for level in (Inhibit.BLOCK, Inhibit.NONE, Inhibit.DELAY, Inhibit.BLOCK):
                hub.want_inhibit(level)  # while the call is in flight
            logind.gate.set()
            block = await in_thread(logind.wait_for_lock, "block")
            assert await in_thread(logind.wait_until, lambda: logind.held() == [block])
            (provider,) = providers.parts
            await asyncio.wait_for(provider.wait_idle(), WAIT)
            assert provider.held == "block"
            inhibits = [body[3] for _, member, body in logind.calls if member == "Inhibit"]
            assert inhibits == ["delay", "block"]  # one call at a time, the last level wins

            hub.want_inhibit(Inhibit.NONE)
            assert await in_thread(logind.wait_until, lambda: not logind.held())
        finally:
            await providers.close()

    with running(logind):
        asyncio.run(scenario())


def test_closing_during_an_inhibit_call_leaves_no_lock_behind(bus: PrivateBus) -> None:
    logind = FakeLogind(bus.address)

    async def scenario() -> None:
        hub = ConditionHub()
        providers = await start_providers(hub, system_bus=bus.address)
        logind.gate.clear()
        hub.want_inhibit(Inhibit.DELAY)
        assert await in_thread(logind.inhibit_called.wait, WAIT)
        await asyncio.wait_for(providers.close(), WAIT)  # does not wait for logind's answer
        logind.gate.set()
        # the late lock may be given back before this looks: any will do
        lock = await in_thread(logind.wait_for_lock, "delay", held=False)
        assert await in_thread(lock.released.wait, WAIT)

    with running(logind):
        asyncio.run(scenario())


# ------------------------------------------------------- absent, and lost
def test_missing_services_and_a_missing_bus_are_logged_not_raised(
    bus: PrivateBus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def scenario(address: str) -> Providers:
        hub = ConditionHub()
        providers = await asyncio.wait_for(start_providers(hub, system_bus=address), 20)
        assert hub.current == Conditions()
        await providers.close()
        return providers

    for address in (bus.address, f"unix:path={tmp_path}/no-bus", "tcp:host=127.0.0.1,port=9"):
        caplog.clear()
        assert asyncio.run(scenario(address)).parts == ()
        lines = [r.getMessage() for r in caplog.records if r.name.startswith("desktop_agent")]
        assert len(lines) == 3, lines
        for name, line in zip(("NetworkManager", "UPower", "logind"), sorted(lines), strict=True):
            assert line.startswith(f"{name} not "), line
            assert "\n" not in line
        if address == bus.address:
            assert all("ServiceUnknown" in line for line in lines), lines
        else:
            assert all("cannot connect" in line for line in lines), lines


def test_when_the_bus_goes_away_each_provider_says_so_once_and_stops(
    bus: PrivateBus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    upower = FakeUPower(bus.address, on_battery=False, percent=90)
    nm = FakeNetworkManager(bus.address, state=70, metered=4)
    logind = FakeLogind(bus.address)

    async def scenario() -> None:
        hub = ConditionHub()
        hub.want_inhibit(Inhibit.DELAY)
        providers = await start_providers(hub, system_bus=bus.address)
        try:
            assert len(providers.parts) == 3
            lock = await in_thread(logind.wait_for_lock, "delay")
            provider = next(p for p in providers.parts if hasattr(p, "wait_idle"))
            await asyncio.wait_for(provider.wait_idle(), WAIT)
            assert provider.held == "delay"
            bus.kill()
            stopped = [part.wait_stopped() for part in providers.parts]
            await asyncio.wait_for(asyncio.gather(*stopped), WAIT)
            assert await in_thread(lock.released.wait, WAIT)  # the fd was closed
            hub.want_inhibit(Inhibit.BLOCK)  # nobody listens any more: no error
        finally:
            await providers.close()

    with running(upower, nm, logind):
        asyncio.run(scenario())
    lost = [r.getMessage() for r in caplog.records if "lost the system bus" in r.getMessage()]
    assert sorted(lost) == [
        "lost the system bus: no more updates from NetworkManager",
        "lost the system bus: no more updates from UPower",
        "lost the system bus: no more updates from logind",
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ------------------------------------------------------------------ qasync
def test_under_qasync_too(bus: PrivateBus, qapp: Any) -> None:
    qasync = pytest.importorskip("qasync")
    upower = FakeUPower(bus.address, on_battery=False, percent=70)
    logind = FakeLogind(bus.address)

    async def scenario() -> None:
        hub = ConditionHub()
        hub.want_inhibit(Inhibit.DELAY)
        slept = asyncio.Event()

        async def hook() -> None:
            slept.set()

        hub.on_sleep(hook)
        providers = await start_providers(hub, system_bus=bus.address)
        try:
            assert hub.current.battery_percent == 70.0
            upower.set_on_battery(True)
            await until(hub, lambda c: c.on_battery is True)
            lock = await in_thread(logind.wait_for_lock, "delay")
            logind.prepare_for_sleep(True)
            assert await in_thread(lock.released.wait, WAIT)
            assert slept.is_set()
        finally:
            await providers.close()

    loop = qasync.QEventLoop(qapp)
    # plain threads for to_thread: qasync's QThread executor aborts the
    # interpreter at exit if a QThread is still alive (as tests/ui do)
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-qasync")
    loop.set_default_executor(pool)
    try:
        with running(upower, logind):
            done = asyncio.ensure_future(asyncio.wait_for(scenario(), 30), loop=loop)
            done.add_done_callback(lambda _f: loop.stop())
            loop.run_forever()
            done.result()
    finally:
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()  # while Qt is alive
        pool.shutdown(wait=True)


# ------------------------------------------------------ psutil and Windows
@dataclass(frozen=True)
class Reading:
    percent: float
    power_plugged: bool | None


def test_the_battery_poller_reports_what_the_sensor_reads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    script: list[Reading | None | Exception] = [
        Reading(50, False),
        Reading(50, False),  # no change: the hub hears nothing
        Reading(90, True),
        None,  # no battery
        OSError("sensor unavailable"),
        OSError("sensor unavailable"),  # logged once
        Reading(40, None),  # plugged in or not: unknown
        Reading(40, False),
    ]

    async def scenario() -> list[tuple[bool | None, float | None]]:
        done = asyncio.Event()
        reads: list[float] = []

        def sensors() -> Reading | None:
            reads.append(time.monotonic())
            item = script[min(len(reads), len(script)) - 1]
            if len(reads) >= len(script):
                done.set()
            if isinstance(item, Exception):
                raise item
            return item

        hub = ConditionHub()
        heard: list[tuple[bool | None, float | None]] = []
        hub.listen(lambda c: heard.append((c.on_battery, c.battery_percent)))
        poller = BatteryPoller(hub, sensors, interval=0.01)
        poller.start()
        try:
            await asyncio.wait_for(done.wait(), WAIT)
        finally:
            await poller.close()
        assert hub.sources() == {"psutil": ("battery_percent", "on_battery")}
        assert reads[-1] - reads[0] >= 0.01 * (len(script) - 1)  # it waits between reads
        return heard

    heard = asyncio.run(scenario())
    assert heard == [(True, 50.0), (False, 90.0), (False, None), (None, 40.0), (True, 40.0)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["cannot read the battery state: sensor unavailable"]
    assert "the battery state can be read again" in caplog.text


def test_psutil_is_used_only_on_windows_and_macos(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fake = types.ModuleType("psutil")
    fake.sensors_battery = lambda: Reading(33, False)
    monkeypatch.setitem(sys.modules, "psutil", fake)
    assert psutil_sensors() is None  # this is Linux: D-Bus instead

    for platform in ("darwin", "win32"):
        monkeypatch.setattr(psutil_battery, "sys", types.SimpleNamespace(platform=platform))
        monkeypatch.setattr(providers_module, "sys", types.SimpleNamespace(platform=platform))
        assert psutil_sensors() is fake.sensors_battery

        async def scenario() -> tuple[Conditions, list[str]]:
            hub = ConditionHub()
            providers = await start_providers(hub)
            kinds = sorted(type(p).__name__ for p in providers.parts)
            await providers.close()
            return hub.current, kinds

        current, kinds = asyncio.run(scenario())
        assert (current.on_battery, current.battery_percent) == (True, 33.0)
        expected = ["BatteryPoller", "KeepAwake"] if platform == "win32" else ["BatteryPoller"]
        assert kinds == expected

    monkeypatch.setitem(sys.modules, "psutil", None)  # not installed
    assert psutil_sensors() is None
    assert "psutil is not installed" in caplog.text


def test_keep_awake_follows_the_block_level() -> None:
    hub = ConditionHub()
    applied: list[bool] = []
    keep = KeepAwake(hub, apply=applied.append)
    for level in (Inhibit.DELAY, Inhibit.BLOCK, Inhibit.NONE, Inhibit.BLOCK):
        hub.want_inhibit(level)
    asyncio.run(keep.close())
    hub.want_inhibit(Inhibit.NONE)  # no longer listening
    assert applied == [False, True, False, True, False]
