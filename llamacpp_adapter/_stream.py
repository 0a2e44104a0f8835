"""One streamed completion, read as its consumer pulls: :class:`EventStream`."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import anyio

from ._exceptions import DeadlineUnmet, DecodeTimeout, WorkerError
from ._receive import EventReceiveStream, StreamState
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
        "_deadline",
        "_decoder",
        "_event_timeout_s",
        "_index",
        "_interruption",
        "_on_end",
        "_read_done",
        "_released",
        "_source",
        "_state",
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
        self._bytes_received = 0
        self._start([Started(job_id)])

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

    async def cancel(self, error: WorkerError) -> None:
        """End the stream with *error* (the adapter's ``cancel(job_id)`` gives
        :class:`JobCancelled`): its response closes now, so that the engine frees the
        slot, and the consumer gets *error* from its next read, or the one it waits in."""
        await self._interrupt(error)

    async def _interrupt_read(self) -> None:
        # The body is being read in another task: closing the connection under it makes
        # that read fail, and the reader releases the rest.
        await self._source.aclose()

    async def _release(self, failure: WorkerError | None) -> None:
        await self._source.aclose()  # shielded and bounded
        if failure is not None or self._state is StreamState.ENDED:
            self._on_end(self, failure)

    async def _read(self) -> list[StreamEvent]:
        """The events of the next slice of the body that has any; [] at its clean end."""
        decoder = self._decoder
        read = False
        partial_since = math.inf  # when a read first brought bytes but no whole event
        while True:
            if self._interruption is not None:
                raise self._interruption
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
                raw = await self._source.read()
            else:
                with anyio.CancelScope(deadline=self._deadline) as scope:
                    raw = await self._source.read()
                if scope.cancelled_caught:
                    raise DeadlineUnmet(
                        f"the deadline passed after {decoder.tokens_decoded} tokens"
                    )
            if self._interruption is not None:
                raise self._interruption
            if raw is None:
                return decoder.close()  # WorkerReset if the final chunk never came
            read = True
            self._bytes_received += len(raw)
            decoder.receive_data(raw)
