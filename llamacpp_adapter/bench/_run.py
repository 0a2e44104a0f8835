"""The serving benchmark's run: prompts, load, and what the client and the server saw.

:func:`run_bench` drives one llama-server through an adapter (or several, as one pool
of an :class:`AdapterHost`) with the requests of a :class:`BenchConfig`, and returns a
:class:`BenchResult`: the figures by vLLM's names (``_bench_stats``), the client's own
CPU per 1,000 tokens, the server's view from ``/metrics`` and ``/slots``, and a check
that the client's token count is the server's.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec

from .._adapter import LlamaCppHttpAdapter
from .._exceptions import WorkerError
from .._receive import EventReceiveStream
from .._types import End, TaskRequest, Token
from ._load import Load, arrival_offsets
from ._stats import RequestRecord, summarize

__all__ = ["BenchConfig", "BenchResult", "Prompt", "run_bench"]

#: llama-server's counter of generated tokens (``--metrics``).
TOKENS_PREDICTED = "llamacpp:tokens_predicted_total"
#: llama-server's gauge of requests waiting for a slot.
REQUESTS_DEFERRED = "llamacpp:requests_deferred"
#: How often the server's slots are read during a run.
SLOT_SAMPLE_INTERVAL_S = 0.5
#: The client's share of one core above which its figures describe the client.
SATURATED_CORE_SHARE = 0.8
#: The text whose tokens make up synthetic prompts (cut or repeated to each length).
_SEED_TEXT = (
    "The quick brown fox jumps over the lazy dog while the model server answers every "
    "request that the benchmark sends, one token after another, as fast as it can."
)


@dataclass(frozen=True)
class Prompt:
    """One request's prompt (text or token ids), its tokens, and its output length."""

    prompt: str | tuple[int, ...]
    input_tokens: int
    max_tokens: int


@dataclass(frozen=True)
class BenchConfig:
    """What a run sends.

    Attributes:
        urls: the servers (more than one: a pool of an :class:`AdapterHost`).
        load: a closed loop (``concurrency``) or an open one (``rate``).
        requests: how many requests to measure (with *duration_s*: whichever ends first).
        duration_s: how long to send requests for.
        warmup: requests sent first and not counted.
        input_tokens: the synthetic prompts' lengths in tokens: ``(low, high)``, drawn
            evenly (``low == high``: fixed).
        output_tokens: tokens each request generates (``ignore_eos``, so exact).
        prompts_file: a JSONL file of prompts (``{"prompt": "...", "max_tokens": N}``,
            ``max_tokens`` optional) instead of synthetic ones.
        api_key: the servers' API key.
        seed: the seed of the lengths and the arrivals.
        sample_server: whether to read the servers' slots and queue during the run (a
            worker of a run in several processes leaves it to the run).
        extra: further llama.cpp ``/completion`` fields for every request.
    """

    urls: tuple[str, ...]
    load: Load
    requests: int | None = 100
    duration_s: float | None = None
    warmup: int = 1
    input_tokens: tuple[int, int] = (32, 32)
    output_tokens: int = 64
    prompts_file: Path | None = None
    api_key: str | None = None
    seed: int = 0
    sample_server: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("give at least one server URL")
        if self.requests is None and self.duration_s is None:
            raise ValueError("give a number of requests or a duration")
        if self.requests is not None and self.requests < 1:
            raise ValueError("the number of requests must be at least 1")
        if self.duration_s is not None and not 0 < self.duration_s < math.inf:
            raise ValueError("the duration must be positive and finite")
        if self.warmup < 0:
            raise ValueError("the warm-up must not be negative")
        low, high = self.input_tokens
        if not 1 <= low <= high:
            raise ValueError("input lengths must be at least 1, the low one first")
        if self.output_tokens < 1:
            raise ValueError("the output length must be at least 1")


@dataclass
class BenchResult:
    """A run's result: ``figures`` by vLLM's names, and what none of them reports."""

    figures: dict[str, Any]
    client: dict[str, float]
    server: dict[str, Any]
    token_check: dict[str, Any]
    partial: bool = False
    warnings: list[str] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)
    #: When the measured part began (seconds since the epoch); the records' times are
    #: seconds from then.
    started_at: float = 0.0
    #: Tokens the warm-up generated (the server counts them too).
    warmup_output_tokens: int = 0

    def as_json(self) -> dict[str, Any]:
        """Every figure, and each request's record (for :func:`merge_results`)."""
        return {
            "partial": self.partial,
            **self.figures,
            "client": self.client,
            "server": self.server,
            "token_check": self.token_check,
            "warnings": self.warnings,
            "started_at": self.started_at,
            "warmup_output_tokens": self.warmup_output_tokens,
            "requests": [msgspec.to_builtins(record) for record in self.records],
        }


