"""The tiny bigram model served by a real llama-server: it writes the passage's words."""

from __future__ import annotations

import re

import trio

from llamacpp_adapter import LlamaCppHttpAdapter, TaskRequest, Token
from llamacpp_adapter._local.server import LocalLlamaServer
from llamacpp_adapter._local.tinymodel import PASSAGE


def passage_words() -> set[str]:
    return set(re.findall(r"[a-z]+", PASSAGE.lower()))


def test_a_real_server_writes_the_passage_s_words_from_the_bigram_model() -> None:
    async def generate(url: str) -> str:
        request = TaskRequest("Alice was", max_tokens=60, temperature=0.8, seed=7)
        async with LlamaCppHttpAdapter(url) as adapter, adapter.submit(request) as events:
            return "".join([e.text async for e in events if isinstance(e, Token)])

    with LocalLlamaServer(parallel=1, model="bigram") as server:
        text = trio.run(generate, server.base_url)
    words = re.findall(r"[a-z]+", text.lower())
    assert len(words) > 30
    assert set(words) <= passage_words(), set(words) - passage_words()
    assert not re.search(r"[^a-z ,.!?]", text.lower())  # words and marks: no raw bytes
