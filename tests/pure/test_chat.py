"""The chat stream decoder, with no socket: llama-server's captured chat streams give the
message its ``stream: false`` answer gives; any mix of reasoning, content and tool-call
deltas, cut at any byte, gives the same events as whole; and what is not a chat stream
is a typed error, after the events before it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llamacpp_adapter import (
    End,
    EngineError,
    Metrics,
    PromptProgress,
    ProtocolError,
    Token,
    WorkerReset,
)
from llamacpp_adapter._sansio.chat import ChatEvent, ChatStreamDecoder, chat_body
from llamacpp_adapter._sansio.completion import EXTRA_EVENTS_PER_SLICE
from llamacpp_adapter._types import ChatRequest, Reasoning, ToolCall, ToolCallDelta

from ..support.chat_streams import Part, chat_stream, our_message, parts, sdk_message
from ..support.wire import chat_event

GOLDEN = Path(__file__).parents[1] / "support" / "golden"


def decode(pieces: list[bytes]) -> list[ChatEvent]:
    decoder = ChatStreamDecoder()
    events = [event for piece in pieces for event in decoder.feed(piece)]
    return events + decoder.close()


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def golden(name: str) -> tuple[bytes, dict[str, Any]]:
    return (GOLDEN / f"{name}.sse").read_bytes(), json.loads(
        (GOLDEN / f"{name}.final.json").read_text()
    )


def test_a_captured_tool_call_is_the_message_of_the_unstreamed_answer() -> None:
    sse, final = golden("chat_tool_call")
    events = decode([sse])
    message = final["choices"][0]["message"]
    reasoning = "".join(e.text for e in events if isinstance(e, Reasoning))
    assert reasoning == message["reasoning_content"]
    calls = [e for e in events if isinstance(e, ToolCall)]
    [expected] = message["tool_calls"]
    assert [(c.index, c.name, c.arguments) for c in calls] == [
        (0, expected["function"]["name"], expected["function"]["arguments"])
    ]
    assert calls[0].id  # the engine's, another than the unstreamed answer's
    assert not [e for e in events if isinstance(e, Token)]
    # The reasoning comes first, then the call; Metrics and End last.
    kinds = [type(e) for e in events]
    assert kinds[-3:] == [ToolCall, Metrics, End]
    assert set(kinds[:-3]) == {Reasoning}
    end = events[-1]
    assert isinstance(end, End)
    assert end.stop_reason == final["choices"][0]["finish_reason"] == "tool_calls"
    assert end.tokens_out == final["usage"]["completion_tokens"]
    assert end.tokens_in == final["usage"]["prompt_tokens"]


def test_a_captured_answer_is_its_tokens() -> None:
    sse, final = golden("chat_answer")
    events = decode([sse])
    tokens = [e for e in events if isinstance(e, Token)]
    assert "".join(t.text for t in tokens) == final["choices"][0]["message"]["content"]
    assert [t.i for t in tokens] == list(range(len(tokens)))
    end = events[-1]
    assert isinstance(end, End)
    assert end.stop_reason == "stop"
    metrics = events[-2]
    assert isinstance(metrics, Metrics)
    assert metrics.cached_tokens is not None


@given(st.sampled_from(["chat_tool_call", "chat_answer"]), st.lists(st.integers(0, 10**6)))
def test_a_captured_stream_cut_anywhere_gives_the_same_events(name: str, cuts: list[int]) -> None:
    sse, _ = golden(name)
    assert decode(cut(sse, cuts)) == decode([sse])


# --- Any chat stream ---------------------------------------------------------------------


@given(
    parts,
    st.lists(st.integers(0, 50), max_size=4),
    st.sampled_from(["stop", "length", "tool_calls"]),
    st.lists(st.integers(0, 10**6), max_size=20),
)
def test_any_chat_stream_cut_anywhere_gives_its_events_in_order(
    parts: list[Part], splits: list[int], finish: str, cuts: list[int]
) -> None:
    data, expected = chat_stream(parts, splits, finish)
    assert decode(cut(data, cuts)) == expected


@given(parts, st.integers(0, 10**6))
def test_a_stream_that_stops_anywhere_before_done_is_a_reset_after_its_events(
    parts: list[Part], at: int
) -> None:
    data, expected = chat_stream(parts, [], "stop")
    head = data[: at % len(data)]
    decoder = ChatStreamDecoder()
    got = decoder.feed(head)
    assert got == expected[: len(got)]
    with pytest.raises(WorkerReset):
        decoder.close()


@given(
    parts,
    st.lists(st.integers(0, 50), max_size=4),
    st.integers(1, 8),
    st.lists(st.integers(0, 10**6), max_size=20),
)
def test_a_stream_read_a_slice_at_a_time_gives_its_events_in_bounded_batches(
    parts: list[Part], splits: list[int], limit: int, cuts: list[int]
) -> None:
    data, expected = chat_stream(parts, splits, "stop")
    decoder = ChatStreamDecoder()
    events: list[ChatEvent] = []
    for read in cut(data, cuts):
        decoder.receive_data(read)
        while batch := decoder.next_events(limit):
            assert len(batch) <= limit + EXTRA_EVENTS_PER_SLICE
            events += batch
    assert events + decoder.close() == expected


@given(parts, st.lists(st.integers(0, 50), max_size=4), st.lists(st.integers(0, 10**6)))
def test_asked_each_piece_of_a_call_comes_as_it_is_streamed_before_the_call(
    parts: list[Part], splits: list[int], cuts: list[int]
) -> None:
    data, expected = chat_stream(parts, splits, "tool_calls")
    decoder = ChatStreamDecoder(call_deltas=True)
    events = [event for piece in cut(data, cuts) for event in decoder.feed(piece)]
    events += decoder.close()
    # The other events are as ever.
    assert [e for e in events if not isinstance(e, ToolCallDelta)] == expected
    for call in (e for e in events if isinstance(e, ToolCall)):
        mine = [e for e in events if isinstance(e, ToolCallDelta) and e.index == call.index]
        assert mine, "a call with no piece"
        assert {(d.id, d.name) for d in mine} == {(call.id, call.name)}
        assert "".join(d.arguments for d in mine) == call.arguments
        # Each piece as it came: all of them before the whole call.
        assert events.index(mine[-1]) < events.index(call)


def test_a_run_of_events_of_other_kinds_after_a_chunk_is_read_in_one_pass() -> None:
    # A run that begins with a chunk and ends with anything else is read as the chunks
    # before its last event, then that event: never one event at a time over the run.
    others = b"event: ping\ndata: x\n\n" * 200_000
    data, expected = chat_stream([("content", "a")], [], "stop")
    first, rest = data.split(b"\n\n", 1)
    assert decode([first + b"\n\n" + others + rest]) == expected


def test_an_event_over_the_bound_is_an_error_after_the_events_before_it() -> None:
    decoder = ChatStreamDecoder(max_event_bytes=1024)
    got = decoder.feed(chat_event({"content": "a"}) + chat_event({"content": "b" * 2000}))
    assert got == [Token(0, "a")]
    with pytest.raises(ProtocolError, match="1024 bytes"):
        decoder.close()


# --- What is not a chat stream -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "error", "says"),
    [
        (b"data: {nope\n\n", ProtocolError, "not JSON"),
        (b'data: {"choices": 3}\n\n', ProtocolError, "malformed"),
        (
            b'data: {"choices": [{"delta": {"content": '
            + b"[" * 20_000
            + b"]" * 20_000
            + b"}}]}\n\n",
            ProtocolError,
            "nested|malformed",
        ),
        (
            chat_event({"tool_calls": [{"index": 1, "function": {"arguments": "{"}}]}),
            ProtocolError,
            "never started",
        ),
        (
            b'data: {"error":{"code":500,"message":"out of memory","type":"server_error"}}\n\n',
            EngineError,
            "out of memory",
        ),
        (b"data: [DONE]\n\n", ProtocolError, "no finish_reason"),
    ],
)
def test_what_is_not_a_chat_stream_is_a_typed_error(
    data: bytes, error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=says):
        ChatStreamDecoder().feed(data)


def test_a_delta_for_a_call_already_complete_is_a_protocol_error() -> None:
    first = {"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}
    second = {"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}
    again = {"index": 0, "function": {"arguments": "x"}}
    decoder = ChatStreamDecoder()
    got = decoder.feed(chat_event({"tool_calls": [first]}) + chat_event({"tool_calls": [second]}))
    assert got == [ToolCall(0, "a", "f", "{}")]
    with pytest.raises(ProtocolError, match="already complete"):
        decoder.feed(chat_event({"tool_calls": [again]}))


def test_the_events_before_a_fault_come_first_and_the_fault_next() -> None:
    decoder = ChatStreamDecoder()
    got = decoder.feed(chat_event({"content": "a"}) + b"data: {nope\n\n")
    assert got == [Token(0, "a")]
    with pytest.raises(ProtocolError, match="not JSON"):
        decoder.feed(b"")
    with pytest.raises(ProtocolError):
        decoder.close()


# --- The request -------------------------------------------------------------------------

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_a_chat_request_becomes_a_streamed_body_with_its_usage() -> None:
    request = ChatRequest(
        ASK,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=64,
        seed=3,
        stop=["\n\n"],
        extra={"chat_template_kwargs": {"enable_thinking": False}},
    )
    body = chat_body(request)
    assert json.loads(json.dumps(body)) == {
        "messages": ASK,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.0,
        "top_p": 1.0,
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 64,
        "seed": 3,
        "stop": ["\n\n"],
        "chat_template_kwargs": {"enable_thinking": False},
    }
    assert "What is" not in repr(request)  # a message's content is never shown


def test_a_turn_of_the_assistant_may_hold_calls_and_no_content() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    turns = [*ASK, {"role": "assistant", "tool_calls": [call]}, {"role": "tool", "content": "x"}]
    assert len(ChatRequest(turns, tools=[WEATHER]).messages) == 3


@pytest.mark.parametrize(
    ("fields", "error", "says"),
    [
        ({"messages": []}, ValueError, "messages must not be empty"),
        ({"messages": "hi"}, TypeError, "messages"),
        ({"messages": [{"content": "x"}]}, ValueError, r"messages\[0\] needs a str 'role'"),
        ({"messages": [{"role": "user"}]}, ValueError, r"messages\[0\] needs a 'content'"),
        ({"tools": [{"type": "function"}]}, ValueError, r"tools\[0\]"),
        ({"tools": ["get_weather"]}, ValueError, r"tools\[0\]"),
        ({"tools": [WEATHER, WEATHER]}, ValueError, "a second tool"),
        ({"tool_choice": "always"}, ValueError, "tool_choice"),
        ({"tool_choice": "required"}, ValueError, "needs tools"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            ValueError,
            "not among the tools",
        ),
        ({"tool_choice": {"type": "function"}}, TypeError, "tool_choice"),
        ({"call_deltas": "yes"}, TypeError, "call_deltas"),
        ({"session": "s" * 257}, ValueError, "session"),
        ({"session": b"bytes"}, TypeError, "session"),
        ({"max_tokens": 0}, ValueError, "max_tokens"),
        ({"temperature": -1}, ValueError, "temperature"),
        ({"extra": {"tools": []}}, ValueError, "extra may not set 'tools'"),
        ({"extra": {"stream": False}}, ValueError, "extra may not set 'stream'"),
    ],
)
def test_a_bad_chat_request_is_refused_naming_its_field(
    fields: dict[str, Any], error: type[Exception], says: str
) -> None:
    arguments = {"messages": ASK} | fields
    messages = arguments.pop("messages")
    with pytest.raises(error, match=says):
        ChatRequest(messages, **arguments)


# --- The openai SDK's reading of the same bytes ---------------------------------------------


@pytest.mark.parametrize("name", ["chat_tool_call", "chat_answer"])
def test_the_openai_sdk_reads_a_captured_stream_as_we_do(name: str) -> None:
    sse, _ = golden(name)
    assert our_message(decode([sse])) == sdk_message(sse)


@settings(deadline=None)  # pydantic's models, on a busy machine
@given(parts, st.lists(st.integers(0, 50), max_size=4), st.sampled_from(["stop", "tool_calls"]))
def test_the_openai_sdk_reads_any_chat_stream_as_we_do(
    parts: list[Part], splits: list[int], finish: str
) -> None:
    data, _ = chat_stream(parts, splits, finish)
    assert our_message(decode([data])) == sdk_message(data)


def test_a_chat_s_prompt_progress_comes_before_its_output() -> None:
    def progress(done: int) -> bytes:
        return chat_event(
            {"role": "assistant", "content": None},
            prompt_progress={"total": 1024, "cache": 0, "processed": done, "time_ms": done / 10},
        )

    data = progress(0) + progress(512) + chat_event({"content": "a"})
    assert ChatStreamDecoder().feed(data) == [
        PromptProgress(1024, 0, 0, 0.0),
        PromptProgress(1024, 0, 512, 51.2),
        Token(0, "a"),
    ]
    body = chat_body(ChatRequest(ASK, prompt_progress=True))
    assert body["return_progress"] is True
    assert "return_progress" not in chat_body(ChatRequest(ASK))
