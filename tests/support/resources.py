"""What a test counts to prove that nothing leaked: open file descriptors, tasks, and
llama-server processes."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import anyio
import anyio.lowlevel

#: Passes of the event loop in which finalizer tasks must end.
FINALIZER_PASSES = 100


def open_fds() -> int:
    """The file descriptors this process holds, but for ``/dev/null``: libuv (under
    uvloop) opens it once, when a loop first listens, and keeps it for the loop's life,
    to accept with when descriptors run out."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the descriptor os.listdir itself used, closed since
        count += target != "/dev/null"
    return count


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


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (FileNotFoundError, ProcessLookupError):
        # The second: the process ended (and was reaped) between the open and the read.
        return False
    return state != "Z"


def engines() -> set[int]:
    """The llama-server processes running now (the suite's own among them)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"llama-server" in command and alive(int(entry.name)):
                found.add(int(entry.name))
    return found
