"""The serving benchmark's run: :func:`run_bench` drives one llama-server through an
adapter (or several, as one pool of an :class:`AdapterHost`) with the requests of a
:class:`BenchConfig`, and returns a :class:`BenchResult`: the figures by vLLM's names
(``_stats``), the client's own CPU per 1,000 tokens, the servers' view
(``_server_view``), and a check that the client's token count is the servers'."""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import httpx

from .._adapter import LlamaCppHttpAdapter
from .._exceptions import WorkerError
from .._receive import EventReceiveStream
from .._types import ChatRequest, End, Metrics, Reasoning, TaskRequest, Token
from ..http_util import DEFAULT_TIMEOUTS
from ._audit import LOOP_TICK_S, ClientTimes
from ._config import BenchConfig
from ._conversations import Conversation
from ._load import arrival_offsets
from ._prompts import make_conversations, make_prompts
from ._results import BenchResult, make_result
from ._server_view import tokens_predicted, watch_server
from ._stats import RequestRecord

__all__ = ["run_bench"]


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
        adapters = [await stack.enter_async_context(a) for a in bench_adapters(config)]
        submit = await stack.enter_async_context(_submitter(adapters))
        warmup_tokens = 0

        def warmed(record: RequestRecord) -> None:
            nonlocal warmup_tokens
            warmup_tokens += record.output_tokens

        run_item: Callable[[Any, Done, Clock], Awaitable[None]]
        items: Sequence[Any]
        if config.conversational:
            items = await make_conversations(config, adapters[0])

            async def run_item(item: Any, done: Done, clock: Clock) -> None:
                await _conversation(submit, item, config, done, clock)
        else:
            items = await make_prompts(config, adapters[0])

            async def run_item(item: Any, done: Done, clock: Clock) -> None:
                prompt = item.prompt
                turns = prompt if isinstance(prompt, tuple) else [_user(prompt)]
                request = _request(config, turns, item.max_tokens)
                # A chat's input is what the server counts, its template's included.
                counted = 0 if config.endpoint == "chat" else item.input_tokens
                done(await _one(submit, request, counted, clock, config))

        # The run's prompts live to its end: out of the collector's way, so that no full
        # collection walks them (100,000 of them in a run by duration) mid-run.
        gc.freeze()
        stack.callback(gc.unfreeze)
        for item in items[: config.warmup]:
            await run_item(item, warmed, time.perf_counter)
        measured = items[config.warmup :]
        before = [await tokens_predicted(a) for a in adapters]
        records: list[RequestRecord] = []
        times = ClientTimes()
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
                sampling.start_soon(_watch_loop, times.loop_lags)
                with anyio.CancelScope() as run:
                    if config.duration_s is not None:
                        run.deadline = anyio.current_time() + config.duration_s
                    await _drive(measured, config, run_item, done, clock, times)
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
            result = make_result(
                records,
                wall,
                cpu,
                before,
                after,
                slots,
                deferred,
                partial or cut,
                config.objectives,
                config.attainment,
                times,
            )
            result.partial = partial
            if config.endpoint == "chat":
                result.warnings.append(
                    "ITL is estimated on the chat endpoint: its stream does not carry the "
                    "engine's running token count, so each chunk counts as one token"
                )
            result.started_at = started_at
            result.warmup_output_tokens = warmup_tokens
            if on_result is not None:
                on_result(result)
    return result


def bench_adapters(config: BenchConfig) -> list[LlamaCppHttpAdapter]:
    """A run's adapters, one per URL, not yet entered. No pauses: a benchmark's consumer
    never stops, and a stream that may be paused asks the engine for its timings with
    every token, which is work the benchmark would measure. Their timeouts are the
    adapter's own, but for the run's read timeout."""
    timeouts = None
    if config.read_timeout_s is not None:
        base = DEFAULT_TIMEOUTS
        timeouts = httpx.Timeout(
            connect=base.connect, read=config.read_timeout_s, write=base.write, pool=base.pool
        )
    return [
        LlamaCppHttpAdapter(url, api_key=config.api_key, pause=None, timeouts=timeouts)
        for url in config.urls
    ]


# --- Submitting ----------------------------------------------------------------------------

Submit = Callable[[TaskRequest | ChatRequest], AbstractAsyncContextManager[EventReceiveStream]]


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

        def submit(
            request: TaskRequest | ChatRequest,
        ) -> AbstractAsyncContextManager[EventReceiveStream]:
            return host.submit("bench", request)

        yield submit


def _request(
    config: BenchConfig,
    turns: Sequence[dict[str, str]] | tuple[int, ...],
    max_tokens: int,
    session: str | None = None,
) -> TaskRequest | ChatRequest:
    """The request of *turns* (a conversation's messages so far, or a prompt's token
    ids): on the chat endpoint the messages, on ``/completion`` their texts joined (or
    the ids). It generates exactly *max_tokens* (``ignore_eos``)."""
    extra = {"ignore_eos": True, **config.extra}
    if config.endpoint == "chat":
        assert not isinstance(turns, tuple)
        return ChatRequest(list(turns), max_tokens=max_tokens, extra=extra, session=session)
    prompt = list(turns) if isinstance(turns, tuple) else "".join(t["content"] for t in turns)
    return TaskRequest(prompt, max_tokens=max_tokens, extra=extra, session=session)


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


