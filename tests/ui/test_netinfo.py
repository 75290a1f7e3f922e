"""The tray's Qt network provider against whatever backend Qt has here (none is faked).

On a machine where Qt loads a backend (GLib's network monitor in most
containers, NetworkManager on desktops) the values it reports reach the
hub as source "qt"; where it loads none, the hub hears nothing from it.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtNetwork import QNetworkInformation

from desktop_agent.jobs.conditions import ConditionHub
from desktop_agent.ui.netinfo import NetworkWatch, network_up

Reachability = QNetworkInformation.Reachability
Feature = QNetworkInformation.Feature


def test_reachability_in_the_hubs_words():
    assert network_up(Reachability.Online) is True
    assert network_up(Reachability.Disconnected) is False
    for between in (Reachability.Unknown, Reachability.Local, Reachability.Site):
        assert network_up(between) is None


def test_pushes_what_qt_knows_and_only_that(qapp: Any) -> None:
    hub = ConditionHub()
    heard: list[Any] = []
    hub.listen(heard.append)
    watch = NetworkWatch(hub)
    try:
        started = watch.start()
        info = QNetworkInformation.instance()
        if info is None:
            # no backend on this machine: nothing reported, nothing claimed
            assert not started and watch.features == ()
            assert "qt" not in hub.sources()
            return
        expected = []
        if info.supports(Feature.Metered):
            expected.append("metered")
            assert hub.current.metered is info.isMetered()
        if info.supports(Feature.Reachability):
            expected.append("network_up")
            assert hub.current.network_up is network_up(info.reachability())
        assert started is bool(expected)
        assert watch.features == tuple(expected)
        assert hub.sources().get("qt", ()) == tuple(sorted(expected))
        assert watch.start() is started  # a second start changes nothing
    finally:
        watch.close()
    assert watch.features == ()
    watch.close()  # closing twice is harmless
