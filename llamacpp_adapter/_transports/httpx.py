"""A stream's body and the other requests through httpx: the one place where httpx's
exceptions become ours, and where bodies are read with a bound."""

from __future__ import annotations

import contextlib
import mmap
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

import anyio
import h11
import httpx

from .._exceptions import DecodeTimeout, ProtocolError, WorkerError, WorkerReset
from .._sansio.errors import status_error
from .base import CLOSE_TIMEOUT_S, NO_CONNECTION, NO_TLS_ANSWER, caused_by, reason_of

__all__ = [
    "MAX_ERROR_BODY_BYTES",
    "HttpxBody",
    "close_response",
    "found_by_h11",
    "http_error",
    "mapped_body",
    "read_at_most",
    "read_error_body",
    "response_error",
]

#: The most bytes of an error response's body that are read to find its message.
MAX_ERROR_BODY_BYTES = 64 * 1024


class HttpxBody:
    """The body of an ``httpx.Response`` opened with ``stream=True``: a
    :class:`BodySource` whose failures are ours."""

    __slots__ = ("_reading", "_reads", "_response")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._reads = _as_generator(response.aiter_raw())
        self._reading = False

    async def read(self) -> bytes | None:
        self._reading = True
        try:
            return await self._reads.__anext__()
        except StopAsyncIteration:
            return None
        except httpx.HTTPError as exc:
            raise http_error(exc, "while reading the stream", body=True) from exc
        finally:
            self._reading = False

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT_S):
            if not self._reading:
                # Not under a running read: the body's generator may be closed too.
                await self._reads.aclose()
            await self._response.aclose()


def _as_generator(iterator: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """httpx's body iterators are async generators, typed as plain iterators."""
    return cast(AsyncGenerator[bytes, None], iterator)


async def close_response(response: httpx.Response) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT_S):
        await response.aclose()


def http_error(exc: httpx.HTTPError, when: str, *, body: bool = False) -> WorkerError:
    """Our error for an httpx one, *when* (e.g. "while opening the stream") it happened,
    while reading an answer's *body* or before. This is the one place where httpx's
    exceptions become ours."""
    error: WorkerError
    if isinstance(exc, httpx.ReadTimeout):
        error = DecodeTimeout(f"no data from the engine within the read timeout, {when}")
    elif isinstance(exc, httpx.TransportError) and not _malformed(exc, body=body):
        if isinstance(exc, httpx.ConnectTimeout):
            secure = exc.request.url.scheme == "https"
            reason = NO_TLS_ANSWER if secure else NO_CONNECTION
        else:
            reason = reason_of(exc)
        # A certificate that is not trusted will not be trusted on a second try.
        error = WorkerReset(
            f"the connection to the engine failed {when}: {reason}",
            retriable=not caused_by(exc, ssl.SSLCertVerificationError),
        )
    else:
        error = ProtocolError(f"bad HTTP from the engine {when}: {exc}")
    error.__cause__ = exc
    return error


def _malformed(exc: httpx.TransportError, *, body: bool) -> bool:
    """Whether *exc* says the engine sent malformed HTTP (a bad status line or header):
    its fault, not the network's. Once the body had begun, h11 reports a connection
    closed mid-body as it reports a bad chunk, and both count as a cut stream (the
    direct path, whose parser tells them apart, says which)."""
    return isinstance(exc, httpx.RemoteProtocolError) and not body and found_by_h11(exc)


def found_by_h11(exc: BaseException) -> bool:
    """Whether *exc* stems from h11 finding the answer's HTTP malformed. httpx raises
    ``RemoteProtocolError`` for that and for a server that closed the connection before
    its answer began; only the first has h11's error under it (httpcore raises the
    second itself)."""
    return caused_by(exc, h11.RemoteProtocolError)


def response_error(response: httpx.Response, body: bytes) -> WorkerError:
    """The error for a non-success *response* with *body*."""
    return status_error(
        response.status_code, response.reason_phrase, response.headers, body, now=time.time()
    )


async def read_at_most(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """Read the body up to *limit* bytes; say whether that was all of it."""
    body = bytearray()
    async with contextlib.aclosing(_as_generator(response.aiter_bytes())) as chunks:
        async for chunk in chunks:
            body += chunk
            if len(body) > limit:
                return bytes(body[:limit]), False
    return bytes(body), True


@contextlib.asynccontextmanager
async def mapped_body(
    response: httpx.Response, limit: int, doing: str
) -> AsyncIterator[memoryview]:
    """The body, of at most *limit* bytes, read into an anonymous memory mapping for the
    block, which unmaps it after: a body of megabytes leaves nothing in the process's
    heap (read into ``bytes``, its pieces and their copy are freed among objects made
    meanwhile, and the allocator keeps the pages they took). A body that does not say
    its length is read as :func:`read_at_most` reads it. *doing* names the request in
    an error.

    Raises:
        ProtocolError: the body is longer than *limit*, or than it said.
    """
    too_long = ProtocolError(f"{doing}: an answer of more than {limit} bytes")
    declared = response.headers.get("content-length", "")
    if not declared.isdigit():
        body, complete = await read_at_most(response, limit)
        if not complete:
            raise too_long
        with memoryview(body) as view:
            yield view
        return
    size = int(declared)
    if size > limit:
        raise too_long
    mapping = mmap.mmap(-1, max(size, 1))
    try:
        used = 0
        async with contextlib.aclosing(_as_generator(response.aiter_bytes())) as chunks:
            async for chunk in chunks:
                if used + len(chunk) > size:
                    raise ProtocolError(f"{doing}: an answer longer than the {size} bytes it said")
                mapping[used : used + len(chunk)] = chunk
                used += len(chunk)
        with memoryview(mapping) as view, view[:used] as content:
            yield content
    finally:
        mapping.close()


async def read_error_body(response: httpx.Response) -> bytes:
    """As much of an error answer's body as it takes to find its message."""
    try:
        body, _ = await read_at_most(response, MAX_ERROR_BODY_BYTES)
    except httpx.HTTPError:
        return b""  # the status says enough
    return body
