"""A llama.cpp-shaped stream server for the benchmarks, run in its own process so that
it does not share the measured client's core.

    python -m benchmarks._server PORT_FILE [CERT_AND_KEY_PEM]

It listens on 127.0.0.1 (a free port, written to PORT_FILE; over TLS with a certificate
and key file), answers ``/props``, ``/slots``, ``/v1/models`` and ``/health`` as the
captured server did, keeping the connection for the next request as llama-server does
(it closes it after a stream, and when the client asks), and answers every
other request with a streamed SSE body in llama-server's wire format, built with the test suite's
wire fixtures (``tests/support/wire.py``: the captured status line and headers, chunked
bodies). The request's JSON body picks
what it streams, through fields the adapter forwards from ``TaskRequest.extra``:

* ``bench_mode: "burst"``, ``bench_events: N``: N token chunks and the final chunk, as
  fast as the socket takes them (written in 64 KiB pieces).
* ``bench_mode: "paced"``, ``bench_events: N``, ``bench_interval_ms: T``: one token per
  write, every T ms, on one grid for every stream (as a batched engine writes them);
  each token's content is the server's ``time.monotonic_ns()`` at the write, so a
  client can tell how long it took to reach it.
  With ``bench_run: ID`` and ``bench_together: N`` too, its first token waits until N
  streams of run ID have their heads (or ``TOGETHER_MAX_S``), and the run's grids are
  spread evenly over the interval, in the order the streams came: a client that opens
  thousands of streams then measures them all under way, the server spends nothing on
  tokens while they open (sending the tokens of 10,000 paced streams, it accepted the
  last 40 to 50 s after the first), and its writes come as steadily as N streams that
  began at any time would send them.
* ``bench_mode: "bytes"``, ``bench_bytes: B``: token chunks up to B bytes of body.
* ``bench_mode: "idle"``: one token, then nothing until the client goes away.
* ``bench_mode: "chat_burst"``, ``bench_events: N``: N content deltas of the chat
  endpoint's stream (the captured chunks' shape), its finish, its usage and
  ``[DONE]``, as fast as the socket takes them.
* ``bench_mode: "chat_paced"``: as ``"paced"``, in the chat endpoint's chunks.
"""

from __future__ import annotations

import functools
import json
import math
import os
import ssl
import sys
import time

import trio

from tests.support.wire import (
    LAST_CHUNK,
    MODELS,
    PROPS,
    SLOTS,
    STREAM_HEAD,
    chat_event,
    chunked,
    final_event,
    json_response,
    raw_json_response,
    read_request_from,
    token_event,
)

# What the captured server answered to these, for a client that asks (AdapterHost does).
CAPTURED = {"/props": PROPS, "/slots": SLOTS, "/v1/models": MODELS, "/health": b'{"status":"ok"}'}


def _with_slots(slots: int) -> None:
    """Say, to a client that asks, that the server has *slots* slots, all idle."""
    props = json.loads(PROPS)
    props["total_slots"] = slots
    captured = json.loads(SLOTS)
    entries = [{**captured[n % len(captured)], "id": n} for n in range(slots)]
    CAPTURED["/props"] = json.dumps(props).encode()
    CAPTURED["/slots"] = json.dumps(entries).encode()


if os.environ.get("BENCH_SLOTS"):
    _with_slots(int(os.environ["BENCH_SLOTS"]))

CONTENTS = [" the", " model", " streams", " token", "s", " at", " a", " steady", " pace", "."]
WRITE_BYTES = 65536


def burst_body(events: int) -> bytes:
    tokens = b"".join(token_event(n, CONTENTS[n % len(CONTENTS)]) for n in range(1, events + 1))
    body = tokens + final_event(events)
    return b"".join(chunked(body[i : i + WRITE_BYTES]) for i in range(0, len(body), WRITE_BYTES))


CHAT_START = chat_event({"role": "assistant", "content": None})


def chat_end(events: int) -> bytes:
    """The end of a chat stream of *events* content deltas: its finish, usage, [DONE]."""
    usage = {"completion_tokens": events, "prompt_tokens": 5, "total_tokens": events + 5}
    return chat_event({}, finish="length") + chat_event(None, usage=usage) + b"data: [DONE]\n\n"


def chat_burst_body(events: int) -> bytes:
    """A chat stream of *events* content deltas, as llama-server writes it."""
    body = b"".join(
        [
            CHAT_START,
            *(chat_event({"content": CONTENTS[n % len(CONTENTS)]}) for n in range(events)),
            chat_end(events),
        ]
    )
    return b"".join(chunked(body[i : i + WRITE_BYTES]) for i in range(0, len(body), WRITE_BYTES))


_burst_cache: dict[int, bytes] = {}
_chat_cache: dict[int, bytes] = {}
#: llama-server's answer to /metrics when it was started without --metrics.
NO_METRICS = {
    "error": {
        "code": 501,
        "message": "This server does not support metrics endpoint. Start it with `--metrics`",
        "type": "not_supported_error",
    }
}


#: The longest a paced stream waits for the rest of its run (``bench_together``).
TOGETHER_MAX_S = 60.0
#: Each run's streams that have their heads, and what they wait on, by the run's id.
_runs: dict[str, tuple[list[int], trio.Event]] = {}


