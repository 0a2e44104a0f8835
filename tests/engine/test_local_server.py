"""The local llama-server: the tiny bigram model it serves writes the passage's words, a
stop signal while its process is made leaves no engine behind, and neither does a
program killed while its server runs, whatever thread started it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import trio

from llamacpp_adapter import LlamaCppHttpAdapter, TaskRequest, Token
from llamacpp_adapter._local import server as local_server
from llamacpp_adapter._local.server import LocalLlamaServer
from llamacpp_adapter._local.tinymodel import PASSAGE

from ..support.resources import alive, engines

#: Seconds within which a killed program's server and folder are gone.
ORPHAN_S = 2.0


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


#: A program that starts a server from a thread, lets the thread end, and says the
#: server's process id; then it waits to be killed.
PROGRAM = """
import sys, threading
from llamacpp_adapter._local.server import LocalLlamaServer
server = LocalLlamaServer(parallel=1)
thread = threading.Thread(target=server.start)
thread.start()
thread.join()
print(server.pid, flush=True)
sys.stdin.read()
"""


def test_a_killed_program_leaves_no_server_and_no_folder() -> None:
    """The server outlives the thread that started it (Linux's parent-death signal would
    end it there), but not the program: a SIGKILL, which no handler sees, still ends it
    and removes its folder, within a bound."""
    program = subprocess.Popen(
        [sys.executable, "-c", PROGRAM], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    with program:
        assert program.stdout is not None
        pid = int(program.stdout.readline())
        folder = Path(os.readlink(f"/proc/{pid}/cwd"))
        assert folder.name.startswith("llamacpp-adapter-")
        assert alive(pid), "the server ended with the thread that started it"
        program.kill()
        program.wait()
        deadline = time.monotonic() + ORPHAN_S
        while (alive(pid) or folder.exists()) and time.monotonic() < deadline:
            time.sleep(0.02)  # polls another process's state, within a bound
    assert not alive(pid), "the server outlived its program"
    assert not folder.exists(), "the server's folder is left"
