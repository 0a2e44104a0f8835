"""Answers from the engine turned into this library's values and errors: the one place
where httpx's exceptions become ours, and where bodies are read with a bound."""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from email.utils import parsedate_to_datetime
from typing import Any, cast

import anyio
import httpx
import msgspec

from ._exceptions import (
    AdapterError,
    DecodeTimeout,
    PromptTooLarge,
    ProtocolError,
    WorkerError,
    WorkerReset,
)

#: The most bytes of an error response's body that are read to find its message.
MAX_ERROR_BODY_BYTES = 64 * 1024
#: How long closing a response may take during clean-up, even when cancelled.
CLOSE_TIMEOUT_S = 5.0
_CONTEXT_ERROR_TYPE = "exceed_context_size_error"
_PEER_CLOSED_MARKS = ("peer closed", "peer unexpectedly closed", "disconnected")

__all__ = [
    "CLOSE_TIMEOUT_S",
    "MAX_ERROR_BODY_BYTES",
    "as_generator",
    "caused_by",
    "close_response",
    "closed_early",
    "error_message",
    "http_error",
    "json_or_none",
    "read_at_most",
    "read_error_body",
    "reason_of",
    "status_error",
]


def as_generator(iterator: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """httpx's body iterators are async generators, typed as plain iterators."""
    return cast(AsyncGenerator[bytes, None], iterator)


async def close_response(response: httpx.Response) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT_S):
        await response.aclose()


def http_error(exc: httpx.HTTPError, when: str) -> WorkerError:
    """Our error for an httpx one, *when* (e.g. "while opening the stream") it happened.
    This is the one place where httpx's exceptions become ours."""
    error: WorkerError
    if isinstance(exc, httpx.ReadTimeout):
        error = DecodeTimeout(f"no data from the engine within the read timeout, {when}")
    elif isinstance(exc, httpx.TransportError) and not _malformed(exc):
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


def _malformed(exc: httpx.TransportError) -> bool:
    """Whether *exc* says the engine sent malformed HTTP (a bad chunk header, a bad
    status line): its fault, not the network's."""
    return isinstance(exc, httpx.RemoteProtocolError) and not closed_early(exc)


def closed_early(exc: httpx.RemoteProtocolError) -> bool:
    """Whether *exc* says the engine closed the connection before its answer was whole.
    httpx raises the same error for malformed HTTP; h11's and httpcore's messages tell
    the two apart."""
    message = str(exc)
    return any(mark in message for mark in _PEER_CLOSED_MARKS)


#: Why an https:// request timed out opening, when it did: a server that speaks plain
#: HTTP (llama-server without TLS) waits for a request line and never answers the
#: TLS handshake.
NO_TLS_ANSWER = (
    "no answer to the TLS handshake within the connect timeout; "
    "if the server speaks plain HTTP, use an http:// URL"
)
#: Why a request timed out opening, otherwise.
NO_CONNECTION = "no connection within the connect timeout"


def reason_of(exc: BaseException) -> str:
    """What went wrong, from *exc* or, when its own message is empty (as httpx's is for
    a refused TLS certificate), from what it wraps."""
    for current in _chain(exc):
        if str(current):
            return str(current)
    return type(exc).__name__


def caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    return any(isinstance(current, kind) for current in _chain(exc))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """*exc*, then what caused it, and so on."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


async def read_at_most(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """Read the body up to *limit* bytes; say whether that was all of it."""
    body = bytearray()
    async with contextlib.aclosing(as_generator(response.aiter_bytes())) as chunks:
        async for chunk in chunks:
            body += chunk
            if len(body) > limit:
                return bytes(body[:limit]), False
    return bytes(body), True


async def read_error_body(response: httpx.Response) -> bytes:
    """As much of an error answer's body as it takes to find its message."""
    try:
        body, _ = await read_at_most(response, MAX_ERROR_BODY_BYTES)
    except httpx.HTTPError:
        return b""  # the status says enough
    return body


def status_error(response: httpx.Response, body: bytes) -> WorkerError:
    """The error for a non-success answer with *body*."""
    parsed = json_or_none(body)
    message, error_type = error_message(parsed, response)
    if error_type == _CONTEXT_ERROR_TYPE:
        error = parsed["error"]  # error_message found its type there
        return PromptTooLarge(
            f"the task does not fit the engine's context: {message}",
            prompt_tokens=_count(error.get("n_prompt_tokens")),
            context_size=_count(error.get("n_ctx")),
        )
    return AdapterError(
        f"the engine answered {response.status_code}: {message}",
        status=response.status_code,
        error_type=error_type,
        retry_after=_retry_after(response.headers.get("retry-after")),
    )


def error_message(body: Any, response: httpx.Response) -> tuple[str, str | None]:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = error.get("message")
        error_type = error.get("type")
        return (
            str(message) if message is not None else response.reason_phrase,
            error_type if isinstance(error_type, str) else None,
        )
    if isinstance(error, str):
        return error, None
    return response.reason_phrase or "no message", None


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def json_or_none(content: bytes) -> Any:
    try:
        return msgspec.json.decode(content)
    except (msgspec.DecodeError, RecursionError):
        return None


def _count(value: Any) -> int | None:
    """*value* when it is a count (a JSON integer, not negative), else None."""
    return value if type(value) is int and value >= 0 else None
