"""Streams over loopback HTTP, from the stub server in its own process:

* throughput: one long stream written as fast as the socket takes it;
* per-token CPU when paced: N concurrent streams, one token per write at a fixed pace,
  client CPU seconds per 1,000 delivered tokens;
* added latency: from the server's write of a token to the consumer holding it.

The adapter and httpx + httpx-sse run in the same process, on the same event loop
(Trio), with the same client settings, one after the other.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import AsyncIterator, Callable

import trio

from llamacpp_adapter import AdapterHost, HostStream, LlamaCppHttpAdapter, TaskRequest, Token

from ._common import Table, Target, adapter_tokens, httpx_sse_tokens, peer_client, request
from ._floors import h11_tokens, socket_tokens

ADAPTER = "llamacpp-adapter"
HOST = "llamacpp-adapter via AdapterHost"
PEER = "httpx + httpx-sse"
H11_FLOOR = "floor: h11 on a Trio socket"
SOCKET_FLOOR = "floor: Trio socket, no parsing"
FLOORS = {H11_FLOOR: h11_tokens, SOCKET_FLOOR: socket_tokens}


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# Each client is a function (url, task, on_token) -> awaitable that runs one stream.
TokenSink = Callable[[str], None]


async def _drain(tokens: AsyncIterator[str], on_token: TokenSink) -> None:
    async for text in tokens:
        on_token(text)


async def _host_tokens(host: AdapterHost, task: TaskRequest) -> AsyncIterator[str]:
    events: HostStream
    async with host.submit("bench", task) as events:
        async for event in events:
            if type(event) is Token:
                yield event.text


async def run_clients(client: str, url: str, tasks: list[TaskRequest], on_token: TokenSink) -> None:
    """Run every task concurrently through *client*."""
    if client == ADAPTER:
        async with LlamaCppHttpAdapter(url) as adapter, trio.open_nursery() as nursery:
            for task in tasks:
                nursery.start_soon(_drain, adapter_tokens(adapter, task), on_token)
    elif client == HOST:
        async with (
            LlamaCppHttpAdapter(url) as adapter,
            AdapterHost() as host,
            trio.open_nursery() as nursery,
        ):
            host.bind("bench", "r0", adapter)
            for task in tasks:
                nursery.start_soon(_drain, _host_tokens(host, task), on_token)
    elif client in FLOORS:
        async with trio.open_nursery() as nursery:
            for task in tasks:
                nursery.start_soon(_drain, FLOORS[client](url, task), on_token)
    else:
        async with peer_client() as http, trio.open_nursery() as nursery:
            for task in tasks:
                nursery.start_soon(_drain, httpx_sse_tokens(http, url, task), on_token)


def throughput(url: str, *, quick: bool) -> tuple[Table, list[Target]]:
    events = 50_000 if quick else 200_000
    rounds = 3 if quick else 5
    rates: dict[str, list[float]] = {ADAPTER: [], HOST: [], PEER: []}

    async def one(client: str) -> None:
        count = 0

        def on_token(_: str) -> None:
            nonlocal count
            count += 1

        start = time.perf_counter()
        await run_clients(client, url, [request(bench_mode="burst", bench_events=events)], on_token)
        elapsed = time.perf_counter() - start
        assert count == events, (client, count)
        rates[client].append(count / elapsed)

    async def main() -> None:
        await one(ADAPTER)  # warm-up: the server builds and caches the body
        rates[ADAPTER].clear()
        for _ in range(rounds):
            for client in (ADAPTER, HOST, PEER):
                await one(client)

    trio.run(main)
    table = Table(
        f"Loopback throughput: one stream of {events:,} events, as fast as the socket takes it",
        ["client", "events/s (median)", "ratio"],
        notes=[
            f"Median of {rounds} rounds, alternating clients. Through AdapterHost, the "
            "adapter's stream also passes the host's dispatch and per-token metrics."
        ],
    )
    base = statistics.median(rates[PEER])
    for client in (ADAPTER, HOST, PEER):
        rate = statistics.median(rates[client])
        table.add(client, rate, f"{rate / base:.2f}x")
    ratio = statistics.median(rates[ADAPTER]) / base
    return table, [
        Target(
            "loopback throughput >= 3x httpx + httpx-sse",
            f"{ratio:.2f}x",
            ratio >= 3,
            factor=ratio,
            goal=3.0,
        )
    ]


def paced_cpu(url: str, *, quick: bool) -> tuple[Table, list[Target]]:
    raise_fd_limit()
    # 20 tokens/s a stream at N >= 100: at 50/s, 100 streams alone fill a core for
    # either client, and the figures would measure queueing, not cost.
    plans = [(1, 20, 50), (100, 50, 50), (1000, 50, 30)] if not quick else [
        (1, 20, 40), (100, 50, 24), (1000, 50, 16),
    ]  # fmt: skip
    rounds = 1 if quick else 3
    table = Table(
        "Per-token cost when paced: N streams, one token per write",
        ["N", "interval", "client", "tokens counted", "CPU s / 1,000 tokens", "ratio"],
        notes=[
            "CPU is the client process's (user + system), counted once the streams are "
            "under way (from the moment 2N tokens have arrived), so that opening "
            "connections does not weigh on the cost per token; the median of 3 runs "
            "(1 with --quick), the clients alternating.",
            "",
            "The floors are not contenders (one run each): h11 on a bare Trio socket with "
            "json.loads is the cheapest correct client without httpx; a bare socket that "
            "parses nothing is the cost of Trio waking a task for each read.",
        ],
    )
    targets = []
    for streams, interval_ms, tokens_each in plans:
        costs: dict[str, list[float]] = {ADAPTER: [], PEER: [], H11_FLOOR: [], SOCKET_FLOOR: []}
        counted: dict[str, int] = {}
        for client in [ADAPTER, PEER] * rounds + [H11_FLOOR, SOCKET_FLOOR]:
            count = 0
            warm = 2 * streams
            cpu_at_warm = 0.0

            def on_token(_: str, warm: int = warm) -> None:
                nonlocal count, cpu_at_warm
                count += 1
                if count == warm:
                    cpu_at_warm = time.process_time()

            tasks = [
                request(bench_mode="paced", bench_events=tokens_each, bench_interval_ms=interval_ms)
                for _ in range(streams)
            ]
            trio.run(run_clients, client, url, tasks, on_token)
            cpu = time.process_time() - cpu_at_warm
            assert count == streams * tokens_each, (client, count)
            counted[client] = count - warm
            costs[client].append(cpu / counted[client] * 1000)
        cost = {client: statistics.median(values) for client, values in costs.items()}
        for client in costs:
            ratio_text = f"{cost[client] / cost[PEER]:.2f}x"
            table.add(
                streams,
                f"{interval_ms} ms",
                client,
                counted[client],
                cost[client],
                ratio_text,
            )
        if streams >= 100:
            ratio = cost[ADAPTER] / cost[PEER]
            targets.append(
                Target(
                    f"paced CPU at N={streams} <= 0.5x httpx + httpx-sse",
                    f"{ratio:.2f}x",
                    ratio <= 0.5,
                    factor=1 / ratio,
                    goal=2.0,
                )
            )
    return table, targets


def latency(url: str, *, quick: bool) -> tuple[Table, list[Target]]:
    raise_fd_limit()
    tokens_each = 40 if quick else 60
    rounds = 1 if quick else 3
    table = Table(
        "Added latency: the server's write of a token to the consumer holding it",
        ["N", "client", "p50 µs", "p99 µs", "max µs"],
        notes=[
            "The server writes its clock (CLOCK_MONOTONIC, shared by the processes) "
            "into each token; 20 ms between tokens at N = 1, 50 ms at N = 100. Counted "
            "once the streams are under way (after the first 2N tokens). Each figure is "
            f"the median over {rounds} run(s), the clients alternating.",
        ],
    )
    targets = []
    for streams in (1, 100):
        figures: dict[str, list[tuple[float, float, float]]] = {ADAPTER: [], PEER: []}
        for client in [ADAPTER, PEER] * rounds:
            delays: list[float] = []

            def on_token(text: str, delays: list[float] = delays) -> None:
                delays.append((time.monotonic_ns() - int(text)) / 1000)

            warm = 2 * streams
            interval_ms = 20 if streams == 1 else 50
            tasks = [
                request(bench_mode="paced", bench_events=tokens_each, bench_interval_ms=interval_ms)
                for _ in range(streams)
            ]
            trio.run(run_clients, client, url, tasks, on_token)
            delays = sorted(delays[warm:])
            p50 = delays[len(delays) // 2]
            p99 = delays[int(len(delays) * 0.99) - 1]
            figures[client].append((p50, p99, delays[-1]))
        p99s = {}
        for client, runs in figures.items():
            columns = zip(*runs, strict=True)
            p50, p99s[client], worst = (statistics.median(column) for column in columns)
            table.add(streams, client, p50, p99s[client], worst)
        if streams == 100:
            measured = f"{p99s[ADAPTER]:.0f} vs {p99s[PEER]:.0f} µs"
            targets.append(
                Target(
                    "latency p99 at N=100 <= httpx + httpx-sse",
                    measured,
                    p99s[ADAPTER] <= p99s[PEER],
                    factor=p99s[PEER] / p99s[ADAPTER],
                    goal=1.0,
                )
            )
    return table, targets
