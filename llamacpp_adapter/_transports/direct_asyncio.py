"""The direct path on asyncio (and uvloop): an ``asyncio.Protocol`` whose
``data_received`` feeds the parser; ``pause_reading`` holds the bytes back (TCP's window:
llama-server generates on, until a pause closes the stream) while the body's bytes wait
for the consumer. The read timeouts of a loop's streams are kept by one timer
(:class:`_ReadTimeouts`), set to the soonest of them."""

from __future__ import annotations

import asyncio
import math
import socket
from typing import cast

import anyio

from .._exceptions import ProtocolError, WorkerError, WorkerReset
from .._sansio.http11 import ResponseParser
from . import direct
from .base import CLOSE_TIMEOUT_S, GATE_FULL, NO_CONNECTION, NO_TLS_ANSWER
from .direct import (
    HIGH_WATER_BYTES,
    NOT_SENT,
    OPENING,
    ConnectGate,
    DirectBody,
    Endpoint,
    ReadDeadlines,
    StallWatch,
    StreamTimeouts,
    unacknowledged,
)

__all__ = ["AsyncioBody"]


class AsyncioBody(asyncio.Protocol, DirectBody):
    """The answer, fed by the event loop as it arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self._loop = loop
        self._read_timeout = read_timeout
        #: When the wait under way times out (``math.inf``: none is under way).
        self.deadline = math.inf
        self._when = OPENING  # what the wait under way is for, for its timeout's error
        self._keeper: _ReadTimeouts | None = None  # from the connection on (connection_made)
        self.parser = ResponseParser()
        self._transport: asyncio.Transport | None = None
        self._pieces: list[bytes] = []
        self._waiting_bytes = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: WorkerError | None = None
        self._ended = False  # the connection is closed, or its reading end
        self._drained: asyncio.Future[None] | None = None
        self._lost = False  # connection_lost was called: the socket is closed
        self._gone: asyncio.Future[None] | None = None  # for aclose(), until then

    @classmethod
    async def open(
        cls, endpoint: Endpoint, request: bytes, timeouts: StreamTimeouts, gate: ConnectGate
    ) -> AsyncioBody:
        loop = asyncio.get_running_loop()
        connecting = gate.on_asyncio()
        try:
            with anyio.fail_after(timeouts.pool):
                await connecting.acquire()
        except TimeoutError as exc:
            raise direct.connection_error(exc, OPENING, timed_out=GATE_FULL) from None
        # Made once through the gate: a stream waiting there holds as little as it can.
        body = cls(loop, timeouts.read)
        try:
            with anyio.fail_after(timeouts.connect):
                await loop.create_connection(
                    lambda: body,
                    endpoint.host,
                    endpoint.port,
                    ssl=endpoint.tls,
                    server_hostname=endpoint.host if endpoint.tls is not None else None,
                )
        except BaseException as exc:
            # A connect given up after connection_made (cancelled, or past its timeout):
            # uvloop closes the connection without calling connection_lost.
            body._forget()
            if not isinstance(exc, (OSError, TimeoutError)):
                raise
            timed_out = NO_CONNECTION if endpoint.tls is None else NO_TLS_ANSWER
            raise direct.connection_error(exc, OPENING, timed_out=timed_out) from None
        finally:
            connecting.release()
        try:
            await body._write(request, timeouts.write)
            while not body.parser.head_complete:
                await body._wait(OPENING)
        except BaseException:
            await body.aclose()
            raise
        return body

    # The transport's callbacks.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass).
        self._transport = cast(asyncio.Transport, transport)
        if self._read_timeout != math.inf:
            # Watched while the connection lives: connection_lost (or aclose, or a
            # connect given up) forgets it; a body whose connect failed was never watched.
            self._keeper = _ReadTimeouts.watch(self, self._loop)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        try:
            body = parser.feed(data)
        except ProtocolError as exc:
            self._end_with(exc)
            return
        if parser.error is not None:
            self._end_with(parser.error)  # after the body before it, which read() gives first
        if body:
            self._pieces.append(body)
            self._waiting_bytes += len(body)
            if self._waiting_bytes > HIGH_WATER_BYTES and not self._paused:
                self._paused = True
                assert self._transport is not None
                self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.parser.feed_eof()
        self._end()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self._error is None and not self.parser.complete:
            self._error = direct.connection_error(exc, "while reading the stream")
        self._lost = True
        self._forget()
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        self._end()
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    def pause_writing(self) -> None:
        self._drained = self._loop.create_future()

    def resume_writing(self) -> None:
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _end(self) -> None:
        self._ended = True
        self._wake()

    def _end_with(self, error: WorkerError) -> None:
        if self._error is None:
            self._error = error
        if self._transport is not None:
            self._transport.abort()
        self._end()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            self.deadline = math.inf
            if not waiter.done():
                waiter.set_result(None)

    # The consumer's side.

    async def _write(self, data: bytes, within_s: float) -> None:
        assert self._transport is not None
        transport = self._transport
        transport.write(data)
        drained = self._drained
        if drained is not None and not drained.done():
            await self._until_drained(transport, drained, within_s)
        if self._error is not None:
            raise self._error

    @staticmethod
    async def _until_drained(
        transport: asyncio.Transport, drained: asyncio.Future[None], within_s: float
    ) -> None:
        """Wait until the transport has written what it holds; the write timeout bounds
        a time in which that makes no progress (see ``direct``)."""
        if within_s == math.inf:
            await asyncio.wait((drained,))
            return
        sock = transport.get_extra_info("socket")
        fd = -1 if sock is None else sock.fileno()
        progress = StallWatch(within_s, (transport.get_write_buffer_size(), unacknowledged(fd)))
        while not drained.done():
            await asyncio.wait((drained,), timeout=progress.step)
            now = (transport.get_write_buffer_size(), unacknowledged(fd))
            if progress.stalled(now) and not drained.done():
                raise direct.connection_error(TimeoutError(), OPENING, timed_out=NOT_SENT)

    async def _wait(self, when: str) -> None:
        await self._waiting(when)

    def _waiting(self, when: str) -> asyncio.Future[None]:
        """Raise what the connection failed with, if it did; else a future that is done
        once something comes (body bytes, the body's end, the connection's end, a
        failure). The caller then looks at what came: body bytes before any error."""
        if self._error is not None:
            raise self._error
        if self._ended:
            raise direct.response_cut(when)
        waiter = self._waiter = self._loop.create_future()
        keeper = self._keeper
        if keeper is not None:
            self._when = when
            keeper.reading(self, self._loop.time() + self._read_timeout)
        return waiter

    def time_out(self) -> None:
        """End the wait under way: its deadline passed (the keeper's call). A wait
        that was cancelled leaves the connection as it is."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._end_with(direct.read_timed_out(self._when))

    def _forget(self) -> None:
        if self._keeper is not None:
            self._keeper.forget(self)
            self._keeper = None

    async def read(self) -> bytes | None:
        while True:
            pieces = self._pieces
            if pieces:
                self._pieces = []
                self._waiting_bytes = 0
                if self._paused:
                    self._paused = False
                    assert self._transport is not None
                    self._transport.resume_reading()
                return pieces[0] if len(pieces) == 1 else b"".join(pieces)
            if self.parser.complete:
                return None
            await self._waiting("while reading the stream")

    async def aclose(self) -> None:
        """Close the connection at once (it is never kept), and return once the event
        loop has closed its socket (uvloop does so an iteration or two later)."""
        self._forget()
        self._ended = True
        if self._error is None and not self.parser.complete:
            self._error = WorkerReset("the stream was closed")
        self._wake()
        if self._transport is None or self._lost:
            return
        self._transport.abort()
        if self._gone is None:
            self._gone = self._loop.create_future()
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT_S):
            await asyncio.shield(self._gone)


