"""Response bodies for an adapter whose transport is replaced (``httpx.MockTransport``):
the real stream's headers, and a body that comes in given pieces, with pauses, and may
fail after its last piece."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import anyio.lowlevel
import httpx

from .wire import STREAM_HEAD

#: The headers of a real stream response, but its chunked transfer (the mock's body
#: comes whole pieces).
STREAM_HEADERS = [
    tuple(line.split(": ", 1))
    for line in STREAM_HEAD.decode().split("\r\n")[1:]
    if ": " in line and not line.lower().startswith("transfer-encoding")
]


class PiecesBody(httpx.AsyncByteStream):
    """A body in *parts*, with a pause of the given number of checkpoints before each;
    after the last, *error* is raised, if given (``httpx.ReadError``: a reset). Closed
    before its end (the reader stopped), it stops."""

    def __init__(
        self, parts: list[bytes], pauses: list[int], *, error: Exception | None = None
    ) -> None:
        self.parts, self.pauses, self.error = parts, pauses, error
        self._pieces: AsyncGenerator[bytes, None] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        self._pieces = self._generate()
        return self._pieces

    async def aclose(self) -> None:
        if self._pieces is not None:
            await self._pieces.aclose()

    async def _generate(self) -> AsyncGenerator[bytes, None]:
        for part, pause in zip(self.parts, self.pauses, strict=True):
            for _ in range(pause):
                await anyio.lowlevel.checkpoint()
            yield part
        if self.error is not None:
            raise self.error
