"""The task form of a stream: a task, in the caller's task group, that reads a stream and
sends its events into the caller's bounded memory channel as ``(job_id, event)`` items.

The send waits while the channel is full, and the stream is read only when the last
read's events are sent, so the receiver's pace throttles the read from the engine. A
failure after the stream opened is sent in-band as ``(job_id, error)``, its job's last
item, and never cancels the caller's other tasks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeAlias

import anyio
import anyio.abc
import anyio.lowlevel
import trio
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import (
    MemoryObjectReceiveStream,
    MemoryObjectSendStream,
    MemoryObjectStreamStatistics,
)

from ._exceptions import WorkerError
from ._receive import EventReceiveStream
from ._types import StreamEvent

__all__ = [
    "JobItem",
    "JobItemReceiveStream",
    "JobItemSendStream",
    "create_job_channel",
    "feed_channel",
]

#: One item of the task form: a job's id, and its next event or the failure that ended it.
JobItem: TypeAlias = tuple[str, StreamEvent | WorkerError]

# What a send raises once every receiver is gone or the send end is closed: anyio's
# memory object streams, and Trio's own memory channels.
_RECEIVER_GONE = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)
# What ``send_nowait`` raises when the channel is full.
_FULL = (anyio.WouldBlock, trio.WouldBlock)


class JobItemSendStream(Protocol):
    """The send end of a memory channel: anyio's ``MemoryObjectSendStream`` (from
    ``anyio.create_memory_object_stream``) or Trio's ``MemorySendChannel`` (from
    ``trio.open_memory_channel``)."""

    async def send(self, item: JobItem, /) -> None: ...

    def send_nowait(self, item: JobItem, /) -> None: ...

    async def aclose(self) -> None: ...


def create_job_channel(
    max_items: int,
) -> tuple[MemoryObjectSendStream[JobItem], JobItemReceiveStream]:
    """A bounded memory channel made for the task form: anyio's memory object stream,
    whose receive end hands over an item that is already waiting without a pass
    through the scheduler.

    ::

        send, receive = create_job_channel(64)

    It behaves as ``anyio.create_memory_object_stream[JobItem](max_items)`` in every
    other way. A receive on anyio's or Trio's own channels yields to the scheduler even
    when an item waits, so a receiver pays one scheduler pass for each event; this one
    only checks for cancellation then, and yields only when it has to wait. A receiver
    therefore runs through at most *max_items* waiting items before other tasks run.
    """
    send, receive = anyio.create_memory_object_stream[JobItem](max_items)
    return send, JobItemReceiveStream(receive)


class JobItemReceiveStream(ObjectReceiveStream[JobItem]):
    """The receive end of :func:`create_job_channel`."""

    __slots__ = ("_check_cancelled", "_items")

    def __init__(self, items: MemoryObjectReceiveStream[JobItem]) -> None:
        self._items = items
        self._check_cancelled: Callable[[], Awaitable[None]] | None = None

    async def receive(self) -> JobItem:
        """The next item: at once, with no pass through the scheduler, when one waits
        (a cancelled scope still raises); else once a sender sends one.

        Raises:
            anyio.EndOfStream: once every send end is closed and no item waits.
            anyio.ClosedResourceError: once this end is closed.
        """
        check_cancelled = self._check_cancelled
        if check_cancelled is None:
            # On Trio its own check, a third of the cost of anyio's, which looks up the
            # event loop on every call.
            check_cancelled = self._check_cancelled = (
                trio.lowlevel.checkpoint_if_cancelled
                if trio.lowlevel.in_trio_run()
                else anyio.lowlevel.checkpoint_if_cancelled
            )
        await check_cancelled()
        try:
            return self._items.receive_nowait()
        except anyio.WouldBlock:
            return await self._items.receive()

    async def __anext__(self) -> JobItem:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    def receive_nowait(self) -> JobItem:
        return self._items.receive_nowait()

    def clone(self) -> JobItemReceiveStream:
        return JobItemReceiveStream(self._items.clone())

    def close(self) -> None:
        self._items.close()

    async def aclose(self) -> None:
        self._items.close()

    def statistics(self) -> MemoryObjectStreamStatistics:
        return self._items.statistics()


#: Sends in a row that found the channel full, after which the rest of a read's events
#: wait in an awaited send without trying send_nowait first.
_FULL_BEFORE_WAITING = 2


async def feed_channel(
    opening: AbstractAsyncContextManager[EventReceiveStream],
    job_id: str,
    send_stream: JobItemSendStream,
    task_status: anyio.abc.TaskStatus[str],
) -> None:
    """Open the stream (*opening* is a ``submit(...)`` block), report *job_id* to
    ``start``, and send each event into *send_stream*, then the failure that ended it;
    close *send_stream* at the end.

    A failure to open is raised, so that ``start`` raises it. A receiver that went away
    ends the task quietly, and leaving the block closes the stream's response.

    The read that brought an event was a checkpoint already, so an event goes over with
    ``send_nowait`` while the channel has room (an awaited ``send`` takes a pass through
    the scheduler before it looks). When the channel is full, ``send`` waits. A receiver
    that takes one item a pass (anyio's and Trio's own receive) then keeps the channel
    full: once two sends in a row found it so, the rest of that read's events go
    straight to ``send``, sparing a ``send_nowait`` that fails each time. A receiver
    that empties the channel in one pass (:func:`create_job_channel`'s) never gets there.
    """
    send_nowait, send = send_stream.send_nowait, send_stream.send
    try:
        async with opening as events:
            task_status.started(job_id)
            try:
                while batch := await events.receive_batch():
                    full = 0  # sends in a row of this read that found the channel full
                    for event in batch:
                        item = (job_id, event)
                        if full < _FULL_BEFORE_WAITING:
                            try:
                                send_nowait(item)
                                full = 0
                                continue
                            except _FULL:
                                full += 1
                        await send(item)
            except WorkerError as exc:
                await send((job_id, exc))
    except _RECEIVER_GONE:
        pass  # the receiver closed its end: nobody wants the rest
    finally:
        with anyio.CancelScope(shield=True):
            await send_stream.aclose()
