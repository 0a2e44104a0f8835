"""The relay's safe defaults and its transport: a token long enough to guess at no
cost, no anonymous relay beyond loopback unless asked, wss:// with a certificate, and
the client's errors naming what went wrong."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trustme

from llamacpp_adapter import (
    End,
    LlamaCppHttpAdapter,
    Relay,
    StreamEvent,
    TaskRequest,
    WorkerReset,
    open_relay_stream,
)

from ..support.scripted import Connection, replica, start_server, stream_tokens

TOKEN = "relay-token-6a1f0e93c2d4"


async def two_tokens(connection: Connection) -> None:
    await stream_tokens(connection, 2)


@asynccontextmanager
async def engine(nursery: trio.Nursery) -> AsyncIterator[LlamaCppHttpAdapter]:
    url = await start_server(nursery, replica(two_tokens))
    async with LlamaCppHttpAdapter(url) as adapter:
        yield adapter


async def collect(url: str, **options: object) -> list[StreamEvent]:
    request = TaskRequest("x")
    async with open_relay_stream(url, request, **options) as events:  # type: ignore[arg-type]
        return [event async for event in events]


@pytest.mark.parametrize("token", ["", "short", "x" * 15])
def test_a_short_token_is_refused(token: str) -> None:
    adapter = LlamaCppHttpAdapter("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="at least 16 characters"):
        Relay(adapter, token=token)
    Relay(adapter, token="x" * 16)


async def test_no_anonymous_relay_beyond_loopback_unless_asked(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    async with engine(nursery) as adapter:
        with pytest.raises(ValueError, match="no token"):
            await Relay(adapter).serve("0.0.0.0", 0)
        # With a token, or on loopback, or when asked (with a warning), it listens.
        async with trio.open_nursery() as relays:
            await relays.start(Relay(adapter, token=TOKEN).serve, "0.0.0.0", 0)
            await relays.start(Relay(adapter).serve, "127.0.0.1", 0)
            await relays.start(Relay(adapter).serve, "localhost", 0)
            with caplog.at_level(logging.WARNING, logger="llamacpp_adapter"):
                url = await relays.start(Relay(adapter, allow_anonymous=True).serve, "0.0.0.0", 0)
            assert "no token" in caplog.text
            port = url.rsplit(":", 1)[1]
            assert isinstance((await collect(f"ws://127.0.0.1:{port}"))[-1], End)
            relays.cancel_scope.cancel()


async def test_the_relay_serves_wss_with_a_certificate(nursery: trio.Nursery) -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    async with engine(nursery) as adapter, trio.open_nursery() as relays:
        relay = Relay(adapter, token=TOKEN, ssl_context=server_context)
        url = await relays.start(relay.serve, "127.0.0.1", 0)
        assert url.startswith("wss://127.0.0.1:")
        events = await collect(url, token=TOKEN, ssl_context=client_context)
        assert isinstance(events[-1], End)
        # A client that does not trust the certificate is refused before it sends.
        with pytest.raises(WorkerReset, match=r"certificate|CERTIFICATE"):
            await collect(url, token=TOKEN)
        relays.cancel_scope.cancel()


async def test_an_unreachable_relay_is_named_with_the_system_s_reason() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once it closes
    with pytest.raises(WorkerReset) as info:
        await collect(f"ws://127.0.0.1:{port}")
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "refused" in str(info.value).lower()
