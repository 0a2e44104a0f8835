"""The adapter against a stub server: backpressure, error statuses, health, timeouts to
the mock clock's second, and cancellation. Time is Trio's MockClock where a test waits.
Each fault of the fault matrix, on both backends, is in ``test_fault_matrix``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import trio
import trustme
from trio.testing import MockClock, wait_all_tasks_blocked

from llamacpp_adapter import (
    AdapterError,
    DecodeTimeout,
    End,
    JobCancelled,
    JobItem,
    LlamaCppHttpAdapter,
    StreamEvent,
    TaskRequest,
    Token,
    WorkerError,
)

from ..support.scripted import (
    Connection,
    scripted_server,
    start_server,
    stream_tokens,
    tls_server_context,
)
from ..support.wire import LOADING, STREAM_HEAD, chunked, json_response, token_event


async def stream_until_error(
    url: str, *, expect: type[WorkerError], **adapter_args: object
) -> tuple[list[StreamEvent], WorkerError]:
    """Stream one task; return the events before the error, and the error."""
    events: list[StreamEvent] = []
    async with LlamaCppHttpAdapter(url, **adapter_args) as adapter:  # type: ignore[arg-type]
        with pytest.raises(expect) as info:
            async with adapter.submit(TaskRequest("x")) as stream:
                async for event in stream:
                    events.append(event)
    return events, info.value


def tokens_of(events: list[StreamEvent]) -> list[int]:
    return [e.i for e in events if isinstance(e, Token)]


# --- Backpressure --------------------------------------------------------------------


class EndlessWriter:
    """A stub that writes tokens as fast as the socket takes them, counting the bytes."""

    def __init__(self) -> None:
        self.written = 0

    async def serve(self, connection: Connection) -> None:
        await connection.send(STREAM_HEAD)
        n = 0
        while True:
            n += 1
            data = chunked(token_event(n))
            await connection.send(data)
            self.written += len(data)


async def test_slow_consumer_stops_the_read_and_the_server(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    writer = EndlessWriter()
    url = await start_server(nursery, writer.serve)
    bound = 16
    async with (
        LlamaCppHttpAdapter(url, buffer=bound) as adapter,
        adapter.submit(TaskRequest("x")) as events,
    ):
        highest = 0
        taken: list[StreamEvent] = []
        for _ in range(200):  # one event per 10 ms
            taken.append(await events.__anext__())
            highest = max(highest, events.buffered)
            await trio.sleep(0.01)
        assert highest <= bound
        assert tokens_of(taken) == list(range(199))

        # The consumer pauses. Once everything has settled, neither the client's reads
        # nor the server's writes move: TCP flow control holds the server back.
        await wait_all_tasks_blocked()
        read, sent = events.bytes_received, writer.written
        # Not for lack of data: the server has written more than the client has read,
        # and what it has written waits in the kernel's buffers.
        assert sent > read
        await trio.sleep(5)
        await wait_all_tasks_blocked()
        assert events.bytes_received == read
        assert writer.written == sent
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

    async def flood(connection: Connection) -> None:
        await connection.send(STREAM_HEAD)
        while True:
            await connection.send(chunked(tiny * 2000))

    url = await start_server(nursery, flood)
    async with (
        LlamaCppHttpAdapter(url, buffer=8) as adapter,
        adapter.submit(TaskRequest("x")) as events,
    ):
        for _ in range(500):
            await events.__anext__()
            await wait_all_tasks_blocked()
            assert events.buffered <= 8


async def test_a_slow_receiver_of_the_task_form_stops_the_read_and_the_server(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    writer = EndlessWriter()
    url = await start_server(nursery, writer.serve)
    channel_items, bound = 4, 16
    send, receive = trio.open_memory_channel[JobItem](channel_items)
    async with LlamaCppHttpAdapter(url, buffer=bound) as adapter, receive:
        await nursery.start(adapter.stream_into, TaskRequest("x", job_id="slow"), send)
        taken = [await receive.receive() for _ in range(200)]  # at once, then one per 10 ms
        for _ in range(200):
            taken.append(await receive.receive())
            await trio.sleep(0.01)
        assert [event.i for _, event in taken if isinstance(event, Token)] == list(range(399))

        # The receiver pauses. Once everything has settled, the server's writes stop:
        # the task waits to send, so it reads nothing, and TCP holds the server back.
        await wait_all_tasks_blocked()
        sent = writer.written
        assert receive.statistics().current_buffer_used == channel_items
        await trio.sleep(5)
        await wait_all_tasks_blocked()
        assert writer.written == sent
        # Taking items again lets the stream go on where it stopped.
        job_id, following = await receive.receive()
        assert job_id == "slow"
        assert isinstance(following, Token)
        assert following.i == 399


# --- Errors before the stream --------------------------------------------------------


@pytest.mark.parametrize(("status", "retriable"), [(500, True), (503, True), (404, False)])
async def test_error_status_is_an_adapter_error(
    nursery: trio.Nursery, status: int, retriable: bool
) -> None:
    async def fail(connection: Connection) -> None:
        await connection.send(json_response(status, "Error", LOADING))

    url = await start_server(nursery, fail)
    _, error = await stream_until_error(url, expect=AdapterError)
    assert isinstance(error, AdapterError)
    assert error.status == status
    assert error.retriable is retriable
    assert "Loading model" in str(error)


async def test_health_while_loading_then_ready(nursery: trio.Nursery) -> None:
    loading = True

    async def server(connection: Connection) -> None:
        assert connection.path == "/health"
        if loading:
            await connection.send(json_response(503, "Service Unavailable", LOADING))
        else:
            await connection.send(json_response(200, "OK", {"status": "ok"}))

    url = await start_server(nursery, server)
    async with LlamaCppHttpAdapter(url) as adapter:
        health = await adapter.health()
        assert (health.live, health.ready, health.status) == (True, False, "loading model")
        assert health.message == "Loading model"
        loading = False
        health = await adapter.health()
        assert (health.live, health.ready, health.status) == (True, True, "ok")


# --- Errors inside the stream --------------------------------------------------------


def three_tokens() -> bytes:
    return STREAM_HEAD + b"".join(chunked(token_event(n)) for n in (1, 2, 3))


async def test_no_data_within_the_read_timeout_is_a_decode_timeout(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    async def stall(connection: Connection) -> None:
        await connection.send(three_tokens())
        await trio.sleep_forever()

    url = await start_server(nursery, stall)
    timeouts = httpx.Timeout(5.0, read=2.0)
    start = trio.current_time()
    events, error = await stream_until_error(url, expect=DecodeTimeout, timeouts=timeouts)
    assert tokens_of(events) == [0, 1, 2]
    assert 2.0 <= trio.current_time() - start < 3.0
    assert error.retriable


async def test_read_timeouts_of_streams_at_once_each_end_on_time(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    """One task keeps every stream's read timeout: a stream with a short one, opened
    while another waits out a long one, ends at its own, and the other at its own."""

    async def stall(connection: Connection) -> None:
        await connection.send(three_tokens())
        await trio.sleep_forever()

    url = await start_server(nursery, stall)
    ended: dict[float, float] = {}

    async def one(read_s: float, task_status: trio.TaskStatus[None]) -> None:
        async with LlamaCppHttpAdapter(url, timeouts=httpx.Timeout(5.0, read=read_s)) as adapter:
            with pytest.raises(DecodeTimeout):
                async with adapter.submit(TaskRequest("x")) as events:
                    async for event in events:
                        if isinstance(event, Token) and event.i == 2:
                            task_status.started()
            ended[read_s] = trio.current_time()

    start = trio.current_time()
    async with trio.open_nursery() as streams:
        await streams.start(one, 100.0)
        await streams.start(one, 2.0)
    assert 2.0 <= ended[2.0] - start < 3.0
    assert 100.0 <= ended[100.0] - start < 101.0


async def test_stall_before_the_headers_is_a_decode_timeout(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    async def stall(connection: Connection) -> None:
        await trio.sleep_forever()

    url = await start_server(nursery, stall)
    await stream_until_error(url, expect=DecodeTimeout, timeouts=httpx.Timeout(5.0, read=2.0))


async def test_health_of_a_failing_server(nursery: trio.Nursery) -> None:
    broken = {"error": {"code": 500, "message": "model failed to load", "type": "server_error"}}

    async def server(connection: Connection) -> None:
        await connection.send(json_response(500, "Internal Server Error", broken))

    url = await start_server(nursery, server)
    async with LlamaCppHttpAdapter(url) as adapter:
        health = await adapter.health()
    assert (health.live, health.ready, health.status) == (True, False, "error")
    assert health.message == "model failed to load"


async def test_cancel_from_another_task_ends_a_pending_read(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    closed = trio.Event()

    async def stall(connection: Connection) -> None:
        await connection.send(three_tokens())
        await connection.wait_for_hang_up()
        closed.set()

    url = await start_server(nursery, stall)
    events: list[StreamEvent] = []
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


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[str]:
    """Python's own file server, where a llama-server was meant to be: it answers
    /health with an HTML 404."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-u", "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    ) as server:
        try:
            assert server.stdout is not None
            assert b"Serving HTTP" in server.stdout.readline()  # it listens
            yield f"http://127.0.0.1:{port}"
        finally:
            server.terminate()


