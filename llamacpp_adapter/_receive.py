"""One receive interface for every stream of a task's events: :class:`EventReceiveStream`,
which :class:`EventStream`, :class:`HostStream` and :class:`RelayStream` share. It is
anyio's ``ObjectReceiveStream``, so a stream stands wherever a memory channel's receive
end stands; and :class:`ReadTurn`, which lets one task at a time do a stream's read."""

from __future__ import annotations

from abc import abstractmethod

import anyio
from anyio.abc import ObjectReceiveStream

from ._types import StreamEvent

__all__ = ["CLOSED_MESSAGE", "EventReceiveStream", "ReadTurn"]

#: What ``anyio.ClosedResourceError`` says when a closed stream is read.
CLOSED_MESSAGE = "the stream was closed (its block was left, or aclose() was called)"


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
    * ``await stream.aclose()`` closes it at once: its response (or connection) closes,
      so the engine stops generating and frees its slot.

    Several tasks may receive from one stream, as from one memory channel: each event
    goes to one of them, in order; while one task reads the network, the others wait
    for that read. A failure goes to the task whose read met it; the others then see
    the end of the stream.

    Attributes:
        job_id: the task's ``job_id``.
    """

    job_id: str

    def __aiter__(self) -> EventReceiveStream:
        return self

    @abstractmethod
    async def __anext__(self) -> StreamEvent:
        """The next event; ``StopAsyncIteration`` after the last (each stream's own fast
        path: ``receive()`` is built on it)."""

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

    @abstractmethod
    def receive_nowait(self) -> StreamEvent:
        """The next event, when it is already decoded.

        Raises:
            anyio.WouldBlock: when the next event needs a read.
            anyio.EndOfStream: after the stream's last event.
            anyio.ClosedResourceError: once the stream was closed.
        """

    @property
    @abstractmethod
    def buffered(self) -> int:
        """Events decoded and waiting: that many ``receive_nowait()`` calls succeed."""


class ReadTurn:
    """Whose turn it is to read a stream's source: one task at a time. A task that finds
    the turn taken waits until that read ends, then looks again, since that read may
    have brought the event it wants. Nothing is allocated until a second task waits."""

    __slots__ = ("_ended", "taken")

    def __init__(self) -> None:
        self.taken = False
        self._ended: anyio.Event | None = None

    def take(self) -> None:
        self.taken = True

    def give_back(self) -> None:
        self.taken = False
        if self._ended is not None:
            self._ended.set()
            self._ended = None

    async def wait(self) -> None:
        """Return once the read in progress has ended."""
        if self._ended is None:
            self._ended = anyio.Event()
        await self._ended.wait()
