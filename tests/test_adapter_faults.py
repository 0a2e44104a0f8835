"""The adapter against a stub server: backpressure, and the faults a real llama-server
cannot be made to show. Time is Trio's MockClock where a test waits."""

from __future__ import annotations

import socket
import struct
import tracemalloc

import httpx
import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from llamacpp_adapter import (
    AdapterError,
    DecodeTimeout,
    End,
    EngineError,
    JobCancelled,
    LlamaCppHttpAdapter,
    ProtocolError,
    Started,
    TaskRequest,
    Token,
    TokenEvent,
    WorkerError,
    WorkerReset,
)

from .stub import (
    LAST_CHUNK,
    STREAM_HEAD,
    chunked,
    final_event,
    json_response,
    start_stub,
    token_event,
)

LOADING = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}


async def stream_until_error(
    url: str, *, expect: type[WorkerError], **adapter_args: object
) -> tuple[list[TokenEvent], WorkerError]:
    """Stream one task; return the events before the error, and the error."""
    events: list[TokenEvent] = []
    async with LlamaCppHttpAdapter(url, **adapter_args) as adapter:  # type: ignore[arg-type]
        with pytest.raises(expect) as info:
            async with adapter.submit(TaskRequest("x")) as stream:
                async for event in stream:
                    events.append(event)
    return events, info.value


def tokens_of(events: list[TokenEvent]) -> list[int]:
    return [e.i for e in events if isinstance(e, Token)]


# --- Backpressure --------------------------------------------------------------------


