"""LlamaCppHttpAdapter against a real llama-server."""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
import sniffio

from llamacpp_adapter import (
    AdapterError,
    DeadlineUnmet,
    End,
    JobCancelled,
    LlamaCppHttpAdapter,
    Metrics,
    PoolUnavailable,
    PromptTooLarge,
    Started,
    StreamEvent,
    TaskRequest,
    Token,
    WorkerReset,
)
from llamacpp_adapter._local.server import LocalLlamaServer

from ..conftest import API_KEY, CONTEXT, SLOTS, backend_name
from ..support.cpuload import busy_processes
from ..support.engine import (
    ENDLESS,
    assert_stopped_early,
    tokens_generated,
    wait_until_idle,
)
from ..support.wire import GOLDEN

# The adapter's own tests run on both backends, through anyio's pytest plugin.
pytestmark = pytest.mark.anyio


@pytest.fixture
async def adapter(llama_server: LocalLlamaServer) -> AsyncIterator[LlamaCppHttpAdapter]:
    async with LlamaCppHttpAdapter(llama_server.base_url) as adapter:
        yield adapter


async def collect(adapter: LlamaCppHttpAdapter, request: TaskRequest) -> list[StreamEvent]:
    async with adapter.submit(request) as events:
        return [event async for event in events]


async def unstreamed(server: LocalLlamaServer, body: dict[str, object]) -> dict[str, object]:
    """The same request made with ``stream: false``, with a plain HTTP client."""
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{server.base_url}/completion", json={**body, "stream": False}
        )
    response.raise_for_status()
    result: dict[str, object] = response.json()
    return result


# --- Streams --------------------------------------------------------------------------


async def test_stream_is_ordered_and_matches_the_unstreamed_answer(
    adapter: LlamaCppHttpAdapter, llama_server: LocalLlamaServer
) -> None:
    request = TaskRequest("hello the", max_tokens=16, seed=42, job_id="job-order")
    events = await collect(adapter, request)

    tokens = [e for e in events if isinstance(e, Token)]
    assert events[0] == Started("job-order")
    assert [type(e) for e in events[1:]] == [Token] * len(tokens) + [Metrics, End]
    assert [t.i for t in tokens] == list(range(len(tokens)))
    end = events[-1]
    assert isinstance(end, End)
    assert end.tokens_out == 16
    assert end.stop_reason == "limit"

    from llamacpp_adapter import completion_body

    answer = await unstreamed(llama_server, completion_body(request))
    assert "".join(t.text for t in tokens) == answer["content"]
    assert end.tokens_out == answer["tokens_predicted"]


async def test_each_token_event_says_how_many_tokens_it_stands_for(
    adapter: LlamaCppHttpAdapter,
) -> None:
    """The tiny model, with every byte allowed, writes characters of several bytes a
    byte at a time: llama-server holds those back and sends them in one chunk. The
    events' counts add up to the engine's own count, and some are above 1."""
    request = TaskRequest(
        "hello", max_tokens=300, temperature=1.0, seed=1, extra={"ignore_eos": True}
    )
    events = await collect(adapter, request)
    counts = [e.count for e in events if isinstance(e, Token)]
    end = events[-1]
    assert isinstance(end, End)
    assert sum(counts) == end.tokens_out == 300
    assert max(counts) > 1
    assert len(counts) < 300


async def test_same_seed_gives_the_same_tokens(adapter: LlamaCppHttpAdapter) -> None:
    request = TaskRequest("the model", max_tokens=24, temperature=0.9, seed=7)
    first = await collect(adapter, request)
    second = await collect(adapter, request)
    texts = [
        [(e.text, e.token_ids) for e in run if isinstance(e, Token)] for run in (first, second)
    ]
    assert texts[0] == texts[1]
    assert first[-1] == second[-1]
    end = first[-1]
    assert isinstance(end, End)
    assert end.tokens_out == 24


async def test_chat_messages_use_the_server_template(
    adapter: LlamaCppHttpAdapter, llama_server: LocalLlamaServer
) -> None:
    messages = [{"role": "user", "content": "hello"}]
    events = await collect(adapter, TaskRequest(messages=messages, max_tokens=8))
    prompt = await adapter.apply_template(messages)
    assert prompt.startswith("<|im_start|>user\nhello<|im_end|>")
    answer = await unstreamed(llama_server, {"prompt": prompt, "n_predict": 8, "temperature": 0.0})
    assert "".join(e.text for e in events if isinstance(e, Token)) == answer["content"]


async def test_token_id_prompt(adapter: LlamaCppHttpAdapter) -> None:
    events = await collect(adapter, TaskRequest([1, 300, 301, 302], max_tokens=4))
    end = events[-1]
    assert isinstance(end, End)
    assert end.tokens_in == 4


