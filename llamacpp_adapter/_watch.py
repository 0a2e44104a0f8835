"""One task that watches every stream of an adapter that may be paused: :class:`PauseWatch`.

A stream is paused once its consumer has taken nothing for a while, which only a clock
can tell: the consumer is away, so nothing it does says so. One task for all of an
adapter's streams looks at each of them every half ``pause_after`` (a few attribute
reads a stream), so that a stream costs nothing a read and nothing a period: a task
a stream, or a timer moved at each read, cost the client up to a fifth more CPU a
token (``benchmarks/NOTES.md``).

The task runs in the task group of one of the streams it watches (each ``submit()``
block of a stream that may be paused has one, or the host's): when that stream ends,
the task moves to another's, and it stops with the last.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
import anyio.abc

__all__ = ["PauseWatch", "Watched"]

logger = logging.getLogger("llamacpp_adapter")


class Watched(Protocol):
    """A stream as the watch sees it."""

    def look(self) -> Callable[[], Awaitable[None]] | None:
        """Called every *period*: ``None``, or what to run for the stream now (its
        read ahead, which may pause it)."""


class PauseWatch:
    """Looks at the streams it is given every *period* seconds, with one task that runs
    in one of their task groups.

    Args:
        period: seconds between two looks.
    """

    def __init__(self, period: float) -> None:
        self.period = period
        self._streams: dict[Watched, anyio.abc.TaskGroup] = {}
        self._home: anyio.abc.TaskGroup | None = None  # where the task runs
        self._scope: anyio.CancelScope | None = None  # the task's

    def __len__(self) -> int:
        return len(self._streams)

    def add(self, stream: Watched, group: anyio.abc.TaskGroup) -> None:
        """Watch *stream*, until :meth:`discard`; *group* is open until then, and the
        task may run in it."""
        self._streams[stream] = group
        if self._scope is None:
            self._start(group)

    def discard(self, stream: Watched) -> None:
        """Stop watching *stream*. If the task runs in its group, it moves to another
        stream's (its looks under way are cancelled; they resume nothing halfway)."""
        group = self._streams.pop(stream, None)
        if self._scope is None or group is None:
            return
        if self._streams and (
            group is not self._home or any(g is group for g in self._streams.values())
        ):
            return  # the task's group stays open (it is another stream's, or shared)
        self._scope.cancel()
        self._scope = self._home = None
        for other in self._streams.values():
            self._start(other)
            break

    def _start(self, group: anyio.abc.TaskGroup) -> None:
        scope = anyio.CancelScope()
        self._scope, self._home = scope, group
        group.start_soon(self._run, scope)

    async def _run(self, scope: anyio.CancelScope) -> None:
        with scope:
            async with anyio.create_task_group() as actions:
                while True:
                    await anyio.sleep(self.period)
                    for stream in self._streams:
                        action = stream.look()
                        if action is not None:
                            actions.start_soon(_run_action, action)


async def _run_action(action: Callable[[], Awaitable[None]]) -> None:
    """Run a stream's action; one that fails by a fault of ours is logged, and fails
    no other stream (its own failures go to its consumer)."""
    try:
        await action()
    except Exception:
        logger.exception("watching a stream for a pause failed")
