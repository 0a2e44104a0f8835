"""AdapterHost against two real llama-server replicas (two slots each): load spread by
free slots, waiting for a slot, and a replica killed mid-run and started again."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from trio.testing import wait_all_tasks_blocked

from llamacpp_adapter import (
    AdapterHost,
    End,
    HostStream,
    LlamaCppHttpAdapter,
    PausePolicy,
    PoolUnavailable,
    RetryPolicy,
    TaskRequest,
    Token,
    WorkerReset,
)
from llamacpp_adapter._local.server import LocalLlamaServer

SLOTS = 2
# 8,192 tokens a slot: a long task runs for seconds, so it holds its slot for the test.
CONTEXT = 16384
LONG = {"ignore_eos": True}


@pytest.fixture(scope="module")
def replicas() -> Iterator[tuple[LocalLlamaServer, LocalLlamaServer]]:
    with (
        LocalLlamaServer(context=CONTEXT, parallel=SLOTS) as first,
        LocalLlamaServer(context=CONTEXT, parallel=SLOTS) as second,
    ):
        yield first, second


@asynccontextmanager
async def host_of(
    *servers: LocalLlamaServer, pause: PausePolicy | None = None, **options: object
) -> AsyncIterator[AdapterHost]:
    """A host of one pool, "pool", of *servers* as replicas r0, r1, ... Its adapters
    pause no stream unless given a *pause* policy: these tests hold slots with streams
    whose consumers wait (tests/engine/test_pause.py has the pauses)."""
    async with AsyncExitStack() as stack:
        host = AdapterHost(rng=random.Random(3), **options)  # type: ignore[arg-type]
        await stack.enter_async_context(host)
        for n, server in enumerate(servers):
            adapter = await stack.enter_async_context(
                LlamaCppHttpAdapter(server.base_url, pause=pause)
            )
            host.bind("pool", f"r{n}", adapter)
        yield host


def long_task(n: int) -> TaskRequest:
    return TaskRequest(f"task {n}", max_tokens=8000, seed=n, extra=LONG)


async def first_token(stream: HostStream) -> Token:
    async for event in stream:
        if isinstance(event, Token):
            return event
    raise AssertionError("no token")


async def slots_busy(server: LocalLlamaServer) -> int:
    async with LlamaCppHttpAdapter(server.base_url) as adapter:
        return sum(1 for slot in await adapter.slots() if slot["is_processing"])


async def test_load_spreads_by_free_slots_and_waits_for_one(
    replicas: tuple[LocalLlamaServer, LocalLlamaServer],
) -> None:
    async with host_of(*replicas, slot_wait_s=30.0) as host:
        holders = [AsyncExitStack() for _ in range(2 * SLOTS)]
        streams = [
            await holder.enter_async_context(host.submit("pool", long_task(n)))
            for n, holder in enumerate(holders)
        ]
        try:
            assert sorted(s.replica for s in streams) == ["r0", "r0", "r1", "r1"]
            assert [r.free_slots for r in host.replicas("pool")] == [0, 0]
            # The servers agree: each runs two tasks.
            assert [await slots_busy(server) for server in replicas] == [SLOTS, SLOTS]

            # A fifth task waits for a slot, and takes the first one that frees.
            placed: list[str] = []

            async def fifth() -> None:
                async with host.submit("pool", TaskRequest("fifth", max_tokens=4)) as stream:
                    placed.append(stream.replica)
                    async for _ in stream:
                        pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(fifth)
                await wait_all_tasks_blocked()
                assert placed == []  # no replica was sent a third stream
                await holders[0].aclose()
            assert placed == [streams[0].replica]
        finally:
            for holder in holders:
                await holder.aclose()


async def test_a_killed_replica_fails_its_stream_gets_no_work_and_comes_back(
    replicas: tuple[LocalLlamaServer, LocalLlamaServer],
) -> None:
    victim, survivor = replicas
    async with (
        host_of(victim, survivor, probe_interval_s=0.2, unhealthy_after=2) as host,
        host.submit("pool", long_task(1)) as a,
        host.submit("pool", long_task(2)) as b,
    ):
        on_victim = a if a.replica == "r0" else b
        on_survivor = b if on_victim is a else a
        assert (on_victim.replica, on_survivor.replica) == ("r0", "r1")
        await first_token(on_survivor)
        got = [await first_token(on_victim)]

        await trio.to_thread.run_sync(victim.kill)

        # The stream past its first token ends in a typed error, after its tokens.
        with pytest.raises(WorkerReset):
            async for event in on_victim:
                if isinstance(event, Token):
                    got.append(event)
        assert [t.i for t in got] == list(range(len(got)))

        # New tasks go to the other replica; the killed one is marked unhealthy.
        for n in range(3):
            async with host.submit("pool", TaskRequest(f"after {n}", max_tokens=4)) as s:
                events = [event async for event in s]
            assert s.replica == "r1"
            assert isinstance(events[-1], End)
        assert [r.healthy for r in host.replicas("pool")] == [False, True]

        # Started again on its port, it is probed, found ready, and gets work.
        await trio.to_thread.run_sync(victim.start)
        with trio.fail_after(30):
            await host.wait_ready("pool", "r0")
        # r1 still runs a task, so r0 has the most free slots.
        async with host.submit("pool", TaskRequest("back", max_tokens=4)) as s:
            events = [event async for event in s]
        assert s.replica == "r0"
        assert isinstance(events[-1], End)


async def test_a_prompt_larger_than_every_context_is_pool_unavailable_at_once(
    replicas: tuple[LocalLlamaServer, LocalLlamaServer],
) -> None:
    # Were the host to queue the task, it would wait its slot wait or its retry deadline.
    # Each engine refuses the prompt after tokenizing it, within milliseconds; the bound
    # is far above that and far below those waits, however busy the machine.
    waits_s = 30.0
    retry = RetryPolicy(deadline_s=waits_s)
    async with host_of(*replicas, slot_wait_s=waits_s, retry=retry) as host:
        for name in ("r0", "r1"):
            await host.wait_ready("pool", name)
        prompt = " once upon a time" * 3000  # more tokens than a slot's 8,192
        start = time.perf_counter()
        with pytest.raises(PoolUnavailable, match="context"):
            async with host.submit("pool", TaskRequest(prompt)):
                pass
        assert time.perf_counter() - start < waits_s / 10


async def test_a_prompt_too_large_for_one_replica_goes_to_a_larger_context() -> None:
    # The host cannot count a text prompt's tokens: it places the task on the replica
    # with the most free slots (the small one), which refuses it; the policy then sends
    # it at once to a replica whose context is larger.
    with (
        LocalLlamaServer(context=512, parallel=2) as small,  # 256 tokens a slot
        LocalLlamaServer(context=2048, parallel=1) as large,
    ):
        async with host_of(small, large) as host:
            for name in ("r0", "r1"):
                await host.wait_ready("pool", name)
            prompt = " once upon a time" * 100  # over 256 tokens, under 2,048
            async with host.submit("pool", TaskRequest(prompt, max_tokens=4)) as stream:
                events = [event async for event in stream]
            assert (stream.replica, stream.attempts) == ("r1", 2)
            assert isinstance(events[-1], End)
            # A refused prompt is the task's fault, not the replica's.
            assert all(status.healthy for status in host.replicas("pool"))


async def test_a_replica_on_another_model_gets_no_work_in_a_pinned_pool(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        LocalLlamaServer(parallel=1) as first,
        LocalLlamaServer(parallel=1, model="bigram") as other,
    ):
        async with host_of(first, other) as host:
            with caplog.at_level(logging.WARNING, logger="llamacpp_adapter"):
                await host.wait_ready("pool", "r0")
                with pytest.raises(PoolUnavailable, match="gets no work: it runs model"):
                    await host.wait_ready("pool", "r1")
            statuses = {s.replica: s for s in host.replicas("pool")}
            assert statuses["r0"].mismatch is None
            assert statuses["r1"].mismatch is not None
            assert "model" in statuses["r1"].mismatch
            assert statuses["r0"].engine_version == statuses["r1"].engine_version
            assert "replica gets no work" in caplog.text
            samples = {
                tuple(sorted(s.labels.items())): s.value
                for family in text_string_to_metric_families(
                    generate_latest(host.metrics.registry).decode()
                )
                for s in family.samples
                if s.name == "llamacpp_adapter_replica_mismatched"
            }
            assert sorted(samples.values()) == [0.0, 1.0]
            for _ in range(4):  # r0 has one slot: each task waits for it, none goes to r1
                async with host.submit("pool", TaskRequest("x", max_tokens=2)) as stream:
                    _ = [event async for event in stream]
                assert stream.replica == "r0"
        async with host_of(first, other, pin_replicas=False) as host:
            for name in ("r0", "r1"):
                await host.wait_ready("pool", name)
            assert all(s.mismatch is None for s in host.replicas("pool"))


async def test_under_a_closed_loop_no_task_waits_while_later_ones_are_placed() -> None:
    """Three replicas of 8 slots, 40 clients each running tasks back to back: a freed
    slot goes to the task that has waited longest, so no task is passed by one that
    came after it."""
    clients, tasks_each = 40, 6
    records: list[tuple[float, float]] = []  # (submitted, placed) of each task
    with (
        LocalLlamaServer(context=8 * 512, parallel=8) as r0,
        LocalLlamaServer(context=8 * 512, parallel=8) as r1,
        LocalLlamaServer(context=8 * 512, parallel=8) as r2,
    ):
        async with host_of(r0, r1, r2, slot_wait_s=60.0) as host:
            await host.wait_ready("pool")

            async def client(c: int) -> None:
                for n in range(tasks_each):
                    request = TaskRequest(f"c{c} t{n}", max_tokens=48, seed=n, extra=LONG)
                    async with host.submit("pool", request) as stream:
                        placed_at = stream.arrived_at + stream.queued_s
                        records.append((stream.arrived_at, placed_at))
                        async for _ in stream:
                            pass

            async with trio.open_nursery() as nursery:
                for c in range(clients):
                    nursery.start_soon(client, c)
    assert len(records) == clients * tasks_each
    # For each task, those that came after it and were placed before it.
    passed_by = [
        sum(1 for s, p in records if s > submitted and p < placed) for submitted, placed in records
    ]
    assert max(passed_by) == 0, sorted(passed_by)[-5:]
    assert sum(placed > submitted for submitted, placed in records) > clients  # some waited
