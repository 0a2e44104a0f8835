"""One receive interface for every stream of a task's events: :class:`EventReceiveStream`,
which :class:`EventStream`, :class:`HostStream` and :class:`RelayStream` share. It is
anyio's ``ObjectReceiveStream``, so a stream stands wherever a memory channel's receive
end stands.

The receiving is written once, here, over one state (:class:`StreamState`, its
transitions in :data:`TRANSITIONS`); a stream says only how it reads its next events,
what a failure of that read means, and how its source closes.
"""

from __future__ import annotations

import enum
import logging
from abc import abstractmethod
from typing import Final

import anyio
from anyio.abc import ObjectReceiveStream

from ._exceptions import InternalError, WorkerError
from ._types import StreamEvent

__all__ = ["CLOSED_MESSAGE", "TRANSITIONS", "EventReceiveStream", "StreamState"]

logger = logging.getLogger("llamacpp_adapter")

#: What ``anyio.ClosedResourceError`` says when a closed stream is read.
CLOSED_MESSAGE = "the stream was closed (its block was left, or aclose() was called)"


class StreamState(enum.Enum):
    """Where a stream of events is.

    * ``OPEN``: events are handed out as they are asked for.
    * ``READING``: a task is reading the stream's source; another task that asks for an
      event waits for that read, which may bring it.
    * ``PAUSED``: its source was closed while its consumer took nothing (the engine
      stopped); the events read before wait, and the next read goes on where it
      stopped (see :class:`PausePolicy`).
    * ``ENDED``: the last event was handed out: ``EndOfStream`` from then on.
    * ``FAILED``: the failure that ended it was raised: ``EndOfStream`` from then on.
    * ``CLOSED``: closed before its end (:meth:`~EventReceiveStream.aclose`, or its
      block left): ``ClosedResourceError`` from then on.
    """

    OPEN = "open"
    READING = "reading"
    PAUSED = "paused"
    ENDED = "ended"
    FAILED = "failed"
    CLOSED = "closed"


#: Every change of state a stream may make; each happens in :class:`EventReceiveStream`.
TRANSITIONS: Final[dict[StreamState, frozenset[StreamState]]] = {
    # A cancel (FAILED) or aclose() (CLOSED) while no task reads; a pause.
    StreamState.OPEN: frozenset(
        {StreamState.READING, StreamState.PAUSED, StreamState.FAILED, StreamState.CLOSED}
    ),
    # A read done (OPEN), or a resume cancelled before it opened (PAUSED).
    StreamState.READING: frozenset(
        {
            StreamState.OPEN,
            StreamState.PAUSED,
            StreamState.ENDED,
            StreamState.FAILED,
            StreamState.CLOSED,
        }
    ),
    # The read that resumes it, a cancel or aclose().
    StreamState.PAUSED: frozenset({StreamState.READING, StreamState.FAILED, StreamState.CLOSED}),
    StreamState.ENDED: frozenset(),
    StreamState.FAILED: frozenset(),
    StreamState.CLOSED: frozenset(),
}

_OPEN = StreamState.OPEN
_READING = StreamState.READING
_PAUSED = StreamState.PAUSED
_ENDED = StreamState.ENDED
_FAILED = StreamState.FAILED
_CLOSED = StreamState.CLOSED
#: No events waiting: one list for every stream, never changed (a batch is replaced,
#: not extended, where events are added to it).
_NO_EVENTS: list[StreamEvent] = []


