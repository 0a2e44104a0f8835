"""A relay in the test's own process, and what the relay's tests read of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from llamacpp_adapter import (
    LlamaCppHttpAdapter,
    Relay,
    StreamEvent,
    TaskRequest,
    Token,
    open_relay_stream,
)

TOKEN = "relay-token-3b8e0c17f4d2"


@asynccontextmanager
async def relay_over(url: str, **options: object) -> AsyncIterator[tuple[str, Relay]]:
    """A relay in front of the engine at *url*; yields its ws:// URL and itself."""
    async with LlamaCppHttpAdapter(url) as adapter, trio.open_nursery() as nursery:
        relay = Relay(adapter, **options)  # type: ignore[arg-type]
        relay_url = await nursery.start(relay.serve)
        yield relay_url, relay
        nursery.cancel_scope.cancel()


async def collect(url: str, request: TaskRequest, **options: object) -> list[StreamEvent]:
    async with open_relay_stream(url, request, **options) as events:  # type: ignore[arg-type]
        return [event async for event in events]


def texts(events: list[StreamEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, Token)]


async def poll_until(read: Callable[[], Awaitable[int]], wanted: int) -> None:
    """Read *read* until it gives *wanted*: for state in another process or behind a
    socket, which has no event to wait on."""
    while await read() != wanted:  # noqa: ASYNC110 - nothing to wait on but the answer
        await trio.sleep(0.02)