# --- Leaving early frees the slot -------------------------------------------------------


class ConsumerFailed(Exception):
    pass


# Each returns the moment it decided to leave. The streams stay referenced in KEPT while
# the test checks the slot, so that closing them cannot be left to garbage collection.
KEPT: list[object] = []


async def leave_by_break(adapter: LlamaCppHttpAdapter) -> None:
    async with adapter.submit(ENDLESS) as events:
        KEPT.append(events)
        async for event in events:
            if isinstance(event, Token) and event.i == 4:
                break


async def leave_by_exception(adapter: LlamaCppHttpAdapter) -> None:
    with pytest.raises(ConsumerFailed):  # the caller's own, not an ExceptionGroup
        async with adapter.submit(ENDLESS) as events:
            KEPT.append(events)
            async for event in events:
                if isinstance(event, Token) and event.i == 4:
                    raise ConsumerFailed


async def leave_by_outer_cancel(adapter: LlamaCppHttpAdapter) -> None:
    with anyio.CancelScope() as scope:
        async with adapter.submit(ENDLESS) as events:
            KEPT.append(events)
            async for event in events:
                if isinstance(event, Token) and event.i == 4:
                    scope.cancel()
    assert scope.cancelled_caught


async def leave_by_job_cancel(adapter: LlamaCppHttpAdapter) -> None:
    request = TaskRequest("once upon a time", extra={"ignore_eos": True}, job_id="job-x")
    delivered = 0
    with pytest.raises(JobCancelled):
        async with adapter.submit(request) as events:
            KEPT.append(events)
            async for event in events:
                if isinstance(event, Token):
                    delivered += 1
                    if event.i == 4:
                        assert await adapter.cancel("job-x")
    assert delivered >= 5
    assert not await adapter.cancel("job-x")  # no longer open


@pytest.mark.parametrize(
    "leave", [leave_by_break, leave_by_exception, leave_by_outer_cancel, leave_by_job_cancel]
)
async def test_leaving_after_5_tokens_stops_the_engine_and_frees_the_slot(
    adapter: LlamaCppHttpAdapter, leave: object
) -> None:
    await wait_until_idle(adapter)
    before = await tokens_generated(adapter)
    with anyio.fail_after(10):  # a reader that is not stopped would hang the block
        await leave(adapter)  # type: ignore[operator]
    assert await assert_stopped_early(adapter, before) >= 5
    KEPT.clear()
    # The server still serves.
    events = await collect(adapter, TaskRequest("hello", max_tokens=3))
    assert isinstance(events[-1], End)


async def test_deadline_raises_deadline_unmet_after_the_tokens_so_far(
    adapter: LlamaCppHttpAdapter,
) -> None:
    tokens = 0
    await wait_until_idle(adapter)
    before = await tokens_generated(adapter)
    with pytest.raises(DeadlineUnmet):
        async with adapter.submit(ENDLESS, timeout=0.3) as events:
            async for event in events:
                tokens += isinstance(event, Token)
    assert tokens > 0
    # It ran for the deadline, then stopped: far short of the end of its slot's context.
    await wait_until_idle(adapter)
    assert await tokens_generated(adapter) - before < CONTEXT // SLOTS // 2


