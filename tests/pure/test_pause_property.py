"""A stream whose consumer stays away at any events is paused on the engine and resumed,
through the real adapter and its watcher (only the transport replaced, time on Trio's
MockClock), and the consumer sees the stream an unpaused run gives: Started, the tokens
0..N-1 with the same texts, Metrics, End with every token counted.

The engine is :mod:`support.generation`'s model of llama-server, greedy: a request whose
prompt is the task's followed by token ids goes on from there, with the same tokens; it
checks that those ids are the ones it generated.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamacpp_adapter import (
    End,
    LlamaCppHttpAdapter,
    Metrics,
    PausePolicy,
    Started,
    StreamEvent,
    TaskRequest,
    Token,
)

from ..support.generation import Piece, event_bytes, run
from ..support.wire import STREAM_HEAD

PROMPT = "x"
PROMPT_TOKENS = 2
BACKLOG = 8
POLICY = PausePolicy(pause_after=0.1, backlog=BACKLOG, min_max_tokens=0)
AWAY_S = 1.0  # on the MockClock: ten times pause_after
ASCII = [b" the", b"a", b"b", b"!", b" once"]
#: Characters of two and three bytes, whole or a byte at a time (ids go missing).
MULTIBYTE = ["é".encode(), *[bytes([b]) for b in "é".encode()], *[bytes([b]) for b in "€".encode()]]
HEADERS = [
    tuple(line.split(": ", 1))
    for line in STREAM_HEAD.decode().split("\r\n")[1:]
    if ": " in line and not line.lower().startswith("transfer-encoding")
]


class EventByEvent(httpx.AsyncByteStream):
    """A body written an event at a time, a checkpoint before each."""

    def __init__(self, events: list[bytes]) -> None:
        self.events = iter(events)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        for event in self.events:
            return event
        raise StopAsyncIteration


class Engine:
    """The model engine: it generates *pieces* for the task's prompt, and goes on from
    any prefix of them given as ids."""

    def __init__(self, pieces: list[Piece], stops: tuple[str, ...]) -> None:
        self.pieces = pieces
        self.stops = stops
        self.requests = 0

    def answer(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        prompt = body["prompt"]
        generated = prompt[1:] if isinstance(prompt, list) else []
        assert prompt == PROMPT or prompt[0] == PROMPT
        start = len(generated)
        assert generated == [token_id for token_id, _ in self.pieces[:start]], "inexact prefix"
        stop = start + body["n_predict"] if body["n_predict"] >= 0 else len(self.pieces)
        chunks = run(self.pieces[start:stop], self.stops)
        part = self.requests
        self.requests += 1
        events = [
            event_bytes(chunk, evaluated=PROMPT_TOKENS + start, part=part) for chunk in chunks
        ]
        return httpx.Response(200, headers=HEADERS, stream=EventByEvent(events))


async def consume(
    engine: Engine, request: TaskRequest, away_at: set[int]
) -> tuple[list[StreamEvent], int]:
    transport = httpx.MockTransport(engine.answer)
    got: list[StreamEvent] = []
    async with (
        httpx.AsyncClient(transport=transport) as client,
        LlamaCppHttpAdapter("http://engine.test", client=client, pause=POLICY) as adapter,
        adapter.submit(request) as stream,
    ):
        assert stream.pausable
        async for event in stream:
            assert stream.buffered <= BACKLOG + 2  # the backlog bounds what waits
            got.append(event)
            if isinstance(event, Token) and event.i in away_at:
                await trio.sleep(AWAY_S)
        pauses = stream.pauses
    return got, pauses


def unpaused(pieces: list[Piece], stops: tuple[str, ...]) -> tuple[list[str], int]:
    """The texts of the tokens of an unpaused run, and its tokens generated."""
    chunks = run(pieces, stops)
    return [chunk.content for chunk in chunks if not chunk.final], chunks[-1].predicted


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    # Whole characters only (every id known), or some written a byte at a time.
    texts=st.one_of(
        st.lists(st.sampled_from(ASCII), min_size=40, max_size=150),
        st.lists(st.sampled_from(ASCII + MULTIBYTE), min_size=40, max_size=150),
    ),
    stops=st.sampled_from([(), ("ab",)]),
    data=st.data(),
)
def test_a_stream_paused_at_any_events_is_the_stream_never_paused(
    texts: list[bytes], stops: tuple[str, ...], data: st.DataObject
) -> None:
    away_at = data.draw(st.sets(st.integers(0, len(texts) - 1), max_size=4), label="away_at")
    pieces = [(300 + n, text) for n, text in enumerate(texts)]
    engine = Engine(pieces, stops)
    request = TaskRequest(PROMPT, max_tokens=len(pieces), stop=stops, job_id="job")
    clock = trio.testing.MockClock(autojump_threshold=0)
    got, pauses = trio.run(consume, engine, request, away_at, clock=clock)

    texts_expected, generated = unpaused(pieces, stops)
    tokens = [e for e in got if isinstance(e, Token)]
    assert got[0] == Started("job")
    assert [t.i for t in tokens] == list(range(len(tokens)))
    assert [t.text for t in tokens] == texts_expected
    assert [type(e) for e in got[len(tokens) + 1 :]] == [Metrics, End]
    end = got[-1]
    assert isinstance(end, End)
    assert end.tokens_out == generated
    assert engine.requests == pauses + 1
    if not stops and all(text in ASCII for text in texts):
        # Every id is known and no text held: the stream may be paused at any token,
        # and is, where its consumer stays away with more than the backlog to come.
        pausable = [i for i in away_at if i < len(pieces) - 3 * BACKLOG]
        assert pauses >= (1 if pausable else 0)


def test_a_pause_after_a_stop_string_matched_does_not_go_past_it() -> None:
    # The chunk of the token that completes a stop string carries the text before it,
    # and the final chunk follows: paused between the two, the stream once went on from
    # after the stop string, past where an unpaused one ends.
    texts = [b" the"] * 12 + [b"a", b"a", b"b"] + [b" the"] * 25
    pieces = [(300 + n, text) for n, text in enumerate(texts)]
    engine = Engine(pieces, ("ab",))
    request = TaskRequest(PROMPT, max_tokens=len(pieces), stop=("ab",), job_id="job")
    clock = trio.testing.MockClock(autojump_threshold=0)
    got, pauses = trio.run(consume, engine, request, {9}, clock=clock)
    assert pauses == 1
    texts_expected, generated = unpaused(pieces, ("ab",))
    assert [e.text for e in got if isinstance(e, Token)] == texts_expected
    end = got[-1]
    assert isinstance(end, End)
    assert (end.tokens_out, end.stop_reason) == (generated, "word")
