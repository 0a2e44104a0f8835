"""What every transport shares: :class:`BodySource`, the one interface
:class:`EventStream` reads a body through, and the words for a transport's failures
(why a connection failed, what caused it), so that the direct path and httpx's say the
same thing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

__all__ = [
    "CLOSE_TIMEOUT_S",
    "GATE_FULL",
    "NO_CONNECTION",
    "NO_TLS_ANSWER",
    "BodySource",
    "caused_by",
    "reason_of",
]

#: How long closing a connection may take during clean-up, even when cancelled.
CLOSE_TIMEOUT_S = 5.0

#: Why an https:// request timed out opening, when it did: a server that speaks plain
#: HTTP (llama-server without TLS) waits for a request line and never answers the
#: TLS handshake.
NO_TLS_ANSWER = (
    "no answer to the TLS handshake within the connect timeout; "
    "if the server speaks plain HTTP, use an http:// URL"
)
#: Why a request timed out opening, otherwise.
NO_CONNECTION = "no connection within the connect timeout"
#: Why a stream timed out before it could begin to connect (see ``ConnectGate``).
GATE_FULL = (
    "no connection could be begun within the pool timeout: the adapter's "
    "max_connecting connections were being made all that time"
)


class BodySource(Protocol):
    """The body of one streamed answer, read a network read at a time."""

    async def read(self) -> bytes | None:
        """The body's next bytes (never empty), or None at its clean end.

        Raises:
            WorkerError: when the read fails.
        """

    async def aclose(self) -> None:
        """Close the connection now, so that the engine frees its slot. It may be
        called while another task is in :meth:`read`, whose read then fails; it is
        called again after that, and then it finishes the job."""


def reason_of(exc: BaseException) -> str:
    """What went wrong, from *exc* or, when its own message is empty (as httpx's is for
    a refused TLS certificate), from what it wraps."""
    for current in _chain(exc):
        if str(current):
            return str(current)
    return type(exc).__name__


def caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether *exc*, or anything that caused it, is a *kind*."""
    return any(isinstance(current, kind) for current in _chain(exc))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """*exc*, then what caused it, and so on."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