async def test_slow_consumer_stops_the_read_and_the_server(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    written = 0

    async def endless(stream: trio.SocketStream, path: str) -> None:
        nonlocal written
        await stream.send_all(STREAM_HEAD)
        n = 0
        while True:
            n += 1
            data = chunked(token_event(n))
            await stream.send_all(data)
            written += len(data)

    url = await start_stub(nursery, endless)
    bound = 16
    async with (
        LlamaCppHttpAdapter(url, buffer=bound) as adapter,
        adapter.submit(TaskRequest("x")) as events,
    ):
        highest = 0
        taken: list[TokenEvent] = []
        for _ in range(200):  # one event per 10 ms
            taken.append(await events.__anext__())
            highest = max(highest, events.buffered)
            await trio.sleep(0.01)
        assert highest <= bound
        assert tokens_of(taken) == list(range(199))

        # The consumer pauses. Once everything has settled, neither the client's reads
        # nor the server's writes move: TCP flow control holds the server back.
        await wait_all_tasks_blocked()
        read, sent = events.bytes_received, written
        # Not for lack of data: the server has written more than the client has read,
        # and what it has written waits in the kernel's buffers.
        assert sent > read
        await trio.sleep(5)
        await wait_all_tasks_blocked()
        assert events.bytes_received == read
        assert written == sent
        assert events.buffered <= bound
        # Taking events again lets the stream go on where it stopped.
        following = await events.__anext__()
        assert isinstance(following, Token)
        assert following.i == 199


async def test_buffer_bound_holds_for_the_smallest_events(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    # The smallest events llama.cpp could send, many to one read: still within the bound.
    tiny = b'data:{"content":"","stop":false}\n\n'

    async def flood(stream: trio.SocketStream, path: str) -> None:
        await stream.send_all(STREAM_HEAD)
        while True:
            await stream.send_all(chunked(tiny * 2000))

    url = await start_stub(nursery, flood)
    async with (
        LlamaCppHttpAdapter(url, buffer=8) as adapter,
        adapter.submit(TaskRequest("x")) as events,
    ):
        for _ in range(500):
            await events.__anext__()
            await wait_all_tasks_blocked()
            assert events.buffered <= 8


# --- Errors before the stream --------------------------------------------------------


async def test_429_is_retriable_and_carries_retry_after(nursery: trio.Nursery) -> None:
    busy = {"error": {"code": 429, "message": "too many requests", "type": "rate_limit"}}

    async def refuse(stream: trio.SocketStream, path: str) -> None:
        await stream.send_all(json_response(429, "Too Many Requests", busy, "Retry-After: 7\r\n"))

    url = await start_stub(nursery, refuse)
    events, error = await stream_until_error(url, expect=AdapterError)
    assert events == []
    assert isinstance(error, AdapterError)
    assert error.status == 429
    assert error.retriable
    assert error.retry_after == 7.0
    assert error.error_type == "rate_limit"


@pytest.mark.parametrize(("status", "retriable"), [(500, True), (503, True), (404, False)])
async def test_error_status_is_an_adapter_error(
    nursery: trio.Nursery, status: int, retriable: bool
) -> None:
    async def fail(stream: trio.SocketStream, path: str) -> None:
        await stream.send_all(json_response(status, "Error", LOADING))

    url = await start_stub(nursery, fail)
    _, error = await stream_until_error(url, expect=AdapterError)
    assert isinstance(error, AdapterError)
    assert error.status == status
    assert error.retriable is retriable
    assert "Loading model" in str(error)


async def test_health_while_loading_then_ready(nursery: trio.Nursery) -> None:
    loading = True

    async def server(stream: trio.SocketStream, path: str) -> None:
        assert path == "/health"
        if loading:
            await stream.send_all(json_response(503, "Service Unavailable", LOADING))
        else:
            await stream.send_all(json_response(200, "OK", {"status": "ok"}))

    url = await start_stub(nursery, server)
    async with LlamaCppHttpAdapter(url) as adapter:
        health = await adapter.health()
        assert (health.live, health.ready, health.status) == (True, False, "loading model")
        assert health.message == "Loading model"
        loading = False
        health = await adapter.health()
        assert (health.live, health.ready, health.status) == (True, True, "ok")


async def test_wrong_content_type_is_a_protocol_error(nursery: trio.Nursery) -> None:
    async def html(stream: trio.SocketStream, path: str) -> None:
        page = b"<html>proxy login</html>"
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (len(page), page)
        )

    url = await start_stub(nursery, html)
    _, error = await stream_until_error(url, expect=ProtocolError)
    assert "text/html" in str(error)


async def test_close_before_the_headers_is_a_worker_reset(nursery: trio.Nursery) -> None:
    async def hang_up(stream: trio.SocketStream, path: str) -> None:
        await stream.aclose()

    url = await start_stub(nursery, hang_up)
    _, error = await stream_until_error(url, expect=WorkerReset)
    assert error.retriable


# --- Errors inside the stream --------------------------------------------------------


def three_tokens() -> bytes:
    return STREAM_HEAD + b"".join(chunked(token_event(n)) for n in (1, 2, 3))


async def test_no_data_within_the_read_timeout_is_a_decode_timeout(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    async def stall(stream: trio.SocketStream, path: str) -> None:
        await stream.send_all(three_tokens())
        await trio.sleep_forever()

    url = await start_stub(nursery, stall)
    timeouts = httpx.Timeout(5.0, read=2.0)
    start = trio.current_time()
    events, error = await stream_until_error(url, expect=DecodeTimeout, timeouts=timeouts)
    assert tokens_of(events) == [0, 1, 2]
    assert 2.0 <= trio.current_time() - start < 3.0
    assert error.retriable


async def test_stall_before_the_headers_is_a_decode_timeout(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    async def stall(stream: trio.SocketStream, path: str) -> None:
        await trio.sleep_forever()

    url = await start_stub(nursery, stall)
    await stream_until_error(url, expect=DecodeTimeout, timeouts=httpx.Timeout(5.0, read=2.0))


async def test_connection_reset_mid_stream_is_a_worker_reset_after_the_tokens(
    nursery: trio.Nursery,
) -> None:
    async def reset(stream: trio.SocketStream, path: str) -> None:
        await stream.send_all(three_tokens() + b"7f\r\ndata: {")
        # SO_LINGER 0: close with a reset, not a clean FIN.
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()

    url = await start_stub(nursery, reset)
    events, error = await stream_until_error(url, expect=WorkerReset)
    assert events[0] == Started(events[0].job_id)  # type: ignore[union-attr]
    assert tokens_of(events) == [0, 1, 2]
    assert error.retriable


async def test_close_mid_chunk_is_a_worker_reset(nursery: trio.Nursery) -> None:
    async def cut(stream: trio.SocketStream, path: str) -> None:
        await stream.send_all(three_tokens() + b"7f\r\ndata: {")

    url = await start_stub(nursery, cut)
    events, _ = await stream_until_error(url, expect=WorkerReset)
    assert tokens_of(events) == [0, 1, 2]


async def test_clean_end_before_the_final_chunk_is_a_worker_reset(nursery: trio.Nursery) -> None:
    async def short(stream: trio.SocketStream, path: str) -> None:
        await stream.send_all(three_tokens() + LAST_CHUNK)

    url = await start_stub(nursery, short)
    events, error = await stream_until_error(url, expect=WorkerReset)
    assert tokens_of(events) == [0, 1, 2]
    assert "before its final chunk" in str(error)


async def test_error_inside_the_stream_is_an_engine_error_after_the_tokens(
    nursery: trio.Nursery,
) -> None:
    failure = b'data: {"error":{"code":500,"message":"slot failed","type":"server_error"}}\n\n'

    async def fail(stream: trio.SocketStream, path: str) -> None:
        await stream.send_all(three_tokens() + chunked(failure) + LAST_CHUNK)

    url = await start_stub(nursery, fail)
    events, error = await stream_until_error(url, expect=EngineError)
    assert tokens_of(events) == [0, 1, 2]
    assert isinstance(error, EngineError)
    assert error.error_type == "server_error"


async def test_bad_json_is_a_protocol_error_after_the_tokens(nursery: trio.Nursery) -> None:
    async def bad(stream: trio.SocketStream, path: str) -> None:
        await stream.send_all(three_tokens() + chunked(b"data: {not json}\n\n") + LAST_CHUNK)

    url = await start_stub(nursery, bad)
    events, _ = await stream_until_error(url, expect=ProtocolError)
    assert tokens_of(events) == [0, 1, 2]


async def test_endless_line_cannot_grow_memory_past_the_bound(nursery: trio.Nursery) -> None:
    offered = 0

    async def endless_line(stream: trio.SocketStream, path: str) -> None:
        nonlocal offered
        await stream.send_all(three_tokens() + chunked(b"data: "))
        piece = chunked(b"x" * 65536)
        while offered < 64 * 1024 * 1024:  # a bounded stub: at most 64 MB
            await stream.send_all(piece)
            offered += len(piece)

    url = await start_stub(nursery, endless_line)
    tracemalloc.start()
    try:
        events, error = await stream_until_error(
            url, expect=ProtocolError, max_event_bytes=256 * 1024
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tokens_of(events) == [0, 1, 2]
    assert "256" in str(error) or "262144" in str(error)
    assert peak < 4 * 1024 * 1024
    assert offered < 64 * 1024 * 1024  # the adapter gave up long before the stub did


async def test_a_whole_stream_from_the_stub_ends_cleanly(nursery: trio.Nursery) -> None:
    async def whole(stream: trio.SocketStream, path: str) -> None:
        await stream.send_all(three_tokens() + chunked(final_event(3)) + LAST_CHUNK)

    url = await start_stub(nursery, whole)
    async with LlamaCppHttpAdapter(url) as adapter, adapter.submit(TaskRequest("x")) as events:
        seen = [event async for event in events]
    assert tokens_of(seen) == [0, 1, 2]
    assert isinstance(seen[-1], End)
    assert seen[-1].tokens_out == 3


async def test_health_of_a_failing_server(nursery: trio.Nursery) -> None:
    broken = {"error": {"code": 500, "message": "model failed to load", "type": "server_error"}}

    async def server(stream: trio.SocketStream, path: str) -> None:
        await stream.send_all(json_response(500, "Internal Server Error", broken))

    url = await start_stub(nursery, server)
    async with LlamaCppHttpAdapter(url) as adapter:
        health = await adapter.health()
    assert (health.live, health.ready, health.status) == (True, False, "error")
    assert health.message == "model failed to load"


async def test_cancel_from_another_task_ends_a_pending_read(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    closed = trio.Event()

    async def stall(stream: trio.SocketStream, path: str) -> None:
        await stream.send_all(three_tokens())
        await stream.receive_some()  # returns when the client closes the connection
        closed.set()

    url = await start_stub(nursery, stall)
    events: list[TokenEvent] = []
    async with LlamaCppHttpAdapter(url) as adapter:

        async def consume() -> None:
            with pytest.raises(JobCancelled):
                async with adapter.submit(TaskRequest("x", job_id="job-c")) as stream:
                    async for event in stream:
                        events.append(event)

        async with trio.open_nursery() as consumers:
            consumers.start_soon(consume)
            await wait_all_tasks_blocked()  # the consumer now waits on a read
            cancelled_at = trio.current_time()
            assert await adapter.cancel("job-c")
        # At once: not by the read timeout, which the mock clock would jump to.
        assert trio.current_time() - cancelled_at < 1.0
    await closed.wait()  # the server saw the connection close
    assert tokens_of(events) == [0, 1, 2]


async def test_credentials_in_the_url_are_sent_as_basic_auth_and_kept_out_of_it() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "ok"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        adapter = LlamaCppHttpAdapter("http://ops:s3cret-pass-91@127.0.0.1:8080", client=client)
        assert (await adapter.health()).ready
    assert adapter.base_url == "http://127.0.0.1:8080"
    [request] = seen
    assert request.url.userinfo == b""
    assert request.headers["authorization"] == "Basic b3BzOnMzY3JldC1wYXNzLTkx"
    assert "s3cret-pass-91" not in repr(adapter)
