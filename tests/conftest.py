"""Shared fixtures: fast repositories, odd file trees, restic as the oracle."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import FAST_KDF, PASSWORD, build_odd_tree

from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import LocalStorage, MemoryStorage

RESTIC = shutil.which("restic")
_UI_TESTS = Path(__file__).parent / "ui"


@pytest.fixture(autouse=True)
def _collect_qt_garbage_on_the_main_thread(request: pytest.FixtureRequest) -> Iterator[None]:
    """Collect garbage Qt objects on this thread, not in a worker.

    A QObject destroyed by the cycle collector in a worker thread cannot stop
    its timers; Qt later fires them at freed memory. A closed qasync loop
    leaves such objects in cycles (its Signaller and _SimpleTimer); a later
    test's threads collected them, and pytest-qt's next processEvents
    crashed the worker (seen once in a full run, after test_layering). The
    app does the same (ui/bootstrap.py runs the collector from a Qt timer).
    """
    uses_qt = (
        "qapp" in request.fixturenames
        or "qtbot" in request.fixturenames
        or _UI_TESTS in request.path.parents
    )
    if not uses_qt:
        yield
        return
    gc.collect()
    yield
    gc.collect()


def _own_mount_namespace() -> None:
    """As root on Linux, give this test process a private mount namespace.

    Some tests mount (a full tmpfs, a loop-mounted disk). Under
    pytest-xdist a mount made by one worker's test made another worker's
    journal test do a full scan where it checks that none is done (seen in
    a full run, when the journal still counted every mount; it now counts
    only those at, above or below its sources). In a namespace of its own
    each worker sees only its own mounts, made by its tests one at a time;
    mounts made elsewhere do not propagate in (private propagation).
    """
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return
    import ctypes

    clone_newns, ms_rec, ms_private = 0x00020000, 0x4000, 1 << 18
    libc = ctypes.CDLL(None, use_errno=True)
    # the calling thread (the main one, which runs the tests and reads
    # /proc/self/mountinfo) moves; threads it starts later follow it
    if libc.unshare(clone_newns) != 0:
        return
    libc.mount(b"none", b"/", None, ms_rec | ms_private, None)


_own_mount_namespace()


def need_restic() -> str:
    """restic's path; skip (fail in CI) when it is missing."""
    if RESTIC is None:
        if os.environ.get("CI"):
            pytest.fail("restic is required in CI (make test installs it)")
        pytest.skip("restic is not installed")
    return RESTIC


@pytest.fixture
def restic(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run restic against a repository: ``restic(repo, "check", "--read-data")``."""
    exe = need_restic()
    cache = tmp_path / "restic-cache"

    def run(
        repo: str | os.PathLike[str], *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, RESTIC_PASSWORD=PASSWORD, RESTIC_CACHE_DIR=str(cache))
        proc = subprocess.run(
            [exe, "-r", os.fspath(repo), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"restic {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    return run


@pytest.fixture
def new_repo(tmp_path: Path) -> Callable[..., Repository]:
    """Create a repository in a fresh directory (fast KDF)."""
    counter = iter(range(1000))

    def make(path: str | os.PathLike[str] | None = None) -> Repository:
        where = Path(path) if path is not None else tmp_path / f"repo{next(counter)}"
        return Repository.init(LocalStorage(where), PASSWORD, kdf_params=FAST_KDF)

    return make


@pytest.fixture
def mem_repo(tmp_path: Path) -> Repository:
    """A new repository in memory (MemoryStorage, fast KDF), for tests that use
    the repository only as a store: nothing for restic to read.

    Packs are still assembled in spool files: in ``tmp_path/spool``, made
    now, so that spooling changes no directory a backup of ``tmp_path/...``
    walks through (the system's temporary directory would).
    """
    spool = tmp_path / "spool"
    spool.mkdir()
    return Repository.init(MemoryStorage(str(spool)), PASSWORD, kdf_params=FAST_KDF)


@pytest.fixture
def odd_tree() -> Callable[[Path], Path]:
    """Builder of a tree with every kind of entry and awkward names."""
    return build_odd_tree


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python -m desktop_agent`` with an isolated HOME."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        user: tuple[int, int] | None = None,
        home_dir: Path | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        h = home_dir or home
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(h),
            "XDG_CONFIG_HOME": str(h / ".config"),
            "XDG_DATA_HOME": str(h / ".local/share"),
            "XDG_STATE_HOME": str(h / ".local/state"),
            "XDG_CACHE_HOME": str(h / ".cache"),
            "LANG": "C.UTF-8",
        }
        full_env.update(env or {})
        cmd = [sys.executable, "-m", "desktop_agent", *args]
        if user is not None:
            uid, gid = user
            cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *cmd]
        return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A 40 MB tmpfs: a really full filesystem (root only); unmounted afterwards.

    Skipped where mounting is not allowed; CI runs as root in a machine
    that allows it.
    """
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        pytest.skip("mounting a tmpfs needs root")
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mnt = tmp_path / "full"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


class Drive:
    """An ext4 filesystem in a file, loop-mounted: a USB disk that can be
    unplugged (lazily unmounted: new path lookups land on the empty mount
    point, as after a yanked cable) and plugged back in with its data."""

    def __init__(self, image: Path, mount_point: Path) -> None:
        self.image = image
        self.path = mount_point
        self.mounted = False

    def plug(self) -> None:
        # the image must be free: mounting an ext4 twice would corrupt it
        deadline = time.monotonic() + 30
        while subprocess.run(
            ["losetup", "-j", str(self.image)], capture_output=True, text=True
        ).stdout.strip():
            if time.monotonic() > deadline:
                raise AssertionError("the unplugged drive is still in use")
            time.sleep(0.05)
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.path)], check=True)
        self.mounted = True

    def unplug(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=True)
        self.mounted = False


@pytest.fixture
def usb_drive(tmp_path: Path):
    """A 256 MB loop-mounted ext4 (root only); skipped where loop mounts are refused."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        pytest.skip("loop mounts need root")
    if shutil.which("mkfs.ext4") is None or shutil.which("losetup") is None:
        pytest.skip("no mkfs.ext4 or losetup")
    image = tmp_path / "usb.img"
    with open(image, "wb") as fh:
        fh.truncate(256 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mnt = tmp_path / "media-usb"
    mnt.mkdir()
    drive = Drive(image, mnt)
    try:
        drive.plug()
    except (subprocess.CalledProcessError, AssertionError) as exc:
        pytest.skip(f"cannot loop-mount here: {exc}")
    try:
        yield drive
    finally:
        if drive.mounted:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
