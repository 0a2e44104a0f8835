"""A scripted fault server for the fault matrix. It is written with anyio, so it runs on
the test's own event loop, Trio or asyncio, and speaks llama-server's wire format byte
for byte: the stream's status line and headers are a real server's (see ``stub``),
bodies are chunked as it chunks them, and each test scripts what goes wrong."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc
import trustme
from anyio.streams.tls import TLSStream

from .stub import read_request_from

#: A fault: what the server does with one connection, once it has read the request.
Script = Callable[["Connection"], Awaitable[None]]

#: How long the server waits for its connections to close before a test gives up.
IDLE_WAIT_S = 10.0


@dataclass
class Connection:
    """One accepted connection, as a script sees it: the request it is answering."""

    stream: anyio.abc.ByteStream
    path: str
    body: bytes

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def next_request(self) -> bool:
        """Read the next request on this connection (keep-alive); False if the client
        closed it instead."""
        self.path, self.body = await read_request_from(lambda: _receive_or_empty(self.stream))
        return bool(self.path)

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
class FaultServer:
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
async def fault_server(
    script: Script, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[FaultServer]:
    """Serve *script* on a free port on 127.0.0.1 (over TLS with *ssl_context*) for the
    block; every connection is closed when it ends."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    scheme = "http" if ssl_context is None else "https"
    server = FaultServer(f"{scheme}://127.0.0.1:{port}", script, ssl_context)
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, server._serve)
        try:
            yield server
        finally:
            group.cancel_scope.cancel()
