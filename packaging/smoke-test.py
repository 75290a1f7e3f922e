"""Smoke test of a built desktop-agent: the artefact, not the source tree.

    python packaging/smoke-test.py TARGET [--files N] [--no-tray] [--keep]

TARGET is a one-folder bundle (dist/desktop-agent), its tarball
(dist/desktop-agent-*-linux-x86_64.tar.gz, extracted to a temporary
directory first) or an installed executable (/usr/bin/desktop-agent).
Run it with a Python that has ``websockets`` (the build venv has it): the
/ws checks talk to the agent as a backup server would.

What it checks, each in a throw-away HOME (XDG dirs, runtime dir, no D-Bus
session, no display unless it starts one):

1. ``--version`` and ``selftest`` (compiled chunker, zstd, crypto, helper
   processes, keyring backend, icons, Qt offscreen);
2. ``init``, then ``backup --json`` of N small files (default 2,500: more
   than the 2,000 after which the engine hands small files to helper
   processes): exit 0, every file new, no warning, nothing on stderr about a
   helper, and helper processes (``desktop-agent --engine-helper FD``)
   seen running under the backup;
3. ``check --read-data``, then ``restore latest`` and a byte-for-byte
   comparison of every file;
4. the headless agent: ``agent:status`` answered on /ws (``Authorization:
   Bearer`` with the token ``desktop-agent token`` prints), SIGTERM exits 0;
5. the tray app in Xvfb with a system tray (trayer): its tray icon is
   embedded, ``agent:status`` answered on /ws, SIGTERM exits 0.

Prints one line per step with its time; exit status 0 when all passed.
The /ws timings are from process start to the first answer (cold start).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

TIMEOUT = 120  # seconds for any one command (selftest and the backup are the slow ones)


class SmokeFailed(Exception):
    """A step did not do what it should (the message says what)."""


# ------------------------------------------------------------------ helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Env:
    """The throw-away home, config, data and repository of one run."""

    def __init__(self, root: Path, exe: list[str]) -> None:
        self.root = root
        self.exe = exe
        home = root / "home"
        runtime = root / "run"
        for d in (home, runtime):
            d.mkdir(mode=0o700, parents=True)
        self.vars = {
            k: v
            for k, v in os.environ.items()
            if k
            not in {
                "DISPLAY",
                "WAYLAND_DISPLAY",
                "DBUS_SESSION_BUS_ADDRESS",
                "QT_QPA_PLATFORM",
                "XAUTHORITY",
            }
            and not k.startswith(("XDG_", "DESKTOP_AGENT_"))
        }
        self.vars.update(
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            XDG_DATA_HOME=str(home / ".local" / "share"),
            XDG_CACHE_HOME=str(home / ".cache"),
            XDG_STATE_HOME=str(home / ".local" / "state"),
            XDG_RUNTIME_DIR=str(runtime),
        )
        self.config = root / "config.toml"
        self.data = root / "data"
        self.repo = root / "repo"
        self.port = _free_port()
        self.token = secrets.token_urlsafe(32)

    def write_config(self) -> None:
        self.config.write_text(
            "[agent]\n"
            f'listen = "127.0.0.1:{self.port}"\n'
            f'token = "{self.token}"\n'
            "allowed_origins = []\n\n"
            "[repository]\n"
            f'path = "{self.repo}"\n'
            f'password_file = "{self.root / "password"}"\n\n'
            "[backup]\n"
            f'sources = ["{self.data}"]\n'
            "exclude = []\n"
            "interval_minutes = 0\n",
            encoding="utf-8",
        )
        self.config.chmod(0o600)

    def cmd(self, *args: str) -> list[str]:
        return [*self.exe, "--config", str(self.config), *args]

    def run(self, *args: str, config: bool = True) -> subprocess.CompletedProcess[str]:
        argv = self.cmd(*args) if config else [*self.exe, *args]
        return subprocess.run(
            argv,
            env=self.vars,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
        )


def _expect(proc: subprocess.CompletedProcess[str], what: str, status: int = 0) -> None:
    if proc.returncode != status:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise SmokeFailed(f"{what}: exit {proc.returncode}, expected {status}\n{tail}")


def make_files(root: Path, count: int) -> dict[str, str]:
    """``count`` small files in nested folders (some identical); path -> sha256."""
    rng = random.Random(20240601)
    hashes: dict[str, str] = {}
    shared = rng.randbytes(3000)
    for i in range(count):
        folder = root / f"d{i % 25:02}" / f"e{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        if i % 50 == 0:
            body = shared  # duplicates: stored once
        else:
            body = rng.randbytes(rng.randint(0, 12000))
        path = folder / f"file-{i:05}.bin"
        path.write_bytes(body)
        hashes[str(path)] = hashlib.sha256(body).hexdigest()
    return hashes


def _helper_children(parent: int) -> set[int]:
    """Processes whose parent is ``parent`` and whose command line says --engine-helper."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"--engine-helper" in f.read().split(b"\0"):
                    found.add(int(entry))
        except (OSError, ValueError):
            continue
    return found


