"""A WebSocket client connection on any event loop: wsproto's sans-IO protocol over an
anyio byte stream (TCP, or TLS with the system's trust or a given context). (httpx-ws
was weighed: it bounds no message sent in fragments; see benchmarks/NOTES.md.)

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
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .._exceptions import AdapterError, ProtocolError, WorkerReset
from .._redact import redact_secrets
from .websocket import (
    ABNORMAL_CLOSURE,
    LOST,
    MESSAGE_TOO_BIG,
    READ_BYTES,
    ConnectionClosed,
    PeerViolation,
    WebSocket,
)

__all__ = ["CLOSE_TIMEOUT_S", "ConnectionClosed", "WebSocketClient", "connect"]

#: How long closing waits for the socket to go.
CLOSE_TIMEOUT_S = 5.0
#: The largest message the client takes (the relay's are an event each, far smaller).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class WebSocketClient(WebSocket):
    """An open client connection: :meth:`send_message`, :meth:`get_message`,
    :meth:`aclose`. One task reads it at a time; each frame is written as it is sent."""

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
        while True:
            protocol.receive_data(await stream.receive(READ_BYTES))
            for event in protocol.events():
                if isinstance(event, AcceptConnection):
                    return cls(
                        stream,
                        protocol,
                        max_message_bytes=MAX_MESSAGE_BYTES,
                        pending=protocol.events(),  # what came with it
                    )
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
        await self._write(data)

    async def get_message(self) -> str | bytes:
        """The next whole message.

        Raises:
            ConnectionClosed: the connection closed (after the messages before it).
            ProtocolError: a message larger than the client takes, or bad framing.
        """
        try:
            return await super().get_message()
        except PeerViolation as exc:
            if exc.code == MESSAGE_TOO_BIG:
                raise ProtocolError(
                    f"a message from the relay exceeds {self._max_message_bytes} bytes"
                ) from None
            raise ProtocolError(f"bad WebSocket framing from the relay: {exc.reason}") from None

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
                await self._hang_up()

    async def _close_handshake(self, code: int, reason: str) -> None:
        with suppress(LocalProtocolError, RemoteProtocolError, *LOST):
            await self._stream.send(self._protocol.send(CloseConnection(code=code, reason=reason)))
            while self._protocol.state is not ConnectionState.CLOSED:
                self._protocol.receive_data(await self._stream.receive(READ_BYTES))
                for _ in self._protocol.events():
                    pass  # the messages before the server's close go unread

    async def _write(self, data: bytes) -> None:
        try:
            await self._stream.send(data)
        except LOST:
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
