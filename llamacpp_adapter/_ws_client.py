"""A WebSocket client connection on any event loop: wsproto's sans-IO protocol over an
anyio byte stream (TCP, or TLS with the system's trust or a given context).

:func:`connect` opens it, with the handshake, and closes it on every way out. Errors are
ours: a refused handshake is :class:`AdapterError` with its status, an unreachable or
failed connection :class:`WorkerReset` naming the address and the system's reason. A
closed connection raises :class:`ConnectionClosed` with its close code and reason.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from urllib.parse import urlsplit

import anyio
import anyio.abc
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ._exceptions import AdapterError, ProtocolError, WorkerReset
from ._redact import redact_secrets

__all__ = ["CLOSE_TIMEOUT_S", "ConnectionClosed", "WebSocketClient", "connect"]

#: How long closing waits for the socket to go.
CLOSE_TIMEOUT_S = 5.0
#: The largest message the client takes (the relay's are an event each, far smaller).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_READ_BYTES = 65536
#: The close code when the peer went without a close frame (RFC 6455: 1006).
ABNORMAL_CLOSURE = 1006


class ConnectionClosed(Exception):
    """The connection is closed: by a close frame (*code*, *reason*), or abruptly (1006)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.reason = reason


class WebSocketClient:
    """An open client connection: :meth:`send_message`, :meth:`get_message`,
    :meth:`aclose`. One task reads it at a time."""

    def __init__(self, stream: anyio.abc.ByteStream, protocol: WSConnection) -> None:
        self._stream = stream
        self._protocol = protocol
        self._pending: list[Event] = []
        self._parts: list[str | bytes] = []
        self._size = 0
        self._closed: ConnectionClosed | None = None

    @classmethod
    async def handshake(
        cls,
        stream: anyio.abc.ByteStream,
        host: str,
        resource: str,
        headers: list[tuple[bytes, bytes]],
    ) -> WebSocketClient:
        """Open the connection on *stream*: the client's handshake, and the server's
        answer.

        Raises:
            AdapterError: the server refused it (``status``).
        """
        protocol = WSConnection(ConnectionType.CLIENT)
        request = Request(host=host, target=resource, extra_headers=list(headers or []))
        await stream.send(protocol.send(request))
        client = cls(stream, protocol)
        while True:
            protocol.receive_data(await stream.receive(_READ_BYTES))
            for event in protocol.events():
                if isinstance(event, AcceptConnection):
                    client._pending.extend(protocol.events())  # what came with it
                    return client
                if isinstance(event, RejectConnection):
                    raise AdapterError(
                        f"the relay refused the connection with {event.status_code}",
                        status=event.status_code,
                    )

    async def send_message(self, message: str | bytes) -> None:
        if self._closed is not None:
            raise self._closed
        event: TextMessage | BytesMessage = (
            TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
        )
        try:
            data = self._protocol.send(event)
        except LocalProtocolError:
            raise ConnectionClosed(ABNORMAL_CLOSURE, "the connection is closing") from None
        await self._send(data)

    async def get_message(self) -> str | bytes:
        """The next whole message.

        Raises:
            ConnectionClosed: the connection closed (after the messages before it).
            ProtocolError: a message larger than the client takes, or bad framing.
        """
        while True:
            while self._pending:
                message = await self._take(self._pending.pop(0))
                if message is not None:
                    return message
            if self._closed is not None:
                raise self._closed
            await self._read()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection: a close frame (when it is open), the server's close in
        answer (what comes before it is dropped), then the socket; shielded, and bounded
        by ``CLOSE_TIMEOUT_S``."""
        with anyio.CancelScope(shield=True):
            try:
                with anyio.move_on_after(CLOSE_TIMEOUT_S):
                    if self._closed is None:
                        self._closed = ConnectionClosed(code, reason)
                        await self._close_handshake(code, reason)
            finally:
                await anyio.aclose_forcefully(self._stream)

    async def _close_handshake(self, code: int, reason: str) -> None:
        with suppress(
            LocalProtocolError,
            RemoteProtocolError,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            anyio.EndOfStream,
            OSError,
        ):
            await self._stream.send(self._protocol.send(CloseConnection(code=code, reason=reason)))
            while self._protocol.state is not ConnectionState.CLOSED:
                self._protocol.receive_data(await self._stream.receive(_READ_BYTES))
                for _ in self._protocol.events():
                    pass  # the messages before the server's close go unread

    async def _take(self, event: Event) -> str | bytes | None:
        """A whole message when *event* completes one; None otherwise."""
        if isinstance(event, TextMessage | BytesMessage):
            self._size += len(event.data)
            if self._size > MAX_MESSAGE_BYTES:
                await self.aclose(1009, "message too big")
                raise ProtocolError(f"a message from the relay exceeds {MAX_MESSAGE_BYTES} bytes")
            self._parts.append(bytes(event.data) if isinstance(event, BytesMessage) else event.data)
            if not event.message_finished:
                return None
            parts, self._parts, self._size = self._parts, [], 0
            if isinstance(event, TextMessage):
                return "".join(part for part in parts if isinstance(part, str))
            return b"".join(part for part in parts if isinstance(part, bytes))
        if isinstance(event, Ping):
            await self._send(self._protocol.send(event.response()))
        elif isinstance(event, CloseConnection):
            self._closed = ConnectionClosed(event.code, event.reason or "")
            with suppress(ConnectionClosed, LocalProtocolError):  # LocalProtocolError: lost
                await self._send(self._protocol.send(event.response()))
            await anyio.aclose_forcefully(self._stream)
        return None

    async def _read(self) -> None:
        try:
            data: bytes | None = await self._stream.receive(_READ_BYTES)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            data = None
        try:
            self._protocol.receive_data(data)
            self._pending.extend(self._protocol.events())
        except RemoteProtocolError as exc:
            await self.aclose(1002, "protocol error")
            raise ProtocolError(f"bad WebSocket framing from the relay: {exc}") from None
        if data is None and self._closed is None and not self._pending:
            self._closed = ConnectionClosed(ABNORMAL_CLOSURE, "the connection was lost")
            await anyio.aclose_forcefully(self._stream)

    async def _send(self, data: bytes) -> None:
        try:
            await self._stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self._closed = self._closed or ConnectionClosed(
                ABNORMAL_CLOSURE, "the connection was lost"
            )
            raise self._closed from None


@asynccontextmanager
async def connect(
    url: str,
    headers: list[tuple[bytes, bytes]],
    *,
    connect_timeout_s: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[WebSocketClient]:
    """A client connection to *url* (``ws://`` or ``wss://``), closed on the way out.

    Raises:
        ValueError: *url* is not a WebSocket URL.
        AdapterError: the server refused the handshake (``status``).
        WorkerReset: the server could not be reached, or the handshake failed.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {redact_secrets(url)!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    where = f"{parts.hostname}:{port}"
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    stream: anyio.abc.ByteStream | None = None
    try:
        with anyio.fail_after(connect_timeout_s):
            if secure:
                stream = await anyio.connect_tcp(
                    parts.hostname,
                    port,
                    tls=True,
                    ssl_context=ssl_context or ssl.create_default_context(),
                    tls_standard_compatible=False,
                )
            else:
                stream = await anyio.connect_tcp(parts.hostname, port)
            client = await WebSocketClient.handshake(stream, parts.netloc, resource, headers)
    except (OSError, TimeoutError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
        if stream is not None:
            await anyio.aclose_forcefully(stream)
        raise WorkerReset(f"could not reach the relay at {where}: {_reason(exc)}") from None
    except BaseException:
        if stream is not None:
            await anyio.aclose_forcefully(stream)
        raise
    try:
        yield client
    finally:
        await client.aclose()


def _reason(error: BaseException) -> str:
    """The system's word for *error* or what caused it, e.g. ``Connection refused (errno
    111)``, or a TLS failure's own message."""
    if isinstance(error, TimeoutError):
        return "no connection within the connect timeout"
    pending: list[BaseException] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return str(current)
        if isinstance(current, OSError) and current.strerror:
            return f"{current.strerror} (errno {current.errno})"
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return str(error) or type(error).__name__