async def run_bench(
    config: BenchConfig,
    *,
    on_request: Callable[[RequestRecord], None] | None = None,
    on_result: Callable[[BenchResult], None] | None = None,
) -> BenchResult:
    """Run *config* and return its result; *on_request* is told of each request as it
    ends, *on_result* of the result. Cancelled (a signal, a scope), the run closes every
    open stream (so the server frees its slots) and tells *on_result* what it measured
    so far, marked ``partial``, before the cancellation goes on."""
    async with AsyncExitStack() as stack:
        adapters = [
            await stack.enter_async_context(LlamaCppHttpAdapter(url, api_key=config.api_key))
            for url in config.urls
        ]
        submit = await stack.enter_async_context(_submitter(adapters))
        prompts = await _prompts(config, adapters[0])
        warmup_tokens = 0
        for prompt in prompts[: config.warmup]:
            warmup_tokens += (
                await _one(submit, prompt, time.perf_counter, config.extra)
            ).output_tokens
        measured = prompts[config.warmup :]
        before = [await tokens_predicted(a) for a in adapters]
        records: list[RequestRecord] = []
        slots: list[tuple[float, int]] = []
        deferred: list[float] = []
        started_at = time.time()
        started = time.perf_counter()
        cpu_started = time.process_time()

        def clock() -> float:
            return time.perf_counter() - started

        partial = False
        cut = False  # requests were open when the duration ended

        def done(record: RequestRecord) -> None:
            records.append(record)
            if on_request is not None:
                on_request(record)

        try:
            async with anyio.create_task_group() as sampling:
                if config.sample_server:
                    sampling.start_soon(watch_server, adapters, clock, slots, deferred)
                with anyio.CancelScope() as run:
                    if config.duration_s is not None:
                        run.deadline = anyio.current_time() + config.duration_s
                    await _drive(submit, measured, config, done, clock)
                cut = run.cancelled_caught  # only the duration's deadline cancels it
                sampling.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            partial = True
            raise
        finally:
            wall = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                after = [await tokens_predicted(a) for a in adapters]
            result = _result(records, wall, cpu, before, after, slots, deferred, partial or cut)
            result.partial = partial
            result.started_at = started_at
            result.warmup_output_tokens = warmup_tokens
            if on_result is not None:
                on_result(result)
    return result


# --- Submitting ----------------------------------------------------------------------------

Submit = Callable[[TaskRequest], AbstractAsyncContextManager[EventReceiveStream]]


@asynccontextmanager
async def _submitter(adapters: Sequence[LlamaCppHttpAdapter]) -> AsyncIterator[Submit]:
    """How a request is sent: to the one adapter, or to a pool of a host over them."""
    if len(adapters) == 1:
        yield adapters[0].submit
        return
    from .._host.host import AdapterHost

    async with AdapterHost(slot_wait_s=3600.0) as host:
        for number, adapter in enumerate(adapters):
            host.bind("bench", f"r{number}", adapter)
        await host.wait_ready("bench")

        def submit(request: TaskRequest) -> AbstractAsyncContextManager[EventReceiveStream]:
            return host.submit("bench", request)

        yield submit


async def _one(
    submit: Submit, prompt: Prompt, clock: Callable[[], float], extra: Mapping[str, Any]
) -> RequestRecord:
    """Send one request; what it recorded."""
    request = TaskRequest(
        prompt.prompt if isinstance(prompt.prompt, str) else list(prompt.prompt),
        max_tokens=prompt.max_tokens,
        extra={"ignore_eos": True, **extra},
    )
    sent = clock()
    first: float | None = None
    last = 0.0
    gaps: list[float] = []
    tokens = 0
    try:
        async with submit(request) as events:
            async for event in events:
                if type(event) is Token:
                    now = clock()
                    if first is None:
                        first = now
                    else:
                        gaps.append(now - last)
                    last = now
                    tokens += len(event.token_ids) or 1
                elif type(event) is End:
                    # Tokens, not events or their ids: llama-server leaves the ids of a
                    # token whose text it holds back (a partial UTF-8 sequence) out of
                    # every chunk, and counts it in the final one.
                    tokens = event.tokens_out
    except WorkerError as exc:
        return RequestRecord(sent, clock(), prompt.input_tokens, tokens, first, (), exc.code)
    return RequestRecord(sent, clock(), prompt.input_tokens, tokens, first, tuple(gaps))


