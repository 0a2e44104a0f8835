"""One streamed completion, read as its consumer pulls: :class:`EventStream`."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import anyio

from ._exceptions import DeadlineUnmet, DecodeTimeout, InternalError, WorkerError
from ._receive import CLOSED_MESSAGE, EventReceiveStream, ReadTurn
from ._sansio.completion import CompletionStreamDecoder
from ._transports.base import BodySource
from ._types import Started, StreamEvent

__all__ = ["EventStream"]

logger = logging.getLogger("llamacpp_adapter")


class EventStream(EventReceiveStream):
    """The events of one task, in order: :class:`Started`, :class:`Token`\\ s,
    :class:`Metrics`, :class:`End`, read from one streamed answer's body. It is an
    :class:`EventReceiveStream`: ``async for``, ``receive()``, ``receive_nowait()``,
    ``aclose()``.

    Reading is driven by the consumer: when the events of the last read are all taken,
    the next ``__anext__`` reads from the network, decodes that read, and hands its
    events out one at a time. So no more than ``buffer`` events ever wait, nothing is
    read while the consumer is busy, and TCP flow control holds the engine back.

    A failure is raised from the iteration, as a :class:`WorkerError`, after every event
    that arrived before it; the response is closed at once.

    A read that waits longer than the read timeout fails with :class:`DecodeTimeout`,
    and so does an event that keeps arriving a few bytes at a time: once a read brings
    bytes but no whole event, the event must be whole within ``event_timeout_s``.
    """

    __slots__ = (
        "_batch",
        "_blank_lines",
        "_bytes_received",
        "_cancel_reason",
        "_closed",
        "_deadline",
        "_decoder",
        "_done",
        "_event_timeout_s",
        "_index",
        "_on_end",
        "_source",
        "_turn",
        "job_id",
    )

    def __init__(
        self,
        job_id: str,
        source: BodySource,
        *,
        max_event_bytes: int,
        blank_lines_per_read: int,
        deadline: float,
        event_timeout_s: float,
        on_end: Callable[[EventStream, WorkerError | None], None],
    ) -> None:
        self.job_id = job_id
        self._source = source
        self._decoder = CompletionStreamDecoder(max_event_bytes=max_event_bytes)
        self._blank_lines = blank_lines_per_read
        self._deadline = deadline
        self._event_timeout_s = event_timeout_s
        self._on_end = on_end
        self._batch: list[StreamEvent] = [Started(job_id)]
        self._index = 0
        self._bytes_received = 0
        self._done = False
        self._closed = False
        self._turn = ReadTurn()
        # Why the stream was ended from outside its reading task: cancel(job_id), or
        # aclose() while another task was reading.
        self._cancel_reason: WorkerError | anyio.ClosedResourceError | None = None

    @property
    def buffered(self) -> int:
        """Events decoded but not yet taken by the consumer; never above the adapter's
        ``buffer``."""
        return len(self._batch) - self._index

    @property
    def bytes_received(self) -> int:
        """Bytes of the response body read from the network so far."""
        return self._bytes_received

    @property
    def tokens_decoded(self) -> int:
        """:class:`Token` events decoded so far, the consumer's and those still waiting
        in the buffer."""
        return self._decoder.tokens_decoded

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> StreamEvent:
        # receive_nowait()'s first lines, inlined: this runs for every event.
        if self._index < len(self._batch):
            event = self._batch[self._index]
            self._index += 1
            return event
        if self._done:
            raise StopAsyncIteration
        if self._turn.taken:
            # Another task is reading: its read may bring the next event.
            await self._turn.wait()
            return await self.__anext__()
        if self._closed and self._cancel_reason is None:
            raise anyio.ClosedResourceError(CLOSED_MESSAGE)
        try:
            batch = await self._next_batch()
        except Exception as exc:
            error = await self._failed(exc)
            if error is exc:
                raise
            raise error from exc
        if not batch:
            await self._finish(None)
            raise StopAsyncIteration
        self._batch = batch
        self._index = 1
        return batch[0]

    def receive_nowait(self) -> StreamEvent:
        if self._index < len(self._batch):
            event = self._batch[self._index]
            self._index += 1
            return event
        if self._done:
            raise anyio.EndOfStream
        if self._closed and self._cancel_reason is None:
            raise anyio.ClosedResourceError(CLOSED_MESSAGE)
        raise anyio.WouldBlock

    async def aclose(self) -> None:
        """Close the stream now: its response closes, and the engine frees the slot.
        A task waiting in :meth:`receive` gets ``anyio.ClosedResourceError``."""
        if self._done or self._closed:
            return
        if self._turn.taken:
            await self._cancel(anyio.ClosedResourceError(CLOSED_MESSAGE))
        else:
            self._batch, self._index = [], 0
            await self._close()

    async def cancel(self, error: WorkerError) -> None:
        """End the stream with *error* (the adapter's ``cancel(job_id)`` gives
        :class:`JobCancelled`): its response closes now, so that the engine frees the
        slot, and the consumer gets *error* from its next read, or the one it waits in."""
        await self._cancel(error)

    async def _failed(self, exc: Exception) -> Exception:
        """End the stream after *exc*, which its read raised; return what the reader
        gets: why the stream was ended from outside, when it was (the read then fails
        under it), else our error for *exc*."""
        error: Exception
        if self._cancel_reason is not None:
            error = self._cancel_reason
        elif isinstance(exc, WorkerError):
            error = exc
        else:
            logger.exception("unexpected failure while reading a stream")
            error = InternalError(f"unexpected {type(exc).__name__} while reading the stream")
        await self._finish(error if isinstance(error, WorkerError) else None)
        return error

    async def _next_batch(self) -> list[StreamEvent]:
        """The events of the next slice of the body that has any; [] at its clean end."""
        decoder = self._decoder
        read = False
        partial_since = math.inf  # when a read first brought bytes but no whole event
        while True:
            if self._cancel_reason is not None:
                raise self._cancel_reason
            events = decoder.next_events(self._blank_lines)
            if events:
                return events
            if read and self._event_timeout_s != math.inf:
                # Only here, on a read that completed nothing, is the clock read.
                now = anyio.current_time()
                partial_since = min(partial_since, now)
                if now - partial_since > self._event_timeout_s:
                    raise DecodeTimeout(
                        f"no whole event within the read timeout ({self._event_timeout_s} s) "
                        f"after {decoder.tokens_decoded} tokens; the engine sends too slowly"
                    )
            if self._deadline == math.inf:
                # No cancel scope: around every read it costs as much as the rest of a
                # paced read. cancel() interrupts a read by closing the response.
                raw = await self._read()
            else:
                with anyio.CancelScope(deadline=self._deadline) as scope:
                    raw = await self._read()
                if scope.cancelled_caught:
                    raise DeadlineUnmet(
                        f"the deadline passed after {decoder.tokens_decoded} tokens"
                    )
            if self._cancel_reason is not None:
                raise self._cancel_reason
            if raw is None:
                return decoder.close()  # WorkerReset if the final chunk never came
            read = True
            self._bytes_received += len(raw)
            decoder.receive_data(raw)

    async def _read(self) -> bytes | None:
        """The next read of the body, or None at its end."""
        self._turn.take()
        try:
            return await self._source.read()
        finally:
            self._turn.give_back()

    async def _cancel(self, reason: WorkerError | anyio.ClosedResourceError) -> None:
        """End the stream with *reason*: close its response now, so that the engine
        frees the slot; the consumer gets *reason* from its next (or pending) read."""
        if self._done:
            return
        if self._cancel_reason is None:
            self._cancel_reason = reason
        if not self._turn.taken:
            await self._close()
        else:
            # The body is being read in the consumer's task: closing the connection
            # under it makes that read fail, and the consumer closes the rest.
            await self._source.aclose()

    async def _finish(self, failure: WorkerError | None) -> None:
        self._done = True
        self._batch, self._index = [], 0
        await self._close()
        self._on_end(self, failure)

    async def _close(self) -> None:
        """Close the connection (and so free the engine's slot). Shielded and bounded."""
        if self._closed:
            return
        self._closed = True
        await self._source.aclose()
