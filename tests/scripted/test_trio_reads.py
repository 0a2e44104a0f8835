"""Trio's direct path reads a connection it made from the standard library's socket
itself: as Trio's own ``recv`` does, a read checks for cancellation before it reads, never
after (no byte read is lost to a cancellation), and a read that did not have to wait
still lets the other tasks run."""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from llamacpp_adapter._transports.direct_trio import TrioBody

pytestmark = pytest.mark.trio


@pytest.fixture
def pair() -> Iterator[tuple[TrioBody, socket.socket]]:
    """A body reading its end of a pair of sockets straight (as one it connected), and
    the other end."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    with ours, theirs:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        yield TrioBody(stream, math.inf, plain=ours), theirs


async def receive(body: TrioBody) -> bytes:
    return await body._receive("while reading")


async def test_a_read_of_bytes_already_there_is_a_checkpoint(
    pair: tuple[TrioBody, socket.socket],
) -> None:
    ours, theirs = pair
    theirs.sendall(b"ready")
    with trio.testing.assert_checkpoints():
        assert await receive(ours) == b"ready"


async def test_a_cancelled_read_takes_no_byte(pair: tuple[TrioBody, socket.socket]) -> None:
    ours, theirs = pair
    theirs.sendall(b"kept")
    with trio.CancelScope() as scope:
        scope.cancel()
        await receive(ours)
    assert scope.cancelled_caught
    assert await receive(ours) == b"kept"


async def test_a_read_waits_for_bytes_and_for_the_end(
    pair: tuple[TrioBody, socket.socket],
) -> None:
    ours, theirs = pair
    got: list[bytes] = []

    async def read_twice() -> None:
        got.append(await receive(ours))
        got.append(await receive(ours))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_twice)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        theirs.sendall(b"late")
        await trio.testing.wait_all_tasks_blocked()
        assert got == [b"late"]
        theirs.shutdown(socket.SHUT_WR)
    assert got == [b"late", b""]
