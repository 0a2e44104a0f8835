"""The direct path on Trio: a loop of the socket's ``recv`` (``receive_some`` over TLS),
each read bounded by the read timeout.

The read timeouts of a run's streams are kept by one task (:class:`_ReadTimeouts`), not
by a cancel scope around each read: a read marks its stream's deadline, and the keeper
closes the socket of a stream whose deadline passed, which ends its read. A cancel
scope a read costs a scope, its status, two sets and a deadline in Trio's heap; with
thousands of streams each waiting its next token, they outlive the collector's young
generations, and collecting them made a token cost 2.5 times as much at 10,000 streams
as at 100 (``benchmarks/NOTES.md``).
"""

from __future__ import annotations

import math
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .._sansio.http11 import ResponseParser
from . import direct
from .base import GATE_FULL, NO_TLS_ANSWER
from .direct import (
    NOT_SENT,
    OPENING,
    READ_BYTES,
    WATCHED_REQUEST_BYTES,
    ConnectGate,
    DirectBody,
    Endpoint,
    ReadDeadlines,
    StallWatch,
    StreamTimeouts,
    unacknowledged,
)

__all__ = ["TrioBody"]

#: The keeper of the run's read timeouts, while it watches a stream.
_KEEPER: trio.lowlevel.RunVar[_ReadTimeouts | None] = trio.lowlevel.RunVar("read_timeouts")

#: What one wait for the socket sends, of a watched request: a TLS record's worth.
SEND_BYTES = 16 * 1024


class TrioBody(DirectBody):
    __slots__ = (
        "_keeper",
        "_plain",
        "_read",
        "_read_timeout",
        "_reads_from",
        "_stream",
        "_waiting",
        "deadline",
        "parser",
        "timed_out",
    )

    def __init__(
        self,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        read_timeout: float,
        plain: socket.socket | None = None,
    ) -> None:
        self._stream = stream
        self._read_timeout = read_timeout
        #: When the read under way times out (``math.inf``: none is under way).
        self.deadline = math.inf
        self.timed_out = False
        self._keeper = None if read_timeout == math.inf else _ReadTimeouts.watch(self)
        # The standard library's socket under the stream's, read straight by _receive;
        # else how a read is made, and of what: a module's function, so that no stream
        # holds a callable of its own.
        self._plain = plain
        self._read: Callable[[Any], Awaitable[bytes]] = _read_tls
        self._reads_from: object = stream
        if isinstance(stream, trio.SocketStream):
            self._read, self._reads_from = _read_trio_socket, stream.socket
        self.parser = ResponseParser()
        self._waiting: list[bytes] = []  # body bytes that came with the head

    @classmethod
    async def open(
        cls, endpoint: Endpoint, request: bytes, timeouts: StreamTimeouts, gate: ConnectGate
    ) -> TrioBody:
        connecting = gate.on_trio()
        try:
            with trio.fail_after(timeouts.pool):
                await connecting.acquire()
        except trio.TooSlowError as exc:
            raise direct.connection_error(exc, OPENING, timed_out=GATE_FULL) from None
        try:
            with trio.fail_after(timeouts.connect):
                tcp, plain = await _connect(endpoint)
        except (OSError, trio.TooSlowError) as exc:
            raise direct.connection_error(exc, OPENING) from None
        finally:
            connecting.release()
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
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            await trio.aclose_forcefully(stream)
            timed_out = NO_TLS_ANSWER if handshaking else NOT_SENT
            raise direct.connection_error(exc, OPENING, timed_out=timed_out) from None
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        body = cls(stream, timeouts.read, plain if stream is tcp else None)
        try:
            await body._read_head()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await body.aclose()
            raise direct.connection_error(exc, OPENING) from None
        except BaseException:
            await body.aclose()
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
        """The next bytes of the connection (``b""`` at its end). A plain connection is
        read here, not in a coroutine of its own: every stream waiting for its next
        token holds its chain of coroutines, and the collector walks them. As Trio's
        own ``recv``, whose non-blocking helper and its context manager hold about 700 B
        more for every stream waiting: a cancellation is seen before the read, never
        after it, and a read that did not wait lets the other tasks run once."""
        keeper = self._keeper
        if keeper is not None:
            keeper.reading(self, trio.current_time() + self._read_timeout)
        try:
            plain = self._plain
            if plain is None:
                return await self._read(self._reads_from)
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                data = plain.recv(READ_BYTES)
            except BlockingIOError:
                pass
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            while True:
                await trio.lowlevel.wait_readable(plain)
                try:
                    return plain.recv(READ_BYTES)
                except BlockingIOError:
                    pass
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            if self.timed_out:  # the keeper closed the socket at the deadline
                raise direct.read_timed_out(when) from None
            raise
        finally:
            self.deadline = math.inf

    def time_out(self) -> None:
        """End the read under way, at its deadline: close the socket under it."""
        self.timed_out = True
        stream = self._stream
        tcp = stream if isinstance(stream, trio.SocketStream) else stream.transport_stream
        tcp.socket.close()  # wakes the task reading it

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
        if self._keeper is not None:
            self._keeper.forget(self)
            self._keeper = None
        # Closing the socket wakes a task waiting to read it, which then fails.
        await trio.aclose_forcefully(self._stream)


