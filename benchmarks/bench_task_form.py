"""The two shapes of a stream, side by side: the consumer's pull (``submit``) and the task
form (``stream_into`` feeding a memory channel), against what an orchestrator writes
without this library: an httpx + httpx-sse task per stream feeding the same kind of
channel.

* loopback throughput: one stream of N events, as fast as the socket takes them;
* per-token CPU when paced: 100 streams, one token per write;
* fan-in: 100 paced streams into one receiver, CPU per token and added latency.

The stub server runs in its own process on one core; each client run is a fresh process
on the other, on Trio, and prints what it measured.

    python -m benchmarks.bench_task_form [--quick]   # this case alone
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import trio
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectSendStream
from httpx_sse import aconnect_sse

from llamacpp_adapter import (
    JobItem,
    LlamaCppHttpAdapter,
    TaskRequest,
    Token,
    completion_body,
    create_job_channel,
)

from ._common import SERVER_CORE, Table, Target, peer_client, pinned, request, run_client
from ._common import stub_server as _stub_server

PULL = "pull form (submit)"
TASK = "task form (stream_into)"
OWN = "task form, create_job_channel"
PUMP = "httpx + httpx-sse pump"
CLIENTS = (PULL, TASK, OWN, PUMP)
#: Items the memory channel holds, for the task form and the pump alike.
CHANNEL_ITEMS = 64
PACED_STREAMS = 100
PACED_INTERVAL_MS = 50


def task_form(*, quick: bool) -> tuple[list[Table], list[Target]]:
    with pinned(SERVER_CORE), _stub_server() as url:
        tables_targets = [
            _throughput(url, quick=quick),
            _paced(url, quick=quick),
            _fan_in(url, quick=quick),
        ]
    return [table for table, _ in tables_targets], [t for _, ts in tables_targets for t in ts]


def _runs(url: str, spec: dict[str, Any], clients: tuple[str, ...], rounds: int) -> dict[str, Any]:
    """Each client *rounds* times, alternating, each run a fresh process."""
    results: dict[str, list[dict[str, float]]] = {client: [] for client in clients}
    for round_ in range(rounds):
        order = clients if round_ % 2 == 0 else clients[::-1]
        for client in order:
            args = json.dumps({**spec, "client": client, "url": url})
            results[client].append(run_client("benchmarks.bench_task_form", args))
    return {
        client: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        for client, runs in results.items()
    }


def _throughput(url: str, *, quick: bool) -> tuple[Table, list[Target]]:
    events = 50_000 if quick else 200_000
    rounds = 3 if quick else 5
    spec = {"mode": "burst", "streams": 1, "events": events}
    figures = _runs(url, spec, CLIENTS, rounds)
    table = Table(
        f"The two shapes, loopback: one stream of {events:,} events",
        ["client", "events/s", "ratio to the pump"],
        notes=[
            f"Median of {rounds} runs, each a fresh process, the clients alternating; "
            f"channels of {CHANNEL_ITEMS} items. The pull form hands events to its "
            "consumer; the task form and the pump send each into a memory channel, "
            "read by one receiving task: anyio's memory object stream, or (the third "
            "row) create_job_channel's, whose receive hands over a waiting item without "
            "a pass through the scheduler."
        ],
    )
    base = figures[PUMP]["rate"]
    for client in CLIENTS:
        table.add(client, figures[client]["rate"], f"{figures[client]['rate'] / base:.2f}x")
    ratio = figures[TASK]["rate"] / base
    return table, [
        Target(
            "task form (anyio's channel) loopback >= 1.2x an httpx + httpx-sse pump",
            f"{ratio:.2f}x",
            ratio >= 1.2,
            factor=ratio,
            goal=1.2,
        )
    ]


def _paced_spec(*, quick: bool) -> dict[str, Any]:
    """N streams, one token per write on the server's grid."""
    return {
        "mode": "paced",
        "streams": PACED_STREAMS,
        "events": 24 if quick else 50,
        "interval_ms": PACED_INTERVAL_MS,
    }


def _paced(url: str, *, quick: bool) -> tuple[Table, list[Target]]:
    rounds = 1 if quick else 3
    spec = _paced_spec(quick=quick)
    figures = _runs(url, spec, (PULL, TASK, OWN), rounds)
    table = Table(
        f"The two shapes, paced: {PACED_STREAMS} streams, a token every {PACED_INTERVAL_MS} ms",
        ["client", "CPU s / 1,000 tokens", "ratio to the pull form"],
        notes=[
            "Client CPU (user + system) once the streams are under way (after 2N "
            f"tokens); the median of {rounds} run(s), each a fresh process."
        ],
    )
    base = figures[PULL]["cpu_per_1000"]
    for client in (PULL, TASK, OWN):
        cost = figures[client]["cpu_per_1000"]
        table.add(client, cost, f"{cost / base:.2f}x")
    ratio = figures[TASK]["cpu_per_1000"] / base
    return table, [
        Target(
            f"task form (anyio's channel) paced CPU at N={PACED_STREAMS} <= 1.15x the pull form",
            f"{ratio:.2f}x",
            ratio <= 1.15,
            factor=1.15 / ratio,
            goal=1.0,
        )
    ]


