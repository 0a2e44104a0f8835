"""Keep-alive with llama-server: which connections httpx may keep for the next request,
and which failed requests may be sent again.

llama-server closes the connection after every streamed response, and its answer does
not say so (no ``Connection: close`` header). httpx would keep that connection for the
next request and, when the close arrives late (on a loaded machine it often does), send
that request on a dead connection. So a stream's request says ``Connection: close``
itself: the connection ends with the response and is never kept. (HTTP/2 has no such
header; httpx's HTTP/2 layer leaves it out, and HTTP/2 has no such race.)

A request can still meet a kept connection that the server closed while it was idle:
the classic stale keep-alive race. A request that fails before any byte of its answer,
on a connection that had served an earlier request, never reached the server's handler,
so an idempotent one is sent again, once, as well-kept HTTP clients do (Go's net/http,
urllib3, aiohttp). A streamed completion is never sent again by this rule: the engine
may have begun it, and retrying it is the caller's (or :class:`AdapterHost`'s) choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import httpx

from .httpx import found_by_h11

__all__ = ["NOT_KEPT", "ConnectionTrace", "may_send_again"]

#: The header that keeps a request's connection out of httpx's pool.
NOT_KEPT: Final = {"Connection": "close"}


class ConnectionTrace:
    """httpcore's ``trace`` request extension (``extensions={"trace": trace}``): it learns
    whether the request went out on a connection opened for it, or on one kept from an
    earlier request."""

    __slots__ = ("opened", "sent")

    def __init__(self) -> None:
        self.opened = False
        self.sent = False

    async def __call__(self, event: str, info: Mapping[str, Any]) -> None:
        # e.g. "connection.connect_tcp.started", then "http11.send_request_headers.started"
        if ".connect_" in event:
            self.opened = True
        elif event.endswith(".send_request_headers.started"):
            self.sent = True

    @property
    def reused(self) -> bool:
        """Whether the request went out on a kept connection. False when the transport
        reports nothing (a caller's own transport may not)."""
        return self.sent and not self.opened


def may_send_again(exc: httpx.HTTPError, trace: ConnectionTrace) -> bool:
    """Whether an idempotent request that failed with *exc*, before its answer began,
    may be sent again: the connection was a kept one, and it was closed or reset before
    the server answered. A timeout, a refused connection, malformed HTTP or a failure on
    a fresh connection says something about the server, and is not sent again."""
    if not trace.reused:
        return False
    if isinstance(exc, httpx.RemoteProtocolError):
        return not found_by_h11(exc)  # closed unanswered, not malformed
    return isinstance(exc, httpx.ReadError | httpx.WriteError)
