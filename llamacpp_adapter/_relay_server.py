"""A WebSocket relay: task streams served to consumers across a network.

A client opens a WebSocket, sends one JSON task, and receives the task's events as JSON
messages, in order (:mod:`llamacpp_adapter._relay_codec` has every field)::

    {"type": "started", "job_id": "..."}
    {"type": "token", "i": 0, "t": "Once", "ids": [9038]}   (one per token)
    {"type": "metrics", "prompt_tokens": 5, ...}
    {"type": "end", "tokens_out": 16, "stop_reason": "limit", ...}
    {"type": "error", "code": "WORKER_RESET", "message": "...", "retriable": true}

then the relay closes the connection (1000 after ``end``, 1011 after ``error``). The relay
serves this library's task streams, never llama.cpp's own endpoints.

Backpressure runs end to end: the relay takes the next event from the adapter only when
the last one has been written to the socket, the adapter reads the engine only when its
events are taken, so a client that reads slowly slows the read from the engine. A
client that closes its socket cancels the task at once, which frees the engine's slot.

This module is the relay's server; ``_relay_client`` its client; ``_relay_codec`` the
messages both speak. The server is built on ``trio-websocket`` and runs under Trio; the
client runs on any event loop anyio runs on.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import math
import ssl
from contextlib import AbstractAsyncContextManager, suppress
from typing import Final

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
)

from ._adapter import LlamaCppHttpAdapter
from ._exceptions import AdapterError, WorkerError
from ._host import AdapterHost
from ._receive import EventReceiveStream
from ._relay_codec import BadTask, decode_task, encode_error, encode_event
from ._types import TaskRequest

__all__ = ["Relay"]

logger = logging.getLogger("llamacpp_adapter")

#: The largest message a client may send (its task), in bytes.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
#: The most WebSocket connections served at once; more are refused with HTTP 503.
DEFAULT_MAX_CONNECTIONS = 256
#: How long the relay waits for a client's task, and for one message to be written to a
#: client that does not read; then it closes the connection.
DEFAULT_IDLE_TIMEOUT_S = 30.0

#: How long the relay waits for a client's answer to its close.
DISCONNECT_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = DISCONNECT_TIMEOUT_S

#: The fewest characters of a relay's token.
MIN_TOKEN_CHARS = 16

#: WebSocket close codes the relay uses.
CLOSE_NORMAL: Final = 1000  # the task ended
CLOSE_BAD_TASK: Final = 1008  # the task was not valid (policy violation)
CLOSE_TOO_BIG: Final = 1009  # the message was larger than the relay takes
CLOSE_TASK_FAILED: Final = 1011  # the task failed: see the error message before it
CLOSE_IDLE: Final = 4000  # no task, or a client that stopped reading, within the timeout


class Relay:
    """Serve task streams over WebSocket.

    ::

        relay = Relay(adapter)          # or Relay(host, pool="chat")
        async with trio.open_nursery() as nursery:
            url = await nursery.start(relay.serve, "127.0.0.1", 8765)

    Args:
        target: a :class:`LlamaCppHttpAdapter`, or an :class:`AdapterHost` with
            *pool*, the pool tasks go to unless a task names its own.
        pool: the default pool, with a host.
        token: a bearer token every client must send in ``Authorization`` (compared in
            constant time, never logged), of at least 16 characters; ``None`` lets any
            client in, which :meth:`serve` allows on a loopback address only, unless
            *allow_anonymous*.
        allow_anonymous: let :meth:`serve` listen beyond loopback with no token (it then
            logs a warning): every client that reaches the port may run tasks.
        ssl_context: serve ``wss://`` with this server context (its certificate and
            key, e.g. from ``ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)`` and
            ``load_cert_chain``); ``ws://`` without.
        max_message_bytes: the largest task message; a larger one closes the
            connection with 1009.
        max_connections: connections served at once; more are refused (HTTP 503).
        idle_timeout_s: how long to wait for a client's task, and for one message to
            be written to a client that does not read.
        allow_extra: whether a task may carry ``extra`` llama.cpp fields (off: a remote
            client then cannot reach settings the orchestrator did not mean to expose).
    """

    def __init__(
        self,
        target: LlamaCppHttpAdapter | AdapterHost,
        *,
        pool: str | None = None,
        token: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        allow_extra: bool = False,
        allow_anonymous: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if isinstance(target, AdapterHost):
            if pool is None:
                raise ValueError("a relay over an AdapterHost needs a default pool")
        elif not isinstance(target, LlamaCppHttpAdapter):
            raise TypeError("target must be a LlamaCppHttpAdapter or an AdapterHost")
        if token is not None and (not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS):
            raise ValueError(f"the token must be a str of at least {MIN_TOKEN_CHARS} characters")
        for name, value in (
            ("max_message_bytes", max_message_bytes),
            ("max_connections", max_connections),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int")
        if not 0 < idle_timeout_s < math.inf:
            raise ValueError("idle_timeout_s must be positive and finite")
        self._target = target
        self._pool = pool
        self._expected = None if token is None else f"Bearer {token}".encode()
        self._max_message_bytes = max_message_bytes
        self._max_connections = max_connections
        self._idle_timeout_s = idle_timeout_s
        self._allow_extra = allow_extra
        self._allow_anonymous = allow_anonymous
        self._ssl_context = ssl_context
        self.active_connections = 0
        #: The streams being relayed now, by job id (to watch the backpressure).
        self.streams: dict[str, EventReceiveStream] = {}

    def __repr__(self) -> str:
        auth = "token" if self._expected is not None else "open"
        return f"{type(self).__name__}({self._target!r}, {auth})"

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on *host*:*port* (``0``: a free port) until cancelled. With
        ``nursery.start``, returns the relay's ``ws://`` (or ``wss://``) URL once it
        listens.

        Raises:
            ValueError: with no token, on an address beyond loopback, unless the relay
                was made with *allow_anonymous*.
            OSError: the address cannot be listened on (e.g. the port is in use).
        """
        if self._expected is None and not is_loopback(host):
            if not self._allow_anonymous:
                raise ValueError(
                    f"a relay on {host!r} with no token lets anyone who reaches it run "
                    "tasks: give a token, listen on 127.0.0.1, or allow it explicitly"
                )
            logger.warning("the relay listens on %s with no token: anyone may run tasks", host)
        scheme = "ws" if self._ssl_context is None else "wss"
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                functools.partial(
                    serve_websocket,
                    self._handle,
                    host,
                    port,
                    self._ssl_context,
                    # A client sends one message, its task: nothing queues behind it.
                    message_queue_size=1,
                    max_message_size=self._max_message_bytes,
                    connect_timeout=self._idle_timeout_s,
                    disconnect_timeout=DISCONNECT_TIMEOUT_S,
                )
            )
            task_status.started(f"{scheme}://{host}:{server.port}")

    # --- One connection ----------------------------------------------------------------

    async def _handle(self, request: WebSocketRequest) -> None:
        if self._expected is not None and not self._authorized(request.headers):
            await request.reject(401, body=b"a valid bearer token is required")
            return
        if self.active_connections >= self._max_connections:
            await request.reject(503, body=b"too many connections; try again later")
            return
        self.active_connections += 1
        try:
            ws = await request.accept()
            await self._serve_connection(ws)
        except ConnectionClosed:
            pass  # the client went away; its task, if any, was cancelled
        except Exception:
            # One connection's fault must not stop the relay serving the others.
            logger.exception("unexpected failure while relaying a connection")
        finally:
            self.active_connections -= 1

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        assert self._expected is not None
        given = b""
        for name, value in headers:
            if name.lower() == b"authorization":
                given = value
        return hmac.compare_digest(given, self._expected)

    async def _serve_connection(self, ws: WebSocketConnection) -> None:
        message: str | bytes | None = None
        with trio.move_on_after(self._idle_timeout_s):
            try:
                message = await ws.get_message()
            except ConnectionClosed:
                return  # gone before its task (or its task was too big: 1009)
        if message is None:
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                await ws.aclose(CLOSE_IDLE, "no task within the idle timeout")
            return
        try:
            task, pool = self._parse_task(message)
        except BadTask as exc:
            await _send_quietly(ws, encode_error("BAD_TASK", str(exc), retriable=False).decode())
            await ws.aclose(CLOSE_BAD_TASK, "bad task")
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_when_closed, ws, nursery.cancel_scope)
            code, reason = await self._relay(ws, task, pool)
            nursery.cancel_scope.cancel()
        if code is not None:
            with trio.move_on_after(CLOSE_TIMEOUT_S):  # when it runs out, the socket closes
                await ws.aclose(code, reason)

    async def _relay(
        self, ws: WebSocketConnection, task: TaskRequest, pool: str | None
    ) -> tuple[int | None, str]:
        """Stream *task* to *ws*; return the close code and reason (None: closed)."""
        fields = {"job_id": task.job_id, "engine": "llama.cpp", "remote": str(ws.remote)}
        try:
            async with self._submit(task, pool) as events:
                self.streams[task.job_id] = events
                try:
                    async for event in events:
                        with trio.move_on_after(self._idle_timeout_s) as idle:
                            await ws.send_message(encode_event(event).decode())
                        if idle.cancelled_caught:
                            logger.info("relay client stopped reading", extra=fields)
                            await _abort(ws)
                            return None, ""
                finally:
                    self.streams.pop(task.job_id, None)
        except ConnectionClosed:
            logger.info("relay client went away", extra=fields)
            return None, ""
        except WorkerError as exc:
            status = exc.status if isinstance(exc, AdapterError) else None
            message = encode_error(exc.code, exc.message, retriable=exc.retriable, status=status)
            await _send_quietly(ws, message.decode())
            return CLOSE_TASK_FAILED, exc.code
        return CLOSE_NORMAL, "end"

    def _submit(
        self, task: TaskRequest, pool: str | None
    ) -> AbstractAsyncContextManager[EventReceiveStream]:
        if isinstance(self._target, AdapterHost):
            return self._target.submit(pool or self._pool or "", task)
        return self._target.submit(task)

    def _parse_task(self, message: str | bytes) -> tuple[TaskRequest, str | None]:
        task, pool, fields = decode_task(message)
        if pool is not None and not isinstance(self._target, AdapterHost):
            raise BadTask("this relay serves one engine: a task may not name a pool")
        if "extra" in fields and not self._allow_extra:
            raise BadTask("this relay does not take extra llama.cpp fields")
        return task, pool


async def _cancel_when_closed(ws: WebSocketConnection, scope: trio.CancelScope) -> None:
    """Cancel the task as soon as the client closes (it has nothing more to send)."""
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed:
        scope.cancel()


async def _abort(ws: WebSocketConnection) -> None:
    """Close the TCP connection at once, with no closing handshake: a send cancelled
    half-way may have left a frame unfinished, and the client does not read anyway.
    (``aclose`` cancelled before it can send closes the socket and nothing more.)"""
    with trio.CancelScope() as scope:
        scope.cancel()
        await ws.aclose(CLOSE_IDLE, "the client stopped reading")


async def _send_quietly(ws: WebSocketConnection, message: str) -> None:
    with suppress(ConnectionClosed):
        await ws.send_message(message)


def is_loopback(host: str) -> bool:
    """Whether listening on *host* serves this machine alone."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any interface
