"""Integration with the operating system: start at login, one instance, login sessions.

Nothing here imports Qt: the headless agent and the CLI use it too. The
tray's Qt side of "one instance" (the local socket a second start talks to)
lives in :mod:`desktop_agent.ui.instance`.

- :mod:`.autostart`: start the tray app at login (XDG autostart on Linux, a
  LaunchAgent on macOS, the Run key on Windows) behind one interface.
- :mod:`.instance`: the lock that keeps one agent per configuration, and the
  request a second tray start hands to the running one.
- :mod:`.session`: "once per login session" markers.
"""

from __future__ import annotations

from desktop_agent.system.errors import AlreadyRunning, AutostartError, IntegrationError

__all__ = ["AlreadyRunning", "AutostartError", "IntegrationError"]