async def test_health_of_a_server_that_is_not_llama_server_is_not_live(file_server: str) -> None:
    async with LlamaCppHttpAdapter(file_server) as adapter:
        health = await adapter.health()
    assert (health.live, health.ready, health.status) == (False, False, "not llama-server")
    assert health.message is not None
    assert "404 (text/html)" in health.message


@pytest.mark.anyio
async def test_a_server_that_takes_no_byte_ends_in_the_write_timeout_on_time() -> None:
    """A server that never reads (it never even accepts): the request's bytes stop
    moving once the buffers between are full, and the write timeout ends it, on every
    loop. (Over a slow link, where bytes move, it does not: ``test_slow_links``.)"""
    write_timeout = 0.5
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        timeouts = httpx.Timeout(30.0, write=write_timeout)
        async with LlamaCppHttpAdapter(url, timeouts=timeouts) as adapter:
            start = anyio.current_time()
            with pytest.raises(WorkerError, match="write timeout"):
                async with adapter.submit(TaskRequest("x" * 32 * 1024 * 1024)) as events:
                    [event async for event in events]
            waited = anyio.current_time() - start
    assert write_timeout <= waited < write_timeout + 2.0, waited


@pytest.mark.anyio
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_a_large_prompt_is_sent_whole(tls: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt larger than the socket's buffer is sent in pieces, watched for progress
    (over TLS a record at a time): the server reads every byte of it."""
    authority = trustme.CA()
    trusting = httpx.create_ssl_context()
    authority.configure_trust(trusting)
    monkeypatch.setattr(httpx, "create_ssl_context", lambda: trusting)
    prompt = "".join(f"{n:07d} " for n in range(512 * 1024 // 8))
    received: list[str] = []

    async def read_then_stream(connection: Connection) -> None:
        received.append(json.loads(connection.body)["prompt"])
        await stream_tokens(connection, 2)

    context = tls_server_context(authority) if tls else None
    async with (
        scripted_server(read_then_stream, ssl_context=context) as server,
        LlamaCppHttpAdapter(server.url) as adapter,
        adapter.submit(TaskRequest(prompt)) as events,
    ):
        got = [event async for event in events]
    assert isinstance(got[-1], End)
    assert received == [prompt]
