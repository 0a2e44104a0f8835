"""A WebSocket client on a raw socket, for the tests that play a hostile client: frames
written by hand where they must break the rules, wsproto's client where they need not."""

from __future__ import annotations

import socket
import struct

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Event, RejectConnection, Request

#: How long the relay may take to close what it must close.
CLOSE_WITHIN_S = 5.0


def handshake(port: int, token: str | None) -> bytes:
    """A client's opening handshake, with *token* as its bearer token."""
    lines = [
        "GET / HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True) -> bytes:
    """A client's frame, written by hand so that it can break the rules."""
    first = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if masked else 0
    if len(payload) < 126:
        length = bytes([mask_bit | len(payload)])
    else:
        length = bytes([mask_bit | 126]) + struct.pack("!H", len(payload))
    if not masked:
        return first + length + payload
    mask = b"\x01\x02\x03\x04"
    return first + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


def reset_on_close(stream: trio.SocketStream) -> None:
    """Make closing *stream* send a TCP reset, not a FIN."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def read_to_eof(stream: trio.SocketStream, within_s: float = CLOSE_WITHIN_S) -> bytes:
    """Everything the server sends until it closes the connection, which it must do
    within *within_s*."""
    got = b""
    with trio.fail_after(within_s):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return got  # a reset ends it too
            if not data:
                return got
            got += data


async def open_websocket(port: int, token: str | None) -> tuple[trio.SocketStream, WSConnection]:
    """A raw connection past its handshake."""
    stream = await connect(port)
    protocol = WSConnection(ConnectionType.CLIENT)
    headers = [] if token is None else [(b"Authorization", f"Bearer {token}".encode())]
    request = Request(host="127.0.0.1", target="/", extra_headers=headers)
    await stream.send_all(protocol.send(request))
    while True:
        protocol.receive_data(await stream.receive_some(65536))
        events = list(protocol.events())
        if any(isinstance(e, AcceptConnection) for e in events):
            return stream, protocol
        assert not any(isinstance(e, RejectConnection) for e in events), events


async def events_to_eof(stream: trio.SocketStream, protocol: WSConnection) -> list[Event]:
    """What the server sends until it closes the connection (within ``CLOSE_WITHIN_S``),
    its close answered as a client does."""
    events: list[Event] = []
    with trio.fail_after(CLOSE_WITHIN_S):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            protocol.receive_data(data or None)
            for event in protocol.events():
                events.append(event)
                if isinstance(event, CloseConnection) and data:
                    await stream.send_all(protocol.send(event.response()))
            if not data:
                return events


def closes(events: list[Event]) -> list[tuple[int, str]]:
    """The close frames among *events*: code and reason."""
    return [(e.code, e.reason) for e in events if isinstance(e, CloseConnection)]