class EventReceiveStream(ObjectReceiveStream[StreamEvent]):
    """The events of one task, in order: :class:`Started`, the :class:`Token`\\ s,
    :class:`Metrics` (when the engine sends them) and :class:`End`.

    * ``await stream.receive()`` gives the next event. After :class:`End` it raises
      ``anyio.EndOfStream``; a failure is raised as a :class:`WorkerError`, after every
      event before it, and the stream then ends; once the stream is closed (its block
      left, or :meth:`aclose`), ``anyio.ClosedResourceError``.
    * ``async for event in stream`` is the same loop, ending at ``EndOfStream``.
    * ``stream.receive_nowait()`` gives an event that is already decoded and waits for
      nothing; ``anyio.WouldBlock`` when the next one needs a read.
    * ``await stream.receive_batch()`` gives every event already decoded, or those of
      the next read: a consumer that handles events in bulk pays one await a read.
    * ``await stream.aclose()`` closes it at once: its response (or connection) closes,
      so the engine stops generating and frees its slot.

    Taking an event that is already decoded is not a checkpoint: a loop that finds one
    waiting never yields to the scheduler for it (the read that brought it did). A
    consumer that must let other tasks run between events awaits a checkpoint itself.

    Several tasks may receive from one stream, as from one memory channel: each event
    goes to one of them, in order; while one task reads the source, the others wait
    for that read. A failure goes to the task whose read met it; the others then see
    the end of the stream.

    Attributes:
        job_id: the task's ``job_id``.
    """

    job_id: str
    _batch: list[StreamEvent]
    _index: int
    _state: StreamState
    _read_done: anyio.Event | None
    _interruption: Exception | None
    _released: bool

    def _start(self, first: list[StreamEvent]) -> None:
        """Begin with *first* waiting, the stream open."""
        self._batch = first
        self._index = 0
        self._state = _OPEN
        self._read_done = None  # made when a second task waits for a read
        # Why the stream was ended from outside its reading task (a cancel, or aclose()
        # while another task reads): what the reader gets.
        self._interruption = None
        self._released = False

    # --- What each stream says -------------------------------------------------------------

    @abstractmethod
    async def _read(self, limit: int | None = None) -> list[StreamEvent]:
        """The next events from the source, at least one; ``[]`` at its clean end.
        With *limit*, about that many at most (a few more may complete in one slice).

        Raises:
            Exception: whatever the read met (:meth:`_failure` says what it means).
        """

    def _error_for(self, exc: Exception) -> Exception:
        """What the reader gets for *exc*, which :meth:`_read` raised (a failure of
        ours as it is; anything else logged, and an :class:`InternalError`)."""
        if isinstance(exc, WorkerError):
            return exc
        logger.exception("unexpected failure while reading a stream")
        return InternalError(f"unexpected {type(exc).__name__} while reading the stream")

    @abstractmethod
    async def _release(self, failure: WorkerError | None) -> None:
        """The stream ended (*failure*: how, or None at its clean end, or when it was
        closed): close its source now, and count the outcome. Called once, by
        :meth:`_end`."""

    @abstractmethod
    async def _interrupt_read(self) -> None:
        """Make the read in progress fail at once (close its source under it)."""

    def _source_closed(self) -> bool:
        """Whether the stream is paused: its source closed, the next read opens it
        again (a stream that is never paused says no)."""
        return False

    # --- Receiving, once for every stream ------------------------------------------------------

    def __aiter__(self) -> EventReceiveStream:
        return self

    async def __anext__(self) -> StreamEvent:
        """The next event; ``StopAsyncIteration`` after the last."""
        index = self._index
        batch = self._batch
        if index < len(batch):
            self._index = index + 1
            return batch[index]
        batch = await self.receive_batch()
        if not batch:
            raise StopAsyncIteration
        self._batch, self._index = batch, 1
        return batch[0]

    async def receive(self) -> StreamEvent:
        """The next event.

        Raises:
            anyio.EndOfStream: after the stream's last event.
            WorkerError: the failure that ended the stream, after the events before it.
            anyio.ClosedResourceError: once the stream was closed.
        """
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise anyio.EndOfStream from None

    def receive_nowait(self) -> StreamEvent:
        """The next event, when it is already decoded.

        Raises:
            anyio.WouldBlock: when the next event needs a read.
            anyio.EndOfStream: after the stream's last event.
            anyio.ClosedResourceError: once the stream was closed.
        """
        index = self._index
        batch = self._batch
        if index < len(batch):
            self._index = index + 1
            return batch[index]
        state = self._state
        if state is _ENDED or state is _FAILED:
            raise anyio.EndOfStream
        if state is _CLOSED:
            raise anyio.ClosedResourceError(CLOSED_MESSAGE)
        raise anyio.WouldBlock

    async def receive_batch(self) -> list[StreamEvent]:
        """Every event already decoded, or, when none is, those of the next read; ``[]``
        after the last. The events are taken: they are not received again.

        Raises:
            WorkerError: the failure that ended the stream, after the events before it.
            anyio.ClosedResourceError: once the stream was closed.
        """
        # The reading is here, not in a coroutine of its own under this one: every
        # stream waiting for its next token holds its chain of coroutines, and the
        # collector walks them (``benchmarks/NOTES.md``).
        index = self._index
        batch = self._batch
        if index < len(batch):
            self._batch, self._index = _NO_EVENTS, 0
            return batch if index == 0 else batch[index:]
        self._batch, self._index = _NO_EVENTS, 0  # not the events taken, while it waits
        while True:
            state = self._state
            if state is _OPEN or state is _PAUSED:
                break
            if state is _READING:
                # Another task is reading: its read may bring the next event.
                if self._read_done is None:
                    self._read_done = anyio.Event()
                await self._read_done.wait()
                index, batch = self._index, self._batch
                if index < len(batch):
                    self._batch, self._index = _NO_EVENTS, 0
                    return batch[index:]
                continue
            if state is _CLOSED:
                raise anyio.ClosedResourceError(CLOSED_MESSAGE)
            return []  # ENDED, FAILED
        interruption = self._interruption
        if interruption is not None:
            # Ended from outside: its source is closed already, or closes now.
            self._to(_CLOSED if isinstance(interruption, anyio.ClosedResourceError) else _FAILED)
            await self._end(interruption)
            raise interruption
        self._to(_READING)
        try:
            batch = await self._read()
        except Exception as exc:
            error = self._interruption or self._error_for(exc)
            closed = isinstance(error, anyio.ClosedResourceError)
            self._to(_CLOSED if closed else _FAILED)
            await self._end(error)
            if error is exc:
                raise
            raise error from exc
        except BaseException:
            # Cancelled while reading: the stream stays as it was, for another read (or
            # paused still, when the read was to resume it and had not yet).
            self._to(_PAUSED if self._source_closed() else _OPEN)
            raise
        if not batch:
            self._to(_ENDED)
            await self._end(None)
            return []
        self._to(_OPEN)
        return batch

    @property
    def buffered(self) -> int:
        """Events decoded and waiting: that many ``receive_nowait()`` calls succeed."""
        return len(self._batch) - self._index

    @property
    def state(self) -> StreamState:
        """Where the stream is: open, reading, paused, ended, failed or closed."""
        return self._state

    async def aclose(self) -> None:
        """Close the stream now: its source closes, so the engine frees the slot. A task
        waiting in :meth:`receive` gets ``anyio.ClosedResourceError``; after the
        stream's end, nothing changes."""
        state = self._state
        if state is _READING:
            await self._interrupt(anyio.ClosedResourceError(CLOSED_MESSAGE))
        elif state is _OPEN or state is _PAUSED:
            self._batch, self._index = [], 0
            self._to(_CLOSED)
            await self._end(None)

    async def _interrupt(self, reason: Exception) -> None:
        """End the stream with *reason* from outside its reading task: the source closes
        now, so that the engine frees its slot, and the reader gets *reason* from its
        next read, or the one it is in (after the events already decoded)."""
        if self._state not in (_OPEN, _READING, _PAUSED) or self._interruption is not None:
            return
        self._interruption = reason
        if self._state is _READING:
            await self._interrupt_read()  # the read fails; the reader does the rest
        else:
            await self._end(reason)

    async def _read_ahead(self, limit: int) -> bool:
        """Read the source's next events (about *limit* at most) for a consumer that is
        away, after those waiting (while it reads, a consumer that comes back and asks
        for more waits for it). Returns whether there may be more to read: not at the
        source's end, nor after a failure, which the consumer gets after the events
        before it.
        """
        if self._state is not _OPEN or self._interruption is not None:
            return False
        self._to(_READING)
        try:
            events = await self._read(limit)
        except Exception as exc:
            error = self._interruption or self._error_for(exc)
            self._interruption = error  # the consumer's next read raises it
            self._to(_OPEN)
            await self._end(error)
            return False
        except BaseException:
            self._to(_OPEN)
            raise
        if not events:
            self._to(_ENDED)  # the events waiting are the last
            await self._end(None)
            return False
        waiting = self._batch[self._index :]
        waiting += events
        self._batch, self._index = waiting, 0
        self._to(_OPEN)
        return True

    async def _end(self, failure: Exception | None) -> None:
        """Release the stream's source once, with its *failure* (one of ours, or None)."""
        if not self._released:
            self._released = True
            await self._release(failure if isinstance(failure, WorkerError) else None)

    def _to(self, state: StreamState) -> None:
        assert state in TRANSITIONS[self._state], (self._state, state)
        leaving_read = self._state is _READING
        self._state = state
        if leaving_read and self._read_done is not None:
            self._read_done.set()
            self._read_done = None
