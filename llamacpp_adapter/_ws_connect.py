"""A WebSocket client connection whose socket is always closed on the way out.

``trio_websocket.open_websocket_url`` leaves the socket of a connection the server
closed first to the garbage collector, and raises a refusal from inside its nursery as
an exception group. :func:`connect` opens the stream itself, closes it on every way out,
and raises one error of ours.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from ._exceptions import AdapterError, WorkerReset
from ._redact import redact_secrets

__all__ = ["CLOSE_TIMEOUT_S", "DISCONNECT_TIMEOUT_S", "connect"]

#: How long either side waits for the other's answer to its close.
DISCONNECT_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = DISCONNECT_TIMEOUT_S


@asynccontextmanager
async def connect(
    url: str,
    headers: list[tuple[bytes, bytes]],
    *,
    connect_timeout_s: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket client connection to *url* whose socket is always closed on the way
    out. (``trio_websocket.open_websocket_url`` leaves the socket of a connection the
    server closed first to the garbage collector.)

    Raises:
        AdapterError: the server refused the handshake (``status``).
        WorkerReset: the server could not be reached in time.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {redact_secrets(url)!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    where = f"{parts.hostname}:{port}"
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connected = False  # past the handshake: errors from then on are not ours to change
    try:
        async with trio.open_nursery() as nursery:
            stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None
            ws: WebSocketConnection | None = None
            try:
                with trio.fail_after(connect_timeout_s):
                    if secure:
                        stream = await trio.open_ssl_over_tcp_stream(
                            parts.hostname,
                            port,
                            ssl_context=ssl_context or ssl.create_default_context(),
                        )
                        await stream.do_handshake()  # a refused certificate fails here
                    else:
                        stream = await trio.open_tcp_stream(parts.hostname, port)
                    ws = await wrap_client_stream(
                        nursery, stream, parts.hostname, resource, extra_headers=headers
                    )
            finally:
                if ws is None:
                    nursery.cancel_scope.cancel()
                    if stream is not None:
                        # Shielded: a close in the cancelled nursery would raise
                        # Cancelled over the error that brought us here.
                        with trio.CancelScope(shield=True):
                            await trio.aclose_forcefully(stream)
            assert stream is not None
            connected = True
            try:
                yield ws
            finally:
                with trio.move_on_after(DISCONNECT_TIMEOUT_S) as cleanup:
                    cleanup.shield = True
                    await ws.aclose()
                    await stream.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The connection's reader runs in the nursery, so a refusal (and anything
        # raised in the caller's block) comes out as a group: raise the one error.
        error = _single(group)
        if error is group:
            raise
        raise (error if connected else _connect_error(error, where)) from error.__cause__
    except Exception as exc:
        error = exc if connected else _connect_error(exc, where)
        if error is exc:
            raise
        raise error from None


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception in *group* that is not a cancellation; the group otherwise."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop()
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        elif not isinstance(error, trio.Cancelled):
            leaves.append(error)
    return leaves[0] if len(leaves) == 1 else group


def _connect_error(error: BaseException, where: str) -> BaseException:
    """Our error for a failure to connect; other errors as they are."""
    if isinstance(error, ConnectionRejected):
        return AdapterError(
            f"the relay refused the connection with {error.status_code}",
            status=error.status_code,
        )
    if isinstance(error, HandshakeError | OSError | trio.TooSlowError | trio.BrokenResourceError):
        if isinstance(error, trio.TooSlowError):
            why = "no connection within the connect timeout"
        else:
            why = _os_reason(error) or str(error) or type(error).__name__
        return WorkerReset(f"could not reach the relay at {where}: {why}")
    return error


def _os_reason(error: BaseException) -> str | None:
    """The system's word for *error* or what caused it (trio wraps each refused attempt
    in one error of its own, and a TLS failure in BrokenResourceError), e.g.
    ``Connection refused (errno 111)``."""
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
    return None
