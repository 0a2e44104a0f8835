"""What the tests against a real llama-server read of it to tell a stopped task from one
that ran on, by the engine's own count of the tokens it generated rather than by the
time it took (a loaded machine slows the engine and the test alike, not the count)."""

from __future__ import annotations

import anyio

from llamacpp_adapter import LlamaCppHttpAdapter, TaskRequest

#: A task with no max_tokens and no end of sequence: it runs until its slot's context is
#: full (the suite's servers give a slot 8,192 tokens or more), seconds of work, unless
#: it is stopped.
ENDLESS = TaskRequest("once upon a time", extra={"ignore_eos": True})
#: The most tokens a task may have generated when it was stopped as its consumer left
#: after a few: llama-server stops at its next token once the connection closes, so a
#: stopped task ends a few tokens past them, far below this, and far below the thousands
#: a task that ran on would reach.
STOPPED_WITHIN_TOKENS = 1_000
#: How long a slot may take to show idle: a guard against a hang, no claim of speed.
IDLE_GUARD_S = 30.0
_POLL_S = 0.01


async def tokens_generated(adapter: LlamaCppHttpAdapter) -> float:
    """llama-server's count of every token it has generated (``--metrics``)."""
    return (await adapter.metrics())["llamacpp:tokens_predicted_total"]


async def wait_until_idle(adapter: LlamaCppHttpAdapter) -> None:
    """Return once no slot is processing (within ``IDLE_GUARD_S``)."""
    with anyio.fail_after(IDLE_GUARD_S):
        while any(slot["is_processing"] for slot in await adapter.slots()):  # noqa: ASYNC110 - another process
            await anyio.sleep(_POLL_S)


async def assert_stopped_early(adapter: LlamaCppHttpAdapter, before: float) -> int:
    """Wait until every slot is idle, and check that the tasks since *before* (the
    count of :func:`tokens_generated` then), whose consumers took a few tokens each,
    were stopped as they left; return what they generated."""
    await wait_until_idle(adapter)
    generated = int(await tokens_generated(adapter) - before)
    assert generated < STOPPED_WITHIN_TOKENS, f"{generated} tokens: the engine ran on"
    return generated