async def test_prompt_larger_than_the_context_is_prompt_too_large(
    adapter: LlamaCppHttpAdapter,
) -> None:
    too_long = TaskRequest([300] * (CONTEXT // SLOTS + 10), max_tokens=4)
    with pytest.raises(PromptTooLarge, match="exceeds the available context size") as info:
        async with adapter.submit(too_long):
            pass
    assert isinstance(info.value, PoolUnavailable)
    assert info.value.code == "POOL_UNAVAILABLE"
    assert not info.value.retriable
    # The engine's own figures, which a host uses to pick a larger context.
    assert info.value.context_size == CONTEXT // SLOTS
    assert info.value.prompt_tokens == CONTEXT // SLOTS + 10


# --- Health, props and the other endpoints ----------------------------------------------


async def test_health_of_a_ready_server(adapter: LlamaCppHttpAdapter) -> None:
    health = await adapter.health()
    assert health.live
    assert health.ready
    assert health.status == "ok"


async def test_health_of_a_server_that_is_gone() -> None:
    async with LlamaCppHttpAdapter("http://127.0.0.1:9") as adapter:
        health = await adapter.health()
    assert not health.live
    assert not health.ready
    assert health.status == "unreachable"


async def test_props_match_what_the_server_reports(
    adapter: LlamaCppHttpAdapter, llama_server: LocalLlamaServer
) -> None:
    props = await adapter.props()
    async with httpx.AsyncClient() as client:
        raw = (await client.get(f"{llama_server.base_url}/props")).json()
    assert props.slots_total == raw["total_slots"] == SLOTS
    assert props.context_size == raw["default_generation_settings"]["n_ctx"] == CONTEXT // SLOTS
    assert props.model_path == raw["model_path"] == "tiny.gguf"
    assert props.model_alias == raw["model_alias"]
    assert props.build_info == raw["build_info"] == await adapter.engine_version()
    assert props.slots_free == SLOTS
    assert props.model_digest == await adapter.model_digest()
    assert props.model_digest.startswith("sha256:")
    assert props.default_generation_settings["top_k"] == 40


async def test_model_digest_is_the_same_for_an_identical_engine(
    adapter: LlamaCppHttpAdapter, llama_server_with_key: LocalLlamaServer
) -> None:
    async with LlamaCppHttpAdapter(llama_server_with_key.base_url, api_key=API_KEY) as other:
        other_digest = await other.model_digest()
        other_props = await other.props()
    # The same model file behind different settings (context, slots, key): the same model.
    assert other_props.context_size != (await adapter.props()).context_size
    assert other_digest == await adapter.model_digest()


def test_model_digest_changes_with_the_model() -> None:
    from llamacpp_adapter._adapter import _model_digest

    props = {"model_path": "/models/a.gguf", "model_ftype": "all F32", "chat_template": "t"}
    meta = {"n_vocab": 650, "n_params": 165440, "n_ctx": 4096}
    digest = _model_digest(props, meta)
    assert digest == _model_digest({**props, "model_path": "other/dir/a.gguf"}, meta)
    assert digest == _model_digest(props, {**meta, "n_ctx": 8192})  # a setting
    assert digest != _model_digest(props, {**meta, "n_params": 165441})
    assert digest != _model_digest({**props, "model_path": "b.gguf"}, meta)
    assert digest != _model_digest({**props, "chat_template": "u"}, meta)


async def test_slots_free_counts_a_busy_slot(adapter: LlamaCppHttpAdapter) -> None:
    await wait_until_idle(adapter)
    async with adapter.submit(ENDLESS) as events:
        async for event in events:
            if isinstance(event, Token):
                break
        assert (await adapter.props()).slots_free == SLOTS - 1


async def test_tokenize_and_detokenize_round_trip(adapter: LlamaCppHttpAdapter) -> None:
    ids = await adapter.tokenize("hello the model")
    assert ids
    assert all(isinstance(i, int) for i in ids)
    assert (await adapter.detokenize(ids)).strip() == "hello the model"


async def test_metrics_are_parsed_from_the_prometheus_text(adapter: LlamaCppHttpAdapter) -> None:
    await wait_until_idle(adapter)  # a task stopped by an earlier test counts too
    before = await adapter.metrics()
    await collect(adapter, TaskRequest("hello", max_tokens=5))
    after = await adapter.metrics()
    key = "llamacpp:tokens_predicted_total"
    assert after[key] - before[key] == 5


# --- A request after a stream ---------------------------------------------------------

#: Rounds of "a stream, then a control request" on one adapter, under CPU load. While a
#: stream's connection went back to the pool, about one round in 30 failed this way.
ROUNDS_UNDER_LOAD = 300
ROUNDS_WITHIN_S = 90


async def test_a_request_after_a_stream_never_meets_the_closed_connection(
    adapter: LlamaCppHttpAdapter,
) -> None:
    # llama-server closes the connection after every streamed response, without a
    # Connection: close header; under load its close arrives after the next request.
    request = TaskRequest("hello", max_tokens=2)
    with busy_processes(), anyio.fail_after(ROUNDS_WITHIN_S):
        for round_ in range(ROUNDS_UNDER_LOAD):
            events = await collect(adapter, request)
            assert isinstance(events[-1], End)
            match round_ % 4:
                case 0:
                    assert "llamacpp:tokens_predicted_total" in await adapter.metrics()
                case 1:
                    assert len(await adapter.slots()) == SLOTS
                case 2:
                    assert await adapter.tokenize("hello")
                case _:
                    assert (await adapter.health()).ready


# --- Secrets ----------------------------------------------------------------------------


async def test_api_key_is_sent_as_bearer_and_never_shown(
    llama_server_with_key: LocalLlamaServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = llama_server_with_key.base_url
    for name in ("llamacpp_adapter", "httpx", "httpcore"):  # restored after the test
        caplog.set_level(logging.DEBUG, logger=name)
    async with LlamaCppHttpAdapter(url) as anonymous:
        with pytest.raises(AdapterError) as info:
            async with anonymous.submit(TaskRequest("hi", max_tokens=2)):
                pass
    assert info.value.status == 401
    assert not info.value.retriable

    async with LlamaCppHttpAdapter(url, api_key=API_KEY) as adapter:
        events = await collect(adapter, TaskRequest("hi", max_tokens=2))
        assert API_KEY not in repr(adapter)
    assert isinstance(events[-1], End)

    async with LlamaCppHttpAdapter(url, api_key="wrong-key-0123456789") as wrong:
        with pytest.raises(AdapterError) as wrong_info:
            await wrong.props()
    assert "wrong-key-0123456789" not in repr(wrong_info.value)
    shown = "".join(traceback.format_exception(wrong_info.value))
    assert "wrong-key-0123456789" not in shown

    # A failure mid-stream, with the right key: its formatted traceback and chain.
    async with LlamaCppHttpAdapter(url, api_key=API_KEY) as adapter:
        with pytest.raises(DeadlineUnmet) as late:
            async with adapter.submit(ENDLESS, timeout=0.2) as events:
                async for _ in events:
                    pass
    assert API_KEY not in "".join(traceback.format_exception(late.value))
    assert caplog.records
    for record in caplog.records:
        assert API_KEY not in record.getMessage()
        assert API_KEY not in repr(vars(record))
    assert API_KEY not in caplog.text


# --- The same under asyncio -------------------------------------------------------------


def test_a_stream_under_asyncio(llama_server: LocalLlamaServer) -> None:
    async def main() -> list[StreamEvent]:
        async with LlamaCppHttpAdapter(llama_server.base_url) as adapter:
            events = await collect(adapter, TaskRequest("hello the", max_tokens=8))
            await wait_until_idle(adapter)
            before = await tokens_generated(adapter)
            async with adapter.submit(ENDLESS) as stream:
                async for event in stream:
                    if isinstance(event, Token):
                        break
            await assert_stopped_early(adapter, before)
            return events

    events = anyio.run(main, backend="asyncio")
    tokens = [e for e in events if isinstance(e, Token)]
    assert [type(e) for e in events] == [Started] + [Token] * len(tokens) + [Metrics, End]
    assert [t.i for t in tokens] == list(range(len(tokens)))
    end = events[-1]
    assert isinstance(end, End)
    assert end.tokens_out == 8


def test_errors_before_the_stream_raise_on_entering_the_block() -> None:
    async def main() -> None:
        async with LlamaCppHttpAdapter("http://127.0.0.1:9") as adapter:
            with pytest.raises(WorkerReset) as info:
                async with adapter.submit(TaskRequest("hi")):
                    raise AssertionError("the block must not run")
            assert info.value.retriable

    anyio.run(main, backend="trio")
    anyio.run(main, backend="asyncio")


def test_golden_request_shape_is_what_the_adapter_sends() -> None:

    sent = json.loads((GOLDEN / "short.request.json").read_text())
    assert sent["stream"] is True
    assert sent["return_tokens"] is True


async def test_consumer_error_keeps_its_own_cause(adapter: LlamaCppHttpAdapter) -> None:
    with pytest.raises(ConsumerFailed) as info:
        async with adapter.submit(TaskRequest("hi", max_tokens=2)):
            try:
                raise KeyError("inner")
            except KeyError as exc:
                raise ConsumerFailed("outer") from exc
    assert isinstance(info.value.__cause__, KeyError)


async def test_stream_used_after_its_block_is_a_clear_error(adapter: LlamaCppHttpAdapter) -> None:
    async with adapter.submit(TaskRequest("hi", max_tokens=200)) as events:
        await events.__anext__()
    with pytest.raises(anyio.ClosedResourceError, match="its block was left"):
        async for _ in events:
            pass


def test_cancel_from_another_task_under_asyncio(llama_server: LocalLlamaServer) -> None:
    async def main() -> None:
        async with LlamaCppHttpAdapter(llama_server.base_url) as adapter:
            got_tokens = anyio.Event()
            await wait_until_idle(adapter)
            before = await tokens_generated(adapter)

            async def consume() -> None:
                request = TaskRequest("once", extra={"ignore_eos": True}, job_id="job-a")
                with pytest.raises(JobCancelled):
                    async with adapter.submit(request) as events:
                        async for event in events:
                            if isinstance(event, Token) and event.i == 4:
                                got_tokens.set()

            async with anyio.create_task_group() as group:
                group.start_soon(consume)
                await got_tokens.wait()
                assert await adapter.cancel("job-a")
            await assert_stopped_early(adapter, before)

    anyio.run(main, backend="asyncio")


async def test_each_backend_runs_its_own_tests(anyio_backend: Any) -> None:
    # pytest-trio must not claim the asyncio runs: this one runs where it says.
    name = backend_name(anyio_backend)
    assert sniffio.current_async_library() == ("asyncio" if name == "uvloop" else name)
    if name == "uvloop":
        import uvloop

        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
