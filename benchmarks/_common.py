"""What the benchmark cases share: the stub server process, the two clients measured
side by side, and tables."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import sniffio
from httpx_sse import aconnect_sse

from llamacpp_adapter import ChatRequest, LlamaCppHttpAdapter, TaskRequest, Token, completion_body

_SERVER_START_TIMEOUT_S = 20.0
#: The stub server's slots, when it is to say it has other than the captured server's.
SLOTS_VARIABLE = "BENCH_SLOTS"
#: The core the stub server runs on, and the one each measured client runs on.
SERVER_CORE = 0
CLIENT_CORE = 1


@contextlib.contextmanager
def pinned(core: int) -> Iterator[None]:
    """Pin this process, and so the processes it starts, to *core* for the block (where
    the machine has it)."""
    before = os.sched_getaffinity(0)
    if core in before:
        os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def run_client(module: str, *args: str, core: int = CLIENT_CORE) -> Any:
    """Run ``python -m module args...`` in a fresh process on *core* (the client's);
    return the JSON it prints."""
    with pinned(core):
        run = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=Path(__file__).parents[1], capture_output=True, text=True,
        )  # fmt: skip
    if run.returncode:
        last = run.stderr.strip().splitlines()[-1:] or ["(nothing on stderr)"]
        raise ClientFailed(f"the client {module} exited {run.returncode}: {last[0]}")
    return json.loads(run.stdout)


class ClientFailed(RuntimeError):
    """A measured client's process failed; its last line of stderr says why."""


@contextlib.contextmanager
def stub_server(cert_and_key: Path | None = None, *, slots: int | None = None) -> Iterator[str]:
    """Run ``benchmarks._server`` in its own process (over TLS with *cert_and_key*, a PEM
    file; saying it has *slots* slots, rather than the captured server's 2, to a host that
    asks); yield its base URL."""
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        tls = [] if cert_and_key is None else [str(cert_and_key)]
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._server", str(port_file), *tls],
            cwd=Path(__file__).parents[1],
            env={**os.environ, **({} if slots is None else {SLOTS_VARIABLE: str(slots)})},
        )
        try:
            deadline = time.monotonic() + _SERVER_START_TIMEOUT_S
            while not port_file.exists() or not port_file.read_text():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the benchmark server did not start")
                time.sleep(0.01)
            scheme = "http" if cert_and_key is None else "https"
            yield f"{scheme}://127.0.0.1:{port_file.read_text()}"
        finally:
            process.terminate()
            process.wait(timeout=10)


class TokenMeter:
    """A run's token sink: it counts tokens, and measures the client's CPU (user +
    system) per token from the moment every one of *streams* streams has delivered two
    tokens: all are open and under way. (A count of tokens alone would start the measure
    while a client that opens its streams one after another still opens the last
    ones, and charge their opening to the tokens.) With *latency*, each token's text is
    the server's ``time.monotonic_ns()`` at its write, and the delay to here is kept."""

    def __init__(self, streams: int, *, latency: bool = False) -> None:
        self.streams = streams
        self.latency = latency
        self.count = 0
        self.warm: int | None = None  # tokens before the measure started
        self.delays_us: list[float] = []
        self._tokens_of: dict[str, int] = {}
        self._under_way = 0
        self._cpu_at_warm = time.process_time()

    def __call__(self, job_id: str, text: str) -> None:
        self.count += 1
        if self.warm is None:
            tokens = self._tokens_of[job_id] = self._tokens_of.get(job_id, 0) + 1
            if tokens == 2:
                self._under_way += 1
                if self._under_way == self.streams:
                    self.warm = self.count
                    self._cpu_at_warm = time.process_time()
        elif self.latency:
            self.delays_us.append((time.monotonic_ns() - int(text)) / 1000)

    def cpu_per_1000(self) -> float:
        """Client CPU seconds per 1,000 tokens since the measure started."""
        assert self.warm is not None, "not every stream delivered two tokens"
        return (time.process_time() - self._cpu_at_warm) / (self.count - self.warm) * 1000


def warm_burst(url: str, events: int) -> None:
    """Have the stub server build and cache the body of a burst of *events* events (a
    second or so of its time), so that no measured run pays for it."""
    from llamacpp_adapter import completion_body

    body = completion_body(request(bench_mode="burst", bench_events=events))
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", f"{url}/completion", json=body) as answer,
    ):
        for _ in answer.iter_raw():
            pass


def request(**fields: Any) -> TaskRequest:
    """A task whose ``extra`` tells the stub server what to stream."""
    return TaskRequest("bench", extra=fields)


#: Told the job and the text of each token.
JobTokenSink = Callable[[str, str], None]


async def pull_streams(
    url: str, requests: Sequence[TaskRequest | ChatRequest], on_token: JobTokenSink
) -> None:
    """Stream every one of *requests* at once through one adapter, each pulled by a task
    of its own; *on_token* is told each token's job and text."""

    async def one(adapter: LlamaCppHttpAdapter, request: TaskRequest | ChatRequest) -> None:
        async with adapter.submit(request) as events:
            async for event in events:
                if type(event) is Token:
                    on_token(request.job_id, event.text)

    async with LlamaCppHttpAdapter(url) as adapter:
        await each_in_a_task([(one, adapter, request) for request in requests])


