"""The task form against a real llama-server (and a stub that cuts a stream): ``await
group.start(adapter.stream_into, request, send_stream)`` runs a stream as a task feeding
the caller's bounded memory channel, on Trio and asyncio."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import anyio.lowlevel
import pytest
import trio
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectSendStream

from llamacpp_adapter import (
    AdapterHost,
    End,
    JobItem,
    LlamaCppHttpAdapter,
    Metrics,
    PoolUnavailable,
    Started,
    StreamEvent,
    TaskRequest,
    Token,
    WorkerError,
    WorkerReset,
    create_job_channel,
)
from llamacpp_adapter._local.server import LocalLlamaServer

from ..support.channels import gather
from ..support.engine import assert_stopped_early, tokens_generated, wait_until_idle
from ..support.scripted import Connection, scripted_server
from ..support.wire import LAST_CHUNK, STREAM_HEAD, chunked, final_event, token_event

pytestmark = pytest.mark.anyio


FOUR_SLOTS = 4


ENDLESS = {"ignore_eos": True}


CHANNEL_ITEMS = 8


@pytest.fixture(scope="module")
def four_slot_server() -> Iterator[LocalLlamaServer]:
    with LocalLlamaServer(context=FOUR_SLOTS * 8192, parallel=FOUR_SLOTS) as server:
        yield server


@pytest.fixture
async def adapter(four_slot_server: LocalLlamaServer) -> AsyncIterator[LlamaCppHttpAdapter]:
    async with LlamaCppHttpAdapter(four_slot_server.base_url) as adapter:
        yield adapter


def texts(events: list[StreamEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, Token)]


async def direct(adapter: LlamaCppHttpAdapter, request: TaskRequest) -> list[StreamEvent]:
    async with adapter.submit(request) as events:
        return [event async for event in events]


def assert_a_whole_job(items: list[StreamEvent | WorkerError], job_id: str) -> list[Token]:
    """Started, tokens 0..N-1, Metrics, End: the job's items in order."""
    tokens = [item for item in items if isinstance(item, Token)]
    assert items[0] == Started(job_id)
    assert [type(item) for item in items[1:]] == [Token] * len(tokens) + [Metrics, End]
    assert [t.i for t in tokens] == list(range(len(tokens)))
    return tokens


async def test_a_fan_in_of_six_streams_from_a_four_slot_server(
    adapter: LlamaCppHttpAdapter,
) -> None:
    requests = [
        TaskRequest(f"the story {n}", max_tokens=10 + 3 * n, seed=n, job_id=f"job-{n}")
        for n in range(6)
    ]
    expected = {r.job_id: texts(await direct(adapter, r)) for r in requests}
    send, receive = anyio.create_memory_object_stream[JobItem](CHANNEL_ITEMS)
    async with anyio.create_task_group() as group:
        # The receiver runs first: a fifth stream opens only once a slot frees, and a
        # slot frees only once the receiver has taken its stream's events.
        results: dict[str, list[StreamEvent | WorkerError]] = {}

        async def serve() -> None:
            results.update(await gather(receive))

        group.start_soon(serve)
        async with send:
            for request in requests:
                job_id = await group.start(adapter.stream_into, request, send.clone())
                assert job_id == request.job_id
    assert set(results) == set(expected)
    for job_id, items in results.items():
        tokens = assert_a_whole_job(items, job_id)
        assert [t.text for t in tokens] == expected[job_id]  # the same as a direct submit


@pytest.mark.parametrize("anyio_backend", ["trio"])  # Trio's own channels need Trio
async def test_a_trio_memory_channel_works_the_same(adapter: LlamaCppHttpAdapter) -> None:
    request = TaskRequest("hello the", max_tokens=12, seed=3, job_id="job-trio")
    send, receive = trio.open_memory_channel[JobItem](CHANNEL_ITEMS)
    async with trio.open_nursery() as nursery:
        assert await nursery.start(adapter.stream_into, request, send) == "job-trio"
        async with receive:
            items = [item async for job_id, item in receive]
    tokens = assert_a_whole_job(items, "job-trio")
    assert [t.text for t in tokens] == texts(await direct(adapter, request))


async def test_a_failure_before_the_stream_opens_is_raised_by_start(
    adapter: LlamaCppHttpAdapter,
) -> None:
    too_long = TaskRequest([300] * 9000, max_tokens=2)  # a slot holds 8,192 tokens
    send, receive = anyio.create_memory_object_stream[JobItem](CHANNEL_ITEMS)
    async with anyio.create_task_group() as group:
        with pytest.raises(PoolUnavailable):  # the error itself, not a group
            await group.start(adapter.stream_into, too_long, send.clone())
        # The group goes on: another stream runs to its end.
        await group.start(adapter.stream_into, TaskRequest("hi", max_tokens=3), send)
        by_job = await gather(receive)
    assert list(by_job) != [too_long.job_id]
    assert too_long.job_id not in by_job  # its send end was closed, with nothing sent
    (items,) = by_job.values()
    assert isinstance(items[-1], End)


async def test_an_unreachable_engine_is_raised_by_start_and_the_channel_ends() -> None:
    send, receive = anyio.create_memory_object_stream[JobItem](CHANNEL_ITEMS)
    async with (
        LlamaCppHttpAdapter("http://127.0.0.1:9") as adapter,
        anyio.create_task_group() as group,
    ):
        with pytest.raises(WorkerReset):
            await group.start(adapter.stream_into, TaskRequest("hi"), send)
    with pytest.raises(anyio.EndOfStream):  # the task closed the send end it was given
        receive.receive_nowait()
    receive.close()


