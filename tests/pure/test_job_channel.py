"""The task form without a socket: create_job_channel hands waiting items over without a
scheduler pass, and feed_channel offers send_nowait only while the channel has room."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectSendStream

from llamacpp_adapter import (
    EventReceiveStream,
    JobItem,
    Started,
    StreamEvent,
    Token,
    WorkerError,
    create_job_channel,
)
from llamacpp_adapter._task_form import feed_channel

from ..support.channels import gather

pytestmark = pytest.mark.anyio


async def test_the_job_channel_hands_over_waiting_items_without_a_scheduler_pass() -> None:
    send, receive = create_job_channel(4)
    ran = False

    async def other() -> None:
        nonlocal ran
        ran = True

    async with send, receive, anyio.create_task_group() as group:
        for n in range(3):
            send.send_nowait((f"job-{n}", Started(f"job-{n}")))
        group.start_soon(other)  # runnable, not yet run
        taken = [await receive.receive() for _ in range(3)]
        assert not ran  # three receives, and no other task ran in between
        with anyio.move_on_after(0.01):
            await receive.receive()  # nothing waits: this one yields
        assert ran
    assert [job_id for job_id, _ in taken] == ["job-0", "job-1", "job-2"]


async def test_the_job_channel_still_honours_cancellation_and_its_ends() -> None:
    send, receive = create_job_channel(4)
    item = ("job", Started("job"))
    send.send_nowait(item)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await receive.receive()  # an item waits, but the scope is cancelled
    assert scope.cancelled_caught
    assert receive.statistics().current_buffer_used == 1  # nothing was taken
    clone = receive.clone()
    assert await clone.receive() == item
    await clone.aclose()
    send.close()
    with pytest.raises(anyio.EndOfStream):  # every send end closed, nothing waits
        await receive.receive()
    await receive.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        receive.receive_nowait()


READ_EVENTS = 100


class OneRead(EventReceiveStream):
    """Started and READ_EVENTS tokens, all decoded by one read (a checkpoint)."""

    def __init__(self) -> None:
        self.job_id = "job"
        self._done = False
        self._start([])

    async def _read(self) -> list[StreamEvent]:
        if self._done:
            return []
        await anyio.lowlevel.checkpoint()
        self._done = True
        return [Started("job"), *(Token(i, "x") for i in range(READ_EVENTS))]

    async def _interrupt_read(self) -> None:
        pass

    async def _release(self, failure: WorkerError | None) -> None:
        pass


class CountingSend:
    """A channel's send end that counts how each item was offered."""

    def __init__(self, inner: MemoryObjectSendStream[JobItem]) -> None:
        self.inner = inner
        self.nowait = 0
        self.awaited = 0

    def send_nowait(self, item: JobItem) -> None:
        self.nowait += 1
        self.inner.send_nowait(item)

    async def send(self, item: JobItem) -> None:
        self.awaited += 1
        await self.inner.send(item)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def send_one_read(
    send: MemoryObjectSendStream[JobItem], receive: ObjectReceiveStream[JobItem]
) -> tuple[CountingSend, list[StreamEvent | WorkerError]]:
    @asynccontextmanager
    async def opening() -> AsyncIterator[EventReceiveStream]:
        yield OneRead()

    counting = CountingSend(send)
    async with anyio.create_task_group() as group:
        await group.start(feed_channel, opening(), "job", counting)
        by_job = await gather(receive)
    return counting, by_job["job"]


async def test_a_receiver_taking_one_item_a_pass_is_not_offered_send_nowait_each_time() -> None:
    # anyio's receive yields to the scheduler before each item: the channel stays full
    # while the task sends, so each send_nowait would fail.
    counting, items = await send_one_read(*anyio.create_memory_object_stream[JobItem](4))
    assert items == [Started("job"), *(Token(i, "x") for i in range(READ_EVENTS))]
    # The room there was, then two tries that found it full; now and then the receiver
    # takes two items in a row (Trio orders each pass at random), and the room it leaves
    # costs two more tries. Without the rule, every item is offered to send_nowait.
    assert counting.nowait <= READ_EVENTS // 2
    assert counting.nowait + counting.awaited >= READ_EVENTS + 1


async def test_a_receiver_emptying_the_channel_at_once_gets_items_without_a_pass_each() -> None:
    # create_job_channel's receive takes every waiting item in one pass: after each wait
    # the channel has room again, and send_nowait fills it.
    counting, items = await send_one_read(*create_job_channel(4))
    assert items == [Started("job"), *(Token(i, "x") for i in range(READ_EVENTS))]
    assert counting.awaited <= (READ_EVENTS + 1) // 4 + 1  # one wait a full channel
