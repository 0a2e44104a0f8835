"""A leak soak: many streams, each ended at a random point in a random way; afterwards
file descriptors, tasks and memory are back where they were. It runs on Trio and on
asyncio.

    pytest tests/engine/test_soak.py                            # the quick soak (CI)
    LLAMACPP_ADAPTER_SOAK=10 pytest tests/engine/test_soak.py   # ten times the streams
"""

from __future__ import annotations

import gc
import json
import logging
import os
import random
import resource
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from llamacpp_adapter import (
    DeadlineUnmet,
    LlamaCppHttpAdapter,
    TaskRequest,
    Token,
    WorkerError,
)
from llamacpp_adapter._local.server import LocalLlamaServer

from ..conftest import backend_name
from ..support.reliability_report import REPORT_PROPERTY, RecordProperty
from ..support.resources import open_fds, running_tasks, settled_task_count
from ..support.scripted import Connection, ScriptedServer, scripted_server
from ..support.wire import LAST_CHUNK, STREAM_HEAD, chunked, final_event, token_event

SCALE = int(os.environ.get("LLAMACPP_ADAPTER_SOAK", "1"))
# The suite's per-test time limit, for as many streams as the soak runs.
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120 * SCALE)]

STUB_STREAMS = 10_000 * SCALE
ENGINE_STREAMS = 500 * SCALE
AT_ONCE = 50
WARM_UP_STREAMS = 500
RSS_GROWTH_BOUND_MB = 10
WAYS = ("end", "break", "raise", "cancel", "timeout", "cut")
#: How long the engine's slots may take to all go idle once the last stream is left.
SLOTS_IDLE_WITHIN_S = 10.0


class Left(Exception):
    """The consumer's own exception, one of the ways a stream is left."""


def rss_mb() -> float:
    """The resident set now, after a collection, in MB."""
    gc.collect()
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 1e6


async def answer(connection: Connection) -> None:
    """Streams ``tokens`` tokens then the final chunk, or cuts the connection after
    ``cut`` tokens, as the task's extra fields say. Like llama-server, it closes the
    connection after a stream."""
    task = json.loads(connection.body)
    await connection.send(STREAM_HEAD)
    cut = task.get("cut")
    count = task.get("tokens", 10)
    for n in range(1, count + 1):
        if cut is not None and n > cut:
            return  # the connection closes mid-stream
        await connection.send(chunked(token_event(n)))
    await connection.send(chunked(final_event(count)) + LAST_CHUNK)


@asynccontextmanager
async def engine_stub() -> AsyncIterator[ScriptedServer]:
    async with scripted_server(answer) as server:
        yield server


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
        with anyio.CancelScope() as scope:
            async with adapter.submit(request, timeout=timeout) as events:
                async for event in events:
                    if isinstance(event, Token) and event.i >= stop_at:
                        if way == "break":
                            break
                        if way == "raise":
                            raise Left
                        if way == "cancel":
                            scope.cancel()
                            await anyio.lowlevel.checkpoint()
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

    async with anyio.create_task_group() as group:
        for _ in range(AT_ONCE):
            group.start_soon(worker)
    return ways


async def test_a_soak_against_a_stub_leaks_nothing(
    caplog: pytest.LogCaptureFixture, anyio_backend: Any, record_property: RecordProperty
) -> None:
    # The failed streams' warnings would pile up in pytest's log capture, not ours.
    caplog.set_level(logging.ERROR, logger="llamacpp_adapter")
    fds, tasks = open_fds(), running_tasks()
    async with engine_stub() as server:
        async with LlamaCppHttpAdapter(server.url) as adapter:
            await soak(adapter, WARM_UP_STREAMS, stub=True)  # first-use allocations
            rss = rss_mb()
            ways = await soak(adapter, STUB_STREAMS, stub=True)
            # Only the pool's idle connections are open, each with the stub's end.
            assert server.open_connections <= AT_ONCE
            assert open_fds() - fds <= 1 + 2 * server.open_connections  # and the listener
            assert adapter._streams == {}  # no stream is kept for cancel() once it ended
            pooled = server.open_connections
        await server.wait_idle()  # closing the adapter closed every pooled connection
    assert sum(ways.values()) == STUB_STREAMS
    assert set(ways) == set(WAYS)
    assert open_fds() == fds
    assert await settled_task_count(tasks) == tasks
    assert rss_mb() - rss < RSS_GROWTH_BOUND_MB
    record_property(
        REPORT_PROPERTY, report("stub", backend_name(anyio_backend), STUB_STREAMS, fds, rss, pooled)
    )


async def test_a_soak_against_the_real_engine_leaves_every_slot_idle(
    llama_server: LocalLlamaServer, anyio_backend: Any, record_property: RecordProperty
) -> None:
    fds, tasks = open_fds(), running_tasks()
    async with LlamaCppHttpAdapter(llama_server.base_url) as adapter:
        rss = rss_mb()
        ways = await soak(adapter, ENGINE_STREAMS, stub=False)
        assert sum(ways.values()) == ENGINE_STREAMS
        pooled = open_fds() - fds
        assert pooled <= AT_ONCE  # the pool's idle connections, no more
        assert adapter._streams == {}  # no stream is kept for cancel() once it ended
        with anyio.fail_after(SLOTS_IDLE_WITHIN_S):
            while any(slot["is_processing"] for slot in await adapter.slots()):  # noqa: ASYNC110 - another process
                await anyio.sleep(0.05)
    assert open_fds() == fds
    assert await settled_task_count(tasks) == tasks
    assert rss_mb() - rss < RSS_GROWTH_BOUND_MB
    backend = backend_name(anyio_backend)
    record_property(
        REPORT_PROPERTY, report("llama-server", backend, ENGINE_STREAMS, fds, rss, pooled)
    )


def report(engine: str, backend: str, streams: int, fds: int, rss: float, pooled: int) -> str:
    """What a soak measured, for RELIABILITY.md's table (``nox -s reliability`` collects it
    from the test report)."""
    return json.dumps(
        {
            "kind": "soak",
            "engine": engine,
            "backend": backend,
            "streams": streams,
            "fds_before": fds,
            "fds_after": open_fds(),
            "pooled_while_open": pooled,
            "rss_growth_mb": round(rss_mb() - rss, 2),
        }
    )
