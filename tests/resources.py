"""What a test counts to prove that nothing leaked: open file descriptors and tasks."""

from __future__ import annotations

import gc
import os

import anyio
import anyio.lowlevel

#: Passes of the event loop in which finalizer tasks must end.
FINALIZER_PASSES = 100


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def running_tasks() -> int:
    return len(anyio.get_running_tasks())


async def settled_task_count(baseline: int) -> int:
    """The number of tasks, once the event loop has finalized what was left to it.

    A stream left before its end leaves httpcore's body generators suspended; when they
    are collected, Trio and asyncio each close them in a short task of their own. Those
    end within a few passes of the loop; a leaked task does not.
    """
    gc.collect()
    for _ in range(FINALIZER_PASSES):
        if running_tasks() <= baseline:
            break
        await anyio.lowlevel.checkpoint()
    return running_tasks()
