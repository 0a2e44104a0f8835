"""The relay in front of a real llama-server: the same tokens as a direct submit, and a
slot freed as soon as a client leaves."""

from __future__ import annotations

from llamacpp_adapter import (
    End,
    LlamaCppHttpAdapter,
    Started,
    TaskRequest,
    Token,
    open_relay_stream,
)
from llamacpp_adapter._local.server import LocalLlamaServer

from ..support.engine import assert_stopped_early, tokens_generated, wait_until_idle
from ..support.relays import TOKEN, collect, relay_over, texts


async def test_a_relay_client_gets_the_tokens_of_a_direct_submit(
    llama_server: LocalLlamaServer,
) -> None:
    request = TaskRequest("once upon a time", max_tokens=40, seed=5)
    async with (
        LlamaCppHttpAdapter(llama_server.base_url) as adapter,
        adapter.submit(request) as direct,
    ):
        expected = [event async for event in direct]
    async with relay_over(llama_server.base_url, token=TOKEN) as (url, _):
        relayed = await collect(url, request, token=TOKEN)
    assert texts(relayed) == texts(expected)
    assert len(texts(relayed)) > 0
    # Every field of every token, its ids too.
    assert [e for e in relayed if isinstance(e, Token)] == [
        e for e in expected if isinstance(e, Token)
    ]
    assert [e.i for e in relayed if isinstance(e, Token)] == list(range(len(texts(expected))))
    assert relayed[0] == Started(request.job_id)
    assert isinstance(relayed[-1], End)
    assert relayed[-1] == expected[-1]


async def test_a_client_that_leaves_mid_stream_stops_the_engine_and_frees_the_slot(
    llama_server: LocalLlamaServer,
) -> None:
    long_task = TaskRequest("a long one", max_tokens=30000, extra={"ignore_eos": True})
    async with (
        LlamaCppHttpAdapter(llama_server.base_url) as engine,
        relay_over(llama_server.base_url, allow_extra=True) as (url, relay),
    ):
        await wait_until_idle(engine)
        before = await tokens_generated(engine)
        async with open_relay_stream(url, long_task) as events:
            async for event in events:
                if isinstance(event, Token) and event.i == 5:
                    break
            assert sum(1 for slot in await engine.slots() if slot["is_processing"]) == 1
        await assert_stopped_early(engine, before)
        assert relay.streams == {}
