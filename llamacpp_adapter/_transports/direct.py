"""The direct path of a streamed completion: a connection of its own, the request written
once, and the answer read with nothing between the socket and the parser.

* On Trio, a loop of the socket's ``recv`` (``receive_some`` over TLS), each read bounded
  by the read timeout.
* On asyncio (and uvloop), an ``asyncio.Protocol`` whose ``data_received`` feeds the
  parser; ``pause_reading`` holds the bytes back (TCP's window, not the engine, which
  a pause stops) while the body's bytes wait for the consumer.

On both, one keeper a loop keeps every stream's read timeout (:class:`ReadDeadlines`),
not a timer or a cancel scope a stream.

Both give a :class:`~llamacpp_adapter._transports.base.BodySource` and the answer's
head (``direct_trio`` and ``direct_asyncio``; this module holds what they share). The
stream's connection is never kept: llama-server closes it after a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import math
import socket
import ssl
import struct
import termios
from dataclasses import dataclass, field
from typing import Protocol

import trio

from .._exceptions import DecodeTimeout, WorkerReset
from .._sansio.http11 import ResponseParser
from .base import NO_CONNECTION, caused_by, reason_of

__all__ = [
    "DEFAULT_MAX_CONNECTING",
    "HIGH_WATER_BYTES",
    "NOT_SENT",
    "OPENING",
    "READ_BYTES",
    "ConnectGate",
    "DirectBody",
    "Endpoint",
    "ReadDeadlines",
    "StallWatch",
    "StreamTimeouts",
    "connection_error",
    "open_direct",
    "read_timed_out",
    "response_cut",
    "unacknowledged",
]

NOT_SENT = "the socket took none of the request within the write timeout"
#: A request larger than this is watched for progress while it is sent; a smaller one
#: fits in the socket's buffer at once.
WATCHED_REQUEST_BYTES = 64 * 1024
#: How often, within a write timeout, a watched request's progress is looked at.
WATCH_SAMPLES = 4
#: The most bytes one read asks for.
READ_BYTES = 64 * 1024
#: Body bytes that may wait for the consumer before asyncio stops reading the socket.
HIGH_WATER_BYTES = 64 * 1024
OPENING = "while opening the stream"
#: The most connections an adapter makes to its engine at once, by default.
DEFAULT_MAX_CONNECTING = 64


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the engine listens: host, port, and the TLS context for ``https``."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    #: The address family of *host* where it is an address (``127.0.0.1``, ``::1``),
    #: which is connected to as it is; None for a name, which is resolved.
    family: socket.AddressFamily | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            family = None
        else:
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        object.__setattr__(self, "family", family)


@dataclass(frozen=True, slots=True)
class StreamTimeouts:
    """Seconds to connect, to write the request, to wait for the next bytes, and to
    wait for the :class:`ConnectGate` (``math.inf`` for no bound)."""

    connect: float
    write: float
    read: float
    pool: float


class ConnectGate:
    """At most :attr:`limit` connections to one engine being made at once; a stream
    that would be one more waits for one of them to be made, within the pool timeout
    (as httpx's wait for a connection from its pool), and then connects within the
    connect timeout.

    Thousands of streams opened together otherwise send thousands of SYNs at once: a
    server's listen queue overflows (llama-server's holds few), the connects it drops are
    tried again a second and more later, and some fail. And every stream that waits to
    connect holds what its opening holds: at 10,000 streams that peak left the
    allocator's pools 2 to 3 KB a stream larger than the open streams needed, for the
    life of the process (``benchmarks/NOTES.md``). A connect on a local network takes
    well under a millisecond, so the gate costs an opening nothing until it is full.

    One gate serves an adapter on one event loop at a time: Trio's or asyncio's own
    semaphore, made when first used there.
    """

    __slots__ = ("_asyncio", "_trio", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._trio: trio.Semaphore | None = None
        self._asyncio: asyncio.Semaphore | None = None

    def on_trio(self) -> trio.Semaphore:
        """The gate on Trio: hold it while connecting."""
        if self._trio is None:
            self._trio = trio.Semaphore(self.limit)
        return self._trio

    def on_asyncio(self) -> asyncio.Semaphore:
        """The gate on asyncio: hold it while connecting."""
        if self._asyncio is None:
            self._asyncio = asyncio.Semaphore(self.limit)
        return self._asyncio


class TimedRead(Protocol):
    """A stream whose reads a :class:`ReadDeadlines` keeps."""

    #: When the read under way times out (``math.inf``: none is under way).
    deadline: float

    def time_out(self) -> None:
        """End the read under way: its deadline passed."""


class ReadDeadlines:
    """The read deadlines of one event loop's direct streams, kept by one keeper, not
    by a timer or a cancel scope a stream (sans-IO: each backend's keeper sleeps and
    wakes it).

    A stream is watched from its opening to its closing (:attr:`streams`). A read sets
    its deadline (:meth:`reading`), and the stream clears it when the read ends. The
    keeper sleeps until :attr:`target`, the soonest deadline it knows; then
    :meth:`sweep` times out the streams whose deadline passed and finds the next
    soonest, among all it watches. A read whose deadline comes before the target moves
    it (:meth:`_sooner`: the keeper wakes to sleep less). So a read costs an attribute
    write and a comparison, and the keeper wakes about once a read timeout, not once a
    read. At 10,000 streams a timer each held 200 to 530 B a stream (uvloop's the
    most), and a cancel scope each made a token cost 2.5 times as much as at 100
    (``benchmarks/NOTES.md``).
    """

    __slots__ = ("streams", "target")

    def __init__(self) -> None:
        self.streams: set[TimedRead] = set()
        #: What the keeper sleeps until.
        self.target = math.inf

    def reading(self, stream: TimedRead, deadline: float) -> None:
        """*stream* begins a read that times out at *deadline*."""
        stream.deadline = deadline
        if deadline < self.target:
            self.target = deadline
            self._sooner()

    def _sooner(self) -> None:
        """The target moved sooner: the keeper's to act on."""

    def sweep(self, now: float) -> float:
        """Time out every read whose deadline is past at *now*; return the soonest
        deadline left (the new :attr:`target`; ``math.inf`` when no read is timed)."""
        soonest = math.inf
        late = []
        for stream in self.streams:
            deadline = stream.deadline
            if deadline <= now:
                stream.deadline = math.inf
                late.append(stream)
            elif deadline < soonest:
                soonest = deadline
        self.target = soonest
        for stream in late:
            with contextlib.suppress(OSError):
                stream.time_out()
        return soonest


