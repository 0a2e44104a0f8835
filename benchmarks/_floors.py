"""Two clients that are not contenders but floors: what reading a paced stream costs
below httpx, so that the per-token figures can be read against them.

* ``h11_tokens``: HTTP/1.1 parsed by h11 (the parser under httpcore) on a bare Trio
  socket, SSE split on blank lines, ``json.loads`` of each payload: the cheapest correct
  client one could write without httpx.
* ``socket_tokens``: a bare Trio socket, no HTTP parsing at all: each read only counts
  the token chunks in it. This is the cost of Trio waking a task for each read.

Both send one request on a fresh connection and stop at the end of the body.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import h11
import trio

from llamacpp_adapter import TaskRequest, completion_body

_READ_BYTES = 65536
_TOKEN_MARK = b'"stop":false'
_LAST_CHUNK = b"0\r\n\r\n"


async def _connect(url: str, task: TaskRequest) -> tuple[trio.SocketStream, bytes]:
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"no host and port in {url!r}")
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    return stream, json.dumps(completion_body(task)).encode()


async def h11_tokens(url: str, task: TaskRequest) -> AsyncIterator[str]:
    """The text of each token, read with h11 on a Trio socket."""
    stream, body = await _connect(url, task)
    async with stream:
        connection = h11.Connection(h11.CLIENT)
        headers = [
            ("Host", "127.0.0.1"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ]
        await stream.send_all(
            connection.send(h11.Request(method="POST", target="/completion", headers=headers))
            + connection.send(h11.Data(data=body))
            + connection.send(h11.EndOfMessage())
        )
        pending = b""
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(_READ_BYTES))
            elif isinstance(event, h11.Data):
                *complete, pending = (pending + bytes(event.data)).split(b"\n\n")
                for block in complete:
                    if block.startswith(b"data: "):
                        chunk = json.loads(block[6:])
                        if not chunk["stop"]:
                            yield chunk["content"]
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return


async def socket_tokens(url: str, task: TaskRequest) -> AsyncIterator[str]:
    """An empty string for each token chunk, read on a Trio socket with no parsing."""
    stream, body = await _connect(url, task)
    async with stream:
        head = (
            "POST /completion HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        await stream.send_all(head.encode() + body)
        tail = b""  # too short to hold a whole mark, so none is counted twice
        while data := await stream.receive_some(_READ_BYTES):
            data = tail + data
            for _ in range(data.count(_TOKEN_MARK)):
                yield ""
            if data.endswith(_LAST_CHUNK):
                return
            tail = data[-(len(_TOKEN_MARK) - 1) :]
