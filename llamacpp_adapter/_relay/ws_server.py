"""A WebSocket server connection over an anyio byte stream: the opening handshake
(:meth:`ServerConnection.receive_request`, then :meth:`~ServerConnection.accept` or
:meth:`~ServerConnection.reject`), then, inside :meth:`~ServerConnection.open`, a
reader and a writer task of its own.

The writer drains an outbox. :meth:`~ServerConnection.send_message` puts a whole frame in
it and waits only while it holds more than ``OUTBOX_BYTES``: a client that reads slowly
holds the sender back, and a sender that gives up waiting has left no half frame behind,
so a close frame can still follow. The reader answers pings
and the client's close, hands over the one message the server takes next, and closes the
connection with the code the standard gives when the client breaks the protocol.
"""

from __future__ import annotations

import http
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage
from wsproto.utilities import LocalProtocolError

from .websocket import ABNORMAL_CLOSURE, LOST, ConnectionClosed, PeerViolation, WebSocket

__all__ = ["CLOSE_TIMEOUT_S", "OUTBOX_BYTES", "HandshakeFailed", "ServerConnection"]

#: How long closing waits for what is queued to go out and for the client's close.
CLOSE_TIMEOUT_S = 5.0
#: The bytes of frames that may wait in the outbox before a sender waits.
OUTBOX_BYTES = 64 * 1024
#: The close code for a client that sends a message the server is not ready to take.
POLICY_VIOLATION = 1008


class HandshakeFailed(Exception):
    """The client went before its opening handshake ended, or it was not a WebSocket
    request (then answered with HTTP 400, and the connection dropped)."""