class DirectBody:
    """The body of an answer read on the direct path, and its head."""

    parser: ResponseParser

    async def read(self) -> bytes | None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


async def open_direct(
    endpoint: Endpoint, request: bytes, timeouts: StreamTimeouts, gate: ConnectGate
) -> DirectBody:
    """Connect to *endpoint* through *gate*, send *request*, and read the answer's head.

    Raises:
        WorkerReset: the connection failed (refused, unreachable, reset, TLS).
        DecodeTimeout: the head did not come within the read timeout.
        ProtocolError: the answer is not HTTP/1.1.
    """
    # Each backend is imported when first used (it builds on this module).
    if trio.lowlevel.in_trio_run():
        from .direct_trio import TrioBody

        return await TrioBody.open(endpoint, request, timeouts, gate)
    from .direct_asyncio import AsyncioBody

    return await AsyncioBody.open(endpoint, request, timeouts, gate)


def connection_error(
    exc: BaseException, when: str, *, timed_out: str = NO_CONNECTION
) -> WorkerReset:
    """Our error for a connection that failed *when*; *timed_out* says why, when a
    timeout ended it."""
    reason = timed_out if isinstance(exc, trio.TooSlowError | TimeoutError) else reason_of(exc)
    # A certificate that is not trusted will not be trusted on a second try.
    retriable = not caused_by(exc, ssl.SSLCertVerificationError)
    error = WorkerReset(
        f"the connection to the engine failed {when}: {reason}", retriable=retriable
    )
    error.__cause__ = exc
    return error


class StallWatch:
    """A watched request's progress, looked at every :attr:`step` seconds: what it
    shows (what the socket took, what the system still holds) either changed since the
    last look, or the request has been still that much longer; it is stalled once
    still for the write timeout."""

    __slots__ = ("_seen", "_still", "_within_s", "step")

    def __init__(self, within_s: float, seen: object) -> None:
        self.step = within_s / WATCH_SAMPLES
        self._within_s = within_s
        self._seen = seen
        self._still = 0.0

    def stalled(self, now: object) -> bool:
        """Whether the request, showing *now*, has made no progress for the timeout."""
        self._still = self._still + self.step if now == self._seen else 0.0
        self._seen = now
        return self._still >= self._within_s


def unacknowledged(fd: int) -> int | None:
    """The bytes in a TCP socket's send queue that its peer has not acknowledged (Linux's
    ``SIOCOUTQ``); None where the system does not say."""
    try:
        answer = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return None
    return int(struct.unpack("i", answer)[0])


def read_timed_out(when: str) -> DecodeTimeout:
    return DecodeTimeout(f"no data from the engine within the read timeout, {when}")


def response_cut(when: str) -> WorkerReset:
    return WorkerReset(
        f"the connection to the engine failed {when}: the engine closed the connection "
        "before the answer was whole"
    )
