"""The relay in front of a real llama-server: the same tokens as a direct submit, and a
slot freed as soon as a client leaves."""

from __future__ import annotations

import time

import trio

from llamacpp_adapter import (
    End,
    LlamaCppHttpAdapter,
    Started,
    TaskRequest,
    Token,
    open_relay_stream,
)
from llamacpp_adapter._local.server import LocalLlamaServer

from ..support.relays import TOKEN, collect, poll_until, relay_over, texts


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


async def slots_busy(server: LocalLlamaServer) -> int:
    async with LlamaCppHttpAdapter(server.base_url) as adapter:
        return sum(1 for slot in await adapter.slots() if slot["is_processing"])


async def test_a_client_that_leaves_mid_stream_frees_the_slot_within_a_second(
    llama_server: LocalLlamaServer,
) -> None:
    long_task = TaskRequest("a long one", max_tokens=30000, extra={"ignore_eos": True})
    async with relay_over(llama_server.base_url, allow_extra=True) as (url, relay):
        async with open_relay_stream(url, long_task) as events:
            async for event in events:
                if isinstance(event, Token) and event.i == 5:
                    break
            assert await slots_busy(llama_server) == 1
        left = time.monotonic()
        with trio.fail_after(1.0):
            await poll_until(lambda: slots_busy(llama_server), 0)
        assert time.monotonic() - left < 1.0
        assert relay.streams == {}
