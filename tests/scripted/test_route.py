"""The route to the engine: when the environment names a proxy, one decision (made once,
with the standard library's rules) sends every request of the adapter, streams and the
others alike, through it or past it; httpx applies that decision, it does not make its
own."""

from __future__ import annotations

import pytest

from llamacpp_adapter import End, LlamaCppHttpAdapter, TaskRequest

from ..support.scripted import Connection, scripted_server, stream_tokens
from ..support.wire import json_response

pytestmark = pytest.mark.anyio

HEALTHY = json_response(200, "OK", {"status": "ok"})


async def engine(connection: Connection) -> None:
    """An engine, or a proxy that answers as one: /health, and a stream of two tokens."""
    if connection.path.endswith("/health"):
        await connection.send(HEALTHY)
    else:
        await stream_tokens(connection, 2)


async def run_both(adapter: LlamaCppHttpAdapter) -> None:
    assert (await adapter.health()).ready
    async with adapter.submit(TaskRequest("x")) as events:
        assert isinstance([event async for event in events][-1], End)


@pytest.fixture
def no_proxy_set(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


async def test_a_proxy_the_environment_names_carries_every_request(
    no_proxy_set: pytest.MonkeyPatch,
) -> None:
    async with scripted_server(engine) as proxy:
        no_proxy_set.setenv("HTTP_PROXY", proxy.url)
        async with LlamaCppHttpAdapter("http://localhost:9") as adapter:
            await run_both(adapter)
    assert set(proxy.requests) == {"http://localhost:9/health", "http://localhost:9/completion"}


async def test_an_engine_the_environment_exempts_is_reached_directly_by_every_request(
    no_proxy_set: pytest.MonkeyPatch,
) -> None:
    # ".localhost" exempts localhost itself by the standard library's rules, but not by
    # httpx's own (which exempt only its subdomains): one rule must decide for both.
    async with scripted_server(engine) as proxy, scripted_server(engine) as server:
        no_proxy_set.setenv("HTTP_PROXY", proxy.url)
        no_proxy_set.setenv("NO_PROXY", ".localhost")
        port = server.url.rsplit(":", 1)[1]
        async with LlamaCppHttpAdapter(f"http://localhost:{port}") as adapter:
            await run_both(adapter)
    assert not proxy.requests
    assert set(server.requests) == {"/health", "/completion"}
