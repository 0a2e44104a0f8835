"""The pause watch: one task looks at every stream it is given, every period; it runs in
one of their task groups and moves to another's when that stream goes, so that no group
waits for it; a stream's action runs beside it, and a failing one fails nothing else.
Time is Trio's MockClock."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
import pytest
import trio
from trio.testing import MockClock

from llamacpp_adapter._watch import PauseWatch

PERIOD = 0.05
GUARD_S = 10.0


class Stream:
    """A stream as the watch sees it: it counts the looks, and asks for its action at
    the look numbered *act_at*."""

    def __init__(self, act_at: int = 0, *, fails: bool = False) -> None:
        self.looks = 0
        self.acted = 0
        self.act_at = act_at
        self.fails = fails

    def look(self) -> Callable[[], Awaitable[None]] | None:
        self.looks += 1
        return self.act if self.looks == self.act_at else None

    async def act(self) -> None:
        self.acted += 1
        if self.fails:
            raise RuntimeError("a fault")


async def test_one_task_looks_at_every_stream_and_moves_when_its_group_closes(
    autojump_clock: MockClock,
) -> None:
    watch = PauseWatch(PERIOD)
    a, b = Stream(), Stream()
    with trio.fail_after(GUARD_S):
        async with anyio.create_task_group() as group_b:
            async with anyio.create_task_group() as group_a:
                watch.add(a, group_a)  # the task starts in a's group
                watch.add(b, group_b)
                await trio.sleep(5.5 * PERIOD)
                assert (a.looks, b.looks) == (5, 5)
                watch.discard(a)
            # a's group closed (the task left it); the task goes on in b's.
            await trio.sleep(2.2 * PERIOD)
            assert (a.looks, b.looks) == (5, 7)
            watch.discard(b)
        # The last stream gone, the task stopped: b's group closed too.
        assert len(watch) == 0


async def test_a_group_two_streams_share_keeps_the_task(autojump_clock: MockClock) -> None:
    watch = PauseWatch(PERIOD)
    a, b = Stream(), Stream()
    with trio.fail_after(GUARD_S):
        async with anyio.create_task_group() as shared:
            watch.add(a, shared)
            watch.add(b, shared)
            await trio.sleep(1.5 * PERIOD)
            watch.discard(a)
            await trio.sleep(PERIOD)
            assert (a.looks, b.looks) == (1, 2)
            watch.discard(b)


async def test_an_action_runs_beside_the_looks_and_a_failing_one_fails_nothing(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    watch = PauseWatch(PERIOD)
    acting, failing = Stream(act_at=2), Stream(act_at=1, fails=True)
    with trio.fail_after(GUARD_S):
        async with anyio.create_task_group() as group:
            watch.add(acting, group)
            watch.add(failing, group)
            await trio.sleep(3.5 * PERIOD)
            watch.discard(acting)
            watch.discard(failing)
    assert (acting.acted, failing.acted) == (1, 1)
    assert (acting.looks, failing.looks) == (3, 3)
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "watching a stream" in record.getMessage()
