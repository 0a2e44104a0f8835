"""Many streams in one client process: whether a stream's cost stays flat as their number
grows, on every event loop, beside aiohttp at the same number.

N = 100, 1,000 and 10,000 paced streams (300 tokens at 50 a second, 60 at 10, and 20 at
1: 5,000, 10,000 and 10,000 tokens a second in all) read by one client. A run's streams
send their first tokens once all of them are open, each on its own phase of the
interval (the stub's ``bench_together``), so the server's sending does not slow the
opening of the last. At 10,000 streams, 2 tokens a second each is more than the stub
server (one Python process) sends, about 12,000 a second here: a server that falls
behind sends without pause, the client's every wakeup finds hundreds of sockets ready,
and the collector's share of every client's CPU then rose to 20-40% (``NOTES.md``):

* CPU per token in the steady state: from the moment every stream has delivered two
  tokens (all are open and under way) until the first one ends, or ``WINDOW_S`` later;
  so neither the opening of the streams nor their ends is charged to the tokens (every
  stream runs to its end all the same, and every token must come);
* resident memory per open stream, at that moment, over the process's before any
  stream was opened (its requests made).

The adapter's pull form on Trio, asyncio and uvloop; aiohttp on asyncio and uvloop, its
connection limit lifted so that it holds N; the task form and the host at the largest N.
The stub server runs in its own process on one core; each client run is a fresh process
on the other.

    python -m benchmarks.bench_scale [--quick]   # this case alone
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import sniffio

from llamacpp_adapter import (
    AdapterHost,
    JobItemReceiveStream,
    LlamaCppHttpAdapter,
    TaskRequest,
    Token,
    completion_body,
    create_job_channel,
)

from ._common import (
    SERVER_CORE,
    TRIO,
    UVLOOP,
    ClientFailed,
    Table,
    Target,
    aiohttp_streams,
    each_in_a_task,
    on_loop,
    pinned,
    pull_streams,
    request,
    run_as_script,
)
from ._common import run_client as _run_client
from ._common import stub_server as _stub_server

PULL = "llamacpp-adapter, pull"
TASK_FORM = "llamacpp-adapter, task form"
HOST = "llamacpp-adapter, host"
AIOHTTP = "aiohttp, lines + json.loads"
BARE = "a bare socket: the loop's floor"
ASYNCIO = "asyncio"
#: Every (client, loop) measured at every N.
RUNS = ((PULL, TRIO), (PULL, ASYNCIO), (PULL, UVLOOP), (AIOHTTP, ASYNCIO), (AIOHTTP, UVLOOP))
#: Measured at the largest N only: the other forms, against the pull form on the same
#: loop; and what a stream costs on each loop at the least, for the memory's floor.
FORMS = ((TASK_FORM, TRIO), (HOST, TRIO), (BARE, TRIO), (BARE, ASYNCIO), (BARE, UVLOOP))
#: (streams, tokens each, interval ms, rounds, rounds with --quick). At 10,000, opening
#: the streams takes about 6 s here, and the steady state its 8 s within the first ten
#: tokens of each: a run takes about 30 s, so it has three rounds, for the median of a
#: resident size that moves by 2 KB a stream between runs.
SCALES = ((100, 300, 20, 3, 2), (1_000, 60, 100, 2, 1), (10_000, 20, 1000, 3, 1))
#: The longest steady state measured: long enough to hold tens of thousands of tokens.
WINDOW_S = 8.0
#: The targets: CPU per token at the largest N against the same loop's at the smallest,
#: resident memory per open stream, and the other forms against the pull form.
FLAT_CPU = 1.15
RSS_PER_STREAM_BYTES = 10 * 1024
FORM_RATIO = 1.2
_PAGE = os.sysconf("SC_PAGE_SIZE")


def scale(*, quick: bool) -> tuple[list[Table], list[Target]]:
    with pinned(SERVER_CORE), _stub_server(slots=SCALES[-1][0]) as url:
        results: dict[tuple[str, str, int], list[dict[str, float]]] = {}
        failures: dict[tuple[str, str, int], str] = {}
        for streams, events, interval, full_rounds, quick_rounds in SCALES:
            rounds = quick_rounds if quick else full_rounds
            runs = RUNS + (FORMS if streams == SCALES[-1][0] else ())
            for round_ in range(rounds):
                for client, loop in runs if round_ % 2 == 0 else runs[::-1]:
                    spec = {
                        "client": client,
                        "loop": loop,
                        "url": url,
                        "streams": streams,
                        "events": events,
                        "interval_ms": interval,
                    }
                    try:
                        measured = _run_client("benchmarks.bench_scale", json.dumps(spec))
                    except ClientFailed as exc:  # shown in the table, a target not met
                        failures[client, loop, streams] = str(exc)
                        continue
                    results.setdefault((client, loop, streams), []).append(measured)
    return _tables(results, failures, quick=quick)


def _median(results: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in results)


def _tables(
    results: dict[tuple[str, str, int], list[dict[str, float]]],
    failures: dict[tuple[str, str, int], str],
    *,
    quick: bool,
) -> tuple[list[Table], list[Target]]:
    rounds = ", ".join(
        f"{quick_rounds if quick else full_rounds} at N={streams:,}"
        for streams, _, _, full_rounds, quick_rounds in SCALES
    )
    small, large = SCALES[0][0], SCALES[-1][0]
    table = Table(
        "Many streams in one process: CPU per token and memory per open stream",
        [
            "N",
            "client",
            "loop",
            "CPU s / 1,000 tokens",
            "against N=100",
            "RSS per open stream",
            "the collector's share",
            "tokens measured",
        ],
        notes=[
            f"The median of the rounds ({rounds}), each run a fresh process; CPU in the "
            f"steady state (every stream under way, none ended, at most {WINDOW_S:.0f} s), "
            "RSS at its start over the process's before the streams opened.",
            f"{BARE!r} is what a stream costs on its loop at the least (a task and a "
            "socket of the loop's own, no HTTP parsing): the floor under the clients.",
            "The collector's share: of the CPU in the steady state, what Python's cyclic "
            "garbage collector took (through gc.callbacks).",
        ],
    )
    targets = []
    for (client, loop, streams), measured in sorted(
        results.items(), key=lambda item: (item[0][2], item[0][0], item[0][1])
    ):
        cpu = _median(measured, "cpu_per_1000")
        base = results.get((client, loop, small))
        growth = cpu / _median(base, "cpu_per_1000") if base else None
        rss = _median(measured, "rss_per_stream")
        table.add(
            f"{streams:,}",
            client,
            loop,
            f"{cpu:.4f}",
            "-" if growth is None else f"{growth:.2f}x",
            f"{rss / 1024:.1f} KB",
            f"{_median(measured, 'collector_share'):.0%}",
            int(_median(measured, "tokens")),
        )
        if client == PULL and streams == large and growth is not None:
            targets.append(
                Target(
                    f"CPU per token at N={large:,} on {loop} <= {FLAT_CPU}x N={small}",
                    f"{growth:.2f}x",
                    growth <= FLAT_CPU,
                    factor=FLAT_CPU / growth,
                    goal=1.0,
                )
            )
            targets.append(
                Target(
                    f"RSS per open stream at N={large:,} on {loop} <= 10 KB",
                    f"{rss / 1024:.1f} KB",
                    rss <= RSS_PER_STREAM_BYTES,
                    factor=RSS_PER_STREAM_BYTES / rss,
                    goal=1.0,
                )
            )
        pull = results.get((PULL, loop, streams))
        if client in (TASK_FORM, HOST) and pull:
            for key, what in (("cpu_per_1000", "CPU per token"), ("rss_per_stream", "RSS")):
                ratio = _median(measured, key) / _median(pull, key)
                name = f"{client.split(', ')[1]} {what} at N={large:,} on {loop} <= "
                targets.append(
                    Target(
                        name + f"{FORM_RATIO}x the pull form's",
                        f"{ratio:.2f}x",
                        ratio <= FORM_RATIO,
                        factor=FORM_RATIO / ratio,
                        goal=1.0,
                    )
                )
    for (client, loop, streams), why in failures.items():
        table.notes.append(f"{client} on {loop} at N={streams:,} failed a round: {why}")
        targets.append(Target(f"{client} on {loop} at N={streams:,} runs", "failed", False))
    return [table], targets


# --- One client run, in its own process -------------------------------------------------


def _resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


def own_usage() -> tuple[float, int]:
    """This process's CPU seconds so far, and its resident bytes."""
    return time.process_time(), _resident()


