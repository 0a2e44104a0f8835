"""Chat streams (``/v1/chat/completions``) on loopback, on asyncio; each client a fresh
process on the client's core, the stub server on the other.

* bulk: one stream of N content deltas in the captured chunks' shape, read through the
  adapter (``ChatRequest``), the openai SDK's async client, and httpx + httpx-sse +
  ``json.loads``;
* paced: N chat streams, one delta per write on the server's grid, read through the
  adapter and the openai SDK, beside the adapter's own completion stream paced alike.

    python -m benchmarks.bench_chat [--quick]   # this case alone
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from ._common import (
    SERVER_CORE,
    Table,
    Target,
    TokenMeter,
    pinned,
    pull_streams,
    request,
    run_as_script,
    run_client,
    stub_server,
)

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


# --- Paced: many streams, one delta per write ------------------------------------------------

CHAT = "llamacpp-adapter, chat"
COMPLETION = "llamacpp-adapter, completion"
PACED_CLIENTS = (CHAT, OPENAI, COMPLETION)
PACED_MODULES = {CHAT: ["llamacpp_adapter"], OPENAI: ["openai"], COMPLETION: ["llamacpp_adapter"]}


async def _paced_chat(url: str, streams: int, fields: dict[str, Any], meter: TokenMeter) -> None:
    from llamacpp_adapter import ChatRequest

    await pull_streams(url, [ChatRequest(MESSAGES, extra=fields) for _ in range(streams)], meter)


async def _paced_openai(url: str, streams: int, fields: dict[str, Any], meter: TokenMeter) -> None:
    import asyncio

    import openai

    async def one(client: openai.AsyncOpenAI, job_id: str) -> None:
        stream = await client.chat.completions.create(
            model="m",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            extra_body=fields,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                meter(job_id, chunk.choices[0].delta.content)

    async with (
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0) as client,
        asyncio.TaskGroup() as group,
    ):
        for n in range(streams):
            group.create_task(one(client, str(n)))


async def _paced_completion(
    url: str, streams: int, fields: dict[str, Any], meter: TokenMeter
) -> None:
    completion = {**fields, "bench_mode": "paced"}
    await pull_streams(url, [request(**completion) for _ in range(streams)], meter)


PACED_READERS = {CHAT: _paced_chat, OPENAI: _paced_openai, COMPLETION: _paced_completion}


def _paced_client(spec: dict[str, Any]) -> dict[str, float]:
    """In a fresh process: N paced streams read by one client; its CPU per 1,000 tokens."""
    import asyncio
    import importlib

    from .bench_streams import raise_fd_limit

    raise_fd_limit()
    for module in PACED_MODULES[spec["client"]]:
        importlib.import_module(module)
    streams, events = int(spec["streams"]), int(spec["events"])
    fields = {"bench_mode": "chat_paced", "bench_events": events}
    fields["bench_interval_ms"] = spec["interval_ms"]
    meter = TokenMeter(streams)
    asyncio.run(PACED_READERS[spec["client"]](spec["url"], streams, fields, meter))
    assert meter.count == streams * events, (spec["client"], meter.count)
    return {"cpu_per_1000": meter.cpu_per_1000()}


def chat_paced(url: str, *, quick: bool) -> tuple[Table, list[Target]]:
    streams, interval_ms = 100, 50
    events = 24 if quick else 50
    rounds = 3 if quick else 5
    spec = {"kind": "paced", "url": url, "streams": streams, "events": events}
    spec["interval_ms"] = interval_ms
    costs: dict[str, list[float]] = {client: [] for client in PACED_CLIENTS}
    for n in range(rounds):
        for client in PACED_CLIENTS if n % 2 == 0 else PACED_CLIENTS[::-1]:
            result = run_client("benchmarks.bench_chat", json.dumps({**spec, "client": client}))
            costs[client].append(result["cpu_per_1000"])

    def ratio(client: str, base: str) -> float:
        pairs = zip(costs[client], costs[base], strict=True)
        return statistics.median(a / b for a, b in pairs)

    table = Table(
        f"Chat streams paced, asyncio: {streams} streams, one delta each {interval_ms} ms",
        ["client", "CPU s / 1,000 tokens", "chat's ratio to it"],
        notes=[
            "Client CPU (user + system) once every stream has delivered two tokens; the "
            f"median of {rounds} rounds, the clients in alternating order, each run a fresh "
            "process. The completion stream is the adapter's own, paced alike (the stub's "
            "paced mode); the ratio is the median of the rounds' ratios.",
        ],
    )
    for client in PACED_CLIENTS:
        cost = statistics.median(costs[client])
        table.add(client, f"{cost:.3f}", f"{ratio(CHAT, client):.2f}x")
    over_sdk, over_completion = ratio(CHAT, OPENAI), ratio(CHAT, COMPLETION)
    return table, [
        Target(
            f"chat paced CPU at N={streams} <= 0.5x the openai SDK",
            f"{over_sdk:.2f}x",
            over_sdk <= 0.5,
            factor=0.5 / over_sdk,
            goal=1.0,
        ),
        Target(
            f"chat paced CPU at N={streams} <= 1.2x the completion stream's",
            f"{over_completion:.2f}x",
            over_completion <= 1.2,
            factor=1.2 / over_completion,
            goal=1.0,
        ),
    ]


def chat(*, quick: bool) -> tuple[list[Table], list[Target]]:
    """Both chat cases, on a stub server of their own on the server's core."""
    with pinned(SERVER_CORE), stub_server() as url:
        bulk, bulk_targets = chat_bulk(url, quick=quick)
        paced, paced_targets = chat_paced(url, quick=quick)
    return [bulk, paced], bulk_targets + paced_targets


def _chat_client(spec: dict[str, Any]) -> dict[str, float]:
    return _paced_client(spec) if spec.get("kind") == "paced" else _client(spec)


if __name__ == "__main__":
    run_as_script(chat, _chat_client)