#: Each event loop's keeper, while it watches a stream.
#: (A plain dict: a keeper holds its loop, so a weak key would never go by itself; each
#: entry goes with its keeper's last stream.)
_KEEPERS: dict[asyncio.AbstractEventLoop, _ReadTimeouts] = {}


class _ReadTimeouts(ReadDeadlines):
    """The read deadlines of an event loop's direct streams, kept by one timer of the
    loop's, set to the soonest (:class:`~.direct.ReadDeadlines`). It goes when it
    watches no stream, and the next stream opened makes another."""

    __slots__ = ("_loop", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop  # as its streams do; it goes from _KEEPERS with the last one
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def watch(cls, body: AsyncioBody, loop: asyncio.AbstractEventLoop) -> _ReadTimeouts:
        """*loop*'s keeper, watching *body* (made if there is none)."""
        keeper = _KEEPERS.get(loop)
        if keeper is None:
            keeper = _KEEPERS[loop] = cls(loop)
        keeper.streams.add(body)
        return keeper

    def forget(self, body: AsyncioBody) -> None:
        self.streams.discard(body)
        if not self.streams:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if _KEEPERS.get(self._loop) is self:
                del _KEEPERS[self._loop]

    def _sooner(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(self.target, self._fire)

    def _fire(self) -> None:
        self._timer = None
        soonest = self.sweep(self._loop.time())
        if soonest != math.inf:
            self._timer = self._loop.call_at(soonest, self._fire)
