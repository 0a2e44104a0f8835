"""llama-server's wire format, for the scripted server and the tests that feed bytes to
the decoders: the status line and headers captured from a real server
(``golden/short.http``), its answers to ``/props``, ``/slots`` and ``/v1/models``, its
error bodies, and stream chunks shaped like its own, chunked as it chunks them. Every
test takes these from here, so that they say one thing."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

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


#: What llama-server's chat chunks carry beside their choices (from a capture).
CHAT_CHUNK_FIELDS = {
    "created": 1796543921,
    "id": "chatcmpl-ibSNRpEgrdxfGPxYZRSkbJYk6HAEORMQ",
    "model": "scripted.gguf",
    "system_fingerprint": "b0-unknown",
    "object": "chat.completion.chunk",
}


def chat_event(
    delta: dict[str, object] | None = None, *, finish: str | None = None, **fields: object
) -> bytes:
    """A chat chunk's SSE event as llama-server writes it: one choice with *delta* (no
    choice without one), then the chunk's own fields and *fields*."""
    choices = [] if delta is None else [{"finish_reason": finish, "index": 0, "delta": delta}]
    chunk = {"choices": choices, **CHAT_CHUNK_FIELDS, **fields}
    text = json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + text.encode() + b"\n\n"


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


async def read_request_from(receive: Callable[[], Awaitable[bytes]]) -> tuple[str, bytes]:
    """Read one request with *receive* (which gives b"" at the end of the stream);
    return its path and its body, or ``("", b"")`` if the client hung up first."""
    path, _, body = await read_whole_request(receive)
    return path, body


async def read_whole_request(
    receive: Callable[[], Awaitable[bytes]],
) -> tuple[str, bytes, bytes]:
    """As :func:`read_request_from`, with the request's head as it came (the request
    line and headers, and the blank line after them) between the path and the body."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = await receive()
        if not chunk or len(data) > _MAX_REQUEST_HEAD_BYTES:
            return "", b"", b""
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
            return "", b"", b""
        body += chunk
    return head.split(b" ")[1].decode(), head + b"\r\n\r\n", body


PROPS = (GOLDEN / "props.json").read_bytes()
SLOTS = (GOLDEN / "slots.json").read_bytes()
MODELS = (GOLDEN / "models.json").read_bytes()


#: llama-server's answer while it loads the model (``unavailable_error``, 503).
LOADING = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
#: A 429 in llama-server's error shape, as a proxy in front of it answers (llama-server
#: itself refuses with 503); sent with ``Retry-After``.
BUSY = {"error": {"code": 429, "message": "too many requests", "type": "rate_limit"}}
#: An engine failure inside an open stream.
OUT_OF_MEMORY = {"error": {"code": 500, "message": "out of memory", "type": "server_error"}}


def error_event(body: dict[str, object], *, older: bool = False) -> bytes:
    """The SSE event of an engine failure *body* (``{"error": {...}}``) inside a stream:
    ``data: {"error": ...}`` as newer builds write it, or (*older*) an ``error:`` field
    holding the error itself."""
    if older:
        return b"error: " + json.dumps(body["error"], separators=(",", ":")).encode() + b"\n\n"
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def busy_slots(*busy: int) -> bytes:
    """The captured ``/slots`` answer with the slots numbered *busy* processing a task."""
    return json.dumps(
        [dict(slot, is_processing=i in busy) for i, slot in enumerate(json.loads(SLOTS))]
    ).encode()
