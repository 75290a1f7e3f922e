"""The errors of :mod:`desktop_agent.system`; each message is one line a user can act on."""

from __future__ import annotations

__all__ = ["AlreadyRunning", "AutostartError", "IntegrationError"]


class IntegrationError(Exception):
    """Something the operating system refused (base of this package's errors)."""


class AutostartError(IntegrationError):
    """Start-at-login could not be read or changed."""


class AlreadyRunning(IntegrationError):
    """Another process runs the agent on this configuration.

    ``pid`` and ``mode`` (``"tray"`` or ``"headless"``) are read from the
    lock file; either is None when the other process has not written it yet.
    ``detail`` is appended to the message after a colon.
    """

    def __init__(self, pid: int | None, mode: str | None, detail: str = "") -> None:
        self.pid = pid
        self.mode = mode
        self.detail = detail
        what = f"already running (pid {pid})" if pid is not None else "already running"
        super().__init__(f"{what}: {detail}" if detail else what)

    def explained(self, detail: str) -> AlreadyRunning:
        """The same error with ``detail`` (why it matters to this start) appended."""
        return AlreadyRunning(self.pid, self.mode, detail)