class ServerConnection(WebSocket):
    """One client's connection, from its opening handshake to its close.

    Args:
        stream: the accepted byte stream (TCP, or TLS already wrapped).
        max_message_bytes: the largest message taken from the client.
    """

    def __init__(self, stream: anyio.abc.ByteStream, *, max_message_bytes: int) -> None:
        super().__init__(
            stream, WSConnection(ConnectionType.SERVER), max_message_bytes=max_message_bytes
        )
        self._outbox = bytearray()
        self._sending = False
        self._broken = False  # a write failed: nothing more can be written
        self._outbox_filled = anyio.Event()
        self._outbox_drained = anyio.Event()
        self._closing_over = anyio.Event()  # the closing handshake is over, or cannot happen
        self._messages: MemoryObjectReceiveStream[str | bytes] | None = None

    # --- The opening handshake ------------------------------------------------------------

    async def receive_request(self) -> Request:
        """The client's opening handshake.

        Raises:
            HandshakeFailed: the client went first, or it was not a WebSocket request.
        """
        while True:
            while self._pending:
                event = self._pending.popleft()
                if isinstance(event, Request):
                    return event
            if self._closed is not None:
                raise HandshakeFailed(self._closed.reason)
            await self._read()

    async def accept(self) -> None:
        """Accept the handshake.

        Raises:
            ConnectionClosed: the client is gone.
        """
        try:
            await self._stream.send(self._protocol.send(AcceptConnection()))
        except LOST:
            raise ConnectionClosed(ABNORMAL_CLOSURE, "the client went") from None

    async def reject(self, status: int, body: bytes) -> None:
        """Answer the handshake with HTTP *status* and *body*, then close the connection.

        Raises:
            ConnectionClosed: the client is gone.
        """
        try:
            await self._stream.send(http_response(status, body))
        except LOST:
            raise ConnectionClosed(ABNORMAL_CLOSURE, "the client went") from None
        finally:
            await self._hang_up()

    async def _violated(self, code: int, reason: str) -> None:
        if self._protocol.state is ConnectionState.CONNECTING:
            self._closed = PeerViolation(code, reason)
            with suppress(ConnectionClosed):
                await self.reject(400, b"not a WebSocket handshake")
            return
        await super()._violated(code, reason)

    # --- The open connection ------------------------------------------------------------

    @asynccontextmanager
    async def open(self) -> AsyncIterator[ServerConnection]:
        """Run the connection's reader and writer for the block. Leaving it sends what
        is queued (bounded by ``CLOSE_TIMEOUT_S``) and drops the connection; call
        :meth:`close` first to close it with a code."""
        send, self._messages = anyio.create_memory_object_stream[str | bytes](1)
        failure: Exception | None = None
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._read_messages, send)
                tasks.start_soon(self._write_outbox)
                try:
                    yield self
                except Exception as exc:
                    failure = exc  # raised below as it is, not inside a group
                except BaseException:
                    tasks.cancel_scope.cancel()
                    raise
                with anyio.move_on_after(CLOSE_TIMEOUT_S):
                    await self._drained()  # a close frame owed, say
                tasks.cancel_scope.cancel()
        finally:
            self._messages.close()
            await self._hang_up()
        if failure is not None:
            raise failure

    async def next_message(self) -> str | bytes:
        """The client's next message (inside :meth:`open`).

        Raises:
            ConnectionClosed: the connection closed first.
        """
        assert self._messages is not None, "use it inside open()"
        try:
            return await self._messages.receive()
        except anyio.EndOfStream:
            assert self._closed is not None
            raise self._closed from None

    async def wait_closed(self) -> ConnectionClosed:
        """How the connection closed, once it has: the client's close or violation, or
        a lost connection (inside :meth:`open`)."""
        await self._closing_over.wait()
        assert self._closed is not None
        return self._closed

    async def send_message(self, message: str, *, timeout_s: float = math.inf) -> bool:
        """Queue *message*, and wait while the outbox is full, up to *timeout_s*.
        Returns False when it was still full then; the message stays queued, whole, as
        it does when the wait is cancelled.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        if self._closed is not None:
            raise self._closed
        self._queue(self._protocol.send(TextMessage(data=message)))
        if len(self._outbox) <= OUTBOX_BYTES:
            return True
        with anyio.move_on_after(timeout_s):
            while len(self._outbox) > OUTBOX_BYTES:
                await self._outbox_drained.wait()
                if self._closed is not None:
                    raise self._closed
            return True
        return False

    async def close(self, code: int, reason: str) -> None:
        """Close the connection with *code* and *reason*: a close frame after what is
        queued, then the client's close in answer, bounded by ``CLOSE_TIMEOUT_S``; then
        the socket goes (inside :meth:`open`)."""
        try:
            if self._closed is None:
                self._closed = ConnectionClosed(code, reason)
                with suppress(LocalProtocolError):  # the client's close came first
                    self._queue(self._protocol.send(CloseConnection(code=code, reason=reason)))
            with anyio.move_on_after(CLOSE_TIMEOUT_S):
                await self._closing_over.wait()
                await self._drained()
        finally:
            await self._hang_up()

    # --- Its tasks ------------------------------------------------------------------------

    async def _read_messages(self, send: MemoryObjectSendStream[str | bytes]) -> None:
        """Read the client until the connection closes, handing each message over; one
        more while the last is not taken is a violation (the server takes one at a
        time)."""
        with send:
            try:
                while True:
                    message = await self.get_message()
                    try:
                        send.send_nowait(message)
                    except anyio.WouldBlock:
                        await self._violated(POLICY_VIOLATION, "one message at a time")
                        return
            except ConnectionClosed:
                pass

    async def _write_outbox(self) -> None:
        while not self._broken:
            await self._outbox_filled.wait()
            self._outbox_filled = anyio.Event()
            data = bytes(self._outbox)
            self._outbox.clear()
            self._sending = True
            try:
                await self._stream.send(data)
            except LOST:
                self._broken = True
                self._outbox.clear()
                if self._closed is None:
                    self._closed = ConnectionClosed(ABNORMAL_CLOSURE, "the connection was lost")
                self._closing_over.set()
            finally:
                self._sending = False
                drained, self._outbox_drained = self._outbox_drained, anyio.Event()
                drained.set()

    async def _write(self, data: bytes) -> None:
        self._queue(data)

    def _queue(self, data: bytes) -> None:
        if not self._broken:
            self._outbox += data
            self._outbox_filled.set()

    async def _drained(self) -> None:
        """Return once everything queued has been written (or cannot be)."""
        while (self._outbox or self._sending) and not self._broken:
            await self._outbox_drained.wait()

    async def _closing_done(self) -> None:
        # The close frame owed, if any, is queued: the writer sends it, and whoever owns
        # the connection drops the socket (close(), or leaving open()).
        self._closing_over.set()


def http_response(status: int, body: bytes) -> bytes:
    """A whole HTTP/1.1 response that ends the connection."""
    phrase = http.HTTPStatus(status).phrase
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "content-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body
