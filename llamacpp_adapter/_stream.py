"""One streamed completion, read as its consumer pulls: :class:`EventStream`; and what
pauses it on the engine while its consumer is away (:class:`Pausing`)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import msgspec

from ._exceptions import DeadlineUnmet, DecodeTimeout, WorkerError
from ._receive import EventReceiveStream, StreamState
from ._sansio.completion import (
    EXTRA_EVENTS_PER_SLICE,
    CompletionStreamDecoder,
    continuation_body,
    echo_bytes,
)
from ._sansio.continuation import Ledger
from ._sansio.json_events import JsonStreamDecoder
from ._transports.base import BodySource
from ._types import Started, StreamEvent

__all__ = ["EventStream", "Pausing", "ReadObserver"]

logger = logging.getLogger("llamacpp_adapter")

_OPEN = StreamState.OPEN
_PAUSED = StreamState.PAUSED
_DONE = (StreamState.ENDED, StreamState.FAILED, StreamState.CLOSED)
#: The looks of the watch (every half pause_after) at which the consumer has taken no
#: event, and was not waiting for one, that make it away.
_AWAY_LOOKS = 2


class ReadObserver(Protocol):
    """Told of each batch of events a stream reads (the host counts a placed stream's
    tokens so, as they are read, with nothing of its own between its consumer and the
    stream)."""

    def received(self, events: list[StreamEvent]) -> None:
        """*events*, just read and decoded (never empty)."""


@dataclass
class Pausing:
    """What a stream that may be paused on the engine needs.

    Attributes:
        backlog: the events read ahead that make a pause.
        fields: the body of its request, from which a resume's body is made.
        ledger: what it has generated.
        paused: told once its connection closed for a pause (the slot is free).
        reopen: opens the body of a resume where the stream goes on.
    """

    backlog: int
    fields: dict[str, Any]
    ledger: Ledger
    paused: Callable[[], None]
    reopen: Callable[[bytes], Awaitable[BodySource]]


class EventStream(EventReceiveStream):
    """The events of one task, in order: :class:`Started`, :class:`Token`\\ s,
    :class:`Metrics`, :class:`End`, read from one streamed answer's body. It is an
    :class:`EventReceiveStream`: ``async for``, ``receive()``, ``receive_nowait()``,
    ``aclose()``.

    Reading is driven by the consumer: when the events of the last read are all taken,
    the next ``__anext__`` reads from the network, decodes that read, and hands its
    events out one at a time. So no more than ``buffer`` events wait, and nothing is
    read while the consumer is busy. TCP flow control then holds the bytes back, but
    not llama-server, which goes on generating: a stream that may be paused
    (:class:`PausePolicy`) reads ahead once its consumer has been away for a while,
    and closes its connection when the engine is far enough ahead; when the consumer
    has taken what was read, the stream goes on where it stopped.

    A failure is raised from the iteration, as a :class:`WorkerError`, after every event
    that arrived before it; the response is closed at once.

    A read that waits longer than the read timeout fails with :class:`DecodeTimeout`,
    and so does an event that keeps arriving a few bytes at a time: once a read brings
    bytes but no whole event, the event must be whole within ``event_timeout_s``.
    """

    __slots__ = (
        "_acting",
        "_batch",
        "_bytes_received",
        "_chunks_per_read",
        "_deadline",
        "_decoder",
        "_event_timeout_s",
        "_events_read",
        "_idle_looks",
        "_index",
        "_interruption",
        "_max_event_bytes",
        "_observer",
        "_on_end",
        "_pausing",
        "_read_done",
        "_released",
        "_resume_due",
        "_source",
        "_state",
        "_taken_mark",
        "job_id",
        "opened_at",
        "pauses",
    )

    def __init__(
        self,
        job_id: str,
        source: BodySource,
        *,
        max_event_bytes: int,
        chunks_per_read: int,
        deadline: float,
        event_timeout_s: float,
        on_end: Callable[[EventStream, WorkerError | None], None],
        pausing: Pausing | None = None,
        decoder: JsonStreamDecoder[Any] | None = None,
        observer: ReadObserver | None = None,
    ) -> None:
        self.job_id = job_id
        self._observer = observer
        self._source = source
        self._max_event_bytes = max_event_bytes
        self._pausing = pausing
        ledger = None if pausing is None else pausing.ledger
        self._decoder: JsonStreamDecoder[Any] = (
            CompletionStreamDecoder(max_event_bytes=max_event_bytes, ledger=ledger)
            if decoder is None
            else decoder
        )
        self._chunks_per_read = chunks_per_read
        self._deadline = deadline
        self._event_timeout_s = event_timeout_s
        self._on_end = on_end
        self._bytes_received = 0
        self._events_read = 0
        self._resume_due = False  # paused: the next read opens the resume
        # What the watch saw: the events the consumer had taken at its last look, the
        # looks since at which it had taken none, and whether a read ahead is running.
        self._taken_mark = 0
        self._idle_looks = 0
        self._acting = False
        #: How many times the stream was paused on the engine.
        self.pauses = 0
        #: When the stream opened, in ``time.monotonic()``'s seconds.
        self.opened_at = time.monotonic()
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

    @property
    def pausable(self) -> bool:
        """Whether the stream may be paused on the engine (see :class:`PausePolicy`)."""
        return self._pausing is not None

    def look(self) -> Callable[[], Awaitable[None]] | None:
        """What the adapter's watch (:class:`~llamacpp_adapter._watch.PauseWatch`) calls
        every half ``pause_after``: ``None`` while the consumer is there, or the read
        ahead to run once it has taken no event, and has not been waiting for one, for
        ``pause_after`` (noticed within half as much again)."""
        if self._acting or self._state is not _OPEN:
            # Waiting for the engine (it is there), paused, ended, or reading ahead.
            self._idle_looks = 0
            return None
        taken = self._taken()
        if taken != self._taken_mark:
            self._taken_mark = taken
            self._idle_looks = 0
            return None
        self._idle_looks += 1
        if self._idle_looks < _AWAY_LOOKS or self._pausing is None:
            return None
        self._idle_looks = 0
        self._acting = True
        return self._away

    async def _away(self) -> None:
        """The consumer is away: read ahead, and pause the stream if the engine is far
        enough ahead."""
        assert self._pausing is not None
        try:
            await self._read_ahead_or_pause(self._pausing, self._taken())
        finally:
            self._acting = False
            self._taken_mark = self._taken()

    async def _read_ahead_or_pause(self, pausing: Pausing, taken: int) -> None:
        """The consumer has taken nothing for a while: read ahead while it stays away,
        and pause the stream once the backlog is full, if it can be resumed exactly."""
        backlog = pausing.backlog
        ledger = pausing.ledger
        while self._taken() == taken and not self._decoder.finished:
            # A slice of N events may give a few more (see EXTRA_EVENTS_PER_SLICE): no
            # more than the backlog wait.
            room = backlog - self.buffered - EXTRA_EVENTS_PER_SLICE
            if room < 1:
                remaining = ledger.remaining
                if ledger.can_resume(backlog) and (remaining is None or remaining > backlog):
                    await self._pause(pausing)
                return  # or not: TCP holds the bytes back, as it does for any stream
            if not await self._read_ahead(room):
                return

    async def _pause(self, pausing: Pausing) -> None:
        """Close the connection: the engine stops and frees the slot; the events read
        wait, and the next read resumes the stream."""
        self._to(_PAUSED)
        self._resume_due = True
        self.pauses += 1
        source = self._source
        pausing.paused()
        logger.debug(
            "stream paused on the engine",
            extra={"job_id": self.job_id, "tokens_out": pausing.ledger.tokens},
        )
        with anyio.CancelScope(shield=True):  # the engine must stop, whatever comes
            await source.aclose()

    def _taken(self) -> int:
        """How many events the consumer has taken (it is back once this moves)."""
        return self._events_read - (len(self._batch) - self._index)

    def _source_closed(self) -> bool:
        return self._resume_due

    async def _resume(self, pausing: Pausing) -> None:
        """Open the request that goes on where the stream was paused."""
        ledger = pausing.ledger
        generated, point = ledger.continuation()
        remaining = pausing.fields["n_predict"]
        fields = continuation_body(
            pausing.fields, generated, None if remaining < 0 else remaining - point
        )
        body = msgspec.json.encode(fields)
        source = await pausing.reopen(body)
        ledger.resume()
        self._source = source
        self._resume_due = False
        bound = self._max_event_bytes + echo_bytes(fields["prompt"], len(body))
        self._decoder = CompletionStreamDecoder(max_event_bytes=bound, ledger=ledger)
        logger.debug(
            "stream resumed",
            extra={"job_id": self.job_id, "tokens_out": point, "parts": ledger.parts},
        )

    def _took(self, events: list[StreamEvent]) -> list[StreamEvent]:
        """*events*, read: counted, and told to the observer."""
        self._events_read += len(events)
        if events and self._observer is not None:
            self._observer.received(events)
        return events

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

    async def _read(self, limit: int | None = None) -> list[StreamEvent]:
        """The events of the next slice of the body that has any (*limit* chunks
        at most, or the adapter's own); [] at its clean end."""
        if self._resume_due:
            assert self._pausing is not None
            with anyio.CancelScope(deadline=self._deadline) as scope:
                await self._resume(self._pausing)
            if scope.cancelled_caught:
                raise DeadlineUnmet(f"the deadline passed after {self.tokens_decoded} tokens")
        if limit is None:
            limit = self._chunks_per_read
        decoder = self._decoder
        read = False
        partial_since = math.inf  # when a read first brought bytes but no whole event
        while True:
            if self._interruption is not None:
                raise self._interruption
            events = decoder.next_events(limit)
            if events:
                return self._took(events)
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
                # WorkerReset if the final chunk never came.
                return self._took(decoder.close())
            read = True
            self._bytes_received += len(raw)
            decoder.receive_data(raw)
