"""A chaos run: ``bench`` through the host against three real llama-server replicas,
while one is killed (SIGKILL) and started again, and another stopped (SIGSTOP: it takes
connections and answers nothing) and continued, during the run.

Every request completes or fails with a typed error; a completed one has every token
once (none was retried after its first token: that would repeat them); no slot is left
busy; each replica that comes back gets work again within a stated bound; and nothing
is left running."""

from __future__ import annotations

import os
import signal
from contextlib import ExitStack
from typing import Any

import httpx
import trio

from llamacpp_adapter import _exceptions
from llamacpp_adapter._local.server import LocalLlamaServer
from llamacpp_adapter.bench import BenchConfig, RequestRecord, run_bench
from llamacpp_adapter.bench._load import Load

#: The run, and when each fault comes and goes, in seconds from its start.
RUN_S = 40.0
KILL_AT, RESTART_AT = 6.0, 12.0
STOP_AT, CONTINUE_AT = 18.0, 26.0
#: How long a request waits for a server's next bytes: a stopped replica's requests
#: fail (and are placed again, before their first token) after this.
READ_TIMEOUT_S = 2.0
#: The longest a replica that comes back may wait for work: the host probes an
#: unhealthy replica every second, a probe waits up to 5 s for an answer, and the next
#: task placed goes there.
BACK_WITHIN_S = 10.0
OUTPUT_TOKENS = 64
#: The most tokens of a character the engine holds back when the limit cuts it off.
HELD_BACK = 3
#: The codes of the library's typed errors.
TYPED = {
    error.code
    for error in vars(_exceptions).values()
    if isinstance(error, type) and isinstance(getattr(error, "code", None), str)
}


async def generated(client: httpx.AsyncClient, server: LocalLlamaServer) -> float:
    """The server's count of the tokens it generated (0 when it does not answer)."""
    try:
        response = await client.get(f"{server.base_url}/metrics", timeout=1.0)
    except httpx.HTTPError:
        return 0.0
    for line in response.text.splitlines():
        if line.startswith("llamacpp:tokens_predicted_total"):
            return float(line.split()[-1])
    return 0.0


async def until_it_works(server: LocalLlamaServer, since: float) -> float:
    """Seconds from *since* until *server* generates tokens for the run."""
    async with httpx.AsyncClient() as client:
        before = await generated(client, server)
        while await generated(client, server) <= before:  # noqa: ASYNC110 - another process
            await trio.sleep(0.1)
    return trio.current_time() - since


async def chaos(servers: list[LocalLlamaServer], back: dict[str, float]) -> None:
    """The faults, on the run's schedule; *back* gets how long each replica took to get
    work again."""
    killed, stopped = servers[0], servers[1]
    start = trio.current_time()
    await trio.sleep_until(start + KILL_AT)
    killed.kill()
    await trio.sleep_until(start + RESTART_AT)
    await trio.to_thread.run_sync(killed.start)
    back["restarted"] = await until_it_works(killed, trio.current_time())
    await trio.sleep_until(start + STOP_AT)
    assert stopped.pid is not None
    os.kill(stopped.pid, signal.SIGSTOP)
    await trio.sleep_until(start + CONTINUE_AT)
    os.kill(stopped.pid, signal.SIGCONT)
    back["continued"] = await until_it_works(stopped, trio.current_time())


async def busy_slots(servers: list[LocalLlamaServer]) -> int:
    async with httpx.AsyncClient(timeout=5.0) as client:
        busy = 0
        for server in servers:
            slots = (await client.get(f"{server.base_url}/slots")).json()
            busy += sum(bool(slot["is_processing"]) for slot in slots)
    return busy


def test_a_chaos_run_loses_nothing_and_leaves_nothing() -> None:
    with ExitStack() as stack:
        servers = [
            stack.enter_context(LocalLlamaServer(parallel=2, context=4096)) for _ in range(3)
        ]
        config = BenchConfig(
            urls=tuple(server.base_url for server in servers),
            load=Load(concurrency=6),
            requests=None,
            duration_s=RUN_S,
            output_tokens=OUTPUT_TOKENS,
            read_timeout_s=READ_TIMEOUT_S,
            sample_server=False,
        )
        records: list[RequestRecord] = []
        back: dict[str, float] = {}

        async def main() -> Any:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(chaos, servers, back)
                result = await run_bench(config, on_request=records.append)
            return result, await busy_slots(servers)

        result, busy = trio.run(main)

    failed = [r for r in records if r.error is not None]
    completed = [r for r in records if r.error is None]
    assert {r.error for r in failed} <= TYPED, {r.error for r in failed}
    assert failed, "no request met a fault: the run did not test anything"
    assert [r for r in failed if r.first_token is not None], "no fault came mid-stream"
    assert len(completed) > 10 * len(failed)
    assert all(r.output_tokens == OUTPUT_TOKENS for r in completed)
    # Every token once: a retry after the first token would repeat some. (The engine
    # counts, and does not stream, the bytes of a character cut off by the limit.)
    streamed = sorted({r.streamed_tokens or 0 for r in completed})
    assert OUTPUT_TOKENS - HELD_BACK <= streamed[0] <= streamed[-1] <= OUTPUT_TOKENS, streamed
    assert busy == 0
    assert back["restarted"] <= BACK_WITHIN_S, back
    assert back["continued"] <= BACK_WITHIN_S, back
    print(
        f"chaos: {len(records)} requests, {len(completed)} completed, failed "
        f"{sorted((r.error, r.first_token is not None) for r in failed)}, back {back}, "
        f"{result.figures['output_throughput']:.0f} tokens/s"
    )
