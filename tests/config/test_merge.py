"""config.merge: an edit applied on top of a configuration that changed meanwhile."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from desktop_agent.config import (
    AgentConfig,
    BackupConfig,
    Config,
    RepositoryConfig,
    UiConfig,
    merge,
)

BASE = Config(
    agent=AgentConfig(token="t" * 20),
    repository=RepositoryConfig(path="/repo", password_file=None),
    backup=BackupConfig(sources=("~/Documents",), exclude=(), interval_minutes=60),
    path=Path("/etc/desktop-agent/config.toml"),
)


def test_nothing_edited_takes_theirs_whole() -> None:
    theirs = replace(BASE, repository=replace(BASE.repository, path="/elsewhere"))
    assert merge(BASE, BASE, theirs) == theirs


def test_an_edit_is_kept_and_a_change_made_elsewhere_is_not_reverted() -> None:
    mine = replace(BASE, backup=replace(BASE.backup, interval_minutes=15))
    # meanwhile the first-run window moved the repository
    theirs = replace(BASE, repository=replace(BASE.repository, path="/media/usb/repo"))
    merged = merge(BASE, mine, theirs)
    assert merged.backup.interval_minutes == 15
    assert merged.repository.path == "/media/usb/repo"
    assert merged.backup.sources == BASE.backup.sources


def test_key_by_key_within_a_section() -> None:
    mine = replace(BASE, agent=replace(BASE.agent, allow_remote_restore=True))
    theirs = replace(BASE, agent=replace(BASE.agent, token="n" * 20, listen="127.0.0.1:9000"))
    merged = merge(BASE, mine, theirs)
    assert merged.agent == replace(theirs.agent, allow_remote_restore=True)


def test_the_edit_wins_where_both_changed_a_key() -> None:
    mine = replace(BASE, ui=UiConfig(notify_success=False))
    theirs = replace(BASE, ui=UiConfig(notify_success=False))
    assert merge(BASE, mine, theirs).ui.notify_success is False
    mine = replace(BASE, backup=replace(BASE.backup, sources=("/a",)))
    theirs = replace(BASE, backup=replace(BASE.backup, sources=("/b",)))
    assert merge(BASE, mine, theirs).backup.sources == ("/a",)


def test_the_path_is_theirs() -> None:
    mine = replace(BASE, path=Path("/tmp/mine.toml"))
    theirs = replace(BASE, path=Path("/tmp/theirs.toml"))
    assert merge(BASE, mine, theirs).path == Path("/tmp/theirs.toml")


@given(
    mine_interval=st.integers(0, 1000),
    their_interval=st.integers(0, 1000),
    mine_notify=st.booleans(),
    their_path=st.sampled_from(["/repo", "/other"]),
)
def test_every_key_comes_from_mine_if_edited_else_from_theirs(
    mine_interval: int, their_interval: int, mine_notify: bool, their_path: str
) -> None:
    mine = replace(
        BASE,
        backup=replace(BASE.backup, interval_minutes=mine_interval),
        ui=UiConfig(notify_success=mine_notify),
    )
    theirs = replace(
        BASE,
        backup=replace(BASE.backup, interval_minutes=their_interval),
        repository=replace(BASE.repository, path=their_path),
    )
    merged = merge(BASE, mine, theirs)
    edited = mine_interval != BASE.backup.interval_minutes
    assert merged.backup.interval_minutes == (mine_interval if edited else their_interval)
    assert merged.ui.notify_success == mine_notify
    assert merged.repository.path == their_path