async def _drive(
    submit: Submit,
    prompts: Sequence[Prompt],
    config: BenchConfig,
    done: Callable[[RequestRecord], None],
    clock: Callable[[], float],
) -> None:
    """Send *prompts* as *config*'s load says, until they are all sent and answered."""
    load = config.load
    if load.closed:
        assert load.concurrency is not None
        queue = iter(prompts)

        async def worker() -> None:
            for prompt in queue:
                done(await _one(submit, prompt, clock, config.extra))

        async with anyio.create_task_group() as workers:
            for _ in range(load.concurrency):
                workers.start_soon(worker)
        return
    assert load.rate is not None
    offsets = arrival_offsets(len(prompts), load.rate, load.burstiness, load.seed)
    cap = anyio.Semaphore(load.concurrency) if load.concurrency is not None else None

    async def send(prompt: Prompt) -> None:
        if cap is None:
            done(await _one(submit, prompt, clock, config.extra))
            return
        async with cap:
            done(await _one(submit, prompt, clock, config.extra))

    async with anyio.create_task_group() as senders:
        start = anyio.current_time()
        for prompt, offset in zip(prompts, offsets, strict=True):
            await anyio.sleep_until(start + offset)
            senders.start_soon(send, prompt)


# --- Prompts -------------------------------------------------------------------------------


async def _prompts(config: BenchConfig, adapter: LlamaCppHttpAdapter) -> list[Prompt]:
    """The run's prompts, the warm-up's first."""
    count = config.warmup + (config.requests if config.requests is not None else 100_000)
    if config.prompts_file is not None:
        return await _file_prompts(config.prompts_file, adapter, count, config.output_tokens)
    seed_ids = await adapter.tokenize(_SEED_TEXT)
    rng = random.Random(config.seed)
    low, high = config.input_tokens
    prompts = []
    for number in range(count):
        length = rng.randint(low, high)
        # The seed text's tokens from a different place for each request, so that no
        # request finds another's prompt in the server's cache.
        start = number % len(seed_ids)
        ids = [seed_ids[(start + k) % len(seed_ids)] for k in range(length)]
        prompts.append(Prompt(tuple(ids), length, config.output_tokens))
    return prompts


