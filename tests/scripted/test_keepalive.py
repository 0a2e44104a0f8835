"""Keep-alive with llama-server: a stream's connection is never kept for the next
request, and an idempotent request that meets a kept connection the server had closed is
sent once more; a streamed completion never is. The rule itself is tested without a
socket; the fault server shows each case on Trio and asyncio."""

from __future__ import annotations

import anyio
import h11
import httpcore
import httpx
import pytest

from llamacpp_adapter import (
    End,
    LlamaCppHttpAdapter,
    ProtocolError,
    TaskRequest,
    WorkerReset,
)
from llamacpp_adapter._transports.keepalive import ConnectionTrace, may_send_again
from llamacpp_adapter.http_util import default_client

from ..support.scripted import Connection, scripted_server
from ..support.wire import (
    KEPT_STREAM_HEAD,
    LAST_CHUNK,
    chunked,
    final_event,
    json_response,
    token_event,
)

pytestmark = pytest.mark.anyio

TOKENS = 3
HEALTHY = json_response(200, "OK", {"status": "ok"}, kept=True)
TOKENIZED = json_response(200, "OK", {"tokens": [300, 301]}, kept=True)
#: httpcore's message when the server closed the connection before any byte of its answer.
CLOSED_UNANSWERED = "Server disconnected without sending a response."


# --- The rule, without a socket ---------------------------------------------------------


async def trace_of(*events: str) -> ConnectionTrace:
    trace = ConnectionTrace()
    for event in events:
        await trace(event, {})
    return trace


KEPT = ("http11.send_request_headers.started",)
OPENED = ("connection.connect_tcp.started", "connection.connect_tcp.complete", *KEPT)


def raised(error: BaseException, *causes: BaseException) -> BaseException:
    """*error* as httpx raises it: from httpcore's error, from h11's (each ``from`` the
    next)."""
    for outer, inner in zip((error, *causes), causes, strict=False):
        outer.__cause__ = inner
    return error


def closed_unanswered(message: str = CLOSED_UNANSWERED) -> BaseException:
    """A kept connection the server had closed: httpcore says so itself."""
    return raised(httpx.RemoteProtocolError(message), httpcore.RemoteProtocolError(message))


def malformed(message: str = "illegal status line: bytearray(b'XX')") -> BaseException:
    """Malformed HTTP: h11 found it, httpcore and httpx pass it on."""
    return raised(
        httpx.RemoteProtocolError(message),
        httpcore.RemoteProtocolError(message),
        h11.RemoteProtocolError(message, 400),
    )


@pytest.mark.parametrize(
    ("events", "error", "again"),
    [
        (KEPT, closed_unanswered(), True),
        (KEPT, httpx.ReadError("[Errno 104] Connection reset by peer"), True),
        (KEPT, httpx.WriteError("[Errno 32] Broken pipe"), True),
        # Decided by the errors' types, not their words: a reworded message is the same.
        (KEPT, closed_unanswered("the server hung up"), True),
        (KEPT, malformed("peer closed the status line badly"), False),
        # A fresh connection that fails says something about the server.
        (OPENED, closed_unanswered(), False),
        (OPENED, httpx.ReadError("[Errno 104] Connection reset by peer"), False),
        # A transport that reports nothing: nobody can say the connection was a kept one.
        ((), closed_unanswered(), False),
        # Malformed HTTP, a timeout, a refused connection: never.
        (KEPT, malformed(), False),
        (KEPT, httpx.ReadTimeout("timed out"), False),
        (KEPT, httpx.ConnectError("[Errno 111] Connection refused"), False),
        (KEPT, httpx.PoolTimeout("no connection"), False),
    ],
)
@pytest.mark.parametrize("anyio_backend", ["trio"])  # pure logic: one backend is enough
async def test_what_may_be_sent_again(
    events: tuple[str, ...], error: httpx.HTTPError, again: bool
) -> None:
    assert may_send_again(error, await trace_of(*events)) is again


# --- On the wire ------------------------------------------------------------------------


async def test_a_streams_connection_is_not_kept_for_the_next_request() -> None:
    # The stub answers the stream as llama-server answers a request that did not ask to
    # close (promising keep-alive), and then, as it does, answers nothing more on that
    # connection. Here its close is late, as on a loaded machine: it waits for the next
    # request first.
    after_the_stream: list[str] = []

    async def script(connection: Connection) -> None:
        if connection.path == "/health":
            await connection.send(HEALTHY)
            return
        body = b"".join(token_event(n) for n in range(1, TOKENS + 1)) + final_event(TOKENS)
        await connection.send(KEPT_STREAM_HEAD + chunked(body) + LAST_CHUNK)
        if await connection.next_request():
            after_the_stream.append(connection.path)

    async with scripted_server(script) as server, LlamaCppHttpAdapter(server.url) as adapter:
        async with adapter.submit(TaskRequest("hi")) as events:
            assert isinstance([event async for event in events][-1], End)
        health = await adapter.health()
        await server.wait_idle()  # the stream's connection is closed, by the adapter
    assert health.ready
    assert after_the_stream == []
    assert server.requests == {"/completion": 1, "/health": 1}


