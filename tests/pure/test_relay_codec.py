"""The relay's wire format, without a socket: every field of every event survives the
round trip, and a client reads messages from a newer relay."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamacpp_adapter import (
    AdapterError,
    End,
    Metrics,
    ProtocolError,
    Started,
    StreamEvent,
    TaskRequest,
    Token,
    WorkerError,
    WorkerReset,
)
from llamacpp_adapter._relay.codec import (
    MAX_WINDOW,
    BadTask,
    decode_ack,
    decode_event,
    decode_task,
    encode_ack,
    encode_error,
    encode_event,
    encode_task,
)
from llamacpp_adapter._types import ChatRequest, PromptProgress, Reasoning, ToolCall, ToolCallDelta

texts = st.text()
counts = st.integers(min_value=0, max_value=2**53)
times = st.floats(allow_nan=False, allow_infinity=False)
events: st.SearchStrategy[StreamEvent] = st.one_of(
    st.builds(Started, job_id=texts),
    st.builds(Token, i=counts, text=texts, token_ids=st.tuples() | st.lists(counts).map(tuple)),
    st.builds(Reasoning, text=texts),
    st.builds(PromptProgress, total=counts, cached=counts, processed=counts, time_ms=times),
    st.builds(ToolCall, index=counts, id=texts, name=texts, arguments=texts),
    st.builds(ToolCallDelta, index=counts, id=texts, name=texts, arguments=texts),
    st.builds(
        Metrics,
        prompt_tokens=counts,
        prompt_ms=times,
        prompt_tokens_per_s=times,
        predicted_tokens=counts,
        predicted_ms=times,
        predicted_tokens_per_s=times,
        cached_tokens=st.none() | counts,
    ),
    st.builds(
        End,
        tokens_out=counts,
        stop_reason=texts,
        tokens_in=st.none() | counts,
        truncated=st.booleans(),
        stop_word=st.none() | texts,
    ),
)


@given(events)
def test_every_field_of_every_event_survives_the_round_trip(event: StreamEvent) -> None:
    assert decode_event(encode_event(event)) == event


def test_a_token_keeps_its_ids() -> None:
    token = Token(3, " héllo", (101, 102))
    wire = json.loads(encode_event(token))
    assert wire == {"type": "token", "i": 3, "t": " héllo", "ids": [101, 102]}
    assert decode_event(encode_event(token)) == token


def test_the_wire_names_are_the_relays_own() -> None:
    assert json.loads(encode_event(Started("job"))) == {"type": "started", "job_id": "job"}
    assert json.loads(encode_event(Token(0, "a"))) == {"type": "token", "i": 0, "t": "a"}


def test_a_client_reads_a_newer_relays_messages() -> None:
    # Fields a newer relay adds are skipped, whatever the event.
    newer = [
        b'{"type":"token","i":0,"t":"a","ids":[5],"logprob":-0.5}',
        b'{"type":"started","job_id":"j","replica":"r0"}',
        b'{"type":"end","tokens_out":1,"stop_reason":"eos","energy_j":3.5}',
    ]
    assert [decode_event(message) for message in newer] == [
        Token(0, "a", (5,)),
        Started("j"),
        End(1, "eos"),
    ]


def test_a_client_skips_a_kind_of_message_it_does_not_know() -> None:
    # (It was a fault before: a client of this release reads a newer relay.)
    assert decode_event(b'{"type":"telepathy"}') is None
    assert decode_event(b'{"type":"prompt_progress_v9","done":3}') is None
    # A kind it knows, malformed, is still a fault.
    with pytest.raises(ProtocolError, match="malformed"):
        decode_event(b'{"type":"token","t":"a"}')
    with pytest.raises(ProtocolError, match="malformed"):
        decode_event(b'{"no_type":1}')


def test_an_error_message_comes_back_as_its_error() -> None:
    reset = decode_event(encode_error("WORKER_RESET", "cut", retriable=True))
    assert isinstance(reset, WorkerReset)
    assert (reset.message, reset.retriable) == ("cut", True)
    status = decode_event(encode_error("ADAPTER_ERROR", "busy", retriable=True, status=429))
    assert isinstance(status, AdapterError)
    assert status.status == 429
    unknown = decode_event(b'{"type":"error","code":"FROM_THE_FUTURE","message":"m"}')
    assert type(unknown) is WorkerError


@pytest.mark.parametrize(
    "message",
    [
        b"not json",
        b"[1]",
        b'{"i":0}',
        b'{"type":"token","i":"x","t":""}',
        b'{"type":"prompt_progress","total":"x"}',
        b'{"type":"tool_call_delta","index":0}',
        b'{"type":"token","i":0,"t":"","new":' + b"[" * 20_000 + b"]" * 20_000 + b"}",
    ],
)
def test_what_is_not_an_event_is_a_protocol_error(message: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_event(message)


tasks = st.builds(
    TaskRequest,
    st.one_of(st.text(min_size=1), st.lists(st.integers(0, 2**31 - 1), min_size=1)),
    max_tokens=st.none() | st.integers(1, 10_000),
    temperature=st.floats(0, 2),
    top_p=st.floats(0, 1),
    top_k=st.none() | st.integers(1, 100),
    seed=st.none() | st.integers(0, 2**31 - 1),
    stop=st.lists(st.text(min_size=1), max_size=3),
    extra=st.dictionaries(st.sampled_from(["ignore_eos", "n_probs"]), st.integers(0, 5)),
    session=st.none() | st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=20),
)


@given(tasks, st.none() | st.text(min_size=1), st.none() | st.integers(1, MAX_WINDOW))
def test_a_task_survives_the_round_trip(
    task: TaskRequest, pool: str | None, window: int | None
) -> None:
    decoded = decode_task(encode_task(task, pool, window=window))
    assert (decoded.request, decoded.pool, decoded.window) == (task, pool, window)


@given(st.integers(0, 2**40))
def test_an_ack_survives_the_round_trip(taken: int) -> None:
    assert decode_ack(encode_ack(taken)) == taken


@pytest.mark.parametrize(
    "message", [b'{"type": "ack", "n": -1}', b'{"type": "ack"}', b'{"type": "token"}', b"[", b"{}"]
)
def test_what_is_not_an_ack_is_a_protocol_error(message: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_ack(message)


def test_a_task_given_as_messages_survives_the_round_trip() -> None:
    task = TaskRequest(messages=[{"role": "user", "content": "hey"}], max_tokens=3)
    assert decode_task(encode_task(task))[0] == task


@pytest.mark.parametrize(
    ("message", "says"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"prompt": "x", "nope": 1}', "unknown task fields"),
        (b'{"prompt": "x", "pool": ""}', "pool"),
        (b'{"prompt": "x", "temperature": -1}', "temperature"),
        (b'{"prompt": "x", "window": 0}', "window"),
        (b'{"prompt": "x", "window": true}', "window"),
        (b'{"prompt": "x", "window": 1.5}', "window"),
        (b'{"prompt": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", "nested too deeply"),
    ],
)
def test_what_is_not_a_task_is_a_bad_task(message: bytes, says: str) -> None:
    with pytest.raises(BadTask, match=says):
        decode_task(message)


def test_a_chat_task_survives_the_round_trip() -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    chat = ChatRequest(
        [{"role": "user", "content": "hi"}],
        tools=[tool],
        tool_choice="required",
        max_tokens=9,
        seed=4,
        stop=["x"],
        extra={"chat_template_kwargs": {"enable_thinking": False}},
        call_deltas=True,
        session="conversation-7",
    )
    decoded = decode_task(encode_task(chat, "pool", window=8))
    assert (decoded.request, decoded.pool, decoded.window) == (chat, "pool", 8)
    assert json.loads(encode_task(chat))["kind"] == "chat"


@pytest.mark.parametrize(
    ("message", "says"),
    [
        (b'{"kind": "poem", "messages": []}', "kind"),
        (b'{"kind": "chat", "prompt": "x"}', "unknown task fields"),
        (b'{"kind": "chat"}', "needs messages"),
        (b'{"kind": "chat", "messages": [], "tools": []}', "messages must not be empty"),
    ],
)
def test_what_is_not_a_chat_task_is_a_bad_task(message: bytes, says: str) -> None:
    with pytest.raises(BadTask, match=says):
        decode_task(message)
