"""A WebSocket relay: task streams served to consumers across a network.

A client opens a WebSocket, sends one JSON task, and receives the task's events as JSON
messages, in order (:mod:`llamacpp_adapter._relay.codec` has every field)::

    {"type": "started", "job_id": "..."}
    {"type": "token", "i": 0, "t": "Once", "ids": [9038]}   (one per token)
    {"type": "metrics", "prompt_tokens": 5, ...}
    {"type": "end", "tokens_out": 16, "stop_reason": "limit", ...}
    {"type": "error", "code": "WORKER_RESET", "message": "...", "retriable": true}

then the relay closes the connection (1000 after ``end``, 1011 after ``error``). The relay
serves this library's task streams, never llama.cpp's own endpoints.

Backpressure runs end to end: the relay takes the next event from the adapter only while
what is queued for the client is under ``OUTBOX_BYTES`` and, for a client that asked for
a ``window``, while fewer than that many events are sent past those it acknowledged as
taken; the adapter reads the engine only when its events are taken, and pauses a stream
on the engine once they are not. So a client whose consumer stops taking events stops
the engine, however much the network between them holds. A client that closes its
socket cancels the task at once, which frees the engine's slot.

This module is the relay's server; ``client`` its client; ``codec`` the messages both
speak; ``ws_server`` and ``ws_client`` the WebSocket connections
(wsproto over anyio's streams), so both run on any event loop anyio runs on.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import os
import resource
import ssl
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any, Final

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSStream

from .._adapter import LlamaCppHttpAdapter
from .._exceptions import AdapterError, ProtocolError, WorkerError
from .._host.host import AdapterHost
from .._receive import EventReceiveStream
from .._types import ChatRequest, TaskRequest
from .._validate import count, seconds
from .codec import BadTask, decode_ack, decode_task, encode_error, encode_event
from .throttle import TokenThrottle, WrongTokens, address_key
from .websocket import LOST, ConnectionClosed
from .ws_server import HandshakeFailed, ServerConnection

__all__ = ["Relay"]

logger = logging.getLogger("llamacpp_adapter")

#: The largest message a client may send (its task), in bytes.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
#: The most WebSocket connections served at once; more are refused with HTTP 503.
DEFAULT_MAX_CONNECTIONS = 256
#: How long the relay waits for a client's task, and for a client that does not read
#: to take what is queued for it; then it closes the connection.
DEFAULT_IDLE_TIMEOUT_S = 30.0
#: The most connections in their opening handshake at once (TLS included); one more
#: drops the oldest of them.
DEFAULT_MAX_HANDSHAKES = 64
#: How long a connection may take to finish its opening handshake (TLS included).
DEFAULT_HANDSHAKE_TIMEOUT_S = 10.0

#: The share of the descriptors free when the relay starts that connections still in
#: their handshake may hold at most: the rest stays for clients that authenticate.
HANDSHAKE_DESCRIPTOR_SHARE = 0.25
#: How long the accept loop waits after a failed accept (e.g. out of descriptors).
ACCEPT_RETRY_S = 0.1
#: How often a run of failed accepts is logged, at most.
ACCEPT_LOG_INTERVAL_S = 10.0

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

        relay = Relay(adapter, token=token)          # or Relay(host, pool="chat", ...)
        async with anyio.create_task_group() as tasks:
            url = await tasks.start(relay.serve, "127.0.0.1", 8765)
            ...  # the relay serves at url until the group is cancelled

    No client can stop the relay or hold its resources: a failure while serving one
    connection is logged and drops that connection alone; a refused handshake is
    answered and closed at once; connections still in their handshake are bounded in
    number and time, and in the descriptors they may hold; a client that breaks the
    WebSocket protocol is closed with the code the standard gives.

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
        max_connections: connections served at once, past their handshake; more are
            refused (HTTP 503).
        max_handshakes: connections in their opening handshake at once; one more drops
            the oldest. :meth:`serve` lowers it to a quarter of the descriptors free
            when it starts, so that clients that authenticate always find one.
        handshake_timeout_s: how long a connection may take to finish its handshake.
        idle_timeout_s: how long to wait for a client's task, and for a client that
            does not read to take what is queued for it.
        allow_extra: whether a task may carry ``extra`` llama.cpp fields (off: a remote
            client then cannot reach settings the orchestrator did not mean to expose).
        throttle: how wrong tokens from one address are slowed down (a
            :class:`TokenThrottle`: by default 10 at once, then 2 a second); ``None``
            answers every one at once.
    """

    def __init__(
        self,
        target: LlamaCppHttpAdapter | AdapterHost,
        *,
        pool: str | None = None,
        token: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
        handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        allow_extra: bool = False,
        allow_anonymous: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        throttle: TokenThrottle | None = TokenThrottle(),  # noqa: B008 (frozen)
    ) -> None:
        if isinstance(target, AdapterHost):
            if pool is None:
                raise ValueError("a relay over an AdapterHost needs a default pool")
        elif not isinstance(target, LlamaCppHttpAdapter):
            raise TypeError("target must be a LlamaCppHttpAdapter or an AdapterHost")
        check_token(token)
        if throttle is not None and not isinstance(throttle, TokenThrottle):
            raise TypeError("throttle must be a TokenThrottle or None")
        count("max_message_bytes", max_message_bytes)
        count("max_connections", max_connections)
        count("max_handshakes", max_handshakes)
        seconds("idle_timeout_s", idle_timeout_s, positive=True)
        seconds("handshake_timeout_s", handshake_timeout_s, positive=True)
        self._target = target
        self._pool = pool
        self._expected = None if token is None else f"Bearer {token}".encode()
        self._max_message_bytes = max_message_bytes
        self._max_connections = max_connections
        self._max_handshakes = max_handshakes
        self._handshake_timeout_s = handshake_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._allow_extra = allow_extra
        self._allow_anonymous = allow_anonymous
        self._ssl_context = ssl_context
        self._wrong_tokens = None if throttle is None else WrongTokens(throttle)
        #: Connections past their handshake, being served now.
        self.active_connections = 0
        #: Connections in their opening handshake, oldest first.
        self._handshakes: dict[object, anyio.CancelScope] = {}
        #: The streams being relayed now, by job id (to watch the backpressure).
        self.streams: dict[str, EventReceiveStream] = {}

    def __repr__(self) -> str:
        auth = "token" if self._expected is not None else "open"
        return f"{type(self).__name__}({self._target!r}, {auth})"

    @property
    def handshakes(self) -> int:
        """Connections in their opening handshake now."""
        return len(self._handshakes)

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on *host*:*port* (``0``: a free port) until cancelled. With
        ``start``, returns the relay's ``ws://`` (or ``wss://``) URL once it listens.

        Raises:
            ValueError: with no token, on an address beyond loopback, unless the relay
                was made with *allow_anonymous*.
            OSError: the address cannot be listened on (e.g. the port is in use).
        """
        if exposed(host, token=self._expected is not None):
            if not self._allow_anonymous:
                raise ValueError(
                    f"a relay on {host!r} with no token lets anyone who reaches it run "
                    "tasks: give a token, listen on 127.0.0.1, or allow it explicitly"
                )
            logger.warning("the relay listens on %s with no token: anyone may run tasks", host)
        self._max_handshakes = min(self._max_handshakes, handshake_budget())
        scheme = "ws" if self._ssl_context is None else "wss"
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        async with listener, anyio.create_task_group() as connections:
            for each in listener.listeners:
                assert isinstance(each, anyio.abc.SocketListener)
                connections.start_soon(self._accept, each, connections)
            port = listener.extra(SocketAttribute.local_port)
            task_status.started(f"{scheme}://{host}:{port}")

    async def _accept(
        self, listener: anyio.abc.SocketListener, connections: anyio.abc.TaskGroup
    ) -> None:
        """Accept connections for ever; a failed accept (out of descriptors, say) is
        retried after a pause, and logged at most every ``ACCEPT_LOG_INTERVAL_S``."""
        failed = 0
        logged_at = -math.inf
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                failed += 1
                now = anyio.current_time()
                if now - logged_at >= ACCEPT_LOG_INTERVAL_S:
                    logger.warning(
                        "the relay could not accept %d connection(s): %s; it goes on trying",
                        failed,
                        exc.strerror or exc,
                    )
                    logged_at, failed = now, 0
                await anyio.sleep(ACCEPT_RETRY_S)
                continue
            connections.start_soon(self._handle, stream)

    # --- One connection ----------------------------------------------------------------

    async def _handle(self, stream: anyio.abc.ByteStream) -> None:
        """Serve one connection. Whatever happens here ends this connection alone."""
        fields = {"engine": "llama.cpp", "remote": _remote(stream)}
        try:
            connection = await self._handshake(stream)
            if connection is None:
                return
            try:
                async with connection.open():
                    await self._converse(connection, fields)
            finally:
                self.active_connections -= 1
        except ConnectionClosed:
            pass  # the client went away; its task, if any, was cancelled
        except Exception:
            logger.exception("unexpected failure while relaying a connection", extra=fields)
        finally:
            await anyio.aclose_forcefully(stream)

    async def _handshake(self, stream: anyio.abc.ByteStream) -> ServerConnection | None:
        """The connection, accepted and counted in :attr:`active_connections`; None when
        it was refused (and closed), failed, or ran out of time.

        Raises:
            ConnectionClosed: the client went while it was answered.
        """
        with self._handshake_slot():
            if self._ssl_context is not None:
                try:
                    stream = await TLSStream.wrap(
                        stream,
                        server_side=True,
                        ssl_context=self._ssl_context,
                        standard_compatible=False,
                    )
                except (*LOST, ssl.SSLError):
                    return None
            connection = ServerConnection(stream, max_message_bytes=self._max_message_bytes)
            try:
                request = await connection.receive_request()
            except HandshakeFailed:
                return None
            if self._expected is not None and not self._authorized(request.extra_headers):
                if await self._slowed(stream):
                    await connection.reject(401, b"a valid bearer token is required")
                return None
            if self.active_connections >= self._max_connections:
                await connection.reject(503, b"too many connections; try again later")
                return None
            self.active_connections += 1
            try:
                await connection.accept()
            except BaseException:
                self.active_connections -= 1
                raise
            return connection
        return None  # dropped: too slow, or the oldest of too many

    @contextmanager
    def _handshake_slot(self) -> Iterator[None]:
        """A bound on one handshake: ``handshake_timeout_s``, and a place among at most
        ``max_handshakes`` (the oldest is dropped for a new one)."""
        if len(self._handshakes) >= self._max_handshakes:
            oldest = next(iter(self._handshakes))
            self._handshakes.pop(oldest).cancel()
        key = object()
        with anyio.move_on_after(self._handshake_timeout_s) as scope:
            self._handshakes[key] = scope
            try:
                yield
            finally:
                self._handshakes.pop(key, None)

    async def _slowed(self, stream: anyio.abc.ByteStream) -> bool:
        """Wait as the throttle says before a wrong token is answered; False when it is
        to be closed unanswered instead."""
        if self._wrong_tokens is None:
            return True
        address = stream.extra(SocketAttribute.remote_address, None)
        host = address[0] if isinstance(address, tuple) else str(address)
        wait = self._wrong_tokens.wrong(address_key(host), anyio.current_time())
        if wait is None:
            return False
        if wait > 0:
            await anyio.sleep(wait)
        return True

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        assert self._expected is not None
        given = b""
        for name, value in headers:
            if name.lower() == b"authorization":
                given = value
        return hmac.compare_digest(given, self._expected)

    async def _converse(self, connection: ServerConnection, fields: dict[str, Any]) -> None:
        """Take the client's task and relay its stream; close the connection with the
        code that says how it ended."""
        message: str | bytes | None = None
        with anyio.move_on_after(self._idle_timeout_s):
            message = await connection.next_message()
        if message is None:
            await connection.close(CLOSE_IDLE, "no task within the idle timeout")
            return
        try:
            task, pool, window = self._parse_task(message)
        except BadTask as exc:
            error = encode_error("BAD_TASK", str(exc), retriable=False)
            await connection.send_message(error.decode())
            await connection.close(CLOSE_BAD_TASK, "bad task")
            return
        fields["job_id"] = task.job_id
        credit = _Credit(window)
        closing: tuple[int, str] | None = None
        async with anyio.create_task_group() as watch:
            with anyio.CancelScope() as relaying:
                watch.start_soon(_take_acks, connection, relaying, credit)
                closing = await self._relay(connection, task, pool, fields, credit)
            watch.cancel_scope.cancel()
        if credit.violation is not None:
            closing = CLOSE_BAD_TASK, credit.violation
        if closing is not None:
            await connection.close(*closing)

    async def _relay(
        self,
        connection: ServerConnection,
        task: TaskRequest | ChatRequest,
        pool: str | None,
        fields: dict[str, Any],
        credit: _Credit,
    ) -> tuple[int, str] | None:
        """Stream *task* to the client; the close code and reason (None: it is gone).
        An event is taken from the stream only once the client may have it (its window
        has room): a client's consumer that stops taking events stops the stream too."""
        try:
            async with self._submit(task, pool) as events:
                self.streams[task.job_id] = events
                try:
                    async for event in events:
                        message = encode_event(event).decode()
                        if not await credit.room(self._idle_timeout_s):
                            logger.info("relay client stopped reading", extra=fields)
                            return CLOSE_IDLE, "the client stopped reading"
                        credit.sent += 1  # queued from here on: it may be acknowledged
                        if not await connection.send_message(
                            message, timeout_s=self._idle_timeout_s
                        ):
                            logger.info("relay client stopped reading", extra=fields)
                            return CLOSE_IDLE, "the client stopped reading"
                finally:
                    self.streams.pop(task.job_id, None)
        except ConnectionClosed:
            logger.info("relay client went away", extra=fields)
            return None
        except WorkerError as exc:
            status = exc.status if isinstance(exc, AdapterError) else None
            error = encode_error(exc.code, exc.message, retriable=exc.retriable, status=status)
            await connection.send_message(error.decode())
            return CLOSE_TASK_FAILED, exc.code
        return CLOSE_NORMAL, "end"

    def _submit(
        self, task: TaskRequest | ChatRequest, pool: str | None
    ) -> AbstractAsyncContextManager[EventReceiveStream]:
        if isinstance(self._target, AdapterHost):
            return self._target.submit(pool or self._pool or "", task)
        return self._target.submit(task)

    def _parse_task(
        self, message: str | bytes
    ) -> tuple[TaskRequest | ChatRequest, str | None, int | None]:
        task, pool, window, fields = decode_task(message)
        if pool is not None and not isinstance(self._target, AdapterHost):
            raise BadTask("this relay serves one engine: a task may not name a pool")
        if "extra" in fields and not self._allow_extra:
            raise BadTask("this relay does not take extra llama.cpp fields")
        return task, pool, window


