"""The commands about the agent and this installation (:mod:`desktop_agent.cli.agent`)."""

from __future__ import annotations


def test_version_and_token(tmp_path, cli, setup):
    _src, cfg = setup
    v = cli("--version")
    assert v.returncode == 0 and v.stdout.startswith("desktop-agent ")
    t = cli("--config", str(cfg), "token")
    assert t.stdout.strip() == "test-token-0123456789"