def _fan_in(url: str, *, quick: bool) -> tuple[Table, list[Target]]:
    rounds = 1 if quick else 3
    spec = _paced_spec(quick=quick)
    figures = _runs(url, spec, (TASK, OWN, PUMP), rounds)
    table = Table(
        f"Fan-in: {PACED_STREAMS} paced streams into one receiver",
        ["client", "CPU s / 1,000 tokens", "p50 µs", "p99 µs", "CPU ratio to the pump"],
        notes=[
            "Latency: from the server's write of a token (its CLOCK_MONOTONIC, in the "
            "token) to the receiver holding it, once the streams are under way; medians "
            f"of {rounds} run(s), each a fresh process."
        ],
    )
    base = figures[PUMP]["cpu_per_1000"]
    for client in (TASK, OWN, PUMP):
        row = figures[client]
        table.add(client, row["cpu_per_1000"], row["p50_us"], row["p99_us"],
                  f"{row['cpu_per_1000'] / base:.2f}x")  # fmt: skip
    return table, []


# --- One client run, in its own process -------------------------------------------------


async def _measure(spec: dict[str, Any]) -> dict[str, float]:
    streams, events = int(spec["streams"]), int(spec["events"])
    if spec["mode"] == "burst":
        tasks = [request(bench_mode="burst", bench_events=events) for _ in range(streams)]
    else:
        tasks = [
            request(bench_mode="paced", bench_events=events, bench_interval_ms=spec["interval_ms"])
            for _ in range(streams)
        ]
    paced = spec["mode"] == "paced"
    warm = 2 * streams if paced else 0
    count = 0
    cpu_at_warm = time.process_time()
    delays: list[float] = []

    def on_token(text: str) -> None:
        nonlocal count, cpu_at_warm
        count += 1
        if count == warm:
            cpu_at_warm = time.process_time()
        elif count > warm and paced:
            delays.append((time.monotonic_ns() - int(text)) / 1000)

    started = time.perf_counter()
    await _CLIENTS[spec["client"]](spec["url"], tasks, on_token)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_at_warm
    assert count == streams * events, (spec["client"], count)
    result = {"rate": count / elapsed, "cpu_per_1000": cpu / (count - warm) * 1000}
    if delays:
        delays.sort()
        result["p50_us"] = delays[len(delays) // 2]
        result["p99_us"] = delays[int(len(delays) * 0.99) - 1]
    return result


TokenSink = Callable[[str], None]


async def _pull(url: str, tasks: list[TaskRequest], on_token: TokenSink) -> None:
    async def one(adapter: LlamaCppHttpAdapter, task: TaskRequest) -> None:
        async with adapter.submit(task) as events:
            async for event in events:
                if type(event) is Token:
                    on_token(event.text)

    async with LlamaCppHttpAdapter(url) as adapter, trio.open_nursery() as nursery:
        for task in tasks:
            nursery.start_soon(one, adapter, task)


async def _receive(receive: ObjectReceiveStream[Any], on_token: TokenSink) -> None:
    async with receive:
        async for _, event in receive:
            if type(event) is Token:
                on_token(event.text)


async def _task_form(url: str, tasks: list[TaskRequest], on_token: TokenSink) -> None:
    await _feed(url, tasks, on_token, *anyio.create_memory_object_stream[JobItem](CHANNEL_ITEMS))


async def _own_channel(url: str, tasks: list[TaskRequest], on_token: TokenSink) -> None:
    await _feed(url, tasks, on_token, *create_job_channel(CHANNEL_ITEMS))


async def _feed(
    url: str,
    tasks: list[TaskRequest],
    on_token: TokenSink,
    send: MemoryObjectSendStream[JobItem],
    receive: ObjectReceiveStream[JobItem],
) -> None:
    async with LlamaCppHttpAdapter(url) as adapter, trio.open_nursery() as nursery:
        nursery.start_soon(_receive, receive, on_token)
        async with send:
            for task in tasks:
                await nursery.start(adapter.stream_into, task, send.clone())


async def _pump_task(
    client: httpx.AsyncClient,
    url: str,
    task: TaskRequest,
    send: MemoryObjectSendStream[tuple[str, Any]],
) -> None:
    """What an orchestrator writes without this library: read the stream with httpx and
    httpx-sse, and send each token into the channel."""
    async with (
        send,
        aconnect_sse(client, "POST", f"{url}/completion", json=completion_body(task)) as source,
    ):
        async for sse in source.aiter_sse():
            chunk = json.loads(sse.data)
            if not chunk["stop"]:
                await send.send(
                    (task.job_id, Token(chunk["tokens_predicted"] - 1, chunk["content"]))
                )


async def _pump(url: str, tasks: list[TaskRequest], on_token: TokenSink) -> None:
    send, receive = anyio.create_memory_object_stream[tuple[str, Any]](CHANNEL_ITEMS)
    async with peer_client() as client, trio.open_nursery() as nursery:
        nursery.start_soon(_receive, receive, on_token)
        async with send:
            for task in tasks:
                nursery.start_soon(_pump_task, client, url, task, send.clone())


_CLIENTS = {PULL: _pull, TASK: _task_form, OWN: _own_channel, PUMP: _pump}


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):  # a client process
        print(json.dumps(trio.run(_measure, json.loads(sys.argv[1]))))
    else:
        tables, targets = task_form(quick="--quick" in sys.argv)
        for table in tables:
            print(table.markdown())
        for target in targets:
            print(f"{target.name}: {target.measured} ({'met' if target.met else 'NOT met'})")
