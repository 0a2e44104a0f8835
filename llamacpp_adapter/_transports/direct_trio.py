"""The direct path on Trio: a loop of the socket's ``recv`` (``receive_some`` over TLS),
each read bounded by the read timeout."""

from __future__ import annotations

import math
import socket
from collections.abc import Awaitable, Callable

import trio

from .._sansio.http11 import ResponseParser
from . import direct
from .base import NO_TLS_ANSWER
from .direct import (
    NOT_SENT,
    OPENING,
    READ_BYTES,
    WATCH_SAMPLES,
    WATCHED_REQUEST_BYTES,
    DirectBody,
    Endpoint,
    StreamTimeouts,
    unacknowledged,
)

__all__ = ["TrioBody"]

#: What one wait for the socket sends, of a watched request: a TLS record's worth.
SEND_BYTES = 16 * 1024


class TrioBody(DirectBody):
    __slots__ = ("_read_timeout", "_recv", "_stream", "_waiting", "parser")

    def __init__(
        self, stream: trio.SocketStream | trio.SSLStream[trio.SocketStream], read_timeout: float
    ) -> None:
        self._stream = stream
        self._read_timeout = read_timeout
        self._recv: Callable[[int], Awaitable[bytes]]
        if isinstance(stream, trio.SocketStream):
            self._recv = stream.socket.recv  # the socket itself: no layer in between
        else:
            self._recv = _ssl_receiver(stream)
        self.parser = ResponseParser()
        self._waiting: list[bytes] = []  # body bytes that came with the head

    @classmethod
    async def open(cls, endpoint: Endpoint, request: bytes, timeouts: StreamTimeouts) -> TrioBody:
        try:
            with trio.fail_after(timeouts.connect):
                tcp = await trio.open_tcp_stream(endpoint.host, endpoint.port)
        except (OSError, trio.TooSlowError) as exc:
            raise direct.connection_error(exc, OPENING) from None
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        handshaking = False
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
        try:
            if endpoint.tls is not None:
                stream = trio.SSLStream(tcp, endpoint.tls, server_hostname=endpoint.host)
                handshaking = True
                with trio.fail_after(timeouts.connect):
                    await stream.do_handshake()
                handshaking = False
            await _send(stream, request, timeouts.write)
            body = cls(stream, timeouts.read)
            await body._read_head()
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            await trio.aclose_forcefully(stream)
            timed_out = NO_TLS_ANSWER if handshaking else NOT_SENT
            raise direct.connection_error(exc, OPENING, timed_out=timed_out) from None
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return body

    async def _read_head(self) -> None:
        parser = self.parser
        while not parser.head_complete:
            data = await self._receive(OPENING)
            if not data:
                raise direct.response_cut(OPENING)
            body = parser.feed(data)
            if body:
                self._waiting.append(body)

    async def _receive(self, when: str) -> bytes:
        timeout = self._read_timeout
        if timeout == math.inf:
            return await self._recv(READ_BYTES)
        with trio.move_on_after(timeout):
            return await self._recv(READ_BYTES)
        raise direct.read_timed_out(when)  # the read was cancelled at the timeout

    async def read(self) -> bytes | None:
        if self._waiting:
            return self._waiting.pop(0)
        parser = self.parser
        while not parser.complete:
            if parser.error is not None:
                raise parser.error
            try:
                data = await self._receive("while reading the stream")
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise direct.connection_error(exc, "while reading the stream") from None
            if not data:
                parser.feed_eof()
                if parser.complete:
                    return None
                raise direct.response_cut("while reading the stream")
            body = parser.feed(data)
            if body:
                return body
        return None

    async def aclose(self) -> None:
        # Closing the socket wakes a task waiting to read it, which then fails.
        await trio.aclose_forcefully(self._stream)


async def _send(
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream], data: bytes, within_s: float
) -> None:
    """Send *data*; the write timeout bounds a time in which it makes no progress (see
    ``direct``).

    Raises:
        trio.TooSlowError: no progress within *within_s*.
    """
    if len(data) <= WATCHED_REQUEST_BYTES or within_s == math.inf:
        with trio.fail_after(within_s):
            await stream.send_all(data)
        return
    tcp = stream if isinstance(stream, trio.SocketStream) else stream.transport_stream
    fd = tcp.socket.fileno()
    view = memoryview(data)
    sent = 0
    stalled = False

    async def watch(sending: trio.CancelScope) -> None:
        nonlocal stalled
        step = within_s / WATCH_SAMPLES
        seen, still = (sent, unacknowledged(fd)), 0.0
        while still < within_s:
            await trio.sleep(step)
            now = (sent, unacknowledged(fd))
            still = still + step if now == seen else 0.0
            seen = now
        stalled = True
        sending.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, nursery.cancel_scope)
        while sent < len(view):
            await stream.send_all(view[sent : sent + SEND_BYTES])
            sent = min(len(view), sent + SEND_BYTES)
        nursery.cancel_scope.cancel()
    if stalled:
        raise trio.TooSlowError


def _ssl_receiver(
    stream: trio.SSLStream[trio.SocketStream],
) -> Callable[[int], Awaitable[bytes]]:
    async def receive(max_bytes: int) -> bytes:
        return bytes(await stream.receive_some(max_bytes))

    return receive
