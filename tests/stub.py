"""A scripted HTTP server on 127.0.0.1 for faults a real llama-server cannot be made to
show. It speaks llama-server's wire format: the status line and headers are those
captured from a real server (``golden/short.http``), bodies are chunked as it chunks
them, and stream chunks are shaped like its own."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

GOLDEN = Path(__file__).parent / "golden"
# The real stream response's status line and headers, up to and with the blank line.
STREAM_HEAD = (GOLDEN / "short.http").read_bytes().split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
#: What llama-server says of keep-alive when the request did not ask it to close. After
#: a streamed response it closes the connection all the same.
KEEP_ALIVE = b"Keep-Alive: timeout=5, max=100\r\n"
#: The stream's head as it comes to a request that did not ask to close.
KEPT_STREAM_HEAD = STREAM_HEAD.replace(b"Connection: close\r\n", KEEP_ALIVE)
LAST_CHUNK = b"0\r\n\r\n"
_MAX_REQUEST_HEAD_BYTES = 64 * 1024

Handler = Callable[[trio.SocketStream, str], Awaitable[None]]


def chunked(data: bytes) -> bytes:
    """*data* as one chunk of a chunked body."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


def token_event(n: int, content: str = " word") -> bytes:
    """The SSE event of the n-th token (from 1), as llama-server writes it."""
    chunk = {
        "index": 0,
        "content": content,
        "tokens": [300 + n % 100],
        "stop": False,
        "id_slot": -1,
        "tokens_predicted": n,
        "tokens_evaluated": 3,
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def final_event(n: int) -> bytes:
    """The final SSE event of a stream of n tokens, from a real capture."""
    captured = (GOLDEN / "short.sse").read_bytes().strip().split(b"\n\n")[-1]
    chunk = json.loads(captured.removeprefix(b"data: "))
    chunk["tokens_predicted"] = n
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def json_response(
    status: int, reason: str, body: object, headers: str = "", *, kept: bool = False
) -> bytes:
    """A JSON answer shaped like llama-server's (see :func:`raw_json_response`)."""
    return raw_json_response(
        status, reason, json.dumps(body, separators=(",", ":")).encode(), headers, kept=kept
    )


def raw_json_response(
    status: int, reason: str, payload: bytes, headers: str = "", *, kept: bool = False
) -> bytes:
    """A JSON answer shaped like llama-server's, with *payload* as its body, unchanged:
    closing the connection, or (*kept*) keeping it for the next request."""
    connection = KEEP_ALIVE if kept else b"Connection: close\r\n"
    return (
        (
            f"HTTP/1.1 {status} {reason}\r\nServer: llama.cpp\r\nAccess-Control-Allow-Origin: \r\n"
            f"Content-Type: application/json; charset=utf-8\r\nContent-Length: {len(payload)}\r\n"
            f"{headers}"
        ).encode()
        + connection
        + b"\r\n"
        + payload
    )


async def read_request(stream: trio.SocketStream) -> tuple[str, bytes]:
    """Read one request (head and body); return its path and its body."""
    return await read_request_from(stream.receive_some)


async def read_request_from(receive: Callable[[], Awaitable[bytes]]) -> tuple[str, bytes]:
    """Read one request with *receive* (which gives b"" at the end of the stream);
    return its path and its body, or ``("", b"")`` if the client hung up first."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = await receive()
        if not chunk or len(data) > _MAX_REQUEST_HEAD_BYTES:
            return "", b""
        data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = await receive()
        if not chunk:
            return "", b""
        body += chunk
    return head.split(b" ")[1].decode(), body


async def start_stub(nursery: trio.Nursery, handler: Handler) -> str:
    """Serve *handler* for every connection; return the base URL."""

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            path, _ = await read_request(stream)
            with contextlib.suppress(trio.BrokenResourceError):  # the client went away
                await handler(stream, path)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return f"http://127.0.0.1:{port}"


PROPS = (GOLDEN / "props.json").read_bytes()
SLOTS = (GOLDEN / "slots.json").read_bytes()
MODELS = (GOLDEN / "models.json").read_bytes()


def replica(completion: Handler, *, slots: bytes = SLOTS) -> Handler:
    """A handler that answers ``/props``, ``/slots``, ``/v1/models`` and ``/health`` as
    the captured server did, and hands ``/completion`` to *completion*."""

    async def handle(stream: trio.SocketStream, path: str) -> None:
        if path == "/props":
            await stream.send_all(raw_json_response(200, "OK", PROPS))
        elif path == "/slots":
            await stream.send_all(raw_json_response(200, "OK", slots))
        elif path == "/v1/models":
            await stream.send_all(raw_json_response(200, "OK", MODELS))
        elif path == "/health":
            await stream.send_all(json_response(200, "OK", {"status": "ok"}))
        else:
            await completion(stream, path)

    return handle


async def stream_tokens(stream: trio.SocketStream, count: int) -> None:
    """A whole stream of *count* tokens and its final chunk."""
    body = b"".join(token_event(n) for n in range(1, count + 1)) + final_event(count)
    await stream.send_all(STREAM_HEAD + chunked(body) + LAST_CHUNK)
