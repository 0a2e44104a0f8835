"""Chat streams through the adapter against a real llama-server and the scripted model,
on every event loop: the pull form and the task form give Started, the reasoning, the
tool call, Metrics and End, which make up the message of the unstreamed answer; the
answer after the tool's is Tokens."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from llamacpp_adapter import (
    AdapterHost,
    ChatRequest,
    End,
    JobItem,
    LlamaCppHttpAdapter,
    Metrics,
    PromptProgress,
    Reasoning,
    Started,
    StreamEvent,
    TaskRequest,
    Token,
    ToolCall,
    ToolCallDelta,
)
from llamacpp_adapter._local.server import LocalLlamaServer

from ..support.relays import collect, relay_over
from .test_scripted_model import QUESTION, TOOLS, chat

pytestmark = pytest.mark.anyio


def check_call_turn(events: list[StreamEvent], unstreamed: dict[str, Any]) -> None:
    message = unstreamed["message"]
    assert isinstance(events[0], Started)
    reasoning = [e for e in events if isinstance(e, Reasoning)]
    assert "".join(r.text for r in reasoning) == message["reasoning_content"]
    [call] = [e for e in events if isinstance(e, ToolCall)]
    [expected] = message["tool_calls"]
    assert (call.index, call.name, call.arguments) == (
        0,
        expected["function"]["name"],
        expected["function"]["arguments"],
    )
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert [type(e) for e in events[-2:]] == [Metrics, End]
    end = events[-1]
    assert isinstance(end, End)
    assert end.stop_reason == "tool_calls"


async def test_a_chat_streams_its_reasoning_and_its_tool_call(
    scripted_server: LocalLlamaServer,
) -> None:
    request = ChatRequest(QUESTION, tools=TOOLS, max_tokens=64)
    async with (
        LlamaCppHttpAdapter(scripted_server.base_url) as adapter,
        adapter.submit(request) as events,
    ):
        got = [event async for event in events]
    check_call_turn(got, chat(scripted_server, QUESTION))


async def test_asked_a_chat_shows_its_call_being_written_then_the_call(
    scripted_server: LocalLlamaServer,
) -> None:
    request = ChatRequest(QUESTION, tools=TOOLS, max_tokens=64, call_deltas=True)
    async with (
        LlamaCppHttpAdapter(scripted_server.base_url) as adapter,
        adapter.submit(request) as events,
    ):
        got = [event async for event in events]
    pieces = [e for e in got if isinstance(e, ToolCallDelta)]
    [call] = [e for e in got if isinstance(e, ToolCall)]
    assert len(pieces) >= 2  # the model's arguments come in several deltas
    assert "".join(p.arguments for p in pieces) == call.arguments
    assert {(p.index, p.id, p.name) for p in pieces} == {(call.index, call.id, call.name)}
    assert got.index(pieces[-1]) < got.index(call)
    check_call_turn(
        [e for e in got if not isinstance(e, ToolCallDelta)], chat(scripted_server, QUESTION)
    )


async def test_the_task_form_sends_a_chat_s_events(scripted_server: LocalLlamaServer) -> None:
    request = ChatRequest(QUESTION, tools=TOOLS, max_tokens=64, job_id="chat-1")
    async with LlamaCppHttpAdapter(scripted_server.base_url) as adapter:
        send, receive = anyio.create_memory_object_stream[JobItem](4)
        async with anyio.create_task_group() as group, receive:
            await group.start(adapter.stream_into, request, send)
            items = [item async for item in receive]
    assert {job for job, _ in items} == {"chat-1"}
    events = [event for _, event in items]
    assert all(not isinstance(e, Exception) for e in events)
    check_call_turn(events, chat(scripted_server, QUESTION))  # type: ignore[arg-type]


async def test_after_the_tool_s_answer_the_chat_streams_tokens(
    scripted_server: LocalLlamaServer,
) -> None:
    first = chat(scripted_server, QUESTION)["message"]
    turns = [*QUESTION, first, {"role": "tool", "tool_call_id": "x", "content": "sunny"}]
    async with (
        LlamaCppHttpAdapter(scripted_server.base_url) as adapter,
        adapter.submit(ChatRequest(turns, tools=TOOLS, max_tokens=64)) as events,
    ):
        got = [event async for event in events]
    tokens = [e for e in got if isinstance(e, Token)]
    assert [t.i for t in tokens] == list(range(len(tokens)))
    assert "".join(t.text for t in tokens) == chat(scripted_server, turns)["message"]["content"]
    end = got[-1]
    assert isinstance(end, End)
    assert end.stop_reason == "stop"
    assert end.tokens_out == len(tokens) + 1  # and the end of sequence


async def test_a_tool_calling_exchange_runs_through_the_host(
    scripted_server: LocalLlamaServer,
) -> None:
    async with (
        LlamaCppHttpAdapter(scripted_server.base_url) as adapter,
        AdapterHost() as host,
    ):
        host.bind("chat", "r0", adapter)
        turns: list[dict[str, Any]] = list(QUESTION)
        async with host.submit("chat", ChatRequest(turns, tools=TOOLS, max_tokens=64)) as events:
            first = [event async for event in events]
        [call] = [e for e in first if isinstance(e, ToolCall)]
        reasoning = "".join(e.text for e in first if isinstance(e, Reasoning))
        turns.append(
            {
                "role": "assistant",
                "reasoning_content": reasoning,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                ],
            }
        )
        city = json.loads(call.arguments)["city"]
        turns.append({"role": "tool", "tool_call_id": call.id, "content": f"sunny in {city}"})
        async with host.submit("chat", ChatRequest(turns, tools=TOOLS, max_tokens=64)) as events:
            second = [event async for event in events]
    answer = "".join(e.text for e in second if isinstance(e, Token))
    assert answer == chat(scripted_server, turns)["message"]["content"]
    assert answer
    ends = [e for e in (first[-1], second[-1]) if isinstance(e, End)]
    assert [e.stop_reason for e in ends] == ["tool_calls", "stop"]


@pytest.mark.parametrize("anyio_backend", ["trio"])  # the test's relay runs in a nursery
async def test_a_chat_through_the_relay_gives_the_same_events(
    scripted_server: LocalLlamaServer,
) -> None:
    request = ChatRequest(QUESTION, tools=TOOLS, max_tokens=64, call_deltas=True)
    async with (
        LlamaCppHttpAdapter(scripted_server.base_url) as adapter,
        adapter.submit(request) as events,
    ):
        direct = [event async for event in events]
    assert any(isinstance(e, ToolCallDelta) for e in direct)
    async with relay_over(scripted_server.base_url) as (url, _):
        relayed = await collect(url, request)
    assert relayed[0] == Started(request.job_id)

    def comparable(events: list[StreamEvent]) -> list[object]:
        # The call's id is the engine's, another for each request.
        return [
            (type(e), e.index, e.name, e.arguments)
            if isinstance(e, ToolCall | ToolCallDelta)
            else e
            for e in events
            if not isinstance(e, Metrics)
        ]

    assert comparable(relayed[1:]) == comparable(direct[1:])


async def test_a_long_prompt_shows_its_progress_before_its_first_output(
    scripted_server: LocalLlamaServer,
) -> None:
    # Some 4,000 tokens of turns: the engine evaluates them a batch at a time.
    long_question = [{"role": "user", "content": "What is the weather in Paris? " * 100}]
    requests = [
        ChatRequest(long_question, tools=TOOLS, max_tokens=64, prompt_progress=True),
        TaskRequest("once upon a time " * 240, max_tokens=4, prompt_progress=True),
    ]
    async with LlamaCppHttpAdapter(scripted_server.base_url) as adapter:
        for request in requests:
            async with adapter.submit(request) as events:
                got = [event async for event in events]
            progress = [e for e in got if isinstance(e, PromptProgress)]
            assert len(progress) >= 2
            first_output = next(
                n for n, e in enumerate(got) if isinstance(e, Token | Reasoning | ToolCall)
            )
            assert all(n < first_output for n, e in enumerate(got) if isinstance(e, PromptProgress))
            done = [p.processed for p in progress]
            assert done == sorted(done)
            assert progress[-1].total >= 4000
