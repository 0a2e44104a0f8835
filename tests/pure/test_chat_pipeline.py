"""Chat streams through the whole adapter (only the transport replaced), on Trio and
asyncio, pulled and in the task form: any chat stream (reasoning, content and calls in
any mix, arguments split anywhere), cut at any byte and paced, gives Started and then
the events the pure decoder's model says, in order, with no gap in ``i``. Failing at any
point (a reset at any byte, or the engine's error after any event), it gives a prefix of
those events, no fewer than the whole chunks before the failure carried, then the
failure: raised from the pull, in-band in the task form."""

from __future__ import annotations

import json
from dataclasses import dataclass

import anyio
import anyio.lowlevel
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamacpp_adapter import (
    ChatRequest,
    EngineError,
    JobItem,
    LlamaCppHttpAdapter,
    Started,
    StreamEvent,
    Token,
    WorkerError,
    WorkerReset,
)

from ..support.bodies import STREAM_HEADERS, PiecesBody
from ..support.chat_streams import Part, chat_stream, parts
from ..support.wire import OUT_OF_MEMORY

BUFFER = 8  # the adapter's smallest bound, so that slicing is exercised
JOB = "chat-job"
ASK = [{"role": "user", "content": "hi"}]


@dataclass
class Case:
    """A chat stream, the events it must give, and how it is delivered and fails."""

    wire: bytes
    expected: list[StreamEvent]
    parts: list[bytes]
    pauses: list[int]
    failure: str | None  # "reset" | "engine" | None
    whole_events: int  # with a failure: the SSE events wholly delivered before it
    consumer_pauses: list[int]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    answer: list[Part] = draw(parts, label="parts")
    splits = draw(st.lists(st.integers(0, 50), max_size=4), label="splits")
    finish = draw(st.sampled_from(["stop", "length", "tool_calls"]), label="finish")
    wire, expected = chat_stream(answer, splits, finish)
    failure = draw(st.sampled_from([None, "reset", "engine"]), label="failure")
    events = wire.split(b"\n\n")[:-1]
    whole = 0
    if failure == "reset":
        at = draw(st.integers(0, len(wire) - 1), label="reset at byte")
        wire = wire[:at]
        whole = wire.count(b"\n\n")
    elif failure == "engine":
        whole = draw(st.integers(0, len(events) - 1), label="error after event")
        error = b"data: " + json.dumps(OUT_OF_MEMORY).encode()
        wire = b"".join(event + b"\n\n" for event in [*events[:whole], error])
    cuts = sorted(draw(st.sets(st.integers(1, max(len(wire) - 1, 1)), max_size=12), label="cuts"))
    bounds = zip([0, *cuts], [*cuts, len(wire)], strict=True)
    pieces = [wire[a:b] for a, b in bounds if a < b]
    pauses = draw(st.lists(st.integers(0, 3), min_size=len(pieces), max_size=len(pieces)))
    consumer = draw(st.lists(st.integers(0, 2), min_size=1, max_size=20), label="consumer")
    return Case(wire, expected, pieces, pauses, failure, whole, consumer)


def tokens_in(events: list[bytes]) -> int:
    """The content deltas among whole SSE events."""
    return sum(1 for event in events if b'"content":' in event and b'"content":null' not in event)


async def through_adapter(case: Case, shape: str) -> list[StreamEvent | WorkerError]:
    """What a consumer that pauses receives of *case*, pulled or in the task form."""
    error = httpx.ReadError("[Errno 104] Connection reset by peer")
    body = PiecesBody(case.parts, case.pauses, error=error if case.failure == "reset" else None)

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        return httpx.Response(200, headers=STREAM_HEADERS, stream=body)

    received: list[StreamEvent | WorkerError] = []

    async def consumer_pause() -> None:
        for _ in range(case.consumer_pauses[len(received) % len(case.consumer_pauses)]):
            await anyio.lowlevel.checkpoint()

    chat = ChatRequest(ASK, job_id=JOB)
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client,
        LlamaCppHttpAdapter("http://engine.test", client=client, buffer=BUFFER) as adapter,
    ):
        if shape == "pull":
            try:
                async with adapter.submit(chat) as stream:
                    async for event in stream:
                        assert stream.buffered + 1 <= BUFFER
                        received.append(event)
                        await consumer_pause()
            except WorkerError as exc:
                received.append(exc)
            return received
        send, receive = anyio.create_memory_object_stream[JobItem](2)
        async with anyio.create_task_group() as group:
            await group.start(adapter.stream_into, chat, send)
            async with receive:
                async for job_id, item in receive:
                    assert job_id == JOB
                    received.append(item)
                    await consumer_pause()
    return received


@pytest.mark.parametrize("shape", ["pull", "task"])
@pytest.mark.parametrize("backend", ["trio", "asyncio"])
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_any_chat_stream_cut_paced_or_failing_anywhere_gives_its_events_in_order(
    backend: str, shape: str, case: Case
) -> None:
    # A fresh event loop for each example, with every choice drawn before it starts.
    received = anyio.run(through_adapter, case, shape, backend=backend)
    assert received[0] == Started(JOB)
    tokens = [item for item in received if isinstance(item, Token)]
    assert [t.i for t in tokens] == list(range(len(tokens)))
    if case.failure is None:
        assert received[1:] == case.expected
        return
    *events, failure = received[1:]
    assert events == case.expected[: len(events)]
    whole = case.wire.split(b"\n\n")[: case.whole_events]
    assert len(tokens) >= tokens_in(whole)
    assert isinstance(failure, EngineError if case.failure == "engine" else WorkerReset)
