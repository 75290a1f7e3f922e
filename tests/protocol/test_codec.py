"""The wire format, pinned by the seed's own JSON examples, and fuzzed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from desktop_agent.protocol import (
    AgentStatus,
    BackupCancel,
    BackupCompleted,
    BackupFailed,
    BackupPause,
    BackupPaused,
    BackupProgress,
    BackupResume,
    BackupResumed,
    BackupStart,
    BackupStarted,
    ErrorReply,
    JobId,
    ProtocolError,
    Skipped,
    StatusRequest,
    decode_command,
    decode_event,
    encode_command,
    encode_event,
)

FIXTURES = Path(__file__).parent / "fixtures"
EVENTS = sorted(FIXTURES.glob("event-*.json"))
COMMANDS = sorted(FIXTURES.glob("command-*.json"))


def test_the_seed_examples_are_all_here():
    assert len(EVENTS) == 5 and len(COMMANDS) == 4


@pytest.mark.parametrize("fixture", EVENTS, ids=lambda p: p.stem)
def test_seed_events_round_trip_exactly(fixture):
    """Decoding the seed's example and encoding it again gives the same JSON,
    field for field and type for type (ints stay ints, floats floats)."""
    text = fixture.read_text()
    event = decode_event(text)
    again = json.loads(encode_event(event))
    original = json.loads(text)
    assert again == original
    for key, value in original["payload"].items():
        assert type(again["payload"][key]) is type(value), key


@pytest.mark.parametrize("fixture", COMMANDS, ids=lambda p: p.stem)
def test_seed_commands_decode_and_encode_exactly(fixture):
    text = fixture.read_text()
    command = decode_command(text)
    assert json.loads(encode_command(command)) == json.loads(text)


def test_the_seed_progress_example_in_detail():
    event = decode_event((FIXTURES / "event-backup_progress.json").read_text())
    assert event == BackupProgress(
        JobId("abc-123"), 45.5, 1048576, 2097152, 524288, 2, "/data/file.txt", 10, 25
    )


def test_skipped_paths_are_an_addition_only_when_there_are_some():
    clean = BackupCompleted(JobId("j"), 10)
    assert json.loads(encode_event(clean))["payload"] == {"job_id": "j", "total_bytes": 10}
    partial = BackupCompleted(JobId("j"), 10, (Skipped("/a", "Permission denied"),), 250)
    assert json.loads(encode_event(partial))["payload"] == {
        "job_id": "j",
        "total_bytes": 10,
        "skipped": [{"path": "/a", "reason": "Permission denied"}],
        "skipped_total": 250,
    }
    assert decode_event(encode_event(partial)) == partial
    with pytest.raises(ProtocolError, match="skipped"):
        decode_event(
            '{"type":"backup:completed","payload":{"job_id":"j","total_bytes":1,"skipped":3}}'
        )


def test_additions_encode_as_documented():
    assert json.loads(encode_event(BackupPaused(JobId("j")))) == {
        "type": "backup:paused",
        "payload": {"job_id": "j"},
    }
    assert json.loads(encode_event(BackupResumed(JobId("j"))))["type"] == "backup:resumed"
    assert json.loads(encode_event(ErrorReply("bad", None))) == {
        "type": "error",
        "payload": {"message": "bad", "request_type": None},
    }
    assert decode_command('{"type":"backup:start","payload":{}}') == BackupStart(None)
    assert decode_command('{"type":"backup:start","payload":{"paths":["/a","/b"]}}') == BackupStart(
        ("/a", "/b")
    )
    assert json.loads(encode_command(BackupStart(None))) == {"type": "backup:start", "payload": {}}


@pytest.mark.parametrize(
    ("text", "request_type", "needle"),
    [
        ("not json", None, "malformed JSON"),
        ("[1,2]", None, "JSON object"),
        ('{"payload": null}', None, "type"),
        ('{"type": 7, "payload": null}', None, "type"),
        ('{"type": "backup:pause"}', "backup:pause", "payload"),
        ('{"type": "backup:pause", "payload": null}', "backup:pause", "job_id"),
        ('{"type": "backup:pause", "payload": {"job_id": 5}}', "backup:pause", "job_id"),
        ('{"type": "backup:pause", "payload": {"job_id": ""}}', "backup:pause", "job_id"),
        (
            '{"type": "backup:cancel", "payload": {"job_id": "' + "x" * 200 + '"}}',
            "backup:cancel",
            "longer",
        ),
        ('{"type": "backup:start", "payload": {"paths": []}}', "backup:start", "non-empty"),
        ('{"type": "backup:start", "payload": {"paths": "/a"}}', "backup:start", "list"),
        ('{"type": "backup:start", "payload": {"paths": [1]}}', "backup:start", "string"),
        ('{"type": "backup:start", "payload": {"other": 1}}', "backup:start", "paths"),
        ('{"type": "agent:status", "payload": {"x": 1}}', "agent:status", "null"),
        ('{"type": "backup:progress", "payload": {}}', "backup:progress", "event the agent sends"),
        ('{"type": "rm -rf", "payload": null}', "rm -rf", "unknown message type"),
    ],
)
def test_bad_commands_say_what_is_wrong(text, request_type, needle):
    with pytest.raises(ProtocolError) as info:
        decode_command(text)
    assert info.value.request_type == request_type
    assert needle in info.value.message
    reply = json.loads(encode_event(info.value.reply()))
    assert reply["type"] == "error" and reply["payload"]["request_type"] == request_type


def test_binary_frames_are_refused():
    with pytest.raises(ProtocolError, match="binary"):
        decode_command(b'{"type":"agent:status","payload":null}')


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
_types = st.sampled_from(
    ["backup:pause", "backup:resume", "backup:cancel", "backup:start", "agent:status", "x"]
)


@settings(max_examples=400)
@given(
    st.one_of(
        st.text(),
        st.binary(),
        _json.map(json.dumps),
        st.builds(lambda t, p: json.dumps({"type": t, "payload": p}), _types, _json),
    )
)
def test_decode_command_answers_or_raises_protocol_error_only(frame):
    """Random frames never crash the codec: a command or a ProtocolError."""
    try:
        command = decode_command(frame)
    except ProtocolError as exc:
        assert exc.message
        json.loads(encode_event(exc.reply()))  # the reply is always encodable
    else:
        assert decode_command(encode_command(command)) == command


_ids = st.text(min_size=1, max_size=128).map(JobId)
_events = st.one_of(
    st.builds(
        BackupProgress,
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
    st.builds(BackupStarted, _ids),
    st.builds(BackupCompleted, _ids, st.integers(0, 2**62)),
    st.lists(st.builds(Skipped, st.text(), st.text()), min_size=1, max_size=5).flatmap(
        lambda sk: st.builds(
            BackupCompleted,
            _ids,
            st.integers(0, 2**62),
            st.just(tuple(sk)),
            st.integers(len(sk), 10**6),
        )
    ),
    st.builds(BackupFailed, _ids, st.text()),
    st.builds(BackupPaused, _ids),
    st.builds(BackupResumed, _ids),
    st.builds(
        AgentStatus,
        st.sampled_from(["idle", "running", "paused"]),
        st.integers(0, 99),
        st.integers(0, 2**31),
    ),
    st.builds(ErrorReply, st.text(), st.none() | st.text()),
)
_commands = st.one_of(
    st.builds(BackupPause, _ids),
    st.builds(BackupResume, _ids),
    st.builds(BackupCancel, _ids),
    st.just(StatusRequest()),
    st.builds(
        BackupStart,
        st.none()
        | st.lists(st.text(min_size=1).filter(lambda s: "\0" not in s), min_size=1).map(tuple),
    ),
)


@settings(max_examples=300)
@given(_events)
def test_every_event_round_trips(event):
    assert decode_event(encode_event(event)) == event


@settings(max_examples=300)
@given(_commands)
def test_every_command_round_trips(command):
    assert decode_command(encode_command(command)) == command
