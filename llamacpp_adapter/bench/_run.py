"""The serving benchmark's run: :func:`run_bench` drives one llama-server through an
adapter (or several, as one pool of an :class:`AdapterHost`) with the requests of a
:class:`BenchConfig`, and returns a :class:`BenchResult`: the figures by vLLM's names
(``_stats``), the client's own CPU per 1,000 tokens, the servers' view
(``_server_view``), and a check that the client's token count is the servers'."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

import anyio

from .._adapter import LlamaCppHttpAdapter
from .._exceptions import WorkerError
from .._receive import EventReceiveStream
from .._types import ChatRequest, End, Reasoning, TaskRequest, Token
from ._config import BenchConfig
from ._load import arrival_offsets
from ._prompts import Prompt, make_prompts
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
        # No pauses: a benchmark's consumer never stops, and a stream that may be paused
        # asks the engine for its timings with every token, which is work the benchmark
        # would measure.
        adapters = [
            await stack.enter_async_context(
                LlamaCppHttpAdapter(url, api_key=config.api_key, pause=None)
            )
            for url in config.urls
        ]
        submit = await stack.enter_async_context(_submitter(adapters))
        prompts = await make_prompts(config, adapters[0])
        warmup_tokens = 0
        for prompt in prompts[: config.warmup]:
            warmup_tokens += (await _one(submit, prompt, time.perf_counter, config)).output_tokens
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
            )
            result.partial = partial
            result.started_at = started_at
            result.warmup_output_tokens = warmup_tokens
            if on_result is not None:
                on_result(result)
    return result


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


def _request(prompt: Prompt, config: BenchConfig) -> TaskRequest | ChatRequest:
    """The request of *prompt*: it generates exactly its tokens (``ignore_eos``)."""
    extra = {"ignore_eos": True, **config.extra}
    if config.endpoint == "chat":
        assert isinstance(prompt.prompt, str)
        turn = {"role": "user", "content": prompt.prompt}
        return ChatRequest([turn], max_tokens=prompt.max_tokens, extra=extra)
    return TaskRequest(
        prompt.prompt if isinstance(prompt.prompt, str) else list(prompt.prompt),
        max_tokens=prompt.max_tokens,
        extra=extra,
    )


async def _one(
    submit: Submit, prompt: Prompt, clock: Callable[[], float], config: BenchConfig
) -> RequestRecord:
    """Send one request; what it recorded."""
    request = _request(prompt, config)
    input_tokens = prompt.input_tokens
    sent = clock()
    first: float | None = None
    last = 0.0
    gaps: list[float] = []
    tokens = 0
    try:
        async with submit(request) as events:
            async for event in events:
                if type(event) is Token:
                    tokens += len(event.token_ids) or 1
                elif type(event) is Reasoning:  # a chat's thinking is output too
                    tokens += 1
                else:
                    if type(event) is End:
                        # Tokens, not events or their ids: llama-server leaves the ids
                        # of a token whose text it holds back (a partial UTF-8 sequence)
                        # out of every chunk, and counts it in the final one.
                        tokens = event.tokens_out
                        if config.endpoint == "chat" and event.tokens_in is not None:
                            input_tokens = event.tokens_in  # the chat template's included
                    continue
                now = clock()
                if first is None:
                    first = now
                else:
                    gaps.append(now - last)
                last = now
    except WorkerError as exc:
        return RequestRecord(sent, clock(), input_tokens, tokens, first, (), exc.code)
    return RequestRecord(sent, clock(), input_tokens, tokens, first, tuple(gaps))


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
                done(await _one(submit, prompt, clock, config))

        async with anyio.create_task_group() as workers:
            for _ in range(load.concurrency):
                workers.start_soon(worker)
        return
    assert load.rate is not None
    offsets = arrival_offsets(len(prompts), load.rate, load.burstiness, load.seed)
    cap = anyio.Semaphore(load.concurrency) if load.concurrency is not None else None

    async def send(prompt: Prompt) -> None:
        if cap is None:
            done(await _one(submit, prompt, clock, config))
            return
        async with cap:
            done(await _one(submit, prompt, clock, config))

    async with anyio.create_task_group() as senders:
        start = anyio.current_time()
        for prompt, offset in zip(prompts, offsets, strict=True):
            await anyio.sleep_until(start + offset)
            senders.start_soon(send, prompt)
