"""The relay command in front of a real llama-server, its client on every event loop."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import anyio
import pytest

from llamacpp_adapter import (
    End,
    StreamEvent,
    TaskRequest,
    Token,
    open_relay_stream,
)
from llamacpp_adapter._local.server import LocalLlamaServer

TOKEN = "relay-token-6a1f0e93c2d4"


@pytest.fixture
def relay_process(llama_server: LocalLlamaServer) -> Iterator[str]:
    """``llamacpp-adapter relay`` in a process of its own (it serves on Trio), in front of
    the test engine; its ws:// URL."""
    command = [
        sys.executable, "-m", "llamacpp_adapter", "relay", "--url", llama_server.base_url,
        "--port", "0", "--token", TOKEN,
    ]  # fmt: skip
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert process.stderr is not None
            line = process.stderr.readline()
            assert "relay listening on" in line, line
            yield line.split()[-1]
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)


@pytest.mark.parametrize(
    ("backend", "options"),
    [("trio", {}), ("asyncio", {}), ("asyncio", {"use_uvloop": True})],
    ids=["trio", "asyncio", "uvloop"],
)
def test_the_relay_client_runs_on_every_event_loop(
    relay_process: str, backend: str, options: dict[str, bool]
) -> None:
    async def stream() -> list[StreamEvent]:
        request = TaskRequest("hello the", max_tokens=12, seed=3)
        async with open_relay_stream(relay_process, request, token=TOKEN) as events:
            return [event async for event in events]

    events = anyio.run(stream, backend=backend, backend_options=options)
    assert isinstance(events[-1], End)
    assert events[-1].tokens_out == 12
    tokens = [e for e in events if isinstance(e, Token)]
    assert [t.i for t in tokens] == list(range(len(tokens)))
