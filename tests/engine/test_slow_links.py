"""A real llama-server behind a slow link (a network namespace, a veth pair, a
token-bucket rate limit each way): a stream has every token, a consumer that stops still
stops the engine, a 1 MiB prompt uploads with no false write timeout, and a link that
stops carrying bytes ends the stream in the read timeout's error, on time.

Skipped, saying why, where a network namespace cannot be made (it needs root and
iproute2)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
import trio

from llamacpp_adapter import (
    DecodeTimeout,
    End,
    LlamaCppHttpAdapter,
    PausePolicy,
    PromptTooLarge,
    TaskRequest,
    Token,
)
from llamacpp_adapter._local.server import LocalLlamaServer
from llamacpp_adapter._sansio.completion import completion_body

from ..support.engine import tokens_generated, wait_until_idle
from ..support.netns import SlowLink, can_make_links

pytestmark = pytest.mark.skipif(can_make_links() is not None, reason=str(can_make_links()))

#: Ban the tiny model's byte tokens past ASCII: every token then has its own event.
WHOLE: dict[str, Any] = {"ignore_eos": True, "logit_bias": [[i, False] for i in range(131, 259)]}
#: A guard against a hang, no claim of speed.
GUARD_S = 120.0


class Served:
    """A llama-server at the far end of a slow link."""

    def __init__(self, link: SlowLink, server: LocalLlamaServer) -> None:
        self.link = link
        self.server = server

    @property
    def url(self) -> str:
        return self.server.base_url


def served(rate: str, **options: Any) -> Iterator[Served]:
    with (
        SlowLink(rate) as link,
        LocalLlamaServer(host=link.address, launcher=link.launcher, **options) as server,
    ):
        yield Served(link, server)


@pytest.fixture(scope="module", params=["64kbit", "1mbit"])
def slow(request: pytest.FixtureRequest) -> Iterator[Served]:
    yield from served(request.param, parallel=1, context=32768)


@pytest.fixture
def one_mbit() -> Iterator[Served]:
    yield from served("1mbit", parallel=1, context=4096)


async def unstreamed_text(url: str, request: TaskRequest) -> str:
    body = completion_body(request, prompt=None) | {"stream": False}
    async with httpx.AsyncClient(base_url=url, timeout=GUARD_S) as client:
        response = await client.post("/completion", json=body)
    response.raise_for_status()
    text = response.json()["content"]
    assert isinstance(text, str)
    return text


async def test_a_stream_over_a_slow_link_has_every_token(slow: Served) -> None:
    request = TaskRequest("over a slow link", max_tokens=200, extra=WHOLE)
    texts: list[str] = []
    indices: list[int] = []
    with trio.fail_after(GUARD_S):
        async with LlamaCppHttpAdapter(slow.url) as adapter, adapter.submit(request) as events:
            async for event in events:
                if isinstance(event, Token):
                    texts.append(event.text)
                    indices.append(event.i)
                elif isinstance(event, End):
                    end = event
    assert end.tokens_out == 200
    assert indices == list(range(200))
    assert "".join(texts) == await unstreamed_text(slow.url, request)


async def test_a_consumer_that_stops_stops_the_engine_over_a_slow_link(slow: Served) -> None:
    """The pause closes the stream's connection across the link, and llama-server stops
    far short of the task's end. (Over 64 kbit/s the tiny model runs ahead of the link
    by itself, a consumer that reads or not: the pause waits for its backlog to cross
    the link, some hundreds of tokens, while the engine makes thousands.)"""
    policy = PausePolicy(pause_after=0.05, backlog=32)
    max_tokens = 20_000
    request = TaskRequest("a consumer that stops", max_tokens=max_tokens, extra=WHOLE)
    with trio.fail_after(GUARD_S):
        async with LlamaCppHttpAdapter(slow.url, pause=policy) as adapter:
            before = await tokens_generated(adapter)
            async with adapter.submit(request) as events:
                assert not isinstance(await anext(aiter(events)), Token)  # Started
                assert isinstance(await anext(aiter(events)), Token)
                while events.pauses < 1:  # noqa: ASYNC110 - the stream's own watcher pauses it
                    await trio.sleep(0.01)
                await wait_until_idle(adapter)
                stopped_at = await tokens_generated(adapter) - before
            # Left before its end: the stream is not resumed.
            await wait_until_idle(adapter)
            assert await tokens_generated(adapter) - before == stopped_at
    assert stopped_at < max_tokens / 4, stopped_at


@pytest.mark.anyio
async def test_a_mebibyte_prompt_uploads_with_no_false_write_timeout(one_mbit: Served) -> None:
    """1 MiB takes about 8.4 s at 1 Mbit/s. The write timeout (3 s here) bounds a time
    with no progress, not the whole upload: the server gets every byte, and answers
    that the prompt is larger than its context. (Not 1 s: the link drops what queues
    past a second, and TCP's retransmission timer, backing off, can then stall the
    upload for a second and more.)"""
    timeouts = httpx.Timeout(30.0, write=3.0)
    prompt = "upload " * (1024 * 1024 // 7 + 1)
    start = anyio.current_time()
    with anyio.fail_after(GUARD_S):
        async with LlamaCppHttpAdapter(one_mbit.url, timeouts=timeouts) as adapter:
            with pytest.raises(PromptTooLarge):
                async with adapter.submit(TaskRequest(prompt, max_tokens=1)) as events:
                    [event async for event in events]
    assert anyio.current_time() - start > 5.0  # it did cross the slow link


async def test_a_link_that_stops_ends_the_stream_in_the_read_timeout_on_time(
    one_mbit: Served,
) -> None:
    read_timeout = 2.0
    timeouts = httpx.Timeout(30.0, read=read_timeout)
    request = TaskRequest("a link that stops", max_tokens=100_000, extra=WHOLE)
    with trio.fail_after(GUARD_S):
        async with LlamaCppHttpAdapter(one_mbit.url, timeouts=timeouts, pause=None) as adapter:
            with pytest.raises(DecodeTimeout):
                async with adapter.submit(request) as events:
                    async for event in events:
                        if isinstance(event, Token) and event.i == 20:
                            one_mbit.link.cut()
                            cut_at = trio.current_time()
    waited = trio.current_time() - cut_at
    assert read_timeout - 0.5 <= waited <= read_timeout + 1.0, waited
    one_mbit.server.kill()  # it writes to the cut link, and would take its grace to stop
