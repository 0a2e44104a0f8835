"""A WebSocket connection over an anyio byte stream, the part both sides share: wsproto's
sans-IO protocol read into whole messages under a bound, pings answered, the peer's close
answered, and a peer that breaks the protocol answered with the close code RFC 6455
gives it (1002 for bad framing, 1007 for a text frame that is not UTF-8, 1009 for a
message past the bound) before the connection is dropped.

How a side writes is its own: the relay's client writes each frame as it goes
(``ws_client``); the relay's server writes through an outbox that a task of its own
drains (``ws_server``), so that a client that stops reading never leaves it half a frame.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from contextlib import suppress

import anyio
import anyio.abc
from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, TextMessage
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ABNORMAL_CLOSURE",
    "LOST",
    "ConnectionClosed",
    "PeerViolation",
    "WebSocket",
]

#: The close code of a connection that went without a close frame (RFC 6455: 1006).
ABNORMAL_CLOSURE = 1006
#: The close code of a message larger than this side takes.
MESSAGE_TOO_BIG = 1009
#: The close code of a frame the protocol does not allow.
PROTOCOL_ERROR = 1002
#: The most bytes one read takes from the socket.
READ_BYTES = 65536
#: What a stream raises when its peer is gone.
LOST = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class ConnectionClosed(Exception):
    """The connection is closed: by a close frame (*code*, *reason*), or abruptly (1006)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.reason = reason


class PeerViolation(ConnectionClosed):
    """The peer broke the protocol; this side closed the connection with *code*."""


class WebSocket:
    """An open connection's reading side: :meth:`get_message`. One task reads at a
    time. A subclass says how a frame is written (:meth:`_write`).

    Args:
        stream: the connection's byte stream.
        protocol: its wsproto state machine, past the opening handshake.
        max_message_bytes: the largest message taken; a larger one closes the
            connection with 1009.
        pending: events the protocol already gave (those that came with the end of the
            opening handshake).
    """

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        protocol: WSConnection,
        *,
        max_message_bytes: int,
        pending: Iterable[Event] = (),
    ) -> None:
        self._stream = stream
        self._protocol = protocol
        self._max_message_bytes = max_message_bytes
        self._pending: deque[Event] = deque(pending)
        self._parts: list[str | bytes] = []
        self._size = 0
        self._closed: ConnectionClosed | None = None

    @property
    def closed(self) -> ConnectionClosed | None:
        """How the connection closed, or ``None`` while it is open."""
        return self._closed

    async def get_message(self) -> str | bytes:
        """The next whole message.

        Raises:
            ConnectionClosed: the connection closed (after the messages before it);
                :class:`PeerViolation` when the peer broke the protocol.
        """
        while True:
            while self._pending:
                message = await self._take(self._pending.popleft())
                if message is not None:
                    return message
            if self._closed is not None:
                raise self._closed
            await self._read()

    async def _write(self, data: bytes) -> None:
        """Write *data* (whole frames) to the peer.

        Raises:
            ConnectionClosed: the connection is lost.
        """
        raise NotImplementedError

    async def _hang_up(self) -> None:
        """Close the socket now."""
        await anyio.aclose_forcefully(self._stream)

    async def _take(self, event: Event) -> str | bytes | None:
        """A whole message when *event* completes one; None otherwise."""
        if isinstance(event, TextMessage | BytesMessage):
            self._size += len(event.data)
            if self._size > self._max_message_bytes:
                await self._violated(MESSAGE_TOO_BIG, "message too big")
                return None
            self._parts.append(bytes(event.data) if isinstance(event, BytesMessage) else event.data)
            if not event.message_finished:
                return None
            parts, self._parts, self._size = self._parts, [], 0
            if isinstance(event, TextMessage):
                return "".join(part for part in parts if isinstance(part, str))
            return b"".join(part for part in parts if isinstance(part, bytes))
        if isinstance(event, Ping):
            with suppress(LocalProtocolError):  # closing: no pong owed
                await self._write(self._protocol.send(event.response()))
        elif isinstance(event, CloseConnection):
            if self._protocol.state is ConnectionState.OPEN:
                # wsproto reports a frame it cannot parse as a close the peer never sent,
                # with the code the standard gives that fault.
                await self._violated(event.code, event.reason or "")
                return None
            if self._closed is None:
                self._closed = ConnectionClosed(event.code, event.reason or "")
            if self._protocol.state is ConnectionState.REMOTE_CLOSING:
                with suppress(ConnectionClosed, LocalProtocolError):
                    await self._write(self._protocol.send(event.response()))
            await self._closing_done()
        return None

    async def _read(self) -> None:
        try:
            data: bytes | None = await self._stream.receive(READ_BYTES)
        except LOST:
            data = None
        try:
            self._protocol.receive_data(data)
            self._pending.extend(self._protocol.events())
        except RemoteProtocolError as exc:
            await self._violated(PROTOCOL_ERROR, str(exc)[:100])
            return
        if data is None and self._closed is None and not self._pending:
            self._closed = ConnectionClosed(ABNORMAL_CLOSURE, "the connection was lost")
            await self._closing_done()

    async def _violated(self, code: int, reason: str) -> None:
        """The peer broke the protocol: close with *code* and drop the connection."""
        self._pending.clear()
        self._closed = PeerViolation(code, reason)
        try:
            with suppress(ConnectionClosed, LocalProtocolError):
                await self._write(self._protocol.send(CloseConnection(code=code, reason=reason)))
        finally:
            await self._closing_done()

    async def _closing_done(self) -> None:
        """The closing handshake is over (or cannot happen): by default, drop the socket."""
        await self._hang_up()
