"""The adapter on every event loop it runs on (Trio, asyncio, asyncio with uvloop), beside
the peers on the same loops: httpx + httpx-sse, and aiohttp reading lines and parsing
each with ``json.loads`` (the client of vLLM's serving benchmark).

* per-token CPU when paced: N streams, one token per write on the server's grid;
* bulk throughput: one stream of many events, as fast as the socket takes them.

The stub server runs in its own process on one core; each client run is a fresh process
on the other, and prints what it measured.

    python -m benchmarks.bench_loops [--quick]   # this case alone
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from llamacpp_adapter import TaskRequest

from ._common import (
    SERVER_CORE,
    TRIO,
    UVLOOP,
    JobTokenSink,
    Table,
    Target,
    TokenMeter,
    aiohttp_streams,
    each_in_a_task,
    httpx_sse_tokens,
    on_loop,
    peer_client,
    pinned,
    pull_streams,
    request,
    run_as_script,
    warm_burst,
)
from ._common import run_client as _run_client
from ._common import stub_server as _stub_server

ADAPTER = "llamacpp-adapter"
HTTPX = "httpx + httpx-sse"
AIOHTTP = "aiohttp, lines + json.loads"
ASYNCIO = "asyncio"
#: Every (client, loop) measured, in the tables' order.
RUNS = (
    (ADAPTER, TRIO),
    (ADAPTER, ASYNCIO),
    (ADAPTER, UVLOOP),
    (HTTPX, TRIO),
    (HTTPX, ASYNCIO),
    (AIOHTTP, ASYNCIO),
    (AIOHTTP, UVLOOP),
)
#: (streams, interval ms, tokens each): the pace keeps the slowest client under a core.
PACED = ((100, 50, 50), (1000, 250, 20))
QUICK_PACED = ((100, 50, 24), (1000, 250, 12))


def loops(*, quick: bool) -> tuple[list[Table], list[Target]]:
    with pinned(SERVER_CORE), _stub_server() as url:
        paced, paced_targets = _paced(url, quick=quick)
        bulk, bulk_targets = _bulk(url, quick=quick)
    return [paced, bulk], paced_targets + bulk_targets


def _run(url: str, spec: dict[str, Any], client: str, loop: str) -> dict[str, float]:
    args = json.dumps({**spec, "client": client, "loop": loop, "url": url})
    result: dict[str, float] = _run_client("benchmarks.bench_loops", args)
    return result


def _rounds(url: str, spec: dict[str, Any], rounds: int) -> dict[tuple[str, str], list[float]]:
    """CPU per 1,000 tokens of each (client, loop), round by round, in alternating order."""
    costs: dict[tuple[str, str], list[float]] = {run: [] for run in RUNS}
    for round_ in range(rounds):
        for run in RUNS if round_ % 2 == 0 else RUNS[::-1]:
            costs[run].append(_run(url, spec, *run)["cpu_per_1000"])
    return costs


def _ratio(
    costs: dict[tuple[str, str], list[float]], run: tuple[str, str], base: tuple[str, str]
) -> float:
    """The median of the rounds' ratios of *run* to *base*."""
    return statistics.median(a / b for a, b in zip(costs[run], costs[base], strict=True))