async def each_in_a_task(calls: Sequence[tuple[Any, ...]]) -> None:
    """Run every ``(function, *args)`` of *calls*, each in a task of its own in the
    running loop's own group: a Trio nursery, or asyncio's ``TaskGroup``. Every client
    is run so, the peers as the adapter: anyio's task group would add to each task what
    anyio wraps it in (on Trio, a cancel scope and an event: about 1 KB a task)."""
    if sniffio.current_async_library() == "trio":
        import trio

        async with trio.open_nursery() as nursery:
            for function, *args in calls:
                nursery.start_soon(function, *args)
    else:
        async with asyncio.TaskGroup() as group:
            for function, *args in calls:
                group.create_task(function(*args))


async def adapter_tokens(adapter: LlamaCppHttpAdapter, task: TaskRequest) -> AsyncIterator[str]:
    """The text of each token the adapter delivers."""
    async with adapter.submit(task) as events:
        async for event in events:
            if type(event) is Token:
                yield event.text


async def httpx_sse_tokens(
    client: httpx.AsyncClient, url: str, task: TaskRequest
) -> AsyncIterator[str]:
    """The text of each token, the way a user of httpx + httpx-sse would read it."""
    from llamacpp_adapter import completion_body

    async with aconnect_sse(
        client, "POST", f"{url}/completion", json=completion_body(task)
    ) as source:
        async for sse in source.aiter_sse():
            chunk = json.loads(sse.data)
            if not chunk["stop"]:
                yield chunk["content"]


def peer_client() -> httpx.AsyncClient:
    """httpx with the same settings as the adapter's default client."""
    from llamacpp_adapter.http_util import default_client

    return default_client()


@dataclass
class Table:
    """A table of figures, printed as Markdown."""

    title: str
    columns: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([_cell(c) for c in cells])

    def markdown(self) -> str:
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) for i, c in enumerate(self.columns)]
        lines = [f"### {self.title}", ""]
        lines.append(
            "| " + " | ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True)) + " |"
        )
        lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in self.rows:
            lines.append(
                "| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |"
            )
        lines += ["", *self.notes]
        return "\n".join(lines).rstrip() + "\n"


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@dataclass
class Target:
    """A target and whether this run met it. ``factor`` is how many times better than
    its peer the adapter did, and ``goal`` the factor the target asks, for the chart."""

    name: str
    measured: str
    met: bool
    factor: float | None = None
    goal: float | None = None


async def aiohttp_streams(url: str, tasks: Sequence[TaskRequest], on_token: JobTokenSink) -> None:
    """Stream every one of *tasks* at once through aiohttp, as vLLM's serving benchmark
    reads a stream: line by line, each ``data:`` line parsed with ``json.loads``; its
    connection limit lifted, so that it holds them all."""
    import aiohttp

    async def one(session: aiohttp.ClientSession, task: TaskRequest) -> None:
        async with session.post(f"{url}/completion", json=completion_body(task)) as response:
            async for line in response.content:
                line = line.strip()
                if not line:
                    continue
                chunk = json.loads(line.decode().removeprefix("data: "))
                if not chunk["stop"]:
                    on_token(task.job_id, chunk["content"])

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await each_in_a_task([(one, session, task) for task in tasks])


#: The event loops a client runs on, by name.
TRIO, UVLOOP = "Trio", "asyncio + uvloop"


def on_loop(
    measure: Callable[[dict[str, Any]], Awaitable[dict[str, float]]], spec: dict[str, Any]
) -> dict[str, float]:
    """Run ``measure(spec)`` on the event loop ``spec["loop"]`` names (Trio, asyncio, or
    asyncio with uvloop), the process's descriptor limit raised first."""
    from .bench_streams import raise_fd_limit

    raise_fd_limit()
    if spec["loop"] == TRIO:
        return anyio.run(measure, spec, backend="trio")
    options = {"use_uvloop": spec["loop"] == UVLOOP}
    return anyio.run(measure, spec, backend="asyncio", backend_options=options)


#: A benchmark case: its table or tables, and its targets.
Case = Callable[..., tuple["Table | list[Table]", "list[Target]"]]


def run_as_script(case: Case, client: Callable[[dict[str, Any]], dict[str, float]]) -> None:
    """What a benchmark module does when run: given a JSON spec, measure one client run
    in this process (``run_client`` starts it so) and print its figures as JSON; else
    run its *case* alone (``--quick`` for a short one) and print the tables and
    targets."""
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):  # a client process
        print(json.dumps(client(json.loads(sys.argv[1]))))
        return
    produced, targets = case(quick="--quick" in sys.argv)
    for table in produced if isinstance(produced, list) else [produced]:
        print(table.markdown())
    for target in targets:
        print(f"{target.name}: {target.measured} ({'met' if target.met else 'NOT met'})")
