"""Memory: a slow consumer of a 100 MB stream, and idle open streams.

* Slow consumer: the stub offers 100 MB of events and the consumer takes 100 events/s.
  The adapter's peak (tracemalloc, and RSS) is compared with a read-all-then-parse
  client, which is what a buffering adapter does.
* Idle streams: N streams open, each past its first token, then nothing: memory per
  stream for the adapter and for httpx + httpx-sse.
"""

from __future__ import annotations

import contextlib
import gc
import tracemalloc
from pathlib import Path

import trio

from llamacpp_adapter import LlamaCppHttpAdapter, completion_body

from ._common import Table, Target, peer_client, request
from .bench_streams import raise_fd_limit

MB = 1024 * 1024
OFFERED_BYTES = 100 * MB


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def slow_consumer(url: str, *, quick: bool) -> tuple[Table, list[Target]]:
    seconds = 1.0 if quick else 3.0
    offered = 20 * MB if quick else OFFERED_BYTES
    table = Table(
        f"Memory under a slow consumer: {offered // MB} MB offered, 100 events/s taken",
        ["client", "events taken", "peak traced growth", "RSS growth"],
        notes=["Traced: Python allocations (tracemalloc). RSS: the process's resident set."],
    )
    task = request(bench_mode="bytes", bench_bytes=offered)

    async def adapter_run() -> int:
        taken = 0
        async with LlamaCppHttpAdapter(url) as adapter, adapter.submit(task) as events:
            with trio.move_on_after(seconds):
                async for _ in events:
                    taken += 1
                    await trio.sleep(0.01)
        return taken

    async def buffering_run() -> int:
        async with peer_client() as client:
            response = await client.post(f"{url}/completion", json=completion_body(task))
        return len(response.content.split(b"\n\n")) - 1

    results = {}
    for name, run in (("llamacpp-adapter", adapter_run), ("read all, then parse", buffering_run)):
        gc.collect()
        rss = rss_bytes()
        tracemalloc.start()
        taken = trio.run(run)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        growth = rss_bytes() - rss
        results[name] = peak
        table.add(name, taken, f"{peak / MB:.1f} MB", f"{max(growth, 0) / MB:.1f} MB")
    adapter_peak = results["llamacpp-adapter"]
    buffering_peak = results["read all, then parse"]
    return table, [
        Target(
            "slow consumer: adapter growth < 5 MB",
            f"{adapter_peak / MB:.1f} MB",
            adapter_peak < 5 * MB,
        ),
        Target(
            "slow consumer: buffering client grows by >= the body",
            f"{buffering_peak / MB:.0f} MB",
            buffering_peak >= offered,
        ),
    ]


def idle_streams(url: str, *, quick: bool) -> tuple[Table, list[Target]]:
    raise_fd_limit()
    streams = 200 if quick else 1000
    table = Table(
        f"Memory per idle open stream, N = {streams}",
        ["client", "traced per stream", "RSS per stream"],
    )
    task = request(bench_mode="idle")

    async def adapter_run() -> tuple[int, int]:
        async with LlamaCppHttpAdapter(url) as adapter, contextlib.AsyncExitStack() as stack:
            for _ in range(streams):
                events = await stack.enter_async_context(adapter.submit(task))
                await events.__anext__()  # Started
                await events.__anext__()  # the first token
            return tracemalloc.get_traced_memory()[0], rss_bytes()

    async def peer_run() -> tuple[int, int]:
        from httpx_sse import aconnect_sse

        async with peer_client() as client, contextlib.AsyncExitStack() as stack:
            body = completion_body(task)
            for _ in range(streams):
                source = await stack.enter_async_context(
                    aconnect_sse(client, "POST", f"{url}/completion", json=body)
                )
                iterator = source.aiter_sse()
                await iterator.__anext__()
                stack.push_async_callback(iterator.aclose)
            return tracemalloc.get_traced_memory()[0], rss_bytes()

    for name, run in (("llamacpp-adapter", adapter_run), ("httpx + httpx-sse", peer_run)):
        gc.collect()
        rss = rss_bytes()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        traced, rss_after = trio.run(run)
        tracemalloc.stop()
        table.add(
            name,
            f"{(traced - base) / streams / 1024:.1f} KiB",
            f"{max(rss_after - rss, 0) / streams / 1024:.1f} KiB",
        )
    return table, []