def _paced(url: str, *, quick: bool) -> tuple[Table, list[Target]]:
    table = Table(
        "Per-token CPU on each event loop, paced",
        ["N", "interval", "client", "loop", "CPU s / 1,000 tokens", "ratio to the peer"],
        notes=[
            "Client CPU (user + system) once every stream has delivered two tokens; the "
            "median of 5 rounds at N=100 and 3 at N=1,000 (3 each with --quick), each run "
            "a fresh process. The peer is aiohttp on "
            "the same loop on asyncio and uvloop, httpx + httpx-sse on Trio; the ratio is "
            "the median of the rounds' ratios."
        ],
    )
    targets = []
    for streams, interval_ms, events in QUICK_PACED if quick else PACED:
        spec = {"mode": "paced", "streams": streams, "events": events, "interval_ms": interval_ms}
        costs = _rounds(url, spec, 3 if quick or streams > 100 else 5)
        peers = {TRIO: (HTTPX, TRIO), ASYNCIO: (AIOHTTP, ASYNCIO), UVLOOP: (AIOHTTP, UVLOOP)}
        for client, loop in RUNS:
            ratio = _ratio(costs, (client, loop), peers[loop])
            table.add(f"{streams:,}", f"{interval_ms} ms", client, loop,
                      f"{statistics.median(costs[client, loop]):.3f}", f"{ratio:.2f}x")  # fmt: skip
        for loop, goal in ((ASYNCIO, 1.0), (UVLOOP, 1.0), (TRIO, 0.7)):
            peer = peers[loop]
            ratio = _ratio(costs, (ADAPTER, loop), peer)
            targets.append(
                Target(
                    f"paced CPU at N={streams} on {loop} <= {goal}x {peer[0]}",
                    f"{ratio:.2f}x",
                    ratio <= goal,
                    factor=goal / ratio,
                    goal=1.0,
                )
            )
    return table, targets


def _bulk(url: str, *, quick: bool) -> tuple[Table, list[Target]]:
    events = 50_000 if quick else 200_000
    rounds = 3
    spec = {"mode": "burst", "streams": 1, "events": events}
    warm_burst(url, events)
    rates: dict[tuple[str, str], list[float]] = {run: [] for run in RUNS}
    for round_ in range(rounds):
        for run in RUNS if round_ % 2 == 0 else RUNS[::-1]:
            rates[run].append(_run(url, spec, *run)["rate"])
    table = Table(
        f"Bulk throughput on each event loop: one stream of {events:,} events",
        ["client", "loop", "events/s", "ratio to httpx + httpx-sse"],
        notes=[f"The median of {rounds} rounds, each run a fresh process."],
    )
    targets = []
    for client, loop in RUNS:
        base = (HTTPX, loop if loop != UVLOOP else ASYNCIO)
        ratio = statistics.median(
            a / b for a, b in zip(rates[client, loop], rates[base], strict=True)
        )
        table.add(client, loop, statistics.median(rates[client, loop]), f"{ratio:.2f}x")
        if client == ADAPTER:
            targets.append(
                Target(
                    f"bulk throughput on {loop} >= 3x httpx + httpx-sse",
                    f"{ratio:.2f}x",
                    ratio >= 3,
                    factor=ratio,
                    goal=3.0,
                )
            )
    return table, targets


# --- One client run, in its own process -------------------------------------------------


async def _measure(spec: dict[str, Any]) -> dict[str, float]:
    streams, events = int(spec["streams"]), int(spec["events"])
    paced = spec["mode"] == "paced"
    fields: dict[str, Any] = {"bench_mode": spec["mode"], "bench_events": events}
    if paced:
        fields["bench_interval_ms"] = spec["interval_ms"]
    tasks = [request(**fields) for _ in range(streams)]
    meter = TokenMeter(streams)
    started = time.perf_counter()
    await _CLIENTS[spec["client"]](spec["url"], tasks, meter)
    elapsed = time.perf_counter() - started
    cpu_per_1000 = meter.cpu_per_1000()
    assert meter.count == streams * events, (spec["client"], meter.count)
    return {"rate": meter.count / elapsed, "cpu_per_1000": cpu_per_1000}


async def _httpx(url: str, tasks: list[TaskRequest], on_token: JobTokenSink) -> None:
    async def one(task: TaskRequest) -> None:
        async for text in httpx_sse_tokens(client, url, task):
            on_token(task.job_id, text)

    async with peer_client() as client:
        await each_in_a_task([(one, task) for task in tasks])


_CLIENTS: dict[str, Callable[[str, list[TaskRequest], JobTokenSink], Awaitable[None]]] = {
    ADAPTER: pull_streams,
    HTTPX: _httpx,
    AIOHTTP: aiohttp_streams,
}


def _client_process(spec: dict[str, Any]) -> dict[str, float]:
    return on_loop(_measure, spec)


if __name__ == "__main__":
    run_as_script(loops, _client_process)