def ask_status(port: int, token: str, timeout: float = 5.0) -> dict[str, object]:
    """One agent:status round trip over /ws; returns the reply's payload."""
    from websockets.sync.client import connect

    with connect(
        f"ws://127.0.0.1:{port}/ws",
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=timeout,
        close_timeout=1,
    ) as ws:
        ws.send(json.dumps({"type": "agent:status", "payload": None}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if msg.get("type") == "agent:status":
                payload = msg["payload"]
                assert isinstance(payload, dict)
                return payload
            if msg.get("type") == "error":
                raise SmokeFailed(f"/ws answered agent:status with an error: {msg}")


def wait_serving(proc: subprocess.Popen[bytes], port: int, token: str, limit: float) -> float:
    """Seconds from now-ish (the caller's start) until /ws answers; raises on exit/timeout."""
    started = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SmokeFailed(f"the agent exited with status {proc.returncode} before serving /ws")
        try:
            payload = ask_status(port, token, timeout=2.0)
        except (OSError, TimeoutError):
            if time.monotonic() - started > limit:
                raise SmokeFailed(f"/ws did not answer within {limit:.0f} s") from None
            time.sleep(0.01)
            continue
        if payload.get("status") not in {"idle", "running", "paused"}:
            raise SmokeFailed(f"agent:status payload is odd: {payload}")
        return time.monotonic() - started


def stop(proc: subprocess.Popen[bytes], what: str) -> float:
    """SIGTERM, then the exit status must be 0; returns the seconds it took."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        status = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise SmokeFailed(f"{what} did not exit within 20 s of SIGTERM") from None
    if status != 0:
        raise SmokeFailed(f"{what} exited with status {status} after SIGTERM (expected 0)")
    return time.monotonic() - started


@contextlib.contextmanager
def x_display_with_tray(env: dict[str, str]) -> Iterator[str]:
    """Xvfb on a free display, with trayer as the system tray; yields DISPLAY."""
    for tool in ("Xvfb", "trayer"):
        if shutil.which(tool) is None:
            raise SmokeFailed(f"{tool} is not installed (apt-get install xvfb trayer)")
    rfd, wfd = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(wfd), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        pass_fds=(wfd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(wfd)
    tray = None
    try:
        with os.fdopen(rfd) as f:
            number = f.readline().strip()
        if not number:
            raise SmokeFailed("Xvfb did not start")
        display = f":{number}"
        tray = subprocess.Popen(
            [
                "trayer",
                "--edge",
                "top",
                "--align",
                "right",
                "--widthtype",
                "request",
                "--height",
                "28",
                "--transparent",
                "true",
                "--alpha",
                "0",
            ],
            env={**env, "DISPLAY": display},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # the tray must be there before the app starts: it asks for one then
        _wait_for(lambda: _trayer_up(display, env), 10, "trayer to take the tray")
        yield display
    finally:
        for p in (tray, xvfb):
            if p is not None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=5)
                if p.poll() is None:
                    p.kill()
                    p.wait()


def _wait_for(test: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not test():
        if time.monotonic() > deadline:
            raise SmokeFailed(f"timed out waiting for {what}")
        time.sleep(0.05)


def _trayer_up(display: str, env: dict[str, str]) -> bool:
    """Whether trayer's panel window exists (seen with xdotool, when installed)."""
    if shutil.which("xdotool") is None:
        time.sleep(1)  # no way to look: give trayer a moment
        return True
    out = subprocess.run(
        ["xdotool", "search", "--class", "trayer"],
        env={**env, "DISPLAY": display},
        capture_output=True,
        text=True,
    )
    return bool(out.stdout.strip())


def _tray_icon_windows(pid: int, display: str, env: dict[str, str]) -> list[str]:
    """The app's small windows near the top edge: its icon embedded in trayer's panel."""
    run_env = {**env, "DISPLAY": display}
    found = []
    out = subprocess.run(
        ["xdotool", "search", "--onlyvisible", "--pid", str(pid)],
        env=run_env,
        capture_output=True,
        text=True,
    ).stdout.split()
    for wid in out:
        geo = subprocess.run(
            ["xdotool", "getwindowgeometry", "--shell", wid],
            env=run_env,
            capture_output=True,
            text=True,
        ).stdout
        vals = dict(line.split("=", 1) for line in geo.split() if "=" in line)
        with contextlib.suppress(KeyError, ValueError):
            if int(vals["WIDTH"]) <= 64 and int(vals["Y"]) <= 40:
                found.append(wid)
    return found


# -------------------------------------------------------------------- steps


def step_version(env: Env) -> str:
    proc = env.run("--version", config=False)
    _expect(proc, "--version")
    out = proc.stdout.strip()
    if not re.fullmatch(r"desktop-agent \d+\.\d+\S*", out):
        raise SmokeFailed(f"--version printed {out!r}")
    return out


def step_selftest(env: Env) -> str:
    proc = env.run("selftest", config=False)
    _expect(proc, "selftest")
    if "selftest: all checks passed" not in proc.stdout:
        raise SmokeFailed(f"selftest did not pass:\n{proc.stdout}")
    return f"{proc.stdout.count(chr(10)) - 1} checks passed"


def step_token(env: Env) -> str:
    proc = env.run("token")
    _expect(proc, "token")
    if proc.stdout.strip() != env.token:
        raise SmokeFailed("`token` did not print the configured token")
    return "prints the configured token"


def step_init(env: Env) -> str:
    _expect(env.run("init"), "init")
    if not (env.repo / "config").is_file():
        raise SmokeFailed(f"init made no repository at {env.repo}")
    return f"repository at {env.repo}"


def step_backup(env: Env, count: int) -> str:
    proc = subprocess.Popen(
        env.cmd("backup", "--json"),
        env=env.vars,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    helpers: set[int] = set()
    watch = os.path.isdir("/proc")
    deadline = time.monotonic() + TIMEOUT
    # the pipes could fill while we poll /proc: read them on threads
    chunks: dict[str, list[bytes]] = {"out": [], "err": []}

    def drain(stream: IO[bytes], key: str) -> None:
        for block in iter(lambda: stream.read(65536), b""):
            chunks[key].append(block)

    readers = [
        threading.Thread(target=drain, args=(proc.stdout, "out"), daemon=True),
        threading.Thread(target=drain, args=(proc.stderr, "err"), daemon=True),
    ]
    for t in readers:
        t.start()
    while proc.poll() is None:
        if watch:
            helpers |= _helper_children(proc.pid)
        if time.monotonic() > deadline:
            proc.kill()
            raise SmokeFailed(f"backup did not finish within {TIMEOUT} s")
        time.sleep(0.003)
    for t in readers:
        t.join()
    out = b"".join(chunks["out"]).decode()
    err = b"".join(chunks["err"]).decode()
    if proc.returncode != 0:
        raise SmokeFailed(f"backup: exit {proc.returncode}\n{err.strip()}")
    if "helper" in err.lower():
        raise SmokeFailed(f"backup reported a helper problem:\n{err.strip()}")
    summaries = [
        json.loads(line)
        for line in out.splitlines()
        if '"message_type": "summary"' in line or '"message_type":"summary"' in line
    ]
    if not summaries:
        raise SmokeFailed(f"backup --json printed no summary:\n{out[-2000:]}")
    s = summaries[-1]
    if s["files_new"] != count or s["skipped"] or s["warnings"]:
        raise SmokeFailed(
            f"backup stored {s['files_new']} of {count} files; "
            f"skipped {s['skipped'][:3]}, warnings {s['warnings'][:3]}"
        )
    if watch and not helpers:
        raise SmokeFailed("no helper process (--engine-helper) was seen during the backup")
    seen = f"{len(helpers)} helper processes seen" if watch else "helpers not observable here"
    return f"{count} files new, {s['data_blobs']} data blobs, {seen}"


def step_check(env: Env) -> str:
    proc = env.run("check", "--read-data")
    _expect(proc, "check --read-data")
    return "no errors"


def step_restore(env: Env, hashes: dict[str, str]) -> str:
    target = env.root / "restored"
    _expect(env.run("restore", "latest", "--target", str(target)), "restore")
    bad = []
    for path, digest in hashes.items():
        restored = target / path.lstrip("/")
        try:
            if hashlib.sha256(restored.read_bytes()).hexdigest() != digest:
                bad.append(f"{restored}: content differs")
        except OSError as exc:
            bad.append(f"{restored}: {exc.strerror}")
    if bad:
        raise SmokeFailed(f"{len(bad)} restored files differ: " + "; ".join(bad[:5]))
    return f"{len(hashes)} files identical"


def _stderr_tail(path: Path) -> str:
    text = path.read_text(errors="replace").strip() if path.exists() else ""
    return "\n".join(text.splitlines()[-15:])


def step_headless(env: Env) -> str:
    log = env.root / "headless.stderr"
    with open(log, "wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            env.cmd("--headless"),
            env=env.vars,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,  # the headless agent logs there: a file never fills up
        )
    try:
        wait_serving(proc, env.port, env.token, 30)
        cold = time.monotonic() - started
        quit_s = stop(proc, "the headless agent")
    except SmokeFailed as exc:
        raise SmokeFailed(f"{exc}\n{_stderr_tail(log)}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return f"agent:status answered {cold:.2f} s after start; SIGTERM: exit 0 in {quit_s:.2f} s"


def step_tray(env: Env) -> str:
    log = env.root / "tray.stderr"
    with x_display_with_tray(env.vars) as display, open(log, "wb") as err:
        run_env = {**env.vars, "DISPLAY": display}
        started = time.monotonic()
        proc = subprocess.Popen(
            env.cmd(), env=run_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
        )
        try:
            wait_serving(proc, env.port, env.token, 30)
            cold = time.monotonic() - started
            icon = ""
            if shutil.which("xdotool"):

                def embedded() -> bool:
                    return bool(_tray_icon_windows(proc.pid, display, env.vars))

                _wait_for(embedded, 15, "the tray icon to appear in the tray")
                icon = ", tray icon embedded in the tray"
            quit_s = stop(proc, "the tray app")
        except SmokeFailed as exc:
            raise SmokeFailed(f"{exc}\n{_stderr_tail(log)}") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return (
        f"agent:status answered {cold:.2f} s after start{icon}; SIGTERM: exit 0 in {quit_s:.2f} s"
    )


# --------------------------------------------------------------------- main


def _target(arg: str, scratch: Path) -> list[str]:
    path = Path(arg)
    if path.is_dir():
        exe = path / "desktop-agent"
    elif arg.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path) as tar:
            tar.extractall(scratch / "unpacked", filter="tar")
        found = sorted((scratch / "unpacked").glob("*/desktop-agent"))
        if not found:
            raise SmokeFailed(f"{arg} holds no */desktop-agent")
        exe = found[0]
    else:
        exe = path
    if not os.access(exe, os.X_OK):
        raise SmokeFailed(f"{exe} is not an executable")
    return [str(exe)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("target", help="bundle dir, tarball or executable")
    p.add_argument("--files", type=int, default=2500, help="small files to back up")
    p.add_argument("--no-tray", action="store_true", help="skip the tray test (no Xvfb here)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = p.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="desktop-agent-smoke-"))
    failed = 0
    started = time.monotonic()
    try:
        env = Env(scratch, _target(args.target, scratch))
        print(f"smoke test of {env.exe[0]} (scratch {scratch})")
        env.write_config()
        hashes = make_files(env.data, args.files)
        steps = [
            ("version", lambda: step_version(env)),
            ("selftest", lambda: step_selftest(env)),
            ("token", lambda: step_token(env)),
            ("init", lambda: step_init(env)),
            ("backup", lambda: step_backup(env, args.files)),
            ("check", lambda: step_check(env)),
            ("restore", lambda: step_restore(env, hashes)),
            ("headless", lambda: step_headless(env)),
        ]
        if not args.no_tray:
            steps.append(("tray", lambda: step_tray(env)))
        for name, run in steps:
            t0 = time.monotonic()
            try:
                found = run()
            except (SmokeFailed, subprocess.TimeoutExpired) as exc:
                failed += 1
                print(f"FAIL {name:9} {exc} ({time.monotonic() - t0:.2f} s)")
                if name in {"version", "init", "backup"}:
                    break  # the later steps need this one
            else:
                print(f"ok   {name:9} {found} ({time.monotonic() - t0:.2f} s)")
    except SmokeFailed as exc:
        print(f"FAIL setup     {exc}")
        failed += 1
    finally:
        if args.keep:
            print(f"scratch kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    total = time.monotonic() - started
    print(
        "smoke test: "
        + (f"{failed} step(s) failed" if failed else "all steps passed")
        + f" in {total:.1f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
