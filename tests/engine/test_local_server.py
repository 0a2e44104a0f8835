"""The local llama-server: the tiny bigram model it serves writes the passage's words,
and a stop signal while its process is made leaves no engine behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from types import FrameType
from typing import Any

import pytest
import trio

from llamacpp_adapter import LlamaCppHttpAdapter, TaskRequest, Token
from llamacpp_adapter._local import server as local_server
from llamacpp_adapter._local.server import LocalLlamaServer
from llamacpp_adapter._local.tinymodel import PASSAGE

from ..support.resources import engines


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


def test_a_stop_signal_while_the_engine_is_made_orphans_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A signal that lands as the server's process is made (here: just after it exists,
    before ``start`` holds it) must not leave it running with nobody to stop it."""

    class Stopped(BaseException):
        pass

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Stopped

    made = subprocess.Popen

    def make_then_signal(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        process = made(*args, **kwargs)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
        return process

    running = engines()
    previous = signal.signal(signal.SIGTERM, stop)
    monkeypatch.setattr(local_server.subprocess, "Popen", make_then_signal)
    try:
        with pytest.raises(Stopped):
            LocalLlamaServer(parallel=1).start()
    finally:
        signal.signal(signal.SIGTERM, previous)
        orphans = engines() - running
        for pid in orphans:
            os.kill(pid, signal.SIGKILL)
    assert not orphans
