"""The direct path on asyncio (and uvloop): an ``asyncio.Protocol`` whose
``data_received`` feeds the parser; ``pause_reading`` holds the bytes back (TCP's window:
llama-server generates on, until a pause closes the stream) while the body's bytes wait
for the consumer, and one lazy timer per stream keeps the read timeout."""

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
        self.parser = ResponseParser()
        self._transport: asyncio.Transport | None = None
        self._pieces: list[bytes] = []
        self._waiting_bytes = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._wait_began = 0.0
        self._timer: asyncio.TimerHandle | None = None
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
        body = cls(loop, timeouts.read)
        connecting = gate.on_asyncio()
        try:
            with anyio.fail_after(timeouts.pool):
                await connecting.acquire()
        except TimeoutError as exc:
            raise direct.connection_error(exc, OPENING, timed_out=GATE_FULL) from None
        try:
            with anyio.fail_after(timeouts.connect):
                await loop.create_connection(
                    lambda: body,
                    endpoint.host,
                    endpoint.port,
                    ssl=endpoint.tls,
                    server_hostname=endpoint.host if endpoint.tls is not None else None,
                )
        except (OSError, TimeoutError) as exc:
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
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        self._wait_began = loop.time()
        if self._timer is None and self._read_timeout != math.inf:
            self._timer = loop.call_at(
                self._wait_began + self._read_timeout, self._check_timeout, when
            )
        return waiter

    def _check_timeout(self, when: str) -> None:
        """The read timeout's timer: armed once a wait begins, it checks, when it
        fires, whether a wait has gone on that long; else it is armed again for the
        wait in progress, or left off until the next one."""
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # no wait in progress: the next one arms the timer again
        due = self._wait_began + self._read_timeout
        if self._loop.time() >= due:
            self._end_with(direct.read_timed_out(when))
        else:
            self._timer = self._loop.call_at(due, self._check_timeout, when)

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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
