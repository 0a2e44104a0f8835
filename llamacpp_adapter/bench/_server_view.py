"""What the servers show of a run: their counter of generated tokens before and after,
their busy slots and waiting requests over time, and whether the client counted the
tokens the servers did."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from .._adapter import LlamaCppHttpAdapter
from .._exceptions import WorkerError

__all__ = [
    "counter_growth",
    "server_view",
    "token_check",
    "tokens_predicted",
    "watch_server",
]

#: llama-server's counter of generated tokens (``--metrics``).
TOKENS_PREDICTED = "llamacpp:tokens_predicted_total"
#: llama-server's gauge of requests waiting for a slot.
REQUESTS_DEFERRED = "llamacpp:requests_deferred"
#: How often the server's slots are read during a run.
SLOT_SAMPLE_INTERVAL_S = 0.5


async def tokens_predicted(adapter: LlamaCppHttpAdapter) -> float | None:
    try:
        return (await adapter.metrics()).get(TOKENS_PREDICTED)
    except WorkerError:
        return None  # a server without --metrics


async def watch_server(
    adapters: Sequence[LlamaCppHttpAdapter],
    clock: Callable[[], float],
    slots: list[tuple[float, int]],
    deferred: list[float],
) -> None:
    """Read the servers' busy slots (and waiting requests) every interval."""
    while True:
        busy = 0
        waiting = 0.0
        for adapter in adapters:
            try:
                busy += (await adapter.slot_use()).busy
                waiting += (await adapter.metrics()).get(REQUESTS_DEFERRED, 0.0)
            except WorkerError:
                continue
        slots.append((clock(), busy))
        deferred.append(waiting)
        await anyio.sleep(SLOT_SAMPLE_INTERVAL_S)


def counter_growth(before: list[float | None], after: list[float | None]) -> int | None:
    """How much the servers' token counters grew from *before* to *after*; None when a
    server did not report one."""
    if any(b is None for b in before) or any(a is None for a in after):
        return None
    return int(sum(a or 0.0 for a in after) - sum(b or 0.0 for b in before))


def server_view(
    tokens: int | None, slots: list[tuple[float, int]], deferred: list[float]
) -> dict[str, Any]:
    """What the servers showed over a run: tokens predicted, busy slots over time, and
    the most requests waiting for a slot."""
    return {
        "tokens_predicted": tokens,
        "slots_busy": [{"t": t, "busy": busy} for t, busy in slots],
        "mean_slots_busy": sum(b for _, b in slots) / len(slots) if slots else math.nan,
        "max_requests_deferred": max(deferred, default=math.nan),
    }


def token_check(client: int, server: int | None, *, unfinished: bool) -> dict[str, Any]:
    """Whether the client counted the tokens the server did; unknown (None) without the
    server's count, or when requests were open at the end."""
    return {
        "client_tokens": client,
        "server_tokens": server,
        "equal": None if server is None or unfinished else server == client,
    }
