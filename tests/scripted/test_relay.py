"""The relay against a stub engine: backpressure from a slow client back to the engine
read, 200 clients at once, bad input refused without harm to the others, frames the
standard forbids, handshakes bounded, and the relay on every event loop."""

from __future__ import annotations

import contextlib
import json
import logging
import tracemalloc
from contextlib import AsyncExitStack

import anyio
import pytest
import trio
from trio.testing import wait_all_tasks_blocked
from wsproto.events import CloseConnection, TextMessage

from llamacpp_adapter import (
    AdapterError,
    AdapterHost,
    EngineError,
    LlamaCppHttpAdapter,
    PoolUnavailable,
    Relay,
    StreamEvent,
    TaskRequest,
    Token,
    TokenThrottle,
    open_relay_stream,
)
from llamacpp_adapter._relay.ws_client import ConnectionClosed, connect

from ..support import rawws
from ..support.relays import TOKEN, collect, poll_until, relay_over, texts
from ..support.scripted import Connection, Starter, replica, start_server, stream_tokens
from ..support.wire import (
    LAST_CHUNK,
    OUT_OF_MEMORY,
    STREAM_HEAD,
    chunked,
    error_event,
    final_event,
    token_event,
)


async def relay_connections(relay: Relay) -> int:
    return relay.active_connections


async def start_engine(nursery: Starter, *, tokens: int, text_bytes: int = 0) -> str:
    """A stub engine whose n-th token's text is the task's prompt, ":", n (and
    *text_bytes* more bytes), written as fast as the socket takes them."""
    padding = "x" * text_bytes

    async def answer(connection: Connection) -> None:
        prompt = json.loads(connection.body)["prompt"]
        await connection.send(STREAM_HEAD)
        batch = b""
        for n in range(1, tokens + 1):
            batch += token_event(n, f"{prompt}:{n}{padding}")
            if len(batch) > 16384 or n == tokens:
                await connection.send(chunked(batch))
                batch = b""
        await connection.send(chunked(final_event(tokens)) + LAST_CHUNK)

    return await start_server(nursery, answer)


async def test_a_slow_client_holds_back_the_engine_read(nursery: trio.Nursery) -> None:
    tokens, text_bytes = 20_000, 1000  # a 20 MB stream: more than any socket buffers
    engine = await start_engine(nursery, tokens=tokens, text_bytes=text_bytes)
    async with relay_over(engine) as (url, relay):
        request = TaskRequest("slow")
        async with open_relay_stream(url, request) as events:
            received: list[int] = []
            async for event in events:
                if isinstance(event, Token):
                    stream = relay.streams[request.job_id]
                    assert stream.buffered <= 64  # the adapter's bound
                    received.append(stream.bytes_received)
                    if len(received) == 30:
                        break
                await trio.sleep(0.05)  # one message per 50 ms
    # The engine read advanced with the client, not to the end of the 20 MB body.
    assert received[-1] < 0.5 * tokens * text_bytes
    assert received[-1] - received[9] < 0.25 * tokens * text_bytes


async def test_two_hundred_clients_at_once_get_their_own_tokens(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await start_engine(nursery, tokens=20)
    results: dict[int, list[str]] = {}
    async with relay_over(engine) as (url, relay):

        async def client(n: int) -> None:
            results[n] = texts(await collect(url, TaskRequest(f"c{n}")))

        async with trio.open_nursery() as clients:
            for n in range(200):
                clients.start_soon(client, n)
        # The relay's side of each connection ends a moment after the client's: once
        # it has the client's close in answer to its own.
        await wait_all_tasks_blocked()
        assert relay.active_connections == 0
    assert sorted(results) == list(range(200))
    for n, got in results.items():
        assert got == [f"c{n}:{i}" for i in range(1, 21)]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def raw_exchange(
    url: str, message: str | bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[list[str], int]:
    """Send *message*; return what came back and the close code."""
    got: list[str] = []
    async with connect(url, headers) as ws:
        await ws.send_message(message)
        try:
            while True:
                got.append(str(await ws.get_message()))
        except ConnectionClosed as exc:
            return got, exc.code
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("message", "says"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"prompt": "x", "max_tokens": "ten"}', "max_tokens"),
        ('{"prompt": "x", "temperature": -1}', "temperature"),
        ('{"prompt": "x", "nope": 1}', "unknown task fields"),
        ('{"prompt": "x", "extra": {"n_probs": 5}}', "extra"),
        ('{"prompt": "x", "pool": "p"}', "pool"),
        ("{}", "prompt"),
        ('{"prompt": ' + "[" * 20_000 + "]" * 20_000 + "}", "nested too deeply"),
    ],
)
async def test_a_bad_task_gets_its_error_and_1008(
    nursery: trio.Nursery, message: str, says: str
) -> None:
    engine = await start_engine(nursery, tokens=3)
    async with relay_over(engine, token=TOKEN) as (url, _):
        headers = [(b"Authorization", f"Bearer {TOKEN}".encode())]
        got, code = await raw_exchange(url, message, headers)
        assert code == 1008
        [error] = [json.loads(m) for m in got]
        assert error["type"] == "error"
        assert error["code"] == "BAD_TASK"
        assert says in error["message"]
        # The relay goes on serving others.
        assert texts(await collect(url, TaskRequest("ok"), token=TOKEN)) == ["ok:1", "ok:2", "ok:3"]


