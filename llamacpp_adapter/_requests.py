"""The adapter's requests to its engine: a stream's request opened on the direct path or
through httpx, its answer's head checked; and every other request, idempotent, sent once
more when it met a kept connection the engine had closed unseen, and read with a bound.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar

import httpx
import msgspec

from ._exceptions import ProtocolError, WorkerError
from ._route import DirectRoute
from ._sansio.errors import status_error
from ._sansio.http11 import request_bytes
from ._transports.base import BodySource
from ._transports.direct import open_direct
from ._transports.httpx import (
    MAX_ERROR_BODY_BYTES,
    HttpxBody,
    close_response,
    http_error,
    mapped_body,
    read_at_most,
    read_error_body,
    response_error,
)
from ._transports.keepalive import NOT_KEPT, ConnectionTrace, may_send_again

__all__ = ["ENGINE", "EngineRequests", "decode_json"]

T = TypeVar("T")

logger = logging.getLogger("llamacpp_adapter")

ENGINE: Final = "llama.cpp"
#: The most bytes of a JSON answer (``/props``, ``/slots``, ``/metrics``, ...).
MAX_JSON_BODY_BYTES = 16 * 1024 * 1024


class EngineRequests:
    """Requests to one engine at *base_url*, with *headers* on each, through *client*;
    a stream takes *direct* when it is given.

    Args:
        base_url: the engine's base URL, without credentials.
        client: the httpx client for every request but a direct stream.
        headers: sent with every request (``Accept``, ``Authorization``).
        direct: the direct path to the engine, or None (streams then go through httpx).
        safe_url: the base URL as a log line may show it.
    """

    def __init__(
        self,
        base_url: str,
        client: httpx.AsyncClient,
        headers: dict[str, str],
        direct: DirectRoute | None,
        safe_url: str,
    ) -> None:
        self.base_url = base_url
        self._client = client
        self._headers = headers
        self._direct = direct
        self._safe_url = safe_url
        # The same for every stream: made once, not held again by each stream opening.
        self._stream_headers = {
            **headers,
            **NOT_KEPT,  # llama-server closes it after the stream, unannounced
            "Accept": "text/event-stream",
            "Content-Type": "application/json",
        }

    async def open_stream(self, body: bytes, path: str = "/completion") -> BodySource:
        """POST *body* to *path* (``/completion``, or the chat endpoint) for a stream;
        its body once the answer's head says it is one.

        Raises:
            WorkerError: the request failed, or the engine answered with an error (a
                prompt larger than the context is :class:`PromptTooLarge`).
        """
        headers = self._stream_headers
        if self._direct is not None:
            return await self._open_direct(body, headers, self._direct, path)
        return HttpxBody(await self._open_through_httpx(body, headers, path))

    async def _open_direct(
        self, body: bytes, headers: dict[str, str], route: DirectRoute, path: str
    ) -> BodySource:
        data = request_bytes("POST", f"{route.path}{path}", route.host, headers, body)
        source = await open_direct(route.endpoint, data, route.timeouts, route.gate)
        head = source.parser
        try:
            if head.status != 200:
                body = await _read_error_body(source)
                raise status_error(head.status, head.reason, head.headers, body, now=time.time())
            content_type = head.headers.get("content-type", "")
            if not content_type.startswith("text/event-stream"):
                raise ProtocolError(f"the engine answered {content_type!r}, not text/event-stream")
        except BaseException:
            await source.aclose()
            raise
        return source

    async def _open_through_httpx(
        self, body: bytes, headers: dict[str, str], path: str
    ) -> httpx.Response:
        http_request = self._client.build_request(
            "POST", self._url(path), content=body, headers=headers
        )
        try:
            response = await self._client.send(http_request, stream=True)
        except httpx.HTTPError as exc:
            raise http_error(exc, "while opening the stream") from exc
        try:
            if response.status_code != 200:
                raise response_error(response, await read_error_body(response))
            content_type = response.headers.get("content-type", "")
            if not content_type.startswith("text/event-stream"):
                raise ProtocolError(f"the engine answered {content_type!r}, not text/event-stream")
        except BaseException:
            await close_response(response)
            raise
        return response

    def _url(self, path: str) -> str:
        return self.base_url + path

    async def fetch(self, method: str, path: str, json: Any = None) -> tuple[httpx.Response, bytes]:
        """Send an idempotent request and read at most ``MAX_JSON_BODY_BYTES`` of its
        answer (as much of an error's as it takes to find its message)."""
        async with self._answer(method, path, json) as response:
            if response.status_code != 200:
                return response, await read_error_body(response)
            body, complete = await read_at_most(response, MAX_JSON_BODY_BYTES)
            if not complete:
                raise ProtocolError(
                    f"{method} {path} answered more than {MAX_JSON_BODY_BYTES} bytes"
                )
            return response, body

    @asynccontextmanager
    async def _answer(
        self, method: str, path: str, json: Any = None
    ) -> AsyncIterator[httpx.Response]:
        """Send an idempotent request; the answer, its head read, for the block, which
        reads its body, and closes it after. Every request but the streamed completion
        is idempotent, so one that met a kept connection the server had closed is sent
        once more (see ``_transports.keepalive``). httpx's errors while the block reads
        are ours.
        """
        content = None if json is None else msgspec.json.encode(json)
        headers = dict(self._headers)
        if content is not None:
            headers["Content-Type"] = "application/json"
        doing = f"{method} {path}"
        response = await self._send_idempotent(method, path, content, headers, doing)
        try:
            yield response
        except httpx.HTTPError as exc:
            raise http_error(exc, f"during {doing}", body=True) from exc
        finally:
            await close_response(response)

    async def _send_idempotent(
        self, method: str, path: str, content: bytes | None, headers: dict[str, str], doing: str
    ) -> httpx.Response:
        """Send an idempotent request; its answer's head is read, its body not yet. One
        that met a kept connection the engine had closed unseen goes once more."""
        trace = ConnectionTrace()
        request = self._client.build_request(
            method, self._url(path), content=content, headers=headers,
            extensions={"trace": trace},
        )  # fmt: skip
        try:
            return await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            if not may_send_again(exc, trace):
                raise http_error(exc, f"during {doing}") from exc
        logger.debug(
            "%s met a kept connection the engine had closed; sending it again",
            doing,
            extra={"engine": ENGINE, "url": self._safe_url},
        )
        request = self._client.build_request(
            method, self._url(path), content=content, headers=headers
        )
        try:
            return await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            again = f"during {doing}, sent again after a kept connection closed"
            raise http_error(exc, again) from exc

    async def decode(self, path: str, decoder: Callable[[memoryview], T]) -> T:
        """``GET path``'s answer, decoded by *decoder*. The body is read into a memory
        mapping of its own, unmapped once decoded: ``/slots`` of a server of 10,000
        slots is 12 MB, and read into ``bytes`` it left the process's resident memory
        that much larger, in a process of thousands of streams (``benchmarks/NOTES.md``).

        Raises:
            WorkerError: the request failed, or the engine answered with an error.
        """
        async with self._answer("GET", path) as response:
            if response.status_code != 200:
                raise response_error(response, await read_error_body(response))
            async with mapped_body(response, MAX_JSON_BODY_BYTES, f"GET {path}") as body:
                return decoder(body)

    async def request(self, method: str, path: str, json: Any = None) -> bytes:
        """The body of a successful answer.

        Raises:
            WorkerError: the request failed, or the engine answered with an error.
        """
        response, content = await self.fetch(method, path, json)
        if response.status_code != 200:
            raise response_error(response, content)
        return content

    async def get_json(self, path: str) -> Any:
        return decode_json(await self.request("GET", path), f"GET {path}")

    async def post_json(self, path: str, body: Any) -> Any:
        return decode_json(await self.request("POST", path, body), f"POST {path}")


async def _read_error_body(source: BodySource) -> bytes:
    """As much of an error answer's body as it takes to find its message."""
    body = bytearray()
    try:
        while len(body) <= MAX_ERROR_BODY_BYTES and (data := await source.read()) is not None:
            body += data
    except WorkerError:
        pass  # the status says enough
    return bytes(body[:MAX_ERROR_BODY_BYTES])


def decode_json(content: bytes, what: str) -> Any:
    try:
        return msgspec.json.decode(content)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProtocolError(f"{what} did not return JSON: {exc}") from exc
