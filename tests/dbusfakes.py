"""A private D-Bus daemon and fake UPower, NetworkManager and logind on it.

:func:`private_bus` starts a real ``dbus-daemon`` (a minimal configuration,
a unix socket in the test's directory) and stops it. The fakes are jeepney
services, each on its own connection served by its own thread (jeepney's
thread-safe blocking I/O, independent of the asyncio code under test): they
own the well-known names, answer ``Properties.Get``/``GetAll``, emit
``PropertiesChanged`` when a test changes a value, and the fake logind
hands out real inhibitor fds (the write end of a pipe; it watches the read
end, which reads EOF once the client closed its copy) and emits
``PrepareForSleep``.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from jeepney import (
    DBusAddress,
    HeaderFields,
    MessageType,
    message_bus,
    new_error,
    new_method_return,
    new_signal,
)
from jeepney.io.threading import ReceiveStopped, open_dbus_connection

PROPERTIES = "org.freedesktop.DBus.Properties"

CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


@dataclass
class PrivateBus:
    """A running dbus-daemon: its address, and a way to take it away."""

    address: str
    process: subprocess.Popen[str]

    def kill(self) -> None:
        """The bus goes away (as when the system's dbus-daemon dies)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


@contextmanager
def private_bus(tmp_path: Path) -> Iterator[PrivateBus]:
    """Start a dbus-daemon listening in ``tmp_path`` (or a short temporary
    directory when that path is too long for a unix socket); stop it after."""
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        if os.environ.get("CI"):
            pytest.fail("dbus-daemon is required in CI (Debian package dbus-daemon)")
        pytest.skip("dbus-daemon is not installed")
    short = None
    where = tmp_path
    if len(str(tmp_path)) > 80:  # sun_path holds 108 bytes
        short = tempfile.mkdtemp(prefix="dbus-")
        where = Path(short)
    socket_path = where / "bus"
    config = tmp_path / "bus.conf"
    config.write_text(CONFIG.format(socket=socket_path))
    proc = subprocess.Popen(
        [daemon, f"--config-file={config}", "--nofork", "--nopidfile", "--print-address"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        line = proc.stdout.readline().strip() if ready and proc.stdout else ""
        if not line:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise RuntimeError(f"dbus-daemon did not start: {err.strip()}")
        yield PrivateBus(address=line, process=proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if short is not None:
            shutil.rmtree(short, ignore_errors=True)


# ------------------------------------------------------------------ services
Props = dict[str, tuple[str, Any]]  # name -> (signature, value)


class FakeService:
    """A service on the bus: owns ``name``, serves properties and methods.

    Subclasses fill ``self.objects`` ({(path, interface): {name: (sig, value)}})
    and define ``method_<Member>(msg)`` handlers that call :meth:`reply`.
    """

    name = ""
    enable_fds = False

    def __init__(self, address: str) -> None:
        self.address = address
        self.objects: dict[tuple[str, str], Props] = {}
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []  # (interface, member, body)
        self._lock = threading.Lock()
        self._conn: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Connect, own the name, serve in a thread."""
        conn = open_dbus_connection(self.address, enable_fds=self.enable_fds)
        serial = next(conn.outgoing_serial)
        conn.send(message_bus.RequestName(self.name, 4), serial=serial)  # 4: do not queue
        deadline = time.monotonic() + 10
        while True:
            msg = conn.receive(timeout=max(deadline - time.monotonic(), 0.01))
            if msg.header.fields.get(HeaderFields.reply_serial) == serial:
                if msg.header.message_type is MessageType.error or msg.body != (1,):
                    raise RuntimeError(f"could not own {self.name}: {msg.body}")
                break
        self._conn = conn
        self._thread = threading.Thread(target=self._serve, name=f"fake {self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and disconnect."""
        if self._thread is not None:
            self._conn.interrupt()
            self._thread.join(10)
            self._thread = None
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None

    def _serve(self) -> None:
        while True:
            try:
                msg = self._conn.receive()
            except (ReceiveStopped, OSError, ValueError):
                return  # stopped, or the bus went away
            if msg.header.message_type is MessageType.method_call:
                try:
                    self._dispatch(msg)
                except (ReceiveStopped, OSError, ValueError):
                    return

    def _dispatch(self, msg: Any) -> None:
        fields = msg.header.fields
        path = fields.get(HeaderFields.path)
        interface = fields.get(HeaderFields.interface)
        member = fields.get(HeaderFields.member)
        with self._lock:
            self.calls.append((interface, member, tuple(msg.body)))
        if interface == PROPERTIES:
            self._properties(msg, path, member)
            return
        handler: Callable[[Any], None] | None = getattr(self, f"method_{member}", None)
        if handler is None:
            self.error(msg, "org.freedesktop.DBus.Error.UnknownMethod", f"no method {member}")
        else:
            handler(msg)

    def _properties(self, msg: Any, path: str, member: str) -> None:
        iface = msg.body[0]
        with self._lock:
            props = dict(self.objects.get((path, iface), {}))
        if (path, iface) not in self.objects:
            self.error(msg, "org.freedesktop.DBus.Error.UnknownInterface", f"no {iface} at {path}")
        elif member == "GetAll":
            self.reply(msg, "a{sv}", (props,))
        elif member == "Get" and msg.body[1] in props:
            self.reply(msg, "v", (props[msg.body[1]],))
        else:
            self.error(msg, "org.freedesktop.DBus.Error.UnknownProperty", str(msg.body))

    def reply(self, msg: Any, signature: str, body: tuple[Any, ...]) -> None:
        """Answer a method call."""
        self._conn.send(new_method_return(msg, signature, body))

    def error(self, msg: Any, name: str, text: str) -> None:
        """Answer a method call with an error."""
        self._conn.send(new_error(msg, name, "s", (text,)))

    def set(self, path: str, interface: str, **values: Any) -> None:
        """Change properties (keeping their signatures) and emit PropertiesChanged."""
        with self._lock:
            props = self.objects[(path, interface)]
            changed = {}
            for name, value in values.items():
                props[name] = changed[name] = (props[name][0], value)
        self.emit(path, PROPERTIES, "PropertiesChanged", "sa{sv}as", (interface, changed, []))

    def invalidate(self, path: str, interface: str, **values: Any) -> None:
        """Change properties and announce them as invalidated (no values sent)."""
        with self._lock:
            props = self.objects[(path, interface)]
            for name, value in values.items():
                props[name] = (props[name][0], value)
        self.emit(path, PROPERTIES, "PropertiesChanged", "sa{sv}as", (interface, {}, list(values)))

    def emit(self, path: str, interface: str, member: str, signature: str, body: tuple) -> None:
        """Broadcast a signal from ``path``."""
        self._conn.send(new_signal(DBusAddress(path, interface=interface), member, signature, body))


class FakeUPower(FakeService):
    """UPower with a battery (DisplayDevice) that the test charges and unplugs."""

    name = "org.freedesktop.UPower"
    path = "/org/freedesktop/UPower"
    device = "/org/freedesktop/UPower/devices/DisplayDevice"

    def __init__(
        self, address: str, *, on_battery: bool, percent: float, present: bool = True
    ) -> None:
        super().__init__(address)
        self.objects[(self.path, "org.freedesktop.UPower")] = {
            "DaemonVersion": ("s", "1.90.2"),
            "OnBattery": ("b", on_battery),
            "LidIsClosed": ("b", False),
        }
        self.objects[(self.device, "org.freedesktop.UPower.Device")] = {
            "Type": ("u", 2),
            "IsPresent": ("b", present),
            "Percentage": ("d", float(percent)),
            "Energy": ("d", 40.0),
            "State": ("u", 2 if on_battery else 1),
        }

    def set_on_battery(self, on: bool) -> None:
        self.set(self.path, "org.freedesktop.UPower", OnBattery=on)

    def set_device(self, **values: Any) -> None:
        self.set(self.device, "org.freedesktop.UPower.Device", **values)


class FakeNetworkManager(FakeService):
    """NetworkManager's State and Metered."""

    name = "org.freedesktop.NetworkManager"
    path = "/org/freedesktop/NetworkManager"
    interface = "org.freedesktop.NetworkManager"

    def __init__(self, address: str, *, state: int, metered: int) -> None:
        super().__init__(address)
        self.objects[(self.path, self.interface)] = {
            "Version": ("s", "1.46.0"),
            "State": ("u", state),
            "Metered": ("u", metered),
            "Connectivity": ("u", 4),
            "NetworkingEnabled": ("b", True),
        }

    def change(self, **values: Any) -> None:
        self.set(self.path, self.interface, **values)


@dataclass
class Lock:
    """An inhibitor lock the fake logind handed out."""

    what: str
    who: str
    why: str
    mode: str
    taken_at: float
    released_at: float | None = None
    released: threading.Event = field(default_factory=threading.Event)


class FakeLogind(FakeService):
    """logind's Manager: Inhibit (real fds), InhibitDelayMaxUSec, PrepareForSleep.

    ``gate``: while cleared, Inhibit calls wait before they are answered (a
    test holds a call in flight this way); ``inhibit_called`` is set on
    every Inhibit call.
    """

    name = "org.freedesktop.login1"
    path = "/org/freedesktop/login1"
    interface = "org.freedesktop.login1.Manager"
    enable_fds = True

    def __init__(self, address: str, *, delay_usec: int = 5_000_000) -> None:
        super().__init__(address)
        self.objects[(self.path, self.interface)] = {
            "InhibitDelayMaxUSec": ("t", delay_usec),
            "BlockInhibited": ("s", ""),
            "DelayInhibited": ("s", ""),
        }
        self.locks: list[Lock] = []
        self.gate = threading.Event()
        self.gate.set()
        self.inhibit_called = threading.Event()
        self._changed = threading.Condition()
        self._stop_r = self._stop_w = -1
        self._watchers: list[threading.Thread] = []

    def start(self) -> None:
        self._stop_r, self._stop_w = os.pipe()
        super().start()

    def method_Inhibit(self, msg: Any) -> None:
        what, who, why, mode = msg.body
        self.inhibit_called.set()
        self.gate.wait(30)
        read_end, write_end = os.pipe()
        lock = Lock(what, who, why, mode, taken_at=time.monotonic())
        with self._changed:
            self.locks.append(lock)
            self._changed.notify_all()
        watcher = threading.Thread(target=self._watch, args=(lock, read_end), daemon=True)
        self._watchers.append(watcher)
        watcher.start()
        try:
            self.reply(msg, "h", (write_end,))
        finally:
            os.close(write_end)  # the client's copy is the lock now

    def _watch(self, lock: Lock, read_end: int) -> None:
        try:
            while True:
                ready, _, _ = select.select([read_end, self._stop_r], [], [])
                if self._stop_r in ready:
                    return
                if os.read(read_end, 1) == b"":  # every write end closed
                    with self._changed:
                        lock.released_at = time.monotonic()
                        lock.released.set()
                        self._changed.notify_all()
                    return
        finally:
            os.close(read_end)

    def held(self) -> list[Lock]:
        """The locks whose fds the client still holds open."""
        with self._changed:
            return [lock for lock in self.locks if lock.released_at is None]

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5) -> bool:
        """Wait (in a thread) until ``predicate`` holds, checked at each lock change."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def wait_for_lock(
        self, mode: str, *, after: int = 0, timeout: float = 5, held: bool = True
    ) -> Lock:
        """The first lock of ``mode`` among the locks taken from index ``after``:
        one still held, or with ``held=False`` one taken whether or not the
        client has already given it back."""
        found: list[Lock] = []

        def check() -> bool:
            found[:] = [
                lock
                for lock in self.locks[after:]
                if lock.mode == mode and (lock.released_at is None or not held)
            ]
            return bool(found)

        if not self.wait_until(check, timeout):
            raise AssertionError(f"no {mode} lock taken within {timeout} s: {self.locks}")
        return found[0]

    def prepare_for_sleep(self, start: bool) -> float:
        """Announce sleep (True) or wake-up (False); returns when it was sent."""
        sent = time.monotonic()
        self.emit(self.path, self.interface, "PrepareForSleep", "b", (start,))
        return sent

    def stop(self) -> None:
        self.gate.set()
        super().stop()
        if self._stop_w >= 0:
            os.write(self._stop_w, b"x")
            for watcher in self._watchers:
                watcher.join(10)
            os.close(self._stop_r)
            os.close(self._stop_w)
            self._stop_r = self._stop_w = -1


@contextmanager
def running(*services: FakeService) -> Iterator[None]:
    """Start the services; stop them afterwards."""
    started: list[FakeService] = []
    try:
        for service in services:
            started.append(service)
            service.start()
        yield
    finally:
        for service in reversed(started):
            service.stop()
