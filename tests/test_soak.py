"""A leak soak: many streams, each ended at a random point in a random way; afterwards
file descriptors, Trio tasks and memory are back where they were.

    pytest tests/test_soak.py                      # the quick soak (CI)
    LLAMACPP_ADAPTER_SOAK=10 pytest tests/test_soak.py   # ten times as many streams
"""

from __future__ import annotations

import gc
import json
import logging
import os
import random
import resource
from pathlib import Path

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from llamacpp_adapter import (
    DeadlineUnmet,
    LlamaCppHttpAdapter,
    TaskRequest,
    Token,
    WorkerError,
)
from llamacpp_adapter._local_server import LocalLlamaServer

from .stub import LAST_CHUNK, STREAM_HEAD, chunked, final_event, read_request, token_event

SCALE = int(os.environ.get("LLAMACPP_ADAPTER_SOAK", "1"))
STUB_STREAMS = 10_000 * SCALE
ENGINE_STREAMS = 500 * SCALE
AT_ONCE = 50
WARM_UP_STREAMS = 500
RSS_GROWTH_BOUND_MB = 10
WAYS = ("end", "break", "raise", "cancel", "timeout", "cut")


class Left(Exception):
    """The consumer's own exception, one of the ways a stream is left."""


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    """The resident set now, after a collection, in MB."""
    gc.collect()
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 1e6


async def engine_stub(nursery: trio.Nursery) -> str:
    """Streams ``tokens`` tokens then the final chunk, or cuts the connection after
    ``cut`` tokens, as the task's extra fields say. Like llama-server, it keeps a
    connection open for the next request."""

    async def answer(stream: trio.SocketStream, task: dict[str, int]) -> bool:
        """Answer one request; whether the connection is still good."""
        await stream.send_all(STREAM_HEAD)
        cut = task.get("cut")
        count = task.get("tokens", 10)
        for n in range(1, count + 1):
            if cut is not None and n > cut:
                return False  # the connection closes mid-stream
            await stream.send_all(chunked(token_event(n)))
        await stream.send_all(chunked(final_event(count)) + LAST_CHUNK)
        return True

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                while True:
                    _, body = await read_request(stream)
                    if not body or not await answer(stream, json.loads(body)):
                        return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    listeners = await nursery.start(trio.serve_tcp, serve, 0)
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def one_stream(adapter: LlamaCppHttpAdapter, rng: random.Random, *, stub: bool) -> str:
    """Run one stream and leave it in a random way; return the way."""
    way = rng.choice(WAYS if stub else WAYS[:-1])
    stop_at = rng.randint(0, 20)
    extra: dict[str, object] = {"tokens": rng.randint(1, 30)} if stub else {"ignore_eos": True}
    if way == "cut":
        extra["cut"] = rng.randint(0, 5)
    request = TaskRequest("soak", max_tokens=rng.randint(1, 30), seed=1, extra=extra)
    timeout = 0.01 if way == "timeout" else None
    try:
        with trio.CancelScope() as scope:
            async with adapter.submit(request, timeout=timeout) as events:
                async for event in events:
                    if isinstance(event, Token) and event.i >= stop_at:
                        if way == "break":
                            break
                        if way == "raise":
                            raise Left
                        if way == "cancel":
                            scope.cancel()
                            await trio.lowlevel.checkpoint()
    except (Left, DeadlineUnmet):
        pass
    except WorkerError:
        if way != "cut":
            raise
    return way


async def soak(adapter: LlamaCppHttpAdapter, streams: int, *, stub: bool) -> dict[str, int]:
    """Run *streams* streams, AT_ONCE at a time; count the ways they were left."""
    rng = random.Random(streams)
    ways: dict[str, int] = {}
    remaining = streams

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            way = await one_stream(adapter, rng, stub=stub)
            ways[way] = ways.get(way, 0) + 1

    async with trio.open_nursery() as nursery:
        for _ in range(AT_ONCE):
            nursery.start_soon(worker)
    return ways


async def test_a_soak_against_a_stub_leaks_nothing(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # The failed streams' warnings would pile up in pytest's log capture, not ours.
    caplog.set_level(logging.ERROR, logger="llamacpp_adapter")
    url = await engine_stub(nursery)
    fds, tasks = open_fds(), trio.lowlevel.current_statistics().tasks_living
    async with LlamaCppHttpAdapter(url) as adapter:
        await soak(adapter, WARM_UP_STREAMS, stub=True)  # first-use allocations
        rss = rss_mb()
        ways = await soak(adapter, STUB_STREAMS, stub=True)
        await wait_all_tasks_blocked()
        # Only the pool's idle connections are left, each with the stub's end of it.
        assert open_fds() - fds <= 2 * AT_ONCE
        assert adapter._streams == {}  # no stream is kept for cancel() once it ended
    assert sum(ways.values()) == STUB_STREAMS
    assert set(ways) == set(WAYS)
    await wait_all_tasks_blocked()  # the stub's side of the last connections ends
    assert open_fds() == fds  # every connection closed, the pool's too
    assert trio.lowlevel.current_statistics().tasks_living == tasks
    assert rss_mb() - rss < RSS_GROWTH_BOUND_MB


async def test_a_soak_against_the_real_engine_leaves_every_slot_idle(
    llama_server: LocalLlamaServer,
) -> None:
    fds, tasks = open_fds(), trio.lowlevel.current_statistics().tasks_living
    async with LlamaCppHttpAdapter(llama_server.base_url) as adapter:
        ways = await soak(adapter, ENGINE_STREAMS, stub=False)
        assert sum(ways.values()) == ENGINE_STREAMS
        assert open_fds() - fds <= AT_ONCE  # the pool's idle connections, no more
        assert adapter._streams == {}  # no stream is kept for cancel() once it ended
        with trio.fail_after(10):
            while any(slot["is_processing"] for slot in await adapter.slots()):  # noqa: ASYNC110 - another process
                await trio.sleep(0.05)
    assert open_fds() == fds
    assert trio.lowlevel.current_statistics().tasks_living == tasks
