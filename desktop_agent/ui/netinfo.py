"""The tray's network condition provider: Qt's QNetworkInformation.

Whether the connection is metered and whether the machine is online, as
the operating system tells Qt (NetworkManager or GLib on Linux, the
Network List Manager on Windows, Network framework on macOS), pushed into
the agent's :class:`~desktop_agent.jobs.conditions.ConditionHub` under the
source name ``"qt"``: at start and on every change. The scheduler skips
backups on metered networks and waits for the network from what the hub
holds (docs/architecture.md, the schedule's rules in
:mod:`desktop_agent.jobs.schedule`).

Only the tray app starts it (:mod:`.bootstrap`); the headless agent has
the D-Bus providers of :mod:`desktop_agent.system.power`. Without a backend,
or one that knows neither feature, it does nothing but say so in the log.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject
from PySide6.QtNetwork import QNetworkInformation

from desktop_agent.jobs.conditions import ConditionHub

__all__ = ["NetworkWatch", "SOURCE", "network_up"]

log = logging.getLogger(__name__)

SOURCE = "qt"  # the hub's name for what this provider reports

Feature = QNetworkInformation.Feature
Reachability = QNetworkInformation.Reachability


def network_up(reachability: Reachability) -> bool | None:
    """Online: True; disconnected: False; anything between (local network
    only, a site, unknown): None, which stops nothing."""
    if reachability == Reachability.Online:
        return True
    if reachability == Reachability.Disconnected:
        return False
    return None


class NetworkWatch(QObject):
    """Pushes Qt's metered and reachability information into a hub while started."""

    def __init__(self, hub: ConditionHub, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.hub = hub
        self._info: QNetworkInformation | None = None
        self.features: tuple[str, ...] = ()  # what it reports: "metered", "network_up"

    def start(self) -> bool:
        """Load Qt's default backend and report what it supports now and on
        every change; False (and one log line) when it supports nothing useful."""
        if self._info is not None:
            return True
        if not QNetworkInformation.loadDefaultBackend():
            log.info("no network information from Qt (no backend for this system)")
            return False
        info = QNetworkInformation.instance()
        if info is None:
            log.info("no network information from Qt (its backend did not start)")
            return False
        features: list[str] = []
        if info.supports(Feature.Metered):
            features.append("metered")
        if info.supports(Feature.Reachability):
            features.append("network_up")
        if not features:
            log.info(
                "Qt's network information (%s) tells neither metered nor reachability",
                info.backendName(),
            )
            return False
        self._info = info
        self.features = tuple(features)
        if "metered" in features:
            info.isMeteredChanged.connect(self._metered)
            self._metered(info.isMetered())
        if "network_up" in features:
            info.reachabilityChanged.connect(self._reachability)
            self._reachability(info.reachability())
        log.info(
            "network information from Qt's %s backend: %s", info.backendName(), ", ".join(features)
        )
        return True

    def close(self) -> None:
        """Stop reporting (the values last pushed stay in the hub)."""
        info, self._info = self._info, None
        if info is None:
            return
        if "metered" in self.features:
            info.isMeteredChanged.disconnect(self._metered)
        if "network_up" in self.features:
            info.reachabilityChanged.disconnect(self._reachability)
        self.features = ()

    def _metered(self, metered: bool) -> None:
        self.hub.update(SOURCE, metered=bool(metered))

    def _reachability(self, reachability: Reachability) -> None:
        self.hub.update(SOURCE, network_up=network_up(reachability))
