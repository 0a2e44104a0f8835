"""Chat streams of any shape, as llama-server writes them, with the events they must
give: for the chat decoder's properties, and for the same through the whole adapter;
and the message the openai SDK's own accumulation makes of a stream's bytes, beside the
one this library's events make."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from llamacpp_adapter import End, Metrics, Reasoning, StreamEvent, Token, ToolCall

from .wire import chat_event

#: One part of an answer: ("reasoning", text), ("content", text) or ("call", (name,
#: arguments)).
Part = tuple[str, Any]


def chat_stream(
    parts: list[Part], splits: list[int], finish: str
) -> tuple[bytes, list[StreamEvent]]:
    """The stream of *parts* as llama-server writes it (a call's arguments split at the
    *splits* characters), and the events it must give after ``Started``."""
    data = [chat_event({"role": "assistant", "content": None})]
    events: list[StreamEvent] = []
    i = calls = 0
    for kind, value in parts:
        if kind == "reasoning":
            data.append(chat_event({"reasoning_content": value}))
            events.append(Reasoning(value))
        elif kind == "content":
            data.append(chat_event({"content": value}))
            events.append(Token(i, value))
            i += 1
        else:
            name, arguments = value
            call_id = f"call-{calls}"
            at = sorted({s % (len(arguments) + 1) for s in splits} | {0, len(arguments)})
            pieces = [arguments[a:b] for a, b in itertools.pairwise(at)] or [""]
            first: dict[str, Any] = {"index": calls, "id": call_id, "type": "function"}
            first["function"] = {"name": name, "arguments": pieces[0]}
            data.append(chat_event({"tool_calls": [first]}))
            for piece in pieces[1:]:
                more = {"index": calls, "function": {"arguments": piece}}
                data.append(chat_event({"tool_calls": [more]}))
            events.append(ToolCall(calls, call_id, name, arguments))
            calls += 1
    data.append(chat_event({}, finish=finish))
    usage = {"completion_tokens": len(parts), "prompt_tokens": 7, "total_tokens": len(parts) + 7}
    timings = {"prompt_n": 7, "prompt_ms": 1.0, "predicted_n": len(parts), "predicted_ms": 2.0}
    data.append(chat_event(None, usage=usage, timings=timings))
    data.append(b"data: [DONE]\n\n")
    events.append(
        Metrics(
            prompt_tokens=7,
            prompt_ms=1.0,
            prompt_tokens_per_s=0.0,
            predicted_tokens=len(parts),
            predicted_ms=2.0,
            predicted_tokens_per_s=0.0,
        )
    )
    events.append(End(tokens_out=len(parts), stop_reason=finish, tokens_in=7))
    return b"".join(data), events


texts = st.text(min_size=1, max_size=8)
#: Any answer: reasoning, content and calls in any mix.
parts = st.lists(
    st.one_of(
        st.tuples(st.just("reasoning"), texts),
        st.tuples(st.just("content"), texts),
        st.tuples(
            st.just("call"),
            st.tuples(
                st.text(min_size=1, max_size=6),
                st.dictionaries(st.text(max_size=4), st.text(max_size=6), max_size=3).map(
                    lambda d: json.dumps(d, ensure_ascii=False)
                ),
            ),
        ),
    ),
    max_size=12,
)


def sdk_message(sse: bytes) -> tuple[str, str, list[tuple[int, str, str, str]], str]:
    """What the openai SDK's own accumulation makes of a chat stream: the content, the
    reasoning, the calls and the finish reason."""
    state = ChatCompletionStreamState()
    for event in sse.split(b"\n\n"):
        if event.startswith(b"data: ") and event != b"data: [DONE]":
            state.handle_chunk(ChatCompletionChunk.model_validate(json.loads(event[6:])))
    choice = state.get_final_completion().choices[0]
    message = choice.message
    calls = [
        (call.index, call.id, call.function.name, call.function.arguments)  # type: ignore[attr-defined]
        for call in message.tool_calls or ()
    ]
    reasoning = getattr(message, "reasoning_content", None) or ""
    return message.content or "", reasoning, calls, choice.finish_reason


def our_message(events: list[StreamEvent]) -> tuple[str, str, list[tuple[int, str, str, str]], str]:
    """The same of this library's events."""
    end = events[-1]
    assert isinstance(end, End)
    return (
        "".join(e.text for e in events if isinstance(e, Token)),
        "".join(e.text for e in events if isinstance(e, Reasoning)),
        [(e.index, e.id, e.name, e.arguments) for e in events if isinstance(e, ToolCall)],
        end.stop_reason,
    )