class _ReadTimeouts(ReadDeadlines):
    """The read deadlines of a Trio run's direct streams, kept by one system task that
    sleeps until the soonest (:class:`~.direct.ReadDeadlines`). It ends when it watches
    no stream, and the next stream opened starts another."""

    __slots__ = ("_nap",)

    def __init__(self) -> None:
        super().__init__()
        self._nap: trio.CancelScope | None = None

    @classmethod
    def watch(cls, body: TrioBody) -> _ReadTimeouts:
        """The run's keeper, watching *body* (started if there is none)."""
        keeper = _KEEPER.get(None)
        if keeper is None:
            keeper = cls()
            _KEEPER.set(keeper)
            trio.lowlevel.spawn_system_task(keeper._run, name="llamacpp-adapter read timeouts")
        keeper.streams.add(body)
        return keeper

    def forget(self, body: TrioBody) -> None:
        self.streams.discard(body)
        if not self.streams:
            self._sooner()  # to end

    def _sooner(self) -> None:
        if self._nap is not None:
            self._nap.cancel()

    async def _run(self) -> None:
        try:
            while self.streams:
                soonest = self.sweep(trio.current_time())
                with trio.CancelScope(deadline=soonest) as self._nap:
                    await trio.sleep_forever()
                self._nap = None
        finally:
            _KEEPER.set(None)


async def _connect(endpoint: Endpoint) -> tuple[trio.SocketStream, socket.socket | None]:
    """A TCP connection to *endpoint*, and the standard library's socket under it where
    it was made here: straight to *endpoint*'s address where it is one; else through
    Trio's happy eyeballs to the addresses its name resolves to. Happy eyeballs wait in
    a nursery of their own, with a task and a cancel scope for each attempt: with
    thousands of streams opening at once, what they hold while they wait left the
    allocator's pools a third larger than the streams needed (``NOTES.md``)."""
    if endpoint.family is None:
        return await trio.open_tcp_stream(endpoint.host, endpoint.port), None
    plain = socket.socket(endpoint.family, socket.SOCK_STREAM)
    try:
        sock = trio.socket.from_stdlib_socket(plain)
        await sock.connect((endpoint.host, endpoint.port))
    except BaseException:
        plain.close()
        raise
    return trio.SocketStream(sock), plain


async def _read_trio_socket(sock: trio.socket.SocketType) -> bytes:
    return await sock.recv(READ_BYTES)


async def _read_tls(stream: trio.SSLStream[trio.SocketStream]) -> bytes:
    return bytes(await stream.receive_some(READ_BYTES))


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
        progress = StallWatch(within_s, (sent, unacknowledged(fd)))
        while not stalled:
            await trio.sleep(progress.step)
            stalled = progress.stalled((sent, unacknowledged(fd)))
        sending.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, nursery.cancel_scope)
        while sent < len(view):
            await stream.send_all(view[sent : sent + SEND_BYTES])
            sent = min(len(view), sent + SEND_BYTES)
        nursery.cancel_scope.cancel()
    if stalled:
        raise trio.TooSlowError