class CollectorClock:
    """The CPU seconds this process's cyclic garbage collector has taken since it was
    made, and its collections by generation, through ``gc.callbacks``; ``close()``
    stops counting."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._began = 0.0
        gc.callbacks.append(self._on_collect)

    def _on_collect(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.process_time()
        else:
            self.seconds += time.process_time() - self._began
            self.collections[info["generation"]] += 1

    def close(self) -> None:
        gc.callbacks.remove(self._on_collect)


class WindowMeter:
    """A run's token sink: CPU per token from the moment every stream has delivered two
    tokens until the first has delivered all of its own (or ``WINDOW_S`` later), and
    the resident memory per stream at that first moment over *baseline*: of this
    process, or of the one *usage* reports (its CPU seconds and resident bytes)."""

    def __init__(
        self,
        streams: int,
        events: int,
        baseline: int,
        usage: Callable[[], tuple[float, int]] = own_usage,
    ) -> None:
        self.streams = streams
        self.events = events
        self.baseline = baseline
        self._usage = usage
        self.count = 0
        self._tokens_of: dict[str, int] = {}
        self._under_way = 0
        self._opened: tuple[int, float, float] | None = None  # (count, CPU, time) then
        self.window: tuple[int, float, float] | None = None  # (tokens, CPU, seconds) in it
        self._began = time.perf_counter()
        self.rss_per_stream = 0.0
        #: The collector's CPU seconds and full collections in the window: this
        #: process's own (none are counted for another's *usage*).
        self.collector: CollectorClock | None = None
        self._collected: tuple[float, int] = (0.0, 0)  # (seconds, full ones) at its start
        self.window_collected: tuple[float, int] = (0.0, 0)

    def __call__(self, job_id: str, text: str) -> None:
        self.count += 1
        tokens = self._tokens_of[job_id] = self._tokens_of.get(job_id, 0) + 1
        if tokens == 2:
            self._under_way += 1
            if self._under_way == self.streams:
                cpu, resident = self._usage()
                self._opened = (self.count, cpu, time.perf_counter())
                self.rss_per_stream = (resident - self.baseline) / self.streams
                self._collected = self._collector_now()
        elif self.window is None and self._opened is not None:
            count, cpu, began = self._opened
            now = time.perf_counter()
            if tokens == self.events or now - began >= WINDOW_S:
                self.window = (self.count - count, self._usage()[0] - cpu, now - began)
                seconds, full = self._collector_now()
                self.window_collected = (seconds - self._collected[0], full - self._collected[1])

    def _collector_now(self) -> tuple[float, int]:
        clock = self.collector
        return (0.0, 0) if clock is None else (clock.seconds, clock.collections[2])

    def result(self) -> dict[str, float]:
        assert self.window is not None, "a stream ended before every one was under way"
        tokens, cpu, seconds = self.window
        assert self._opened is not None
        return {
            "cpu_per_1000": cpu / tokens * 1000,
            "collector_share": self.window_collected[0] / cpu if cpu else 0.0,
            "full_collections": self.window_collected[1],
            "tokens": tokens,
            "window_s": seconds,
            "open_s": self._opened[2] - self._began,
            "rss_per_stream": self.rss_per_stream,
        }


def paced_tasks(spec: dict[str, Any]) -> list[TaskRequest]:
    """The run's tasks: ``spec["streams"]`` paced streams of ``spec["events"]`` tokens,
    ``spec["interval_ms"]`` apart, whose first tokens wait until every one is open."""
    fields = {
        "bench_mode": "paced",
        "bench_events": int(spec["events"]),
        "bench_interval_ms": spec["interval_ms"],
        "bench_run": uuid.uuid4().hex,
        "bench_together": int(spec["streams"]),
    }
    return [request(**fields) for _ in range(int(spec["streams"]))]


async def _measure(spec: dict[str, Any]) -> dict[str, float]:
    """One client run: every stream runs to its end, and every token must come."""
    streams, events = int(spec["streams"]), int(spec["events"])
    tasks = paced_tasks(spec)
    gc.collect()
    meter = WindowMeter(streams, events, _resident())
    meter.collector = CollectorClock()
    try:
        await _CLIENTS[spec["client"]](spec["url"], tasks, meter)
    finally:
        meter.collector.close()
    assert meter.count == streams * events, (spec["client"], meter.count)
    return meter.result()


async def _task_form(url: str, tasks: list[TaskRequest], on_token: WindowMeter) -> None:
    """Every stream fed by the adapter into one job channel (as many items as streams);
    one receiver takes them all."""

    async def take(receive: JobItemReceiveStream) -> None:
        async with receive:
            async for job_id, event in receive:
                if type(event) is Token:
                    on_token(job_id, event.text)

    send, receive = create_job_channel(len(tasks))
    async with LlamaCppHttpAdapter(url) as adapter:
        feeds = [(adapter.stream_into, task, send.clone()) for task in tasks]
        send.close()
        await each_in_a_task([(take, receive), *feeds])


async def _host(url: str, tasks: list[TaskRequest], on_token: WindowMeter) -> None:
    """Every stream through a host's pool of the one server, each pulled by its task.
    Opening 10,000 connections at once overflows the stub's listen queue, and a connect
    can time out: the pool does not give up on its one replica for that, and a stream
    that failed before its first token is placed again."""

    async def one(host: AdapterHost, task: TaskRequest) -> None:
        async with host.submit("scale", task) as events:
            async for event in events:
                if type(event) is Token:
                    on_token(task.job_id, event.text)

    async with (
        AdapterHost(slot_wait_s=3600.0, unhealthy_after=1_000_000) as host,
        LlamaCppHttpAdapter(url) as adapter,
    ):
        host.bind("scale", "r0", adapter)
        await host.wait_ready("scale")
        await each_in_a_task([(one, host, task) for task in tasks])


async def _bare_sockets(url: str, tasks: list[TaskRequest], on_token: WindowMeter) -> None:
    """The floor of a stream on the running loop: a task of its own with a socket of the
    loop's own, which sends the request and counts the tokens in each read, with no HTTP
    parsing and no decoding. (An event split across two reads would be miscounted and
    fail the run's count check; on loopback each arrives whole.)"""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    head = f"POST /completion HTTP/1.1\r\nHost: {host}:{port}\r\n"
    address = (host, int(port))

    def request_of(task: TaskRequest) -> bytes:
        body = json.dumps(completion_body(task)).encode()
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body

    if sniffio.current_async_library() == "trio":
        import trio

        async def one(task: TaskRequest) -> None:
            with trio.socket.socket() as sock:
                await sock.connect(address)
                await sock.send(request_of(task))
                while data := await sock.recv(READ_BYTES):
                    for _ in range(data.count(TOKEN_MARK)):
                        on_token(task.job_id, "")

    else:
        loop = asyncio.get_running_loop()

        async def one(task: TaskRequest) -> None:
            with socket.socket() as sock:
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
                await loop.sock_sendall(sock, request_of(task))
                while data := await loop.sock_recv(sock, READ_BYTES):
                    for _ in range(data.count(TOKEN_MARK)):
                        on_token(task.job_id, "")

    await each_in_a_task([(one, task) for task in tasks])


#: What marks a token's event in the stub's stream, for the bare sockets' count.
TOKEN_MARK = b'"stop":false'
READ_BYTES = 64 * 1024

_CLIENTS: dict[str, Callable[[str, list[TaskRequest], WindowMeter], Awaitable[None]]] = {
    PULL: pull_streams,
    TASK_FORM: _task_form,
    HOST: _host,
    AIOHTTP: aiohttp_streams,
    BARE: _bare_sockets,
}


def _client_process(spec: dict[str, Any]) -> dict[str, float]:
    return on_loop(_measure, spec)


if __name__ == "__main__":
    run_as_script(scale, _client_process)