class _Credit:
    """The messages a client lets the relay send: *window* past those it acknowledged
    (``None``: no bound, for a client that sends no acknowledgements)."""

    def __init__(self, window: int | None) -> None:
        self.window = window
        self.sent = 0
        self.acked = 0
        self.violation: str | None = None  # why the client's messages broke the protocol
        self._acked = anyio.Event()

    def ack(self, taken: int) -> None:
        """The client has taken the first *taken* messages.

        Raises:
            ProtocolError: when it acknowledges messages never sent, or fewer than
                before, or sends acknowledgements it did not announce.
        """
        if self.window is None:
            raise ProtocolError("an ack from a client that asked for no window")
        if not self.acked <= taken <= self.sent:
            raise ProtocolError(f"an ack of {taken} messages, after {self.acked}, of {self.sent}")
        self.acked = taken
        acked, self._acked = self._acked, anyio.Event()
        acked.set()

    async def room(self, timeout_s: float) -> bool:
        """Wait, up to *timeout_s*, until one more message may be sent; whether it may."""
        window = self.window
        if window is None or self.sent - self.acked < window:
            return True
        with anyio.move_on_after(timeout_s):
            while self.sent - self.acked >= window:
                await self._acked.wait()
            return True
        return False


async def _take_acks(
    connection: ServerConnection, scope: anyio.CancelScope, credit: _Credit
) -> None:
    """Read the client while its task runs: its acknowledgements move its window on;
    anything else, or the connection closing, cancels the task."""
    try:
        while True:
            credit.ack(decode_ack(await connection.next_message()))
    except ProtocolError as exc:
        credit.violation = str(exc)[:100]
    except ConnectionClosed:
        pass
    scope.cancel()


def _remote(stream: anyio.abc.ByteStream) -> str:
    address = stream.extra(SocketAttribute.remote_address, None)
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return str(address)


def handshake_budget() -> int:
    """The most handshakes that leave descriptors for clients that authenticate: a
    share of those free now under the process's limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_HANDSHAKES
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 0
    return max(1, int((soft - in_use) * HANDSHAKE_DESCRIPTOR_SHARE))


def check_token(token: str | None) -> None:
    """Raise ValueError unless *token* is None or a str long enough not to be guessed."""
    if token is not None and (not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS):
        raise ValueError(f"the token must be a str of at least {MIN_TOKEN_CHARS} characters")


def exposed(host: str, *, token: bool) -> bool:
    """Whether a relay listening on *host* lets anyone who reaches it run tasks: it has
    no *token*, and *host* is not loopback."""
    return not token and not is_loopback(host)


def is_loopback(host: str) -> bool:
    """Whether listening on *host* serves this machine alone."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any interface
