"""The fault matrix: every fault of the scripted fault server, read by a fast and by a
slow consumer, on Trio and on asyncio. For each, the caller gets exactly the error the
row names (or a clean ``End`` where the fault is harmless), after every token that came
before the fault, within the read timeout plus 1 s; traced memory stays under its bound;
file descriptors and tasks are back where they were.

Each run records what it measured as a property of its test; ``nox -s reliability``
turns them into ``RELIABILITY.md``'s table (``tests/support/reliability_report.py``).
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
import trustme

from llamacpp_adapter import (
    AdapterError,
    DecodeTimeout,
    End,
    EngineError,
    LlamaCppHttpAdapter,
    Metrics,
    ProtocolError,
    Started,
    StreamEvent,
    TaskRequest,
    Token,
    WorkerError,
    WorkerReset,
)

from ..conftest import backend_name
from ..support.reliability_report import REPORT_PROPERTY, RecordProperty
from ..support.resources import open_fds, running_tasks, settled_task_count
from ..support.scripted import Connection, Script, scripted_server, tls_server_context
from ..support.wire import (
    BUSY,
    LAST_CHUNK,
    LOADING,
    STREAM_HEAD,
    chunked,
    error_event,
    final_event,
    json_response,
    token_event,
)

pytestmark = pytest.mark.anyio

READ_TIMEOUT_S = 1.0
#: How much later than the read timeout an error may come.
TIME_TO_ERROR_SLACK_S = 1.0
MAX_EVENT_BYTES = 256 * 1024
#: The most memory one faulty stream may trace, from the request to its error.
PEAK_MEMORY_BOUND_BYTES = 2 * 1024 * 1024
SLOW_CONSUMER_PAUSE_S = 0.02
SLOWLORIS_BYTE_INTERVAL_S = 0.1
#: What a hostile stub offers at most (the adapter must give up long before).
HOSTILE_BYTES = 64 * 1024 * 1024
#: Tokens a mid-stream fault lets through before it strikes.
BEFORE = 3


def tokens(first: int, last: int) -> bytes:
    """The chunks of tokens *first* to *last* (from 1), as llama-server writes them."""
    return b"".join(chunked(token_event(n)) for n in range(first, last + 1))


PRELUDE = STREAM_HEAD + tokens(1, BEFORE)


def sent(data: bytes) -> Script:
    """A fault that sends *data* and closes the connection cleanly."""

    async def script(connection: Connection) -> None:
        await connection.send(data)

    return script


def stalled(data: bytes) -> Script:
    """A fault that sends *data*, then nothing more until the client hangs up."""

    async def script(connection: Connection) -> None:
        await connection.send(data)
        await connection.wait_for_hang_up()

    return script


async def reset_after_tokens(connection: Connection) -> None:
    await connection.send(PRELUDE + b"7f\r\ndata: {")
    connection.reset_on_close()


async def slowloris(connection: Connection) -> None:
    # A whole, valid stream, but after the first tokens one byte per 100 ms: an event
    # now takes longer than the read timeout, although no read ever waits that long.
    await connection.send(PRELUDE)
    rest = tokens(BEFORE + 1, 20) + chunked(final_event(20)) + LAST_CHUNK
    for i in range(len(rest)):
        await connection.send(rest[i : i + 1])
        await anyio.sleep(SLOWLORIS_BYTE_INTERVAL_S)


async def endless_line(connection: Connection) -> None:
    await connection.send(PRELUDE + chunked(b"data: "))
    piece = chunked(b"x" * 65536)
    for _ in range(HOSTILE_BYTES // len(piece)):
        await connection.send(piece)


def huge_event() -> bytes:
    content = b"x" * (4 * MAX_EVENT_BYTES)
    event = b'data: {"content":"' + content + b'","tokens":[5],"stop":false}\n\n'
    return PRELUDE + chunked(event) + chunked(final_event(BEFORE + 1)) + LAST_CHUNK


def invalid_utf8() -> bytes:
    # Raw bytes that are not UTF-8 inside the JSON: the SSE standard decodes them as
    # U+FFFD, and the token's text says so.
    event = (
        b'data: {"index":0,"content":" \xff\xfe","tokens":[5],"stop":false,'
        b'"id_slot":-1,"tokens_predicted":4,"tokens_evaluated":3}\n\n'
    )
    return PRELUDE + chunked(event) + chunked(final_event(BEFORE + 1)) + LAST_CHUNK


def html_page() -> bytes:
    page = b"<html>proxy login</html>"
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (len(page), page)
    )


async def close_at_once(connection: Connection) -> None:
    return  # the server closes the connection without a word


@dataclass(frozen=True)
class Fault:
    """One row of the matrix: what the server does, and what the caller must get."""

    name: str
    script: Script
    error: type[WorkerError] | None  # None: the stream ends with End
    kept: int  # tokens delivered before the error (or in all, with End)
    retriable: bool | None = None
    check: Callable[[WorkerError | None, list[StreamEvent]], None] | None = None
    tls: bool = False


def retry_after_7(error: WorkerError | None, _: list[StreamEvent]) -> None:
    assert isinstance(error, AdapterError)
    assert (error.status, error.retry_after, error.error_type) == (429, 7.0, "rate_limit")


def ends_with_its_count(_: WorkerError | None, events: list[StreamEvent]) -> None:
    end = events[-1]
    assert isinstance(end, End)
    assert (end.tokens_out, end.stop_reason) == (BEFORE, "limit")


def engine_failure(error: WorkerError | None, _: list[StreamEvent]) -> None:
    assert isinstance(error, EngineError)
    assert (error.message, error.error_type) == ("slot failed", "server_error")


def status_503(error: WorkerError | None, _: list[StreamEvent]) -> None:
    assert isinstance(error, AdapterError)
    assert error.status == 503
    assert "Loading model" in str(error)


def replacement_characters(_: WorkerError | None, events: list[StreamEvent]) -> None:
    texts = [e.text for e in events if isinstance(e, Token)]
    assert texts[BEFORE] == " \ufffd\ufffd"


def says(text: str) -> Callable[[WorkerError | None, list[StreamEvent]], None]:
    def check(error: WorkerError | None, _: list[StreamEvent]) -> None:
        assert text in str(error)

    return check


SLOT_FAILED = {"error": {"code": 500, "message": "slot failed", "type": "server_error"}}
ENGINE_FAILURE = error_event(SLOT_FAILED)
#: The same failure as older llama-server builds write it: an "error" field of its own.
LEGACY_ENGINE_FAILURE = error_event(SLOT_FAILED, older=True)

FAULTS = [
    Fault("whole stream (control)", sent(PRELUDE + chunked(final_event(BEFORE)) + LAST_CHUNK),
          None, BEFORE, None, ends_with_its_count),
    Fault("connection reset after N tokens", reset_after_tokens, WorkerReset, BEFORE, True),
    Fault("clean close mid-event", sent(PRELUDE + b"7f\r\ndata: {"), WorkerReset, BEFORE, True),
    Fault("body ends mid-event", sent(PRELUDE + chunked(b'data: {"cont') + LAST_CHUNK),
          WorkerReset, BEFORE, True, says("before its final chunk")),
    Fault("stall after the headers", stalled(STREAM_HEAD), DecodeTimeout, 0, True),
    Fault("stall mid-stream", stalled(PRELUDE), DecodeTimeout, BEFORE, True),
    Fault("slowloris, 1 byte per 100 ms", slowloris, DecodeTimeout, BEFORE, True),
    Fault("endless line", endless_line, ProtocolError, BEFORE, False, says("exceeds the bound")),
    Fault("one huge event", sent(huge_event()), ProtocolError, BEFORE, False,
          says("exceeds the bound")),
    Fault("invalid UTF-8", sent(invalid_utf8()), None, BEFORE + 1, None, replacement_characters),
    Fault("invalid JSON in data", sent(PRELUDE + chunked(b"data: {not json}\n\n") + LAST_CHUNK),
          ProtocolError, BEFORE, False, says("bad JSON")),
    Fault("chunk with missing fields",
          sent(PRELUDE + chunked(b'data: {"tokens":[5],"tokens_predicted":4}\n\n') + LAST_CHUNK),
          ProtocolError, BEFORE, False, says("no 'stop' field")),
    Fault("non-monotonic index", sent(PRELUDE + chunked(token_event(2)) + LAST_CHUNK),
          ProtocolError, BEFORE, False, says("token count went from 3 to 2")),
    Fault("error inside the stream", sent(PRELUDE + chunked(ENGINE_FAILURE) + LAST_CHUNK),
          EngineError, BEFORE, False, engine_failure),
    Fault("error inside the stream, as older builds write it",
          sent(PRELUDE + chunked(LEGACY_ENGINE_FAILURE) + LAST_CHUNK),
          EngineError, BEFORE, False, engine_failure),
    Fault("429 with Retry-After",
          sent(json_response(429, "Too Many Requests", BUSY, "Retry-After: 7\r\n")),
          AdapterError, 0, True, retry_after_7),
    Fault("503 while loading", sent(json_response(503, "Service Unavailable", LOADING)),
          AdapterError, 0, True, status_503),
    Fault("200 with text/html", sent(html_page()), ProtocolError, 0, False, says("text/html")),
    Fault("broken chunked encoding", stalled(PRELUDE + b"zz\r\ngarbage\r\n"),
          ProtocolError, BEFORE, False),
    Fault("close before the headers", close_at_once, WorkerReset, 0, True),
    Fault("untrusted TLS certificate", sent(PRELUDE), WorkerReset, 0, False,
          says("certificate"), tls=True),
]  # fmt: skip


@pytest.mark.parametrize("consumer", ["fast", "slow"])
@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
async def test_fault(
    fault: Fault, consumer: str, anyio_backend: Any, record_property: RecordProperty
) -> None:
    # The TLS fault's certificate comes from an authority no client trusts.
    ssl_context = tls_server_context(trustme.CA()) if fault.tls else None
    fds, tasks = open_fds(), running_tasks()
    async with scripted_server(fault.script, ssl_context=ssl_context) as server:
        adapter = LlamaCppHttpAdapter(
            server.url,
            timeouts=httpx.Timeout(5.0, read=READ_TIMEOUT_S),
            max_event_bytes=MAX_EVENT_BYTES,
        )
        events: list[StreamEvent] = []
        error: WorkerError | None = None
        tracemalloc.start()
        start = anyio.current_time()
        try:
            async with adapter.submit(TaskRequest("x")) as stream:
                async for event in stream:
                    events.append(event)
                    if consumer == "slow":
                        await anyio.sleep(SLOW_CONSUMER_PAUSE_S)
        except WorkerError as exc:
            error = exc
        finally:
            elapsed = anyio.current_time() - start
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            await adapter.aclose()
        await server.wait_idle()  # the server saw the client close its connection
    fds_after, tasks_after = open_fds(), await settled_task_count(tasks)

    record_property(
        REPORT_PROPERTY,
        report(fault, consumer, backend_name(anyio_backend), error, events, elapsed, peak),
    )
    if fault.error is None:
        assert error is None, f"expected a clean End, got {error!r}"
        assert isinstance(events[-2], Metrics)
        assert isinstance(events[-1], End)
    else:
        assert type(error) is fault.error, f"expected {fault.error.__name__}, got {error!r}"
        assert error.retriable is fault.retriable
    # Every token sent before the fault, in order, with its text; nothing after it.
    token_events = [e for e in events if isinstance(e, Token)]
    assert [t.i for t in token_events] == list(range(fault.kept))
    assert all(t.text == " word" for t in token_events[:BEFORE])
    if events or fault.kept:
        assert isinstance(events[0], Started)
    if fault.check is not None:
        fault.check(error, events)
    assert elapsed <= READ_TIMEOUT_S + TIME_TO_ERROR_SLACK_S
    assert peak <= PEAK_MEMORY_BOUND_BYTES
    assert (fds_after, tasks_after) == (fds, tasks)
    if fault.tls:
        assert not server.requests  # the request (and so any key) was never sent


def report(
    fault: Fault,
    consumer: str,
    backend: str,
    error: WorkerError | None,
    events: list[StreamEvent],
    elapsed: float,
    peak: int,
) -> str:
    """What a run of the matrix measured, for RELIABILITY.md's table (``nox -s
    reliability`` collects it from the test report)."""
    return json.dumps(
        {
            "kind": "fault",
            "fault": fault.name,
            "consumer": consumer,
            "backend": backend,
            "error": "End" if error is None else type(error).__name__,
            "tokens": sum(isinstance(e, Token) for e in events),
            "seconds": round(elapsed, 3),
            "peak_bytes": peak,
        }
    )


#: A prompt larger than the default bound on one event (1 MiB).
LONG_PROMPT = "word " * (300 * 1024)


async def echoed_prompt(connection: Connection) -> None:
    """llama-server's final chunk repeats the prompt: this one does too."""
    prompt = json.loads(connection.body)["prompt"]
    final = json.loads(final_event(1).removeprefix(b"data: "))
    final["prompt"] = prompt
    last = b"data: " + json.dumps(final, separators=(",", ":")).encode() + b"\n\n"
    await connection.send(STREAM_HEAD + chunked(token_event(1)) + chunked(last) + LAST_CHUNK)


async def test_a_final_chunk_that_repeats_a_long_prompt_still_ends_the_stream() -> None:
    async with (
        scripted_server(echoed_prompt) as server,
        LlamaCppHttpAdapter(server.url) as adapter,
        adapter.submit(TaskRequest(LONG_PROMPT)) as stream,
    ):
        events = [event async for event in stream]
    assert [type(e) for e in events] == [Started, Token, Metrics, End]


async def test_the_bound_still_holds_for_what_the_request_did_not_ask() -> None:
    # A short prompt, and a final chunk past the bound all the same: refused.
    async def bloated(connection: Connection) -> None:
        final = json.loads(final_event(1).removeprefix(b"data: "))
        final["prompt"] = LONG_PROMPT
        last = b"data: " + json.dumps(final, separators=(",", ":")).encode() + b"\n\n"
        await connection.send(STREAM_HEAD + chunked(token_event(1)) + chunked(last) + LAST_CHUNK)

    async with scripted_server(bloated) as server, LlamaCppHttpAdapter(server.url) as adapter:
        with pytest.raises(ProtocolError, match="exceeds the bound"):
            async with adapter.submit(TaskRequest("short")) as stream:
                async for _ in stream:
                    pass
