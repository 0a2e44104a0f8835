"""HTTP helpers shared by the adapter and by callers who bring their own client.

* :func:`default_client`: an ``httpx.AsyncClient`` with this library's defaults
  (timeouts for every phase, TLS verification on, bounded connection pool).
* :func:`with_bearer`: headers with an ``Authorization: Bearer`` token added.
* :func:`redact_secrets`: text with secrets masked (see :mod:`llamacpp_adapter._redact`).
* :func:`stream_decode`: Server-Sent Events from any async source of bytes.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Mapping

import httpx

from ._redact import redact_secrets, register_secret
from ._sansio.sse import DEFAULT_MAX_EVENT_BYTES, SSEDecoder, SSEEvent

__all__ = [
    "DEFAULT_KEEPALIVE_EXPIRY_S",
    "DEFAULT_TIMEOUTS",
    "default_client",
    "redact_secrets",
    "register_secret",
    "stream_decode",
    "with_bearer",
]

#: Seconds allowed to connect, to wait between two reads (which bounds the wait for the
#: next token), to write the request, and to wait for a pooled connection.
DEFAULT_TIMEOUTS = httpx.Timeout(connect=5.0, read=60.0, write=10.0, pool=10.0)
#: How long an idle pooled connection is kept: less than llama-server keeps it (its
#: answers say ``Keep-Alive: timeout=5``, and it closes an idle connection after 5 s).
#: Were the two equal, a request sent on a connection just as the server closed it
#: would fail with no answer.
DEFAULT_KEEPALIVE_EXPIRY_S = 4.0
_DEFAULT_MAX_CONNECTIONS = 1000
_DEFAULT_MAX_KEEPALIVE_CONNECTIONS = 100

# RFC 6750's token68: what may follow "Bearer ".
_TOKEN68_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")


def default_client(
    *,
    timeouts: httpx.Timeout | None = None,
    headers: Mapping[str, str] | None = None,
    max_connections: int = _DEFAULT_MAX_CONNECTIONS,
    proxy: str | None = None,
    tls: ssl.SSLContext | None = None,
    trust_env: bool = True,
) -> httpx.AsyncClient:
    """Return a new ``httpx.AsyncClient`` with this library's defaults.

    TLS certificates are verified (with *tls*, a context of your own, when given; to
    trust a private CA, give one, or build your own client). With *trust_env* (as httpx
    does by default) the client takes its proxies and its certificates' locations from
    the environment; without it, it goes through *proxy* alone. The caller owns the
    client and must close it (``await client.aclose()``).
    """
    return httpx.AsyncClient(
        timeout=DEFAULT_TIMEOUTS if timeouts is None else timeouts,
        headers=dict(headers or {}),
        verify=True if tls is None else tls,
        proxy=proxy,
        trust_env=trust_env,
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=min(max_connections, _DEFAULT_MAX_KEEPALIVE_CONNECTIONS),
            keepalive_expiry=DEFAULT_KEEPALIVE_EXPIRY_S,
        ),
        follow_redirects=False,
    )


def with_bearer(headers: Mapping[str, str] | None, token: str | None) -> dict[str, str]:
    """Return a copy of *headers* with ``Authorization: Bearer <token>`` added.

    With ``token=None`` the copy is returned unchanged. The token is registered with
    :func:`register_secret` (when long enough) so that it is masked in every log line
    and error message from then on.

    Raises:
        ValueError: if the token is empty or holds characters a bearer token may not
            (the message never repeats the token).
    """
    result = dict(headers or {})
    if token is None:
        return result
    if not isinstance(token, str):
        raise TypeError("a bearer token must be a str")
    if not token or not set(token) <= _TOKEN68_CHARS:
        raise ValueError("a bearer token must be non-empty and use only token68 characters")
    # A token too short to mask by value is still masked by shape, after "Bearer".
    with contextlib.suppress(ValueError):
        register_secret(token)
    for name in [name for name in result if name.lower() == "authorization"]:
        del result[name]
    result["Authorization"] = f"Bearer {token}"
    return result


async def stream_decode(
    source: AsyncIterable[bytes], *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
) -> AsyncIterator[SSEEvent]:
    """Yield the Server-Sent Events in an async byte source, e.g.
    ``response.aiter_bytes()``.

    This is an async generator: if you may stop early, close it at once with
    ``contextlib.aclosing(stream_decode(...))``; the source is not closed for you.

    Raises:
        ProtocolError: if an event exceeds *max_event_bytes*.
    """
    decoder = SSEDecoder(max_event_bytes)
    async for chunk in source:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.close():
        yield event