async def test_an_idempotent_request_on_a_connection_closed_unseen_is_sent_once_more() -> None:
    answered: list[str] = []

    async def script(connection: Connection) -> None:
        # Answers the first request on each connection; on a kept connection the next
        # one meets a close, as when the server's idle timeout and the request cross.
        await connection.send(TOKENIZED if connection.path == "/tokenize" else HEALTHY)
        answered.append(connection.path)
        await connection.next_request()

    async with scripted_server(script) as server, LlamaCppHttpAdapter(server.url) as adapter:
        first = await adapter.health()
        second = await adapter.health()
        assert await adapter.tokenize("hi") == [300, 301]  # and a POST, all the same
    assert first.ready
    assert second.ready
    # Three connections: the first, closed under the second request, sent again on the
    # second connection, which the tokenize request meets closed too.
    assert server.requests == {"/health": 2, "/tokenize": 1}
    assert answered == ["/health", "/health", "/tokenize"]


async def health_then_nothing(connection: Connection) -> None:
    """``/health`` is answered, and the request after it on the same connection is not;
    any other request that opens a connection is closed unanswered."""
    if connection.path == "/health":
        await connection.send(HEALTHY)
        await connection.next_request()


async def test_a_request_sent_again_is_sent_only_once_more() -> None:
    async with (
        scripted_server(health_then_nothing) as server,
        LlamaCppHttpAdapter(server.url) as adapter,
    ):
        assert (await adapter.health()).ready
        with pytest.raises(WorkerReset, match="GET /metrics, sent again after") as info:
            await adapter.metrics()
    assert info.value.retriable
    assert server.requests == {"/health": 1, "/metrics": 1}


async def test_a_streamed_completion_is_never_sent_again() -> None:
    # Through the caller's own client, a stream may go out on a kept connection.
    async def script(connection: Connection) -> None:
        await connection.send(HEALTHY)
        await connection.next_request()  # the completion, on the kept connection: closed

    async with (
        scripted_server(script) as server,
        default_client() as client,
        LlamaCppHttpAdapter(server.url, client=client) as adapter,
    ):
        assert (await adapter.health()).ready
        with pytest.raises(WorkerReset, match="while opening the stream") as info:
            async with adapter.submit(TaskRequest("hi")):
                raise AssertionError("the block must not run")
    assert info.value.retriable  # the caller (or the host) may choose to
    assert server.requests == {"/health": 1}  # no connection was opened to send it again


async def test_a_streamed_completion_on_the_direct_path_has_a_connection_of_its_own() -> None:
    # The completion is closed unanswered, on the connection it opened for itself.
    async with (
        scripted_server(health_then_nothing) as server,
        LlamaCppHttpAdapter(server.url) as adapter,
    ):
        assert (await adapter.health()).ready
        with pytest.raises(WorkerReset, match="while opening the stream") as info:
            async with adapter.submit(TaskRequest("hi")):
                raise AssertionError("the block must not run")
    assert info.value.retriable
    assert server.requests == {"/health": 1, "/completion": 1}  # sent once, never again


async def test_a_request_that_fails_on_a_fresh_connection_is_not_sent_again() -> None:
    async def script(connection: Connection) -> None:
        return  # closes every connection unanswered

    async with scripted_server(script) as server, LlamaCppHttpAdapter(server.url) as adapter:
        health = await adapter.health()
        with pytest.raises(WorkerReset, match="GET /metrics"):
            await adapter.metrics()
    assert not health.live
    assert server.requests == {"/health": 1, "/metrics": 1}


async def test_malformed_http_on_a_kept_connection_is_not_sent_again() -> None:
    async def script(connection: Connection) -> None:
        await connection.send(HEALTHY)
        if await connection.next_request():
            await connection.send(b"XX\r\n\r\n")

    async with scripted_server(script) as server, LlamaCppHttpAdapter(server.url) as adapter:
        assert (await adapter.health()).ready
        with anyio.fail_after(5), pytest.raises(ProtocolError, match="GET /slots"):
            await adapter.slots()
    assert server.requests == {"/health": 1}
