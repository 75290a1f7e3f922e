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
    RestoreCancel,
    RestoreCompleted,
    RestoreFailed,
    RestorePause,
    RestorePaused,
    RestoreProgress,
    RestoreResume,
    RestoreResumed,
    RestoreStart,
    RestoreStarted,
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
# the additions' messages, as docs/protocol.md shows them
ADDED = FIXTURES / "additions"
ADDED_EVENTS = sorted(ADDED.glob("event-*.json"))
ADDED_COMMANDS = sorted(ADDED.glob("command-*.json"))
DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


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


def test_the_restore_additions_are_all_here():
    assert {p.stem for p in ADDED_EVENTS} == {
        f"event-restore_{k}" for k in ("started", "progress", "completed", "failed", "paused")
    } | {"event-restore_resumed"}
    assert {p.stem for p in ADDED_COMMANDS} == {
        "command-restore_start",
        "command-restore_start_paths",
        "command-restore_pause",
        "command-restore_resume",
        "command-restore_cancel",
    }


@pytest.mark.parametrize("fixture", ADDED_EVENTS, ids=lambda p: p.stem)
def test_added_events_are_written_exactly_as_pinned(fixture):
    """Field names, order, JSON types and the compact form the agent writes."""
    original = json.loads(fixture.read_text())
    event = decode_event(fixture.read_text())
    assert encode_event(event) == json.dumps(original, separators=(",", ":"))
    for key, value in original["payload"].items():
        assert type(json.loads(encode_event(event))["payload"][key]) is type(value), key


@pytest.mark.parametrize("fixture", ADDED_COMMANDS, ids=lambda p: p.stem)
def test_added_commands_decode_and_encode_exactly(fixture):
    command = decode_command(fixture.read_text())
    assert encode_command(command) == json.dumps(
        json.loads(fixture.read_text()), separators=(",", ":")
    )


def _documented_json() -> list[object]:
    """Every JSON value in a json code block of docs/protocol.md (one per block or line)."""
    found: list[object] = []
    blocks = DOCS.read_text().split("```json\n")[1:]
    for block in blocks:
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
                pass  # abbreviated examples ("3f2b...")
    return found


@pytest.mark.parametrize("fixture", ADDED_EVENTS + ADDED_COMMANDS, ids=lambda p: p.stem)
def test_docs_show_each_added_message(fixture):
    assert json.loads(fixture.read_text()) in _documented_json()


def test_restore_progress_has_exactly_the_nine_fields_of_backup_progress():
    seed = json.loads((FIXTURES / "event-backup_progress.json").read_text())["payload"]
    event = decode_event((ADDED / "event-restore_progress.json").read_text())
    assert isinstance(event, RestoreProgress) and not isinstance(event, BackupProgress)
    assert list(json.loads(encode_event(event))["payload"]) == list(seed)
    backup = BackupProgress(*[getattr(event, k) for k in seed])
    assert backup != event  # one kind's progress is never the other's
    assert json.loads(encode_event(backup))["payload"] == json.loads(encode_event(event))["payload"]


def test_restore_commands_decode_to_their_own_types():
    assert decode_command(
        '{"type":"restore:start","payload":{"snapshot":"latest","paths":["/a"]}}'
    ) == RestoreStart("latest", ("/a",))
    assert decode_command('{"type":"restore:pause","payload":{"job_id":"j"}}') == RestorePause(
        JobId("j")
    )
    assert decode_command('{"type":"restore:resume","payload":{"job_id":"j"}}') == RestoreResume(
        JobId("j")
    )
    assert decode_command('{"type":"restore:cancel","payload":{"job_id":"j"}}') == RestoreCancel(
        JobId("j")
    )
    assert decode_command('{"type":"backup:pause","payload":{"job_id":"j"}}') == BackupPause(
        JobId("j")
    )


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
        ('{"type": "restore:start", "payload": null}', "restore:start", '"snapshot"'),
        ('{"type": "restore:start", "payload": {}}', "restore:start", '"snapshot" must be'),
        ('{"type": "restore:start", "payload": {"snapshot": ""}}', "restore:start", "non-empty"),
        ('{"type": "restore:start", "payload": {"snapshot": 7}}', "restore:start", "string"),
        (
            '{"type": "restore:start", "payload": {"snapshot": "' + "a" * 129 + '"}}',
            "restore:start",
            "longer",
        ),
        (
            '{"type": "restore:start", "payload": {"snapshot": "latest", "paths": []}}',
            "restore:start",
            "non-empty",
        ),
        (
            '{"type": "restore:start", "payload": {"snapshot": "latest", "target": "/etc"}}',
            "restore:start",
            "restore:start takes",
        ),
        ('{"type": "restore:pause", "payload": {}}', "restore:pause", "job_id"),
        ('{"type": "restore:cancel", "payload": null}', "restore:cancel", "job_id"),
        ('{"type": "restore:progress", "payload": {}}', "restore:progress", "event the agent"),
        ('{"type": "restore:started", "payload": {}}', "restore:started", "event the agent"),
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
    [
        "backup:pause",
        "backup:resume",
        "backup:cancel",
        "backup:start",
        "agent:status",
        "restore:start",
        "restore:pause",
        "restore:resume",
        "restore:cancel",
        "x",
    ]
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


def _progress(cls):
    return st.builds(
        cls,
        _ids,
        st.floats(min_value=0, max_value=100, allow_nan=False).map(lambda f: round(f, 2)),
        st.integers(0, 2**62),
        st.integers(0, 2**62),
        st.integers(0, 2**40),
        st.integers(0, 2**31),
        st.none() | st.text(),
        st.integers(0, 2**31),
        st.integers(0, 2**31),
    )


_events = st.one_of(
    _progress(BackupProgress),
    _progress(RestoreProgress),
    st.builds(RestoreStarted, _ids, st.text(), st.text()),
    st.builds(RestoreCompleted, _ids, st.integers(0, 2**62)),
    st.builds(RestoreFailed, _ids, st.text()),
    st.builds(RestorePaused, _ids),
    st.builds(RestoreResumed, _ids),
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
_paths = st.lists(st.text(min_size=1).filter(lambda s: "\0" not in s), min_size=1).map(tuple)
_commands = st.one_of(
    st.builds(RestorePause, _ids),
    st.builds(RestoreResume, _ids),
    st.builds(RestoreCancel, _ids),
    st.builds(
        RestoreStart,
        st.text(min_size=1, max_size=128).filter(lambda s: s.strip() and "\0" not in s),
        st.none() | _paths,
    ),
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