@pytest.mark.parametrize("how", ["receiver closes", "group cancelled"])
async def test_the_receiver_leaving_ends_every_task_and_frees_every_slot(
    adapter: LlamaCppHttpAdapter, how: str
) -> None:
    await wait_until_idle(adapter)
    before = await tokens_generated(adapter)
    send, receive = anyio.create_memory_object_stream[JobItem](CHANNEL_ITEMS)
    async with anyio.create_task_group() as group:
        async with send:
            for n in range(3):
                request = TaskRequest(f"endless {n}", extra=ENDLESS)
                await group.start(adapter.stream_into, request, send.clone())
        tokens = 0
        async for _, item in receive:
            tokens += isinstance(item, Token)
            if tokens == 10:
                break
        if how == "receiver closes":
            await receive.aclose()  # the tasks end quietly: the group raises nothing
        else:
            group.cancel_scope.cancel()
    receive.close()
    await assert_stopped_early(adapter, before)


async def test_two_tasks_may_receive_from_one_stream(adapter: LlamaCppHttpAdapter) -> None:
    request = TaskRequest("hello the", max_tokens=40, seed=5)
    expected = await direct(adapter, request)
    taken: dict[str, list[StreamEvent]] = {"a": [], "b": []}
    async with adapter.submit(request) as events:

        async def take(name: str) -> None:
            async for event in events:
                taken[name].append(event)
                await anyio.lowlevel.checkpoint()  # let the other one in

        async with anyio.create_task_group() as group:
            group.start_soon(take, "a")
            group.start_soon(take, "b")
    # Each event went to one of them, each saw its own in order, none was lost.
    for name in taken:
        indices = [e.i for e in taken[name] if isinstance(e, Token)]
        assert indices == sorted(indices)
    together = taken["a"] + taken["b"]
    assert len(together) == len(expected)
    assert sorted(texts(together)) == sorted(texts(expected))
    tokens = sorted((e for e in together if isinstance(e, Token)), key=lambda t: t.i)
    assert [t.text for t in tokens] == texts(expected)


async def test_the_host_runs_the_task_form_too(four_slot_server: LocalLlamaServer) -> None:
    requests = [TaskRequest(f"host {n}", max_tokens=8, seed=n) for n in range(3)]
    send, receive = anyio.create_memory_object_stream[JobItem](CHANNEL_ITEMS)
    async with (
        LlamaCppHttpAdapter(four_slot_server.base_url) as adapter,
        AdapterHost() as host,
        anyio.create_task_group() as group,
    ):
        with pytest.raises(PoolUnavailable, match="no replica is bound"):
            await group.start(host.stream_into, "chat", requests[0], send.clone())
        host.bind("chat", "r0", adapter)
        async with send:
            for request in requests:
                await group.start(host.stream_into, "chat", request, send.clone())
        by_job = await gather(receive)
        expected = {r.job_id: texts(await direct(adapter, r)) for r in requests}
    for job_id, items in by_job.items():
        assert [t.text for t in assert_a_whole_job(items, job_id)] == expected[job_id]


TOKENS = 5


CUT_AFTER = 3


async def cut_or_whole(connection: Connection) -> None:
    """A stream cut (reset) after CUT_AFTER tokens when the task asks, else whole."""
    body = json.loads(connection.body)
    await connection.send(STREAM_HEAD)
    if body.get("cut"):
        for n in range(1, CUT_AFTER + 1):
            await connection.send(chunked(token_event(n)))
        connection.reset_on_close()
        return
    events = b"".join(token_event(n) for n in range(1, TOKENS + 1)) + final_event(TOKENS)
    await connection.send(chunked(events) + LAST_CHUNK)


def anyio_channel(
    items: int,
) -> tuple[MemoryObjectSendStream[JobItem], ObjectReceiveStream[JobItem]]:
    return anyio.create_memory_object_stream[JobItem](items)


@pytest.mark.parametrize("channel", [anyio_channel, create_job_channel])
async def test_a_stream_reset_midway_arrives_in_band_while_the_others_complete(
    channel: Callable[[int], tuple[MemoryObjectSendStream[JobItem], ObjectReceiveStream[JobItem]]],
) -> None:
    requests = [
        TaskRequest("a", job_id="whole-1"),
        TaskRequest("b", job_id="cut", extra={"cut": True}),
        TaskRequest("c", job_id="whole-2"),
    ]
    send, receive = channel(CHANNEL_ITEMS)
    async with (
        scripted_server(cut_or_whole) as server,
        LlamaCppHttpAdapter(server.url) as adapter,
        anyio.create_task_group() as group,
    ):
        async with send:
            for request in requests:
                await group.start(adapter.stream_into, request, send.clone())
        by_job = await gather(receive)
    for job_id in ("whole-1", "whole-2"):
        assert len(assert_a_whole_job(by_job[job_id], job_id)) == TOKENS
    cut = by_job["cut"]
    assert cut[0] == Started("cut")
    assert [e.i for e in cut[1:-1] if isinstance(e, Token)] == list(range(CUT_AFTER))
    assert len(cut) == CUT_AFTER + 2
    assert type(cut[-1]) is WorkerReset  # the error itself, its job's last item
