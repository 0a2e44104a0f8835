"""The serving benchmark's own cost: ``llamacpp-adapter bench`` (its ``run_bench``) beside
a minimal aiohttp client of the kind vLLM's serving benchmark uses (a request each,
lines read and parsed with ``json.loads``, a timestamp kept for every chunk), both
driving N streams of the paced stub at once, a closed loop of N.

Each client run is a fresh process on the client's core; its CPU (user + system) over
the whole run, opening the streams included, is divided by the tokens it received. The
target: ``bench`` costs no more per token than the aiohttp client, so that what it
reports is the server's.

    python -m benchmarks.bench_serving [--quick]   # this case alone
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

import anyio

from ._common import SERVER_CORE, Table, Target, pinned, run_as_script
from ._common import run_client as _run_client
from ._common import stub_server as _stub_server

BENCH_TRIO = "llamacpp-adapter bench --backend trio"
BENCH_ASYNCIO = "llamacpp-adapter bench (asyncio, its default)"
AIOHTTP = "aiohttp, vLLM's way"
CLIENTS = (BENCH_TRIO, BENCH_ASYNCIO, AIOHTTP)
#: (streams, interval ms, tokens each): the pace keeps every client under a core.
PACED = ((100, 50, 50), (1000, 250, 20))
QUICK_PACED = ((100, 50, 24), (1000, 250, 12))


def serving(*, quick: bool) -> tuple[Table, list[Target]]:
    table = Table(
        "The serving benchmark's own cost per token, paced",
        ["N", "interval", "client", "CPU s / 1,000 tokens", "ratio to aiohttp"],
        notes=[
            "A closed loop of N requests at once on the paced stub; client CPU over the "
            "whole run (opening the streams included) per token received; the median of 3 "
            "rounds in alternating order, each run a fresh process on its own core. "
            "``bench`` also reads the server's /slots and /metrics every 0.5 s, as it does "
            "on a real run."
        ],
    )
    targets = []
    with pinned(SERVER_CORE), _stub_server() as url:
        for streams, interval_ms, events in QUICK_PACED if quick else PACED:
            spec = {"streams": streams, "events": events, "interval_ms": interval_ms, "url": url}
            costs: dict[str, list[float]] = {client: [] for client in CLIENTS}
            for round_ in range(3):
                for client in CLIENTS if round_ % 2 == 0 else CLIENTS[::-1]:
                    measured = _run_client("benchmarks.bench_serving", json.dumps(
                        {**spec, "client": client}
                    ))  # fmt: skip
                    costs[client].append(measured["cpu_per_1000"])
            for client in CLIENTS:
                ratio = _ratio(costs, client)
                table.add(f"{streams:,}", f"{interval_ms} ms", client,
                          f"{statistics.median(costs[client]):.3f}", f"{ratio:.2f}x")  # fmt: skip
            ratio = _ratio(costs, BENCH_ASYNCIO)
            targets.append(
                Target(
                    f"bench CPU per token at N={streams} <= 1.0x a vLLM-style aiohttp client",
                    f"{ratio:.2f}x",
                    ratio <= 1.0,
                    factor=1.0 / ratio,
                    goal=1.0,
                )
            )
    return table, targets


def _ratio(costs: dict[str, list[float]], client: str) -> float:
    return statistics.median(a / b for a, b in zip(costs[client], costs[AIOHTTP], strict=True))


# --- One client run, in its own process -------------------------------------------------


def _fields(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "bench_mode": "paced",
        "bench_events": spec["events"],
        "bench_interval_ms": spec["interval_ms"],
    }


async def _bench(spec: dict[str, Any]) -> int:
    from llamacpp_adapter.bench import BenchConfig, run_bench
    from llamacpp_adapter.bench._load import Load

    config = BenchConfig(
        (spec["url"],),
        Load(concurrency=spec["streams"]),
        requests=spec["streams"],
        warmup=0,
        input_tokens=(8, 8),
        output_tokens=spec["events"],
        extra=_fields(spec),
    )
    result = await run_bench(config)
    assert result.figures["completed"] == spec["streams"], result.figures
    return int(result.figures["total_output_tokens"])


async def _aiohttp(spec: dict[str, Any]) -> int:
    """vLLM's serving benchmark's way with a streamed completion: a POST each, the body
    read line by line, each ``data:`` line parsed with ``json.loads``, and a timestamp
    kept for the first chunk and every gap after it."""
    import aiohttp

    url = f"{spec['url']}/completion"
    tokens = 0

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal tokens
        payload = {
            "prompt": "the model streams tokens at a steady pace",
            "n_predict": spec["events"],
            "stream": True,
            "ignore_eos": True,
            **_fields(spec),
        }
        started = time.perf_counter()
        ttft = 0.0
        itl: list[float] = []
        most_recent = started
        async with session.post(url, json=payload) as response:
            response.raise_for_status()
            async for line in response.content:
                line = line.strip()
                if not line:
                    continue
                chunk = json.loads(line.decode("utf-8").removeprefix("data: "))
                now = time.perf_counter()
                if ttft == 0.0:
                    ttft = now - started
                else:
                    itl.append(now - most_recent)
                most_recent = now
                if chunk.get("stop"):
                    tokens += chunk["tokens_predicted"]

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        asyncio.TaskGroup() as group,
    ):
        for _ in range(spec["streams"]):
            group.create_task(one(session))
    return tokens


def _client_process(spec: dict[str, Any]) -> dict[str, float]:
    from .bench_streams import raise_fd_limit

    raise_fd_limit()
    started = time.process_time()
    if spec["client"] == BENCH_TRIO:
        tokens = anyio.run(_bench, spec, backend="trio")
    elif spec["client"] == BENCH_ASYNCIO:
        tokens = anyio.run(_bench, spec, backend="asyncio")
    else:
        tokens = asyncio.run(_aiohttp(spec))
    cpu = time.process_time() - started
    assert tokens == spec["streams"] * spec["events"], (spec["client"], tokens)
    return {"cpu_per_1000": cpu / tokens * 1000}


if __name__ == "__main__":
    run_as_script(serving, _client_process)
