"""The relay with many WebSocket consumers at once: whether every consumer's stream
completes, and what the relay process spends on them: CPU per token relayed, and
resident memory per consumer.

1,000 consumers, each a WebSocket client of the library's own (``open_relay_stream``),
stream a task of 60 tokens at 2 a second through one relay that reads them from the
stub server with one adapter: about 2,000 tokens a second in all. The relay runs in a
process of its own on one core, measured by itself; the stub server and the consumers
share the other. CPU per token is taken in the steady state (every consumer under way,
none ended, at most ``WINDOW_S``), as the scale benchmark takes it, and memory per
consumer at its start over the relay's before any consumer came. Beside it, the pull
form reads the same streams straight from the stub in one process: what the same tokens
cost a consumer with no relay between.

    python -m benchmarks.bench_relay [--quick]   # this case alone
"""

from __future__ import annotations

import contextlib
import functools
import json
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from llamacpp_adapter import (
    End,
    LlamaCppHttpAdapter,
    Relay,
    TaskRequest,
    Token,
    open_relay_stream,
)

from ._common import (
    CLIENT_CORE,
    SERVER_CORE,
    TRIO,
    UVLOOP,
    Table,
    Target,
    each_in_a_task,
    on_loop,
    pinned,
    run_as_script,
)
from ._common import run_client as _run_client
from ._common import stub_server as _stub_server
from .bench_scale import PULL, WindowMeter, own_usage, paced_tasks

#: Consumers, tokens each, and the milliseconds between two tokens.
CONSUMERS, EVENTS, INTERVAL_MS = 1_000, 60, 500
#: The relay's loops (its consumers run on Trio), and the rounds of each.
LOOPS = (TRIO, UVLOOP)
ROUNDS, QUICK_ROUNDS = 2, 1


def relay(*, quick: bool) -> tuple[list[Table], list[Target]]:
    results: dict[str, list[dict[str, float]]] = {}
    with pinned(SERVER_CORE), _stub_server(slots=CONSUMERS) as url:
        spec = {"url": url, "streams": CONSUMERS, "events": EVENTS, "interval_ms": INTERVAL_MS}
        for _ in range(QUICK_ROUNDS if quick else ROUNDS):
            for loop in LOOPS:
                # The consumers on the stub's core; they start the relay on the other.
                measured = _run_client(
                    "benchmarks.bench_relay",
                    json.dumps({**spec, "role": "consumers", "loop": TRIO, "relay_loop": loop}),
                    core=SERVER_CORE,
                )
                results.setdefault(f"relay on {loop}", []).append(measured)
            direct = {**spec, "client": PULL, "loop": TRIO}
            measured = _run_client("benchmarks.bench_scale", json.dumps(direct))
            results.setdefault(f"{PULL} on {TRIO}, no relay", []).append(measured)
    return _tables(results)


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _tables(results: dict[str, list[dict[str, float]]]) -> tuple[list[Table], list[Target]]:
    table = Table(
        f"The relay with {CONSUMERS:,} WebSocket consumers at once",
        [
            "process measured",
            "CPU s / 1,000 tokens",
            "against no relay",
            "RSS per consumer",
            "streams completed",
            "tokens measured",
        ],
        notes=[
            f"{CONSUMERS:,} consumers, {EVENTS} tokens each at {1000 // INTERVAL_MS} a second; "
            "the relay's own process (its consumers on Trio in another), or the pull form "
            "reading the same streams with no relay; the median of the rounds, CPU in the "
            "steady state, RSS at its start over the process's before the streams opened."
        ],
    )
    direct = results.get(f"{PULL} on {TRIO}, no relay")
    targets = []
    for name, runs in results.items():
        cpu = _median(runs, "cpu_per_1000")
        against = "-" if direct is None else f"{cpu / _median(direct, 'cpu_per_1000'):.2f}x"
        completed = min(int(run.get("completed", CONSUMERS)) for run in runs)
        table.add(
            name,
            f"{cpu:.4f}",
            against,
            f"{_median(runs, 'rss_per_stream') / 1024:.1f} KB",
            f"{completed:,} of {CONSUMERS:,}",
            int(_median(runs, "tokens")),
        )
        if name.startswith("relay"):
            targets.append(
                Target(
                    f"every one of {CONSUMERS:,} consumers completes, {name}",
                    f"{completed:,}",
                    completed == CONSUMERS,
                )
            )
    return [table], targets


# --- The processes of one run -------------------------------------------------------------


def _process(spec: dict[str, Any]) -> dict[str, float]:
    if spec["role"] == "relay":
        return on_loop(_serve, {**spec, "loop": spec["relay_loop"]})
    with _relay_process(spec) as relay:
        return on_loop(functools.partial(_consume, relay=relay), spec)


async def _serve(spec: dict[str, Any]) -> dict[str, float]:
    """The relay process: it prints its URL with its usage, then its usage again for
    every line it reads, until its input ends."""
    streams = int(spec["streams"])
    async with LlamaCppHttpAdapter(spec["url"]) as adapter, anyio.create_task_group() as group:
        relay = Relay(
            adapter,
            max_connections=streams,
            max_handshakes=streams,
            allow_extra=True,  # the tasks tell the stub server what to stream
            throttle=None,
        )
        url = await group.start(relay.serve)
        _say({"url": url})
        while await anyio.to_thread.run_sync(sys.stdin.readline):
            _say({})
        group.cancel_scope.cancel()
    return {}


def _say(fields: dict[str, Any]) -> None:
    cpu, resident = own_usage()
    print(json.dumps({**fields, "cpu": cpu, "rss": resident}), flush=True)


@dataclass
class _RelayProcess:
    """The relay's process, seen from the consumers': its URL, its resident bytes
    before any consumer came, and its usage when asked."""

    process: subprocess.Popen[str]
    url: str = ""
    baseline: int = 0

    def usage(self) -> tuple[float, int]:
        """The relay's CPU seconds so far, and its resident bytes (it answers at once)."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write("usage\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        return answer["cpu"], answer["rss"]


@contextlib.contextmanager
def _relay_process(spec: dict[str, Any]) -> Iterator[_RelayProcess]:
    """Start the relay on the other core; yield it once it listens; end it after."""
    with pinned(CLIENT_CORE):
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_relay", json.dumps({**spec, "role": "relay"})],
            cwd=Path(__file__).parents[1], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        first = json.loads(process.stdout.readline())
        yield _RelayProcess(process, first["url"], first["rss"])
    finally:
        process.stdin.close()
        process.wait(timeout=30)


async def _consume(spec: dict[str, Any], *, relay: _RelayProcess) -> dict[str, float]:
    """The consumers' process: every task streamed through the relay at once; the
    relay's usage asked as the steady state begins and ends."""
    streams, events = int(spec["streams"]), int(spec["events"])
    tasks = paced_tasks(spec)
    meter = WindowMeter(streams, events, relay.baseline, usage=relay.usage)
    ended: set[str] = set()

    async def one(task: TaskRequest) -> None:
        async with open_relay_stream(relay.url, task) as received:
            async for event in received:
                if type(event) is Token:
                    meter(task.job_id, event.text)
                elif type(event) is End:
                    ended.add(task.job_id)

    await each_in_a_task([(one, task) for task in tasks])
    assert meter.count == streams * events, meter.count
    return {**meter.result(), "completed": len(ended)}


if __name__ == "__main__":
    run_as_script(relay, _process)
