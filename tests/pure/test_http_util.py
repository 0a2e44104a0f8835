"""stream_decode over async byte sources, under Trio."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import trio

from llamacpp_adapter import ProtocolError, SSEEvent, stream_decode
from llamacpp_adapter.http_util import DEFAULT_KEEPALIVE_EXPIRY_S, default_client


async def pieces(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        await trio.lowlevel.checkpoint()
        yield chunk


async def test_stream_decode_yields_events_across_reads() -> None:
    llama = "data: 🦙\n\n".encode()
    source = pieces(b"\xef\xbb", b"\xbfdata: a\r", b"\n\r\n", llama[:8], llama[8:], b"data: cut")
    events = [event async for event in stream_decode(source)]
    assert events == [SSEEvent(data="a"), SSEEvent(data="🦙")]


async def test_stream_decode_enforces_the_event_bound() -> None:
    seen: list[SSEEvent] = []

    async def consume(source: AsyncIterator[bytes]) -> None:
        async for event in stream_decode(source, max_event_bytes=64):
            seen.append(event)

    chunks = (b"data: ok\n\n", b"data: " + b"x" * 100, b"never read")
    async with contextlib.aclosing(pieces(*chunks)) as source:
        with pytest.raises(ProtocolError):
            await consume(source)
    assert seen == [SSEEvent(data="ok")]  # the events before the error arrive first


async def test_leaving_early_with_aclosing_stops_reading_the_source() -> None:
    reads = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal reads
        for _ in range(100):
            reads += 1
            await trio.lowlevel.checkpoint()
            yield b"data: x\n\n"

    source = counted()
    async with contextlib.aclosing(stream_decode(source)) as events:
        async for _ in events:
            break
    assert reads == 1
    await source.aclose()


# llama-server's answers say `Keep-Alive: timeout=5`; it closes idle connections then.
LLAMA_SERVER_KEEPALIVE_S = 5.0


async def test_the_default_pool_drops_idle_connections_before_llama_server_does() -> None:
    async with default_client() as client:
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert pool._keepalive_expiry == DEFAULT_KEEPALIVE_EXPIRY_S < LLAMA_SERVER_KEEPALIVE_S
