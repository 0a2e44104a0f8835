"""The read timeouts of a loop's direct streams, kept by one keeper a loop, on every
loop: a stream with a short timeout opened while another waits out a long one ends at
its own; a read cancelled before its deadline leaves the connection as it is; the
streams of a loop after the last one closed get a keeper again; and a stream whose
connect failed is not watched."""

from __future__ import annotations

import gc
import socket
import time

import anyio
import httpx
import pytest

from llamacpp_adapter import (
    DecodeTimeout,
    End,
    LlamaCppHttpAdapter,
    TaskRequest,
    Token,
    WorkerReset,
)
from llamacpp_adapter._transports.direct import DirectBody

from ..support.scripted import Connection, scripted_server
from ..support.wire import LAST_CHUNK, STREAM_HEAD, chunked, final_event, token_event

pytestmark = pytest.mark.anyio

SHORT_S = 0.5
LONG_S = 60.0
#: How much later than its read timeout a stream's error may come on a busy machine.
SLACK_S = 5.0


async def three_then_stall(connection: Connection) -> None:
    await connection.send(STREAM_HEAD + b"".join(chunked(token_event(n)) for n in (1, 2, 3)))
    await connection.wait_for_hang_up()


async def test_a_short_read_timeout_ends_on_time_beside_a_long_one() -> None:
    """The keeper sleeps until the long stream's deadline when the short one begins to
    wait: that wait's deadline must wake it sooner."""
    long_waiting = anyio.Event()
    async with (
        scripted_server(three_then_stall) as server,
        LlamaCppHttpAdapter(server.url, timeouts=httpx.Timeout(5.0, read=LONG_S)) as slow,
        LlamaCppHttpAdapter(server.url, timeouts=httpx.Timeout(5.0, read=SHORT_S)) as fast,
        anyio.create_task_group() as group,
    ):

        async def wait_long() -> None:
            async with slow.submit(TaskRequest("x")) as events:
                async for event in events:
                    if isinstance(event, Token) and event.i == 2:
                        long_waiting.set()

        group.start_soon(wait_long)
        await long_waiting.wait()
        began = time.monotonic()
        with pytest.raises(DecodeTimeout):
            async with fast.submit(TaskRequest("x")) as events:
                async for _ in events:
                    pass
        elapsed = time.monotonic() - began
        assert SHORT_S <= elapsed < SHORT_S + SLACK_S
        group.cancel_scope.cancel()  # the long stream is still waiting


async def test_a_read_cancelled_before_its_deadline_does_not_time_out_later() -> None:
    """The consumer gives up a read, stays away past the read timeout, and reads on:
    the stream goes on to its end (no read was in progress when the deadline passed)."""
    go_on = anyio.Event()

    async def three_then_the_rest(connection: Connection) -> None:
        head = STREAM_HEAD + b"".join(chunked(token_event(n)) for n in (1, 2, 3))
        await connection.send(head)
        await go_on.wait()
        await connection.send(chunked(token_event(4) + final_event(4)) + LAST_CHUNK)

    async with (
        scripted_server(three_then_the_rest) as server,
        LlamaCppHttpAdapter(server.url, timeouts=httpx.Timeout(5.0, read=SHORT_S)) as adapter,
        adapter.submit(TaskRequest("x")) as events,
    ):
        tokens = [(await events.receive()), *(await events.receive_batch())]
        while sum(isinstance(event, Token) for event in tokens) < 3:
            tokens.extend(await events.receive_batch())
        with anyio.move_on_after(SHORT_S / 5) as scope:
            await events.receive()  # nothing comes: given up
        assert scope.cancelled_caught
        # Past the deadline the cancelled read had, with no read in progress.
        await anyio.sleep(SHORT_S * 2)
        go_on.set()
        rest = [event async for event in events]
    assert [event.i for event in rest if isinstance(event, Token)] == [3]
    assert isinstance(rest[-1], End)


async def test_streams_after_the_last_one_closed_are_kept_again() -> None:
    for _ in range(2):
        async with (
            scripted_server(three_then_stall) as server,
            LlamaCppHttpAdapter(server.url, timeouts=httpx.Timeout(5.0, read=SHORT_S)) as adapter,
        ):
            began = time.monotonic()
            with pytest.raises(DecodeTimeout):
                async with adapter.submit(TaskRequest("x")) as events:
                    async for _ in events:
                        pass
            assert time.monotonic() - began < SHORT_S + SLACK_S


async def test_a_stream_whose_connect_fails_leaves_nothing_watched() -> None:
    """A connect refused ends the stream's body with it: nothing keeps it for its read
    timeout (the keeper watches a body until its connection is closed, and a body that
    never connected has none to close)."""

    async def refused(adapter: LlamaCppHttpAdapter) -> None:
        with pytest.raises(WorkerReset):
            async with adapter.submit(TaskRequest("x")) as events:
                async for _ in events:
                    pass

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: a connect is refused
        async with LlamaCppHttpAdapter(f"http://127.0.0.1:{port}") as adapter:
            alive = [bodies_alive()]  # what other tests left, if anything, to count from
            for _ in range(2):
                for _ in range(3):
                    await refused(adapter)
                alive.append(bodies_alive())
    # The last failure's traceback may hold its body a while; a body kept for each
    # failure would make each count three more than the one before.
    assert alive[1] - alive[0] <= 1
    assert alive[2] <= alive[1]


def bodies_alive() -> int:
    gc.collect()
    return sum(isinstance(item, DirectBody) for item in gc.get_objects())


async def test_a_stream_cancelled_while_it_connects_leaves_nothing_watched() -> None:
    """A stream cancelled at each point of its opening in turn, one of them inside the
    connect, after the connection was made: nothing keeps its body. (uvloop closes a
    connection whose connect was given up without calling connection_lost.)"""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)  # connects are taken by the system, and no answer ever comes
        port = listener.getsockname()[1]
        async with LlamaCppHttpAdapter(f"http://127.0.0.1:{port}") as adapter:
            before = bodies_alive()
            for checkpoints in range(CANCEL_POINTS):
                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as group:
                        group.start_soon(cancel_after, scope, checkpoints)
                        async with adapter.submit(TaskRequest("x")) as events:
                            async for _ in events:
                                pass
            assert bodies_alive() == before


#: How many points of a stream's opening the cancellation test tries, one after another:
#: more than an opening passes through on every event loop.
CANCEL_POINTS = 40


async def cancel_after(scope: anyio.CancelScope, checkpoints: int) -> None:
    for _ in range(checkpoints):
        await anyio.lowlevel.checkpoint()
    scope.cancel()
