"""Busy processes beside a test: the CPU load under which a race between this process and
the engine shows."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

#: One per core of the machines the suite runs on.
BUSY_PROCESSES = 2


@contextlib.contextmanager
def busy_processes(count: int = BUSY_PROCESSES) -> Iterator[None]:
    """Keep *count* processes spinning on the CPU for the block."""
    spin = [sys.executable, "-c", "while True: pass"]
    processes = [subprocess.Popen(spin, stdin=subprocess.DEVNULL) for _ in range(count)]
    try:
        yield
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait()
