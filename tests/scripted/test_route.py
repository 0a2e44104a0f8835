"""The route to the engine: when the environment names a proxy, one decision (made once,
with the standard library's rules) sends every request of the adapter, streams and the
others alike, through it or past it; httpx applies that decision, it does not make its
own."""

from __future__ import annotations

import socket

import pytest

from llamacpp_adapter import End, LlamaCppHttpAdapter, TaskRequest
from llamacpp_adapter._transports.direct import Endpoint

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


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("listening", "named"),
    [
        ("127.0.0.1", "127.0.0.1"),
        pytest.param(
            "::1",
            "[::1]",
            marks=pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback"),
        ),
        ("127.0.0.1", "localhost"),
    ],
)
async def test_an_engine_at_an_address_of_either_family_or_at_a_name_is_reached_directly(
    no_proxy_set: pytest.MonkeyPatch, listening: str, named: str
) -> None:
    # An address is connected to as it is; a name goes through the loop's resolution.
    async with scripted_server(engine, host=listening) as server:
        port = server.url.rsplit(":", 1)[1]
        async with LlamaCppHttpAdapter(f"http://{named}:{port}") as adapter:
            await run_both(adapter)
    assert set(server.requests) == {"/health", "/completion"}


def test_an_endpoint_knows_the_family_of_an_address_and_not_of_a_name() -> None:
    assert Endpoint("127.0.0.1", 80).family == socket.AF_INET
    assert Endpoint("::1", 80).family == socket.AF_INET6
    assert Endpoint("localhost", 80).family is None
