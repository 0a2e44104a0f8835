"""Where a stream's body comes from: :class:`BodySource`, the one interface
:class:`EventStream` reads, and :class:`HttpxBody`, a body read through httpx (for a
caller's own ``httpx.AsyncClient``)."""

from __future__ import annotations

from typing import Protocol

import anyio
import httpx

from ._responses import CLOSE_TIMEOUT_S, as_generator

__all__ = ["BodySource", "HttpxBody"]


class BodySource(Protocol):
    """The body of one streamed answer, read a network read at a time."""

    async def read(self) -> bytes | None:
        """The body's next bytes (never empty), or None at its clean end.

        Raises:
            WorkerError: or ``httpx.HTTPError`` (from :class:`HttpxBody`), when the
                read fails.
        """

    async def aclose(self) -> None:
        """Close the connection now, so that the engine frees its slot. It may be
        called while another task is in :meth:`read`, whose read then fails; it is
        called again after that, and then it finishes the job."""


class HttpxBody:
    """The body of an ``httpx.Response`` opened with ``stream=True``."""

    __slots__ = ("_reading", "_reads", "_response")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._reads = as_generator(response.aiter_raw())
        self._reading = False

    async def read(self) -> bytes | None:
        self._reading = True
        try:
            return await self._reads.__anext__()
        except StopAsyncIteration:
            return None
        finally:
            self._reading = False

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT_S):
            if not self._reading:
                # Not under a running read: the body's generator may be closed too.
                await self._reads.aclose()
            await self._response.aclose()