Clock = Callable[[], float]
Done = Callable[[RequestRecord], None]


async def _conversation(
    submit: Submit, conversation: Conversation, config: BenchConfig, done: Done, clock: Clock
) -> None:
    """Send *conversation*'s turns one after another, each the conversation so far (the
    model's own answers in it), *think_time_s* apart, under one session key; a turn that
    fails ends it."""
    session = f"bench-{uuid.uuid4().hex}"
    history: list[dict[str, str]] = []
    for number, message in enumerate(conversation.turns, 1):
        if number > 1 and config.think_time_s:
            await anyio.sleep(config.think_time_s)
        history.append(_user(message))
        request = _request(config, history, config.output_tokens, session)
        answer: list[str] = []
        record = await _one(submit, request, 0, clock, config, turn=number, answer=answer)
        done(record)
        if record.error is not None:
            return
        history.append({"role": "assistant", "content": "".join(answer)})


async def _one(
    submit: Submit,
    request: TaskRequest | ChatRequest,
    input_tokens: int,
    clock: Clock,
    config: BenchConfig,
    *,
    turn: int | None = None,
    answer: list[str] | None = None,
) -> RequestRecord:
    """Send one request of *input_tokens* (0: as the server counts them); what it
    recorded. A turn of a conversation keeps its *answer*'s text."""
    cached: int | None = None
    prompt_ms: float | None = None
    sent = clock()
    first: float | None = None
    last = 0.0
    gaps: list[float] = []
    several: list[tuple[int, int]] = []  # (gap, count) of the events of several tokens
    tokens = 0
    streamed: int | None = None
    try:
        async with submit(request) as events:
            async for event in events:
                if type(event) is Token:
                    count = event.count
                    tokens += count
                    if answer is not None:
                        answer.append(event.text)
                elif type(event) is Reasoning:  # a chat's thinking is output too
                    count = 1
                    tokens += 1
                else:
                    if type(event) is Metrics:
                        cached, prompt_ms = event.cached_tokens, event.prompt_ms
                    elif type(event) is End:
                        # Tokens, not events or their ids: llama-server leaves the ids
                        # of a token whose text it holds back (a partial UTF-8 sequence)
                        # out of every chunk, and counts it in the final one.
                        streamed, tokens = tokens, event.tokens_out
                        if not input_tokens and event.tokens_in is not None:
                            input_tokens = event.tokens_in  # as the server counted them
                    continue
                now = clock()
                if first is None:
                    first = now
                else:
                    if count != 1:
                        several.append((len(gaps), count))
                    gaps.append(now - last)
                last = now
    except WorkerError as exc:
        return RequestRecord(sent, clock(), input_tokens, tokens, first, (), exc.code, turn)
    counts: tuple[int, ...] = ()
    if several:
        each = [1] * len(gaps)
        for gap, count in several:
            each[gap] = count
        counts = tuple(each)
    return RequestRecord(
        sent,
        clock(),
        input_tokens,
        tokens,
        first,
        tuple(gaps),
        None,
        turn,
        cached,
        prompt_ms,
        counts,
        streamed,
    )


async def _drive(
    items: Sequence[Any],
    config: BenchConfig,
    run_item: Callable[[Any, Done, Clock], Awaitable[None]],
    done: Done,
    clock: Clock,
    times: ClientTimes,
) -> None:
    """Run *items* (prompts, or conversations) as *config*'s load says, until they are
    all sent and answered: the load's concurrency and rate are of items. An open loop
    notes in *times* when each was planned and when it was sent."""
    load = config.load
    if load.closed:
        assert load.concurrency is not None
        queue = iter(items)

        async def worker() -> None:
            for item in queue:
                await run_item(item, done, clock)

        async with anyio.create_task_group() as workers:
            for _ in range(load.concurrency):
                workers.start_soon(worker)
        return
    assert load.rate is not None
    offsets = arrival_offsets(len(items), load.rate, load.burstiness, load.seed)
    cap = anyio.Semaphore(load.concurrency) if load.concurrency is not None else None

    async def send(item: Any) -> None:
        if cap is None:
            await run_item(item, done, clock)
            return
        async with cap:
            await run_item(item, done, clock)

    async with anyio.create_task_group() as senders:
        start = anyio.current_time()
        began = clock()
        for item, offset in zip(items, offsets, strict=True):
            await anyio.sleep_until(start + offset)
            times.planned.append(began + offset)
            times.sent.append(clock())
            senders.start_soon(send, item)


async def _watch_loop(lags: list[float]) -> None:
    """Note how late a timer of ``LOOP_TICK_S`` fires, for as long as the run lasts."""
    while True:
        asked = anyio.current_time() + LOOP_TICK_S
        await anyio.sleep_until(asked)
        lags.append(anyio.current_time() - asked)
