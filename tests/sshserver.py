"""A private OpenSSH server for the SFTP tests: its own host key, port and users' key.

:class:`SshServer` starts ``/usr/sbin/sshd -D`` on 127.0.0.1 and a free
port with a configuration of its own (public-key login only, the
``internal-sftp`` subsystem, no PAM), generates an ed25519 host key and an
ed25519 client key without passphrase, authorizes the client key and
writes a ``known_hosts`` file that trusts the host key. Nothing outside its
directory is touched but ``/run/sshd``, the privilege-separation directory
sshd insists on when it runs as root.

The tests pass :attr:`SshServer.client_key` and :attr:`SshServer.known_hosts`
to the backend explicitly, and :meth:`SshServer.sftp_command` to restic, so
the user's own ``~/.ssh`` is never read or changed.

:meth:`SshServer.kill` kills the server and every session it forked (a
server that crashed, or a machine that went away); :meth:`SshServer.start`
brings it back on the same port.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import pytest
from support import free_port

__all__ = ["SSHD", "SshServer", "free_port", "need_sshd"]

SSHD = "/usr/sbin/sshd"


def need_sshd() -> None:
    """Skip (fail in CI) when OpenSSH's server or ssh-keygen is missing."""
    if os.path.exists(SSHD) and shutil.which("ssh-keygen"):
        return
    if os.environ.get("CI"):
        pytest.fail("openssh-server is required in CI (make test installs it)")
    pytest.skip("openssh-server is not installed")


def _keygen(path: Path, comment: str) -> str:
    """Make an ed25519 key pair without passphrase; return the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_name(path.name + ".pub").read_text().strip()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (sshd's forked sessions)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: split after it
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry))
    return found


class SshServer:
    """An sshd of our own in ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        need_sshd()
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.host = "127.0.0.1"
        self.host_key = root / "ssh_host_ed25519_key"
        self.host_key_pub = _keygen(self.host_key, "test-host")
        self.client_key = root / "id_ed25519"
        (root / "authorized_keys").write_text(_keygen(self.client_key, "test-client") + "\n")
        self.known_hosts = root / "known_hosts"
        self.config = root / "sshd_config"
        self.log = root / "sshd.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> None:
        self.config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {self.port}",
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
                    f"PidFile {self.root / 'sshd.pid'}",
                    "UsePAM no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    "StrictModes no",
                    "Subsystem sftp internal-sftp",
                    "MaxStartups 100",
                    "MaxSessions 30",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )

    def start(self) -> SshServer:
        """Start sshd (on a free port the first time, on the same one after
        :meth:`kill`) and wait until it accepts connections."""
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        fixed = self.port != 0  # restarted after kill(): the clients know this port
        for _ in range(5):
            if not fixed:
                self.port = free_port()
                self.known_hosts.write_text(f"[{self.host}]:{self.port} {self.host_key_pub}\n")
            self._write_config()
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(self.config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            if self._wait_ready(self.proc):
                return self
        raise AssertionError(f"sshd did not start: {self.log.read_text(errors='replace')}")

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False  # the port was taken meanwhile, say: try another
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return True
            except OSError:
                time.sleep(0.01)
        proc.kill()
        proc.wait()
        return False

    def kill(self) -> None:
        """Kill sshd and all its sessions at once (SIGKILL): the server is gone."""
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        sessions = _children(proc.pid)
        proc.kill()
        for pid in sessions:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()

    def stop(self) -> None:
        """Stop the server (and its sessions)."""
        self.kill()

    def trust(self, port: int) -> None:
        """Trust the host key on another port too (a proxy in front of the server)."""
        with open(self.known_hosts, "a") as fh:
            fh.write(f"[{self.host}]:{port} {self.host_key_pub}\n")

    def location(self, path: str | os.PathLike[str], port: int | None = None) -> str:
        """The repository location of ``path`` on this server (or on ``port``), in
        restic's syntax."""
        return f"sftp://{self.user}@{self.host}:{port or self.port}/{os.fspath(path)}"

    def restic_location(self, path: str | os.PathLike[str]) -> str:
        """The location restic is given (its sftp.command supplies the port)."""
        return f"sftp:{self.user}@{self.host}:{os.fspath(path)}"

    def sftp_command(self) -> str:
        """restic's ``-o sftp.command=...``: ssh with our key and known_hosts only."""
        return (
            f"ssh -p {self.port} -i {self.client_key} -F /dev/null "
            f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes "
            f"-o BatchMode=yes -o IdentitiesOnly=yes {self.user}@{self.host} -s sftp"
        )

    def __enter__(self) -> SshServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
