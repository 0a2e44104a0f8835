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
import time
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

from ._common import (
    SERVER_CORE,
    JobTokenSink,
    Table,
    Target,
    TokenMeter,
    peer_client,
    pinned,
    pull_streams,
    request,
    run_as_script,
    run_client,
    warm_burst,
)
from ._common import stub_server as _stub_server

PULL = "pull form (submit)"
TASK = "task form, anyio's channel"
OWN = "task form, create_job_channel"
PUMP = "httpx + httpx-sse pump"
CLIENTS = (PULL, TASK, OWN, PUMP)
PACED_STREAMS = 100
PACED_INTERVAL_MS = 50
#: Items the memory channel holds, for the task form and the pump alike: on loopback, and
#: in a fan-in (as many as the streams that feed it).
CHANNEL_ITEMS = 64
FAN_IN_ITEMS = PACED_STREAMS
#: create_job_channel again, in a fan-in, with a channel smaller than the fan-in.
SMALL = f"task form, create_job_channel({CHANNEL_ITEMS})"


def task_form(*, quick: bool) -> tuple[list[Table], list[Target]]:
    with pinned(SERVER_CORE), _stub_server() as url:
        throughput, throughput_targets = _throughput(url, quick=quick)
        paced, fan_in, paced_targets = _paced_and_fan_in(url, quick=quick)
    return [throughput, paced, fan_in], throughput_targets + paced_targets


Runs = dict[str, list[dict[str, float]]]


def _runs(url: str, spec: dict[str, Any], clients: tuple[str, ...], rounds: int) -> Runs:
    """Each client's figures, round by round: *rounds* rounds of every client, in
    alternating order, each run a fresh process."""
    results: Runs = {client: [] for client in clients}
    for round_ in range(rounds):
        order = clients if round_ % 2 == 0 else clients[::-1]
        for client in order:
            args = json.dumps({**spec, "client": client, "url": url})
            results[client].append(run_client("benchmarks.bench_task_form", args))
    return results


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _ratios(runs: Runs, client: str, base: str, key: str) -> list[float]:
    """*client*'s figure over *base*'s, in each round: both ran minutes apart at most, so
    a round's ratio holds less of the machine's drift than a ratio of medians."""
    return sorted(a[key] / b[key] for a, b in zip(runs[client], runs[base], strict=True))


def _ratio_cell(ratios: list[float]) -> str:
    """The median of the rounds' ratios, and their range."""
    return f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"


