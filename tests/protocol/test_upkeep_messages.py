"""The ``upkeep:*`` messages on the wire: pinned by fixtures, shown in the docs, fuzzed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from desktop_agent.protocol import (
    UPKEEP_TASKS,
    BackupProgress,
    Command,
    Event,
    JobId,
    ProtocolError,
    RestoreProgress,
    UpkeepCancel,
    UpkeepCompleted,
    UpkeepFailed,
    UpkeepPause,
    UpkeepPaused,
    UpkeepProgress,
    UpkeepResume,
    UpkeepResumed,
    UpkeepStarted,
    decode_command,
    decode_event,
    encode_command,
    encode_event,
)

FIXTURES = Path(__file__).parent / "fixtures"
UPKEEP = FIXTURES / "upkeep"
EVENTS = sorted(UPKEEP.glob("event-*.json"))
COMMANDS = sorted(UPKEEP.glob("command-*.json"))
DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_every_upkeep_message_has_a_fixture() -> None:
    kinds = {json.loads(p.read_text())["type"] for p in EVENTS + COMMANDS}
    assert kinds == {
        f"upkeep:{k}"
        for k in (
            "started",
            "progress",
            "paused",
            "resumed",
            "completed",
            "failed",
            "pause",
            "resume",
            "cancel",
        )
    }


@pytest.mark.parametrize("fixture", EVENTS, ids=lambda p: p.stem)
def test_upkeep_events_are_written_exactly_as_pinned(fixture: Path) -> None:
    """Field names, order, JSON types and the compact form the agent writes."""
    original = json.loads(fixture.read_text())
    event = decode_event(fixture.read_text())
    assert type(event).__name__.startswith("Upkeep")
    assert encode_event(event) == json.dumps(original, separators=(",", ":"))


@pytest.mark.parametrize("fixture", COMMANDS, ids=lambda p: p.stem)
def test_upkeep_commands_decode_and_encode_exactly(fixture: Path) -> None:
    command = decode_command(fixture.read_text())
    assert type(command) in (UpkeepPause, UpkeepResume, UpkeepCancel)
    assert encode_command(command) == json.dumps(
        json.loads(fixture.read_text()), separators=(",", ":")
    )


def _documented_json() -> list[object]:
    """Every JSON value in a json code block of docs/protocol.md (one per block or line)."""
    found: list[object] = []
    for block in DOCS.read_text().split("```json\n")[1:]:
        body = block.split("```", 1)[0]
        try:
            found.append(json.loads(body))
            continue
        except ValueError:
            pass
        for line in body.splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                pass  # abbreviated examples
    return found


@pytest.mark.parametrize("fixture", EVENTS + COMMANDS, ids=lambda p: p.stem)
def test_docs_show_each_upkeep_message(fixture: Path) -> None:
    assert json.loads(fixture.read_text()) in _documented_json()


def test_upkeep_progress_has_exactly_the_nine_fields_and_is_its_own_kind() -> None:
    seed = json.loads((FIXTURES / "event-backup_progress.json").read_text())["payload"]
    event = decode_event((UPKEEP / "event-upkeep_progress.json").read_text())
    assert isinstance(event, UpkeepProgress)
    assert not isinstance(event, BackupProgress | RestoreProgress)
    assert list(json.loads(encode_event(event))["payload"]) == list(seed)
    backup = BackupProgress(*[getattr(event, k) for k in seed])
    assert backup != event
    assert json.loads(encode_event(backup))["payload"] == json.loads(encode_event(event))["payload"]


def test_upkeep_commands_decode_to_their_own_types() -> None:
    for kind, cls in (
        ("pause", UpkeepPause),
        ("resume", UpkeepResume),
        ("cancel", UpkeepCancel),
    ):
        assert decode_command(f'{{"type":"upkeep:{kind}","payload":{{"job_id":"j"}}}}') == cls(
            JobId("j")
        )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"type":"upkeep:start","payload":{}}', "the agent starts upkeep on its own"),
        ('{"type":"upkeep:start","payload":{"task":"check"}}', "is not a command"),
        ('{"type":"upkeep:pause","payload":{}}', "needs a non-empty string job_id"),
        ('{"type":"upkeep:cancel","payload":null}', "needs a payload object with job_id"),
        ('{"type":"upkeep:resume","payload":{"job_id":""}}', "non-empty string job_id"),
        ('{"type":"upkeep:completed","payload":{"job_id":"j"}}', "is an event the agent sends"),
        ('{"type":"upkeep:progress","payload":{"job_id":"j"}}', "is an event the agent sends"),
    ],
)
def test_bad_upkeep_commands_say_what_is_wrong(text: str, needle: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_command(text)
    assert needle in caught.value.message
    assert caught.value.request_type == json.loads(text)["type"]


def test_an_upkeep_event_with_a_missing_field_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="upkeep:completed"):
        decode_event('{"type":"upkeep:completed","payload":{"job_id":"j","task":"check"}}')
    with pytest.raises(ProtocolError, match="unknown message type 'upkeep:done'"):
        decode_event('{"type":"upkeep:done","payload":{"job_id":"j"}}')


_ids = st.text(min_size=1, max_size=128).map(JobId)
_tasks = st.sampled_from(UPKEEP_TASKS)
_events: st.SearchStrategy[Event] = st.one_of(
    st.builds(UpkeepStarted, _ids, _tasks),
    st.builds(
        UpkeepProgress,
        _ids,
        st.floats(min_value=0, max_value=100, allow_nan=False).map(lambda f: round(f, 2)),
        st.integers(0, 2**62),
        st.integers(0, 2**62),
        st.integers(0, 2**40),
        st.integers(0, 2**31),
        st.none() | st.text(),
        st.integers(0, 2**31),
        st.integers(0, 2**31),
    ),
    st.builds(UpkeepCompleted, _ids, _tasks, st.text()),
    st.builds(UpkeepFailed, _ids, st.text()),
    st.builds(UpkeepPaused, _ids),
    st.builds(UpkeepResumed, _ids),
)
_commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(UpkeepPause, _ids), st.builds(UpkeepResume, _ids), st.builds(UpkeepCancel, _ids)
)


@settings(max_examples=200)
@given(_events)
def test_every_upkeep_event_round_trips(event: Event) -> None:
    assert decode_event(encode_event(event)) == event


@settings(max_examples=200)
@given(_commands)
def test_every_upkeep_command_round_trips(command: Command) -> None:
    assert decode_command(encode_command(command)) == command
