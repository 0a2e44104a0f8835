"""Properties that hold whatever the engine sends and however it is cut:

* hostile input: random bytes, broken JSON and mutations of real captured streams, fed
  to the decoder in random pieces, raise nothing but this library's own errors, and no
  event outgrows the bound;
* ordering through the whole pipeline: a llama.cpp stream cut anywhere and delivered
  with pauses through the real adapter (only the transport replaced), read by a
  consumer that pauses too, always gives Started, the tokens 0..N-1 with their texts,
  Metrics, End, and never holds more events than its bound;
* the same through the task form, on Trio and asyncio: several such streams fanned
  into one channel, a receiver that pauses, one stream perhaps reset at an event's end.
  Each job is whole and in order, the failed one ends with its error in-band after
  exactly the tokens before the reset, and the events waiting anywhere never exceed
  the channel's size plus each stream's buffer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamacpp_adapter import (
    CompletionStreamDecoder,
    End,
    JobItem,
    LlamaCppHttpAdapter,
    Metrics,
    SSEDecoder,
    Started,
    StreamEvent,
    TaskRequest,
    Token,
    WorkerError,
    WorkerReset,
)

from ..support.bodies import STREAM_HEADERS, PiecesBody
from ..support.wire import final_event

GOLDEN = Path(__file__).parents[1] / "support" / "golden"
CAPTURES = [(GOLDEN / f"{name}.sse").read_bytes() for name in ("short", "multibyte", "long")]
BOUND = 512


@st.composite
def pieces(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """*data* cut at random places."""
    cuts = sorted(draw(st.sets(st.integers(1, max(len(data) - 1, 1)), max_size=12)))
    bounds = zip([0, *cuts], [*cuts, len(data)], strict=True)
    return [data[a:b] for a, b in bounds if a < b]


@st.composite
def mutated_capture(draw: st.DrawFn) -> bytes:
    """A real stream with some bytes replaced, inserted or deleted."""
    data = bytearray(draw(st.sampled_from(CAPTURES)))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.sampled_from([b"\n", b"\r", b"{", b"}", b'"', b":", b"\xff", b"\x00", b"a"]))
        if action == "insert" or at == len(data):
            data[at:at] = byte
        elif action == "replace":
            data[at : at + 1] = byte
        else:
            del data[at : at + 1]
    return bytes(data)


broken_json = st.one_of(
    st.text(max_size=60),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=8,
    ).map(lambda value: json.dumps(value)[: len(json.dumps(value)) // 2 + 1]),
    st.fixed_dictionaries(
        {},
        optional={
            "content": st.one_of(st.text(max_size=8), st.integers(), st.none()),
            "tokens": st.one_of(st.lists(st.integers(-5, 10**12), max_size=3), st.text()),
            "stop": st.one_of(st.booleans(), st.integers(), st.none()),
            "tokens_predicted": st.one_of(st.integers(-3, 5), st.text(max_size=3)),
            "error": st.one_of(st.text(max_size=8), st.dictionaries(st.text(), st.text())),
            "timings": st.one_of(st.none(), st.dictionaries(st.text(max_size=4), st.integers())),
        },
    ).map(json.dumps),
)


@st.composite
def hostile_streams(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "mutated"]))
    if kind == "bytes":
        return draw(st.binary(max_size=600))
    if kind == "json":
        payloads = draw(st.lists(broken_json, min_size=1, max_size=6))
        return "".join(f"data: {p}\n\n" for p in payloads).encode()
    return draw(mutated_capture())


def feed_all(parts: list[bytes]) -> WorkerError | None:
    """Feed *parts* and close; return the library's error, if any. Anything else that
    escapes fails the test. No event may outgrow the bound."""
    decoder = CompletionStreamDecoder(max_event_bytes=BOUND)
    try:
        for part in parts:
            for event in decoder.feed(part):
                if isinstance(event, Token):
                    assert len(event.text.encode()) <= BOUND
        decoder.close()
    except WorkerError as exc:
        return exc
    return None


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_hostile_input_raises_only_our_errors_however_it_is_cut(data: st.DataObject) -> None:
    stream = data.draw(hostile_streams())
    parts = data.draw(pieces(stream))
    error = feed_all(parts)
    # The same bytes whole give the same verdict (the kind of error, or none).
    assert type(feed_all([stream])) is type(error)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_the_sse_bound_holds_for_every_split(data: st.DataObject) -> None:
    stream = data.draw(st.one_of(hostile_streams(), st.binary(min_size=BOUND, max_size=3 * BOUND)))
    decoder = SSEDecoder(max_event_bytes=BOUND)
    try:
        for part in data.draw(pieces(stream)):
            for event in decoder.feed(part):
                assert len(event.data.encode()) <= BOUND
            # What it holds between feeds stays within the bound (plus the open line's
            # last piece, which is checked as soon as it is held).
            assert len(decoder._line) + decoder._data_bytes <= BOUND + len(part)
    except WorkerError:
        pass


# --- Ordering through the whole pipeline -------------------------------------------------

TEXTS = st.sampled_from(["a", " the", "é", "日本", "🙂", "", " word", "\n", "\ufffd"])
BUFFER = 8  # the adapter's smallest bound, so that slicing is exercised


def llama_stream(texts: list[str]) -> bytes:
    return token_chunks(texts) + final_event(len(texts))


def token_chunks(texts: list[str]) -> bytes:
    """The token events of *texts*, as llama-server writes them."""
    out = []
    for n, text in enumerate(texts, start=1):
        chunk = {
            "index": 0,
            "content": text,
            "tokens": [300 + n] if text else [],  # a held-back byte token has no id
            "stop": False,
            "id_slot": 0,
            "tokens_predicted": n,
            "tokens_evaluated": 3,
        }
        out.append(b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n")
    return b"".join(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TEXTS, max_size=64), st.data())
async def test_events_come_in_order_however_the_stream_is_cut_and_paced(
    texts: list[str], data: st.DataObject
) -> None:
    parts = data.draw(pieces(llama_stream(texts)))
    pauses = data.draw(st.lists(st.integers(0, 3), min_size=len(parts), max_size=len(parts)))

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=STREAM_HEADERS, stream=PiecesBody(parts, pauses))

    consumer_pauses = data.draw(st.lists(st.integers(0, 2), max_size=60))
    events: list[StreamEvent] = []
    transport = httpx.MockTransport(answer)
    async with (
        httpx.AsyncClient(transport=transport) as client,
        LlamaCppHttpAdapter("http://engine.test", client=client, buffer=BUFFER) as adapter,
        adapter.submit(TaskRequest("x", job_id="job")) as stream,
    ):
        async for event in stream:
            # Held: the events of the read not yet taken, and the one just handed out.
            assert stream.buffered + 1 <= BUFFER
            events.append(event)
            for _ in range(
                consumer_pauses[len(events) % len(consumer_pauses)] if consumer_pauses else 0
            ):
                await trio.lowlevel.checkpoint()
    assert events[0] == Started("job")
    tokens = [e for e in events if isinstance(e, Token)]
    assert [t.i for t in tokens] == list(range(len(texts)))
    assert [t.text for t in tokens] == texts
    assert [type(e) for e in events[len(tokens) + 1 :]] == [Metrics, End]
    assert isinstance(events[-1], End)
    assert events[-1].tokens_out == len(texts)


# --- The task form: fan-in of several streams into one channel ---------------------------

RESET = "[Errno 104] Connection reset by peer"

CHANNEL = 4
STREAMS = st.integers(1, 4)


@dataclass
class Scenario:
    """Streams, each with its texts, its pieces and pauses, and which one fails."""

    jobs: list[list[str]]
    bodies: list[tuple[list[bytes], list[int]]]
    failing: int | None
    tokens_before_failure: int
    receiver_pauses: list[int]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    count = draw(STREAMS, label="streams")
    jobs = [draw(st.lists(TEXTS, max_size=40), label=f"texts {j}") for j in range(count)]
    failing = draw(st.one_of(st.none(), st.integers(0, count - 1)), label="failing")
    tokens_before_failure = 0
    bodies = []
    for j, texts in enumerate(jobs):
        wire = llama_stream(texts)
        if j == failing:
            # Cut at an event's end: the tokens before it are delivered, then a reset.
            tokens_before_failure = draw(st.integers(0, len(texts)), label="cut at")
            wire = token_chunks(texts[:tokens_before_failure])
        parts = draw(pieces(wire)) if wire else []
        pauses = draw(st.lists(st.integers(0, 3), min_size=len(parts), max_size=len(parts)))
        bodies.append((parts, pauses))
    receiver_pauses = draw(st.lists(st.integers(0, 3), min_size=1, max_size=30))
    return Scenario(jobs, bodies, failing, tokens_before_failure, receiver_pauses)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_the_task_form_keeps_each_jobs_order_and_the_bound_and_a_failure_in_band(
    backend: str, scenario: Scenario
) -> None:
    # A fresh event loop for each example, with every choice drawn before it starts.
    received = anyio.run(fan_in, scenario, backend=backend)
    for j, texts in enumerate(scenario.jobs):
        items = received[f"job-{j}"]
        assert items[0] == Started(f"job-{j}")
        tokens = [item for item in items if isinstance(item, Token)]
        assert [t.i for t in tokens] == list(range(len(tokens)))
        if j == scenario.failing:
            assert [t.text for t in tokens] == texts[: scenario.tokens_before_failure]
            assert len(items) == len(tokens) + 2
            assert isinstance(items[-1], WorkerReset)  # in-band, its job's last item
        else:
            assert [t.text for t in tokens] == texts
            assert [type(item) for item in items[len(tokens) + 1 :]] == [Metrics, End]


async def fan_in(scenario: Scenario) -> dict[str, list[StreamEvent | WorkerError]]:
    """Every stream of *scenario* started into one channel of CHANNEL items, through the
    real adapter (only the transport replaced), taken by a receiver that pauses."""
    count = len(scenario.jobs)
    bodies = [
        PiecesBody(parts, pauses, error=httpx.ReadError(RESET) if j == scenario.failing else None)
        for j, (parts, pauses) in enumerate(scenario.bodies)
    ]

    def answer(request: httpx.Request) -> httpx.Response:
        body = bodies[json.loads(request.content)["case"]]
        return httpx.Response(200, headers=STREAM_HEADERS, stream=body)

    received: dict[str, list[StreamEvent | WorkerError]] = {f"job-{j}": [] for j in range(count)}
    send, receive = anyio.create_memory_object_stream[JobItem](CHANNEL)
    transport = httpx.MockTransport(answer)
    async with (
        httpx.AsyncClient(transport=transport) as client,
        LlamaCppHttpAdapter("http://engine.test", client=client, buffer=BUFFER) as adapter,
        anyio.create_task_group() as group,
    ):
        async with send:
            for j in range(count):
                request = TaskRequest("x", job_id=f"job-{j}", extra={"case": j})
                await group.start(adapter.stream_into, request, send.clone())
        async with receive:
            taken = 0
            async for job_id, item in receive:
                received[job_id].append(item)
                taken += 1
                # Waiting anywhere: in the channel, decoded in each stream, and the one
                # item each task may hold while it waits to send.
                decoded = sum(s.buffered for streams in adapter._streams.values() for s in streams)
                in_channel = receive.statistics().current_buffer_used
                assert in_channel + decoded <= CHANNEL + count * (BUFFER + 1)
                for _ in range(scenario.receiver_pauses[taken % len(scenario.receiver_pauses)]):
                    await anyio.lowlevel.checkpoint()
    return received
