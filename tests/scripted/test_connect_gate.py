"""The direct path makes at most ``max_connecting`` connections to its engine at once: a
stream past them waits for one to be made, within the pool timeout, and then connects
within the connect timeout.

The engine here is a listening socket whose accept queue is full: Linux drops the SYNs
that then come, so a connect to it hangs until its timeout, and every connect the
adapter has begun is a socket in ``SYN_SENT`` (``/proc/net/tcp``)."""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import trio

from llamacpp_adapter import LlamaCppHttpAdapter, TaskRequest, WorkerReset

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="counts connects in /proc/net/tcp"
)

SYN_SENT = "02"


def connects_to(port: int) -> int:
    """Sockets of this machine in SYN_SENT to *port* on 127.0.0.1."""
    found = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if state == SYN_SENT and remote == f"0100007F:{port:04X}":
            found += 1
    return found


@contextlib.contextmanager
def an_engine_that_accepts_nothing() -> Iterator[int]:
    """The port of a listener whose accept queue is full: connects to it hang."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        # A backlog of 0 queues one connection; fill it (and a second, where the system
        # queues one more), so that the next SYN is dropped.
        for _ in range(2):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        yield port


async def open_one(adapter: LlamaCppHttpAdapter) -> None:
    async with adapter.submit(TaskRequest("x")) as events:
        async for _ in events:
            pass


@pytest.mark.anyio
@pytest.mark.parametrize("limit", [2, 5])
async def test_no_more_connects_at_once_than_max_connecting(limit: int) -> None:
    with an_engine_that_accepts_nothing() as port:
        before = connects_to(port)
        timeouts = httpx.Timeout(60.0)
        async with (
            LlamaCppHttpAdapter(
                f"http://127.0.0.1:{port}", timeouts=timeouts, max_connecting=limit
            ) as adapter,
            anyio.create_task_group() as group,
        ):
            for _ in range(5):
                group.start_soon(open_one, adapter)
            await anyio.wait_all_tasks_blocked()
            assert connects_to(port) - before == min(limit, 5)
            group.cancel_scope.cancel()


async def test_a_stream_waits_to_connect_within_the_pool_timeout_then_connects_within_its_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    failures: list[tuple[float, str]] = []

    async def one(adapter: LlamaCppHttpAdapter) -> None:
        with pytest.raises(WorkerReset) as caught:
            await open_one(adapter)
        assert caught.value.retriable
        failures.append((trio.current_time(), str(caught.value)))

    with an_engine_that_accepts_nothing() as port:
        timeouts = httpx.Timeout(60.0, connect=10.0, pool=15.0)
        async with (
            LlamaCppHttpAdapter(
                f"http://127.0.0.1:{port}", timeouts=timeouts, max_connecting=1
            ) as adapter,
            trio.open_nursery() as nursery,
        ):
            for _ in range(3):
                nursery.start_soon(one, adapter)
                await trio.testing.wait_all_tasks_blocked()  # they queue in this order
    # The first connects at once and times out at 10 s; the second then connects, and
    # times out at 20 s; the third waits for the gate all along, and gives up at 15 s.
    assert [at for at, _ in failures] == pytest.approx([10.0, 15.0, 20.0])
    messages = [message for _, message in failures]
    assert "no connection within the connect timeout" in messages[0]
    assert "within the pool timeout" in messages[1]
    assert "max_connecting" in messages[1]
    assert "no connection within the connect timeout" in messages[2]


@pytest.mark.parametrize("bad", [0, -1])
def test_max_connecting_must_be_a_positive_count(bad: int) -> None:
    with pytest.raises(ValueError, match="max_connecting must be at least 1"):
        LlamaCppHttpAdapter("http://127.0.0.1:9", max_connecting=bad)


def test_max_connecting_must_be_an_int() -> None:
    with pytest.raises(TypeError, match="max_connecting must be an int"):
        LlamaCppHttpAdapter("http://127.0.0.1:9", max_connecting=2.5)  # type: ignore[arg-type]