async def test_a_huge_message_is_closed_with_1009(nursery: trio.Nursery) -> None:
    engine = await start_engine(nursery, tokens=2)
    async with relay_over(engine, max_message_bytes=1024) as (url, _):
        got, code = await raw_exchange(url, json.dumps({"prompt": "x" * 5000}))
        assert (got, code) == ([], 1009)
        assert texts(await collect(url, TaskRequest("ok"))) == ["ok:1", "ok:2"]


@pytest.mark.parametrize("token", [None, "wrong-token-000000", TOKEN + "x"])
async def test_a_missing_or_wrong_token_is_refused_with_401(
    nursery: trio.Nursery, token: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await start_engine(nursery, tokens=2)
    async with relay_over(engine, token=TOKEN) as (url, _):
        with pytest.raises(AdapterError) as info:
            await collect(url, TaskRequest("x"), token=token)
        assert info.value.status == 401
        assert texts(await collect(url, TaskRequest("ok"), token=TOKEN)) == ["ok:1", "ok:2"]
    assert TOKEN not in caplog.text


async def test_a_right_token_is_not_slowed_while_its_address_is(nursery: trio.Nursery) -> None:
    """Past the throttle's burst, a wrong token waits, or is closed unanswered; a right
    token from the same address gets its stream at once."""
    engine = await start_engine(nursery, tokens=2)
    throttle = TokenThrottle(burst=1, per_second=0.1, max_wait_s=0.5)
    async with relay_over(engine, token=TOKEN, throttle=throttle) as (url, _):
        answers = []
        for _ in range(3):
            stream = await rawws.connect(port_of(url))
            await stream.send_all(rawws.handshake(port_of(url), "wrong-token-000000"))
            answers.append(await rawws.read_to_eof(stream))
            await stream.aclose()
        assert answers[0].startswith(b"HTTP/1.1 401 ")
        assert answers[1:] == [b"", b""]  # each would wait 10 s: closed at once
        with trio.fail_after(1.0):
            assert texts(await collect(url, TaskRequest("ok"), token=TOKEN)) == ["ok:1", "ok:2"]


async def test_a_throttle_must_be_a_token_throttle() -> None:
    async with LlamaCppHttpAdapter("http://127.0.0.1:1") as adapter:
        with pytest.raises(TypeError, match="throttle"):
            Relay(adapter, throttle=5)  # type: ignore[arg-type]


async def test_connections_past_the_limit_are_refused_with_503(nursery: trio.Nursery) -> None:
    engine = await start_engine(nursery, tokens=2)
    async with relay_over(engine, max_connections=1) as (url, relay):
        async with connect(url, []):  # holds the one connection, sends nothing
            with trio.fail_after(5):
                await poll_until(lambda: relay_connections(relay), 1)
            with pytest.raises(AdapterError) as info:
                await collect(url, TaskRequest("x"))
            assert info.value.status == 503
        assert texts(await collect(url, TaskRequest("ok"))) == ["ok:1", "ok:2"]


async def test_a_client_that_sends_no_task_is_closed_after_the_idle_timeout(
    nursery: trio.Nursery,
) -> None:
    engine = await start_engine(nursery, tokens=2)
    async with relay_over(engine, idle_timeout_s=0.2) as (url, _), connect(url, []) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await ws.get_message()
        assert info.value.code == 4000


async def test_an_engine_failure_reaches_the_client_typed_after_its_tokens(
    nursery: trio.Nursery,
) -> None:
    async def failing(connection: Connection) -> None:
        body = token_event(1, "a") + token_event(2, "b") + error_event(OUT_OF_MEMORY)
        await connection.send(STREAM_HEAD + chunked(body) + LAST_CHUNK)

    engine = await start_server(nursery, failing)
    async with relay_over(engine) as (url, _):
        got: list[StreamEvent] = []
        with pytest.raises(EngineError, match="out of memory"):
            async with open_relay_stream(url, TaskRequest("x")) as events:
                async for event in events:
                    got.append(event)
        assert texts(got) == ["a", "b"]
        # An error of the client's own comes out of the block as it is.
        with pytest.raises(KeyError):
            async with open_relay_stream(url, TaskRequest("y")):
                raise KeyError("mine")


async def test_a_client_that_stops_reading_is_closed_with_a_reason_and_its_task_cancelled(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await start_engine(nursery, tokens=20_000, text_bytes=1000)  # 20 MB
    async with relay_over(engine, idle_timeout_s=0.5) as (url, relay):
        stream, protocol = await rawws.open_websocket(port_of(url), None)
        await stream.send_all(protocol.send(TextMessage(data=json.dumps({"prompt": "stalled"}))))
        with trio.fail_after(10):
            await poll_until(lambda: relay_streams(relay), 1)
            await poll_until(lambda: relay_streams(relay), 0)  # the task upstream is cancelled
        # What was queued comes whole, then a close frame that says why.
        events = await rawws.events_to_eof(stream, protocol)
        await stream.aclose()
        assert rawws.closes(events)[0] == (4000, "the client stopped reading")
        assert any(isinstance(e, TextMessage) for e in events)
        with trio.fail_after(10):
            await poll_until(lambda: relay_connections(relay), 0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def relay_streams(relay: Relay) -> int:
    return len(relay.streams)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (rawws.frame(0x1, b"\xff\xfe"), 1007),  # a text frame that is not UTF-8
        (rawws.frame(0x3, b"x"), 1002),  # a reserved opcode
        (rawws.frame(0x1, b"{}", masked=False), 1002),  # a client frame must be masked
        (rawws.frame(0x0, b"x"), 1002),  # a continuation with nothing to continue
        (rawws.frame(0x9, b"x" * 126), 1002),  # a control frame over 125 bytes
    ],
    ids=["invalid-utf8", "reserved-opcode", "unmasked", "lone-continuation", "long-ping"],
)
async def test_a_frame_the_standard_forbids_is_closed_with_its_code(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, frame: bytes, code: int
) -> None:
    engine = await start_engine(nursery, tokens=2)
    async with relay_over(engine) as (url, _):
        stream, protocol = await rawws.open_websocket(port_of(url), None)
        await stream.send_all(frame)
        events = await rawws.events_to_eof(stream, protocol)
        await stream.aclose()
        assert [c for c, _ in rawws.closes(events)][:1] == [code]
        assert texts(await collect(url, TaskRequest("ok"))) == ["ok:1", "ok:2"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_refused_connection_is_closed_after_its_answer(nursery: trio.Nursery) -> None:
    engine = await start_engine(nursery, tokens=2)
    async with relay_over(engine, token=TOKEN) as (url, relay):
        stream = await rawws.connect(port_of(url))
        await stream.send_all(rawws.handshake(port_of(url), "wrong-token-000000"))
        answer = await rawws.read_to_eof(stream)  # the relay closes it
        await stream.aclose()
        assert answer.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
        assert answer.endswith(b"\r\n\r\na valid bearer token is required")
        await wait_all_tasks_blocked()
        assert relay.active_connections == relay.handshakes == 0


async def test_handshakes_are_bounded_in_number(nursery: trio.Nursery) -> None:
    engine = await start_engine(nursery, tokens=2)
    async with relay_over(engine, max_handshakes=3) as (url, relay):
        silent = [await rawws.connect(port_of(url)) for _ in range(3)]
        with trio.fail_after(5):
            await poll_until(lambda: relay_handshakes(relay), 3)
        newest = await rawws.connect(port_of(url))  # the oldest goes for it
        assert await rawws.read_to_eof(silent[0]) == b""
        with trio.fail_after(5):
            await poll_until(lambda: relay_handshakes(relay), 3)
        # A correct client still gets in, and the silent ones stay in their handshake.
        assert texts(await collect(url, TaskRequest("ok"))) == ["ok:1", "ok:2"]
        for stream in [*silent, newest]:
            await stream.aclose()


async def test_a_handshake_that_does_not_end_in_time_is_dropped(nursery: trio.Nursery) -> None:
    engine = await start_engine(nursery, tokens=2)
    async with relay_over(engine, handshake_timeout_s=0.2) as (url, relay):
        stream = await rawws.connect(port_of(url))
        await stream.send_all(b"GET / HTTP/1.1\r\n")  # and nothing more
        assert await rawws.read_to_eof(stream) == b""
        await stream.aclose()
        await wait_all_tasks_blocked()
        assert relay.handshakes == 0


async def test_a_handshake_sent_a_byte_at_a_time_is_dropped_at_its_deadline(
    nursery: trio.Nursery,
) -> None:
    """A client that sends its handshake slowly, a byte every tenth of a second, keeps
    it no longer than the handshake timeout: the deadline is the whole handshake's, not
    each read's."""
    engine = await start_engine(nursery, tokens=2)
    async with relay_over(engine, handshake_timeout_s=0.5) as (url, relay):
        stream = await rawws.connect(port_of(url))
        request = rawws.handshake(port_of(url), None)
        sent = 0

        async def trickle() -> None:
            nonlocal sent
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                for byte in request:
                    await stream.send_all(bytes([byte]))
                    sent += 1
                    await trio.sleep(0.1)  # the client's own pace

        start = trio.current_time()
        async with trio.open_nursery() as client:
            client.start_soon(trickle)
            answer = await rawws.read_to_eof(stream, within_s=2.0)
            client.cancel_scope.cancel()
        await stream.aclose()
        assert answer == b""
        assert 0.5 <= trio.current_time() - start < 2.0
        assert sent < len(request)
        await wait_all_tasks_blocked()
        assert relay.handshakes == 0
        assert texts(await collect(url, TaskRequest("ok"))) == ["ok:1", "ok:2"]


async def test_what_is_not_a_websocket_handshake_is_answered_400(nursery: trio.Nursery) -> None:
    engine = await start_engine(nursery, tokens=2)
    async with relay_over(engine) as (url, _):
        stream = await rawws.connect(port_of(url))
        await stream.send_all(b"GET /completion HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await rawws.read_to_eof(stream)
        await stream.aclose()
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")


async def relay_handshakes(relay: Relay) -> int:
    return relay.handshakes


@pytest.mark.parametrize("reset", [False, True])
async def test_clients_that_leave_mid_stream_are_no_error(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, reset: bool
) -> None:
    engine = await start_engine(nursery, tokens=20_000, text_bytes=100)
    async with relay_over(engine) as (url, relay):
        for _ in range(5):
            stream, protocol = await rawws.open_websocket(port_of(url), None)
            await stream.send_all(protocol.send(TextMessage(data=json.dumps({"prompt": "x"}))))
            await stream.receive_some(65536)  # the stream runs
            if reset:
                rawws.reset_on_close(stream)
            else:
                await stream.send_all(protocol.send(CloseConnection(code=1001)))
            await stream.aclose()
        with trio.fail_after(10):
            await poll_until(lambda: relay_connections(relay), 0)
        assert relay.streams == {}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_memory_per_idle_connection_is_bounded(nursery: trio.Nursery) -> None:
    engine = await start_engine(nursery, tokens=1)
    connections = 100
    async with relay_over(engine) as (url, relay), AsyncExitStack() as held:
        await held.enter_async_context(connect(url, []))  # warm: first-use allocations
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(connections):
                await held.enter_async_context(connect(url, []))
            with trio.fail_after(10):
                await poll_until(lambda: relay_connections(relay), connections + 1)
            per_connection = (tracemalloc.get_traced_memory()[0] - before) / connections
        finally:
            tracemalloc.stop()
    # Both ends of each connection are in this process; together about 36 KiB here.
    assert per_connection < 96 * 1024


async def test_a_relay_over_a_host_places_tasks_in_pools(nursery: trio.Nursery) -> None:
    async def two_tokens(connection: Connection) -> None:
        await stream_tokens(connection, 2)

    url = await start_server(nursery, replica(two_tokens))
    async with (
        LlamaCppHttpAdapter(url) as adapter,
        AdapterHost() as host,
        trio.open_nursery() as relays,
    ):
        host.bind("chat", "r0", adapter)
        relay_url = await relays.start(Relay(host, pool="chat").serve)
        assert len(texts(await collect(relay_url, TaskRequest("x")))) == 2
        assert len(texts(await collect(relay_url, TaskRequest("x"), pool="chat"))) == 2
        with pytest.raises(PoolUnavailable):
            await collect(relay_url, TaskRequest("x"), pool="other")
        relays.cancel_scope.cancel()


@pytest.mark.anyio
async def test_the_relay_runs_on_every_event_loop() -> None:
    async with anyio.create_task_group() as tasks:
        engine = await start_engine(tasks, tokens=3)
        async with LlamaCppHttpAdapter(engine) as adapter:
            relay = Relay(adapter, token=TOKEN)
            url = await tasks.start(relay.serve)
            assert texts(await collect(url, TaskRequest("a"), token=TOKEN)) == ["a:1", "a:2", "a:3"]
            with pytest.raises(AdapterError) as refused:
                await collect(url, TaskRequest("b"), token="wrong-token-000000")
            assert refused.value.status == 401
        tasks.cancel_scope.cancel()


async def test_a_client_with_a_window_gets_that_many_messages_until_it_acknowledges(
    nursery: trio.Nursery,
) -> None:
    engine = await start_engine(nursery, tokens=20)
    async with relay_over(engine, idle_timeout_s=0.5) as (url, relay):
        stream, protocol = await rawws.open_websocket(port_of(url), None)
        task = {"prompt": "held", "window": 3}
        await stream.send_all(protocol.send(TextMessage(data=json.dumps(task))))
        # It acknowledges nothing: the relay sends three messages, waits the idle
        # timeout for an acknowledgement, and closes, its task cancelled.
        events = await rawws.events_to_eof(stream, protocol)
        await stream.aclose()
        sent = [json.loads(e.data) for e in events if isinstance(e, TextMessage)]
        assert [m["type"] for m in sent] == ["started", "token", "token"]
        assert rawws.closes(events)[0] == (4000, "the client stopped reading")
        with trio.fail_after(10):
            await poll_until(lambda: relay_streams(relay), 0)


@pytest.mark.parametrize("window", [1, 2, 7])
async def test_a_client_that_acknowledges_as_it_takes_gets_every_event(
    nursery: trio.Nursery, window: int
) -> None:
    engine = await start_engine(nursery, tokens=300)
    async with relay_over(engine, idle_timeout_s=5) as (url, _):
        got = texts(await collect(url, TaskRequest("acked"), window=window))
    assert got == [f"acked:{n}" for n in range(1, 301)]


@pytest.mark.parametrize(
    ("message", "says"),
    [
        ({"type": "ack", "n": 100}, "an ack of 100 messages"),
        ({"type": "token", "i": 0, "t": "x"}, "not an ack"),
        ("not json", "not an ack"),
    ],
)
async def test_a_client_message_other_than_an_ack_of_what_it_got_is_refused(
    nursery: trio.Nursery, message: object, says: str
) -> None:
    engine = await start_engine(nursery, tokens=20)
    async with relay_over(engine, idle_timeout_s=5) as (url, relay):
        stream, protocol = await rawws.open_websocket(port_of(url), None)
        task = {"prompt": "x", "window": 2}
        await stream.send_all(protocol.send(TextMessage(data=json.dumps(task))))
        data = message if isinstance(message, str) else json.dumps(message)
        await stream.send_all(protocol.send(TextMessage(data=data)))
        events = await rawws.events_to_eof(stream, protocol)
        await stream.aclose()
        code, reason = rawws.closes(events)[0]
        assert code == 1008
        assert says in reason
        with trio.fail_after(10):
            await poll_until(lambda: relay_streams(relay), 0)