def _throughput(url: str, *, quick: bool) -> tuple[Table, list[Target]]:
    events = 50_000 if quick else 200_000
    rounds = 3 if quick else 5
    spec = {"mode": "burst", "streams": 1, "events": events, "channel": CHANNEL_ITEMS}
    warm_burst(url, events)
    runs = _runs(url, spec, CLIENTS, rounds)
    table = Table(
        f"The two shapes, loopback: one stream of {events:,} events",
        ["client", "events/s", "ratio to the pump"],
        notes=[
            f"Median of {rounds} runs, each a fresh process, the clients alternating; "
            f"channels of {CHANNEL_ITEMS} items. The pull form hands events to its "
            "consumer; the task form and the pump send each into a memory channel, "
            "read by one receiving task: anyio's memory object stream, or (the third "
            "row) create_job_channel's, whose receive hands over a waiting item without "
            "a pass through the scheduler. The ratio is the median of the rounds' "
            "ratios, with their range."
        ],
    )
    for client in CLIENTS:
        table.add(
            client, _median(runs[client], "rate"), _ratio_cell(_ratios(runs, client, PUMP, "rate"))
        )
    ratio = statistics.median(_ratios(runs, TASK, PUMP, "rate"))
    return table, [
        Target(
            "task form, anyio's channel: loopback >= 1.2x an httpx + httpx-sse pump "
            "(the same channel)",
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
        "channel": FAN_IN_ITEMS,
    }


def _paced_and_fan_in(url: str, *, quick: bool) -> tuple[Table, Table, list[Target]]:
    """One set of runs, two views: the task form's CPU per paced token beside the pull
    form's, and the fan-in (the task form's runs are one) beside the httpx + httpx-sse
    pump's."""
    rounds = 3 if quick else 7
    runs = _runs(url, _paced_spec(quick=quick), (*CLIENTS, SMALL), rounds)
    note = (
        "Client CPU (user + system) once every stream has delivered two tokens; "
        f"{rounds} rounds, the clients alternating, each run a fresh process. A run's "
        "CPU per token moves by up to a third with the machine, so the ratio is the median "
        "of the rounds' ratios, with their range. Channels of "
        f"{FAN_IN_ITEMS} items, one for each stream, except in the last row: "
        f"{CHANNEL_ITEMS} items, so that streams wait for room at every step."
    )
    paced = Table(
        f"The two shapes, paced: {PACED_STREAMS} streams, a token every {PACED_INTERVAL_MS} ms",
        ["client", "CPU s / 1,000 tokens", "ratio to the pull form"],
        notes=[note],
    )
    for client in (PULL, TASK, OWN, SMALL):
        paced.add(client, f"{_median(runs[client], 'cpu_per_1000'):.3f}",
                  _ratio_cell(_ratios(runs, client, PULL, "cpu_per_1000")))  # fmt: skip
    fan_in = Table(
        f"Fan-in: {PACED_STREAMS} paced streams into one receiver",
        ["client", "CPU s / 1,000 tokens", "p50 µs", "p99 µs", "CPU ratio to the pump"],
        notes=[
            "The same runs. Latency: from the server's write of a token (its "
            "CLOCK_MONOTONIC, in the token) to the receiver holding it, once every stream "
            "has delivered two tokens; the median of the runs' percentiles."
        ],
    )
    for client in (TASK, OWN, SMALL, PUMP):
        fan_in.add(client, f"{_median(runs[client], 'cpu_per_1000'):.3f}",
                   _median(runs[client], "p50_us"), _median(runs[client], "p99_us"),
                   _ratio_cell(_ratios(runs, client, PUMP, "cpu_per_1000")))  # fmt: skip
    targets = []
    for client in (TASK, OWN):
        ratio = statistics.median(_ratios(runs, client, PULL, "cpu_per_1000"))
        targets.append(
            Target(
                f"{client}: paced CPU at N={PACED_STREAMS} <= 1.15x the pull form",
                f"{ratio:.2f}x",
                ratio <= 1.15,
                factor=1.15 / ratio,
                goal=1.0,
            )
        )
    return paced, fan_in, targets


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
    meter = TokenMeter(streams, latency=paced)
    started = time.perf_counter()
    channel = CHANNEL_ITEMS if spec["client"] == SMALL else int(spec["channel"])
    await _CLIENTS[spec["client"]](spec["url"], tasks, meter, channel)
    elapsed = time.perf_counter() - started
    result = {"rate": meter.count / elapsed, "cpu_per_1000": meter.cpu_per_1000()}
    assert meter.count == streams * events, (spec["client"], meter.count)
    if meter.delays_us:
        delays = sorted(meter.delays_us)
        result["p50_us"] = delays[len(delays) // 2]
        result["p99_us"] = delays[int(len(delays) * 0.99) - 1]
    return result


async def _pull(url: str, tasks: list[TaskRequest], on_token: JobTokenSink, _: int) -> None:
    await pull_streams(url, tasks, on_token)


async def _receive(receive: ObjectReceiveStream[Any], on_token: JobTokenSink) -> None:
    async with receive:
        async for job_id, event in receive:
            if type(event) is Token:
                on_token(job_id, event.text)


async def _task_form(
    url: str, tasks: list[TaskRequest], on_token: JobTokenSink, channel: int
) -> None:
    await _feed(url, tasks, on_token, *anyio.create_memory_object_stream[JobItem](channel))


async def _own_channel(
    url: str, tasks: list[TaskRequest], on_token: JobTokenSink, channel: int
) -> None:
    await _feed(url, tasks, on_token, *create_job_channel(channel))


async def _feed(
    url: str,
    tasks: list[TaskRequest],
    on_token: JobTokenSink,
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


async def _pump(url: str, tasks: list[TaskRequest], on_token: JobTokenSink, channel: int) -> None:
    send, receive = anyio.create_memory_object_stream[tuple[str, Any]](channel)
    async with peer_client() as client, trio.open_nursery() as nursery:
        nursery.start_soon(_receive, receive, on_token)
        async with send:
            for task in tasks:
                nursery.start_soon(_pump_task, client, url, task, send.clone())


_CLIENTS = {PULL: _pull, TASK: _task_form, OWN: _own_channel, SMALL: _own_channel, PUMP: _pump}


def _client_process(spec: dict[str, Any]) -> dict[str, float]:
    result: dict[str, float] = trio.run(_measure, spec)
    return result


if __name__ == "__main__":
    run_as_script(task_form, _client_process)