async def _file_prompts(
    path: Path, adapter: LlamaCppHttpAdapter, count: int, output_tokens: int
) -> list[Prompt]:
    """The prompts of a JSONL file, in order and repeated to *count*, each counted by
    the server's tokenizer."""
    content = await anyio.Path(path).read_text(encoding="utf-8")
    lines = [line for line in content.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no prompts")
    distinct: list[Prompt] = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON: {exc.msg}") from None
        text = entry.get("prompt") if isinstance(entry, dict) else None
        if not isinstance(text, str) or not text:
            raise ValueError(f'{path}:{number}: no "prompt" text')
        wanted = entry.get("max_tokens", output_tokens)
        if not isinstance(wanted, int) or wanted < 1:
            raise ValueError(f"{path}:{number}: max_tokens must be a positive integer")
        distinct.append(Prompt(text, len(await adapter.tokenize(text)), wanted))
    return [distinct[n % len(distinct)] for n in range(count)]


# --- The server's view ---------------------------------------------------------------------


async def tokens_predicted(adapter: LlamaCppHttpAdapter) -> float | None:
    try:
        return (await adapter.metrics()).get(TOKENS_PREDICTED)
    except WorkerError:
        return None  # a server without --metrics


async def watch_server(
    adapters: Sequence[LlamaCppHttpAdapter],
    clock: Callable[[], float],
    slots: list[tuple[float, int]],
    deferred: list[float],
) -> None:
    """Read the servers' busy slots (and waiting requests) every interval."""
    while True:
        busy = 0
        waiting = 0.0
        for adapter in adapters:
            try:
                busy += sum(1 for slot in await adapter.slots() if slot.get("is_processing"))
                waiting += (await adapter.metrics()).get(REQUESTS_DEFERRED, 0.0)
            except WorkerError:
                continue
        slots.append((clock(), busy))
        deferred.append(waiting)
        await anyio.sleep(SLOT_SAMPLE_INTERVAL_S)


def _result(
    records: list[RequestRecord],
    wall: float,
    cpu: float,
    before: list[float | None],
    after: list[float | None],
    slots: list[tuple[float, int]],
    deferred: list[float],
    unfinished: bool,
) -> BenchResult:
    """The result of a run; *unfinished*: requests were open when it ended (cut short,
    or at the end of its duration), so that the server counted tokens the client did not
    record."""
    figures = summarize(records, wall)
    output = int(figures["total_output_tokens"])  # type: ignore[arg-type]
    share = cpu / wall if wall > 0 else math.nan
    client = {
        "cpu_seconds": cpu,
        "cpu_seconds_per_1k_tokens": cpu * 1000 / output if output else math.nan,
        "core_share": share,
    }
    server_tokens = counter_growth(before, after)
    server = server_view(server_tokens, slots, deferred)
    check = token_check(output, server_tokens, unfinished=unfinished)
    warnings = []
    if share > SATURATED_CORE_SHARE:
        warnings.append(
            f"the client used {share:.0%} of a core: near saturation, the figures describe "
            "the client as much as the server (try --workers, or fewer streams)"
        )
    if server_tokens is not None and server_tokens != output and not unfinished:
        warnings.append(
            f"the client counted {output} tokens, the server {server_tokens} (another "
            "client may be using it)"
        )
    return BenchResult(figures, client, server, check, False, warnings, records)


def counter_growth(before: list[float | None], after: list[float | None]) -> int | None:
    """How much the servers' token counters grew from *before* to *after*; None when a
    server did not report one."""
    if any(b is None for b in before) or any(a is None for a in after):
        return None
    return int(sum(a or 0.0 for a in after) - sum(b or 0.0 for b in before))


def server_view(
    tokens: int | None, slots: list[tuple[float, int]], deferred: list[float]
) -> dict[str, Any]:
    """What the servers showed over a run: tokens predicted, busy slots over time, and
    the most requests waiting for a slot."""
    return {
        "tokens_predicted": tokens,
        "slots_busy": [{"t": t, "busy": busy} for t, busy in slots],
        "mean_slots_busy": sum(b for _, b in slots) / len(slots) if slots else math.nan,
        "max_requests_deferred": max(deferred, default=math.nan),
    }


def token_check(client: int, server: int | None, *, unfinished: bool) -> dict[str, Any]:
    """Whether the client counted the tokens the server did; unknown (None) without the
    server's count, or when requests were open at the end."""
    return {
        "client_tokens": client,
        "server_tokens": server,
        "equal": None if server is None or unfinished else server == client,
    }


# --- Results of several processes ----------------------------------------------------------


def merge_results(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from the results (``as_json()``) of runs at the same time, in several
    processes or on several machines: the figures are computed again from every
    request's record, on the wall clock (the runs' clocks should agree to well under a
    request's latency). The client's CPU adds up; the server's view and the token check
    are unknown (each run saw the server's counters over its own window), unless the
    caller measured them over the whole."""
    if not results:
        raise ValueError("nothing to merge")
    start = min(float(r["started_at"]) for r in results)
    end = max(float(r["started_at"]) + float(r["duration"]) for r in results)
    records: list[RequestRecord] = []
    for result in results:
        shift = float(result["started_at"]) - start
        for raw in result["requests"]:
            record = msgspec.convert(raw, RequestRecord)
            first = None if record.first_token is None else record.first_token + shift
            records.append(
                msgspec.structs.replace(
                    record, sent=record.sent + shift, ended=record.ended + shift, first_token=first
                )
            )
    cpu = sum(float(r["client"]["cpu_seconds"]) for r in results)
    merged = _result(records, end - start, cpu, [None], [None], [], [], False)
    # A core's share is each process's own: the busiest one's, not the sum's.
    merged.client["core_share"] = max(float(r["client"]["core_share"]) for r in results)
    merged.client["processes"] = float(len(results))
    merged.partial = any(r["partial"] for r in results)
    merged.started_at = start
    merged.warnings = [w for r in results for w in r["warnings"] if "counted" not in w]
    return merged.as_json()
