"""The one scripted server of the tests, for faults a real llama-server cannot be made
to show. It is written with anyio, so it runs on the test's own event loop (Trio, with
its MockClock, or asyncio), and speaks llama-server's wire format byte for byte (see
``wire``); each test scripts what one connection gets."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import anyio.abc
import trustme
from anyio.streams.tls import TLSStream

from .wire import (
    LAST_CHUNK,
    MODELS,
    PROPS,
    SLOTS,
    STREAM_HEAD,
    chunked,
    final_event,
    json_response,
    raw_json_response,
    read_whole_request,
    token_event,
)

#: A fault: what the server does with one connection, once it has read the request.
Script = Callable[["Connection"], Awaitable[None]]


class Starter(Protocol):
    """A Trio nursery or an anyio task group: what can ``start`` a task."""

    async def start(self, function: Callable[..., Awaitable[Any]], *args: Any) -> Any: ...


#: How long the server waits for its connections to close before a test gives up.
IDLE_WAIT_S = 10.0


@dataclass
class Connection:
    """One accepted connection, as a script sees it: the request it is answering."""

    stream: anyio.abc.ByteStream
    path: str
    body: bytes
    #: The request's head as it came: its request line, headers and blank line.
    head: bytes = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def next_request(self) -> bool:
        """Read the next request on this connection (keep-alive); False if the client
        closed it instead."""
        self.path, self.head, self.body = await read_whole_request(self._receive)
        return bool(self.path)

    async def _receive(self) -> bytes:
        return await _receive_or_empty(self.stream)

    async def wait_for_hang_up(self) -> None:
        """Return once the client has closed the connection (whatever it sends first)."""
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while True:
                await self.stream.receive()

    def reset_on_close(self) -> None:
        """Make closing this connection send a TCP reset, not a clean FIN (SO_LINGER 0)."""
        raw = self.stream.extra(anyio.abc.SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@dataclass
class ScriptedServer:
    """A running fault server: its URL, and the connections it has open."""

    url: str
    script: Script
    ssl_context: ssl.SSLContext | None = None
    open_connections: int = 0
    #: The paths of the requests that opened connections, and how many of each.
    requests: Counter[str] = field(default_factory=Counter)
    _idle: anyio.Event = field(default_factory=anyio.Event)

    async def wait_idle(self) -> None:
        """Return once every connection the server accepted is closed."""
        with anyio.fail_after(IDLE_WAIT_S):
            while self.open_connections:
                await self._idle.wait()

    async def _serve(self, client: anyio.abc.SocketStream) -> None:
        self.open_connections += 1
        stream: anyio.abc.ByteStream = client
        try:
            if self.ssl_context is not None:
                stream = await TLSStream.wrap(client, ssl_context=self.ssl_context)
            connection = Connection(stream, "", b"")
            if await connection.next_request():
                self.requests[connection.path] += 1
                await self.script(connection)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, ssl.SSLError, OSError):
            pass  # the client went away (or refused the certificate)
        finally:
            await anyio.aclose_forcefully(stream)
            self.open_connections -= 1
            if not self.open_connections:
                self._idle.set()
                self._idle = anyio.Event()


def tls_server_context(authority: trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 issued by *authority*."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    return context


async def _receive_or_empty(stream: anyio.abc.ByteStream) -> bytes:
    try:
        return await stream.receive()
    except anyio.EndOfStream:
        return b""


@contextlib.asynccontextmanager
async def scripted_server(
    script: Script, *, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[ScriptedServer]:
    """Serve *script* on a free port of *host*, an address (over TLS with *ssl_context*)
    for the block; every connection is closed when it ends."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    scheme = "http" if ssl_context is None else "https"
    netloc = f"[{host}]" if ":" in host else host
    server = ScriptedServer(f"{scheme}://{netloc}:{port}", script, ssl_context)
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, server._serve)
        try:
            yield server
        finally:
            group.cancel_scope.cancel()


async def serve_script(
    script: Script,
    *,
    ssl_context: ssl.SSLContext | None = None,
    task_status: anyio.abc.TaskStatus[ScriptedServer] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *script* until cancelled; with ``start``, returns the running server."""
    async with scripted_server(script, ssl_context=ssl_context) as server:
        task_status.started(server)
        await anyio.sleep_forever()


async def start_server(group: Starter, script: Script) -> str:
    """Serve *script* in *group* (a Trio nursery or an anyio task group) until it ends;
    return the base URL."""
    server: ScriptedServer = await group.start(serve_script, script)
    return server.url


def replica(completion: Script, *, slots: bytes = SLOTS) -> Script:
    """A script that answers ``/props``, ``/slots``, ``/v1/models`` and ``/health`` as
    the captured server did, and hands ``/completion`` to *completion*."""

    async def handle(connection: Connection) -> None:
        if connection.path == "/props":
            await connection.send(raw_json_response(200, "OK", PROPS))
        elif connection.path == "/slots":
            await connection.send(raw_json_response(200, "OK", slots))
        elif connection.path == "/v1/models":
            await connection.send(raw_json_response(200, "OK", MODELS))
        elif connection.path == "/health":
            await connection.send(json_response(200, "OK", {"status": "ok"}))
        else:
            await completion(connection)

    return handle


async def stream_tokens(connection: Connection, count: int) -> None:
    """A whole stream of *count* tokens and its final chunk."""
    body = b"".join(token_event(n) for n in range(1, count + 1)) + final_event(count)
    await connection.send(STREAM_HEAD + chunked(body) + LAST_CHUNK)
