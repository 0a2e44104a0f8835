"""Chat streams (``/v1/chat/completions``) on loopback: one stream of N content deltas in
the captured chunks' shape, read through the adapter (``ChatRequest``), the openai SDK's
async client, and httpx + httpx-sse + ``json.loads``, on asyncio; each client a fresh
process on the client's core, the stub server on the other."""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

from ._common import SERVER_CORE, Table, Target, pinned, run_client, stub_server

ADAPTER = "llamacpp-adapter"
OPENAI = "openai SDK"
HTTPX_SSE = "httpx + httpx-sse + json.loads"
CLIENTS = (ADAPTER, OPENAI, HTTPX_SSE)
MESSAGES = [{"role": "user", "content": "hi"}]


async def _adapter(url: str, events: int) -> int:
    from llamacpp_adapter import ChatRequest, LlamaCppHttpAdapter, Token

    extra = {"bench_mode": "chat_burst", "bench_events": events}
    count = 0
    async with (
        LlamaCppHttpAdapter(url) as adapter,
        adapter.submit(ChatRequest(MESSAGES, extra=extra)) as stream,
    ):
        async for event in stream:
            if type(event) is Token:
                count += 1
    return count


async def _openai(url: str, events: int) -> int:
    import openai

    count = 0
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none") as client:
        stream = await client.chat.completions.create(
            model="m",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            extra_body={"bench_mode": "chat_burst", "bench_events": events},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                count += 1
    return count


async def _httpx_sse(url: str, events: int) -> int:
    import httpx
    from httpx_sse import aconnect_sse

    body = {"messages": MESSAGES, "stream": True, "bench_mode": "chat_burst"}
    body["bench_events"] = events
    count = 0
    async with (
        httpx.AsyncClient(timeout=60) as client,
        aconnect_sse(client, "POST", f"{url}/v1/chat/completions", json=body) as source,
    ):
        async for sse in source.aiter_sse():
            if sse.data == "[DONE]":
                break
            chunk = json.loads(sse.data)
            choices = chunk["choices"]
            if choices and choices[0]["delta"].get("content"):
                count += 1
    return count


READERS = {ADAPTER: _adapter, OPENAI: _openai, HTTPX_SSE: _httpx_sse}
#: What each client imports: loaded before the clock starts, which times the stream.
MODULES = {ADAPTER: ["llamacpp_adapter"], OPENAI: ["openai"], HTTPX_SSE: ["httpx", "httpx_sse"]}


def _client(spec: dict[str, Any]) -> dict[str, float]:
    """In a fresh process: one read of the stream by one client; its events/s."""
    import asyncio
    import importlib

    for module in MODULES[spec["client"]]:
        importlib.import_module(module)
    start = time.perf_counter()
    count = asyncio.run(READERS[spec["client"]](spec["url"], spec["events"]))
    elapsed = time.perf_counter() - start
    assert count == spec["events"], (spec["client"], count)
    return {"rate": count / elapsed}


def chat_bulk(url: str, *, quick: bool) -> tuple[Table, list[Target]]:
    events = 50_000 if quick else 200_000
    rounds = 3 if quick else 5
    rates: dict[str, list[float]] = {client: [] for client in CLIENTS}
    # The stub makes a stream's bytes at its first request for that size: not in a round.
    run_client(
        "benchmarks.bench_chat", json.dumps({"client": ADAPTER, "url": url, "events": events})
    )
    for n in range(rounds):
        for client in CLIENTS if n % 2 == 0 else CLIENTS[::-1]:
            spec = json.dumps({"client": client, "url": url, "events": events})
            rates[client].append(run_client("benchmarks.bench_chat", spec)["rate"])
    rate = {client: statistics.median(values) for client, values in rates.items()}
    table = Table(
        f"Chat stream, loopback, asyncio: one stream of {events:,} content deltas",
        ["client", "events/s (median)", "adapter's factor"],
        notes=[
            f"The median of {rounds} rounds, the clients in alternating order, each run a "
            "fresh process on the client's core, timed from its request to the stream's "
            "end (its imports done before); the chunks are the captured chat chunks' "
            "shape (the stub's chat_burst).",
        ],
    )
    for client in CLIENTS:
        table.add(client, rate[client], f"{rate[ADAPTER] / rate[client]:.2f}x")
    over_sdk = rate[ADAPTER] / rate[OPENAI]
    over_sse = rate[ADAPTER] / rate[HTTPX_SSE]
    return table, [
        Target("chat bulk >= 10x the openai SDK", f"{over_sdk:.1f}x", over_sdk >= 10, over_sdk, 10),
        Target(
            "chat bulk >= 3x httpx + httpx-sse + json.loads",
            f"{over_sse:.2f}x",
            over_sse >= 3,
            over_sse,
            3,
        ),
    ]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("{"):
        print(json.dumps(_client(json.loads(sys.argv[1]))))
    else:
        with pinned(SERVER_CORE), stub_server() as stub:
            print(chat_bulk(stub, quick="--quick" in sys.argv)[0].markdown())