async def _together(request: dict[str, object]) -> float:
    """Wait until ``bench_together`` streams of the request's ``bench_run`` have come
    this far (or ``TOGETHER_MAX_S``); at once without them. Returns where in the
    interval the stream's grid lies, as a share of it: the run's streams spread evenly
    over it in the order they came (0 without a run)."""
    run, together = request.get("bench_run"), request.get("bench_together")
    if not isinstance(run, str) or not isinstance(together, int):
        return 0.0
    arrived, all_here = _runs.setdefault(run, ([0], trio.Event()))
    place = arrived[0] / together
    arrived[0] += 1
    if arrived[0] >= together:
        all_here.set()
        del _runs[run]
    with trio.move_on_after(TOGETHER_MAX_S):
        await all_here.wait()
    return place


def _answer(path: str, body: bytes) -> bytes:
    """The answer to a request that streams nothing: a captured one, a token a word of
    the content for /tokenize, and no metrics."""
    if path == "/tokenize":
        words = json.loads(body).get("content", "").split()
        return json_response(
            200, "OK", {"tokens": [300 + n % 100 for n in range(len(words))]}, kept=True
        )
    if path == "/metrics":
        return json_response(501, "Not Implemented", NO_METRICS, kept=True)
    return raw_json_response(200, "OK", CAPTURED[path], kept=True)


async def serve(stream: trio.abc.Stream) -> None:
    try:
        path, body = await read_request_from(stream.receive_some)
        while path in CAPTURED or path in ("/tokenize", "/metrics"):
            await stream.send_all(_answer(path, body))
            path, body = await read_request_from(stream.receive_some)
        if not path:
            return  # the client closed the connection
        request = json.loads(body) if body else {}
        mode = request.get("bench_mode", "burst")
        await stream.send_all(STREAM_HEAD)
        if mode == "burst":
            events = int(request.get("bench_events", 1000))  # type: ignore[call-overload]
            if events not in _burst_cache:
                _burst_cache[events] = burst_body(events)
            await stream.send_all(_burst_cache[events] + LAST_CHUNK)
        elif mode == "paced":
            events = int(request.get("bench_events", 100))  # type: ignore[call-overload]
            interval = float(request.get("bench_interval_ms", 50)) / 1000  # type: ignore[arg-type]
            phase = await _together(request) * interval
            # Every stream writes on one grid of the interval, whenever it began: as
            # llama-server, whose slots decode in one batch a step, sends their tokens.
            next_at = math.floor(trio.current_time() / interval) * interval + phase
            for n in range(1, events + 1):
                next_at += interval
                await trio.sleep_until(next_at)
                await stream.send_all(chunked(token_event(n, str(time.monotonic_ns()))))
            await stream.send_all(chunked(final_event(events)) + LAST_CHUNK)
        elif mode == "chat_paced":
            # As "paced", in the chat endpoint's chunks: the server's write time as text.
            events = int(request.get("bench_events", 100))  # type: ignore[call-overload]
            interval = float(request.get("bench_interval_ms", 50)) / 1000  # type: ignore[arg-type]
            await stream.send_all(chunked(CHAT_START))
            next_at = math.floor(trio.current_time() / interval) * interval
            for _ in range(events):
                next_at += interval
                await trio.sleep_until(next_at)
                await stream.send_all(chunked(chat_event({"content": str(time.monotonic_ns())})))
            await stream.send_all(chunked(chat_end(events)) + LAST_CHUNK)
        elif mode == "bytes":
            limit = int(request.get("bench_bytes", 1 << 20))  # type: ignore[call-overload]
            sent, n = 0, 0
            while sent < limit:
                # 500 tokens a write, with rising counts as a real engine sends them.
                data = chunked(b"".join(token_event(n + k, " word") for k in range(1, 501)))
                n += 500
                await stream.send_all(data)
                sent += len(data)
            await stream.send_all(chunked(final_event(n)) + LAST_CHUNK)
        elif mode == "chat_burst":
            events = int(request.get("bench_events", 1000))  # type: ignore[call-overload]
            if events not in _chat_cache:
                _chat_cache[events] = chat_burst_body(events)
            await stream.send_all(_chat_cache[events] + LAST_CHUNK)
        elif mode == "idle":
            await stream.send_all(chunked(token_event(1, " hello")))
            await stream.receive_some()  # until the client goes away
    except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
        pass
    finally:
        await stream.aclose()


async def main(port_file: trio.Path, cert_and_key: str | None) -> None:
    if cert_and_key is None:
        start = functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1", backlog=4096)
    else:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_and_key)
        start = functools.partial(
            trio.serve_ssl_over_tcp, serve, 0, context, host="127.0.0.1", backlog=4096
        )
    async with trio.open_nursery() as nursery:
        listener = (await nursery.start(start))[0]
        if isinstance(listener, trio.SSLListener):
            listener = listener.transport_listener
        await port_file.write_text(str(listener.socket.getsockname()[1]))


if __name__ == "__main__":
    trio.run(main, trio.Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
