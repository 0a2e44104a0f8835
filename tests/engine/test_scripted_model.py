"""The scripted model against a real llama-server's chat endpoint: for a question it
thinks and calls ``get_weather``, which the server's chat parser gives back as reasoning
and a tool call, streamed and not (the streamed bytes read alike by this library and by
the openai SDK's own accumulation); given the tool's answer, it answers."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from llamacpp_adapter import End, Token
from llamacpp_adapter._local.server import LocalLlamaServer
from llamacpp_adapter._local.tinymodel import SCRIPTED_ANSWER, SCRIPTED_TOOLS
from llamacpp_adapter._sansio.chat import ChatStreamDecoder, chat_body
from llamacpp_adapter._types import ChatRequest, Reasoning, ToolCall

from ..support.chat_streams import our_message, sdk_message

TOOLS = list(SCRIPTED_TOOLS)
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def chat(server: LocalLlamaServer, messages: list[dict[str, Any]]) -> dict[str, Any]:
    body = {"messages": messages, "tools": TOOLS, "temperature": 0, "max_tokens": 64}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
    response.raise_for_status()
    choice: dict[str, Any] = response.json()["choices"][0]
    return choice


def streamed(server: LocalLlamaServer, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The deltas of the streamed answer, in order, and its finish reason last."""
    body = {
        "messages": messages,
        "tools": TOOLS,
        "temperature": 0,
        "max_tokens": 64,
        "stream": True,
    }
    chunks: list[dict[str, Any]] = []
    with httpx.stream(
        "POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=30
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    return chunks


def test_it_thinks_then_calls_the_tool(scripted_server: LocalLlamaServer) -> None:
    choice = chat(scripted_server, QUESTION)
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["reasoning_content"].strip() == "The user asks about the weather."
    assert not message["content"]
    [call] = message["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert call["id"]


def test_its_stream_has_reasoning_deltas_then_the_call(scripted_server: LocalLlamaServer) -> None:
    deltas = [c["choices"][0]["delta"] for c in streamed(scripted_server, QUESTION) if c["choices"]]
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    assert reasoning.strip() == "The user asks about the weather."
    calls = [call for d in deltas for call in d.get("tool_calls") or []]
    assert calls[0]["function"]["name"] == "get_weather"
    arguments = "".join(call["function"].get("arguments") or "" for call in calls)
    assert json.loads(arguments) == {"city": "Paris"}
    # The reasoning comes first, the call after it.
    first_call = next(n for n, d in enumerate(deltas) if d.get("tool_calls"))
    assert all(not d.get("reasoning_content") for d in deltas[first_call:])


def test_given_the_tool_s_answer_it_answers(scripted_server: LocalLlamaServer) -> None:
    first = chat(scripted_server, QUESTION)["message"]
    [call] = first["tool_calls"]
    turns = [
        *QUESTION,
        first,
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 24 C"},
    ]
    choice = chat(scripted_server, turns)
    assert choice["finish_reason"] == "stop"
    answer = "".join(SCRIPTED_ANSWER).replace("▁", " ")
    assert choice["message"]["content"] == answer
    assert not choice["message"].get("tool_calls")


@pytest.mark.parametrize("turn", ["call", "answer"])
def test_its_stream_decoded_is_the_message_of_the_unstreamed_answer(
    scripted_server: LocalLlamaServer, turn: str
) -> None:
    messages: list[dict[str, Any]] = list(QUESTION)
    if turn == "answer":
        first = chat(scripted_server, QUESTION)["message"]
        messages += [first, {"role": "tool", "tool_call_id": "x", "content": "sunny"}]
    body = chat_body(ChatRequest(messages, tools=TOOLS, max_tokens=64))
    decoder = ChatStreamDecoder()
    events = []
    received = b""
    with httpx.stream(
        "POST", f"{scripted_server.base_url}/v1/chat/completions", json=body, timeout=30
    ) as response:
        for data in response.iter_bytes():
            received += data
            events += decoder.feed(data)
    events += decoder.close()
    # The same bytes, as the openai SDK's own accumulation reads them: ids included.
    assert our_message(events) == sdk_message(received)
    final = chat(scripted_server, messages)
    message = final["message"]
    text = "".join(e.text for e in events if isinstance(e, Token))
    reasoning = "".join(e.text for e in events if isinstance(e, Reasoning))
    calls = [(c.name, c.arguments) for c in events if isinstance(c, ToolCall)]
    assert text == (message.get("content") or "")
    assert reasoning == (message.get("reasoning_content") or "")
    expected = [
        (c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []
    ]
    assert calls == expected
    assert calls or text  # the turn gave something
    end = events[-1]
    assert isinstance(end, End)
    assert end.stop_reason == final["finish_reason"]
