"""The relay's client: :func:`open_relay_stream` sends a task to a :class:`Relay` and
returns its events as a :class:`RelayStream`, typed as the adapter's. It runs on any
event loop anyio runs on (Trio, asyncio, uvloop): the connection is wsproto's protocol
over anyio's streams (``ws_client``)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from .._exceptions import WorkerError, WorkerReset
from .._receive import EventReceiveStream
from .._types import ChatRequest, End, StreamEvent, TaskRequest
from .._validate import count
from .codec import MAX_WINDOW, decode_event, encode_ack, encode_task
from .ws_client import ConnectionClosed, WebSocketClient, connect

__all__ = ["DEFAULT_WINDOW", "RelayStream", "open_relay_stream"]

#: The messages a relay may send past those the client's consumer has taken.
DEFAULT_WINDOW = 256


class RelayStream(EventReceiveStream):
    """The events of a task streamed through a relay, typed as the adapter's:
    :class:`Started`, :class:`Token`\\ s, :class:`Metrics`, :class:`End`. A failure is
    raised as the :class:`WorkerError` the relay reported, after the events before it.
    It is an :class:`EventReceiveStream`; each event is decoded when it is received, so
    ``receive_nowait()`` has none waiting."""

    def __init__(self, ws: WebSocketClient, job_id: str, *, window: int | None = None) -> None:
        self.job_id = job_id
        self._ws = ws
        self._got_end = False
        self._received = 0
        self._acked = 0
        # Acknowledge every half window, so that the relay rarely waits for one.
        self._ack_every = None if window is None else max(1, window // 2)
        self._start([])

    async def _read(self, limit: int | None = None) -> list[StreamEvent]:
        if self._got_end:
            return []
        while True:
            # The consumer has taken every message received: the relay may send more.
            if self._ack_every is not None and self._received - self._acked >= self._ack_every:
                self._acked = self._received
                with suppress(ConnectionClosed):  # what came before the close is read next
                    await self._ws.send_message(encode_ack(self._received).decode())
            try:
                message = await self._ws.get_message()
            except ConnectionClosed as exc:
                raise WorkerReset(
                    f"the relay closed the connection before the end ({exc.code} {exc.reason})"
                ) from None
            self._received += 1
            event = decode_event(message)
            if event is None:
                continue  # a kind of message a newer relay sends: skipped
            if isinstance(event, WorkerError):
                raise event
            if type(event) is End:
                self._got_end = True
            return [event]

    async def _interrupt_read(self) -> None:
        await self._ws.aclose()  # shielded and bounded

    async def _release(self, failure: WorkerError | None) -> None:
        await self._ws.aclose()


@asynccontextmanager
async def open_relay_stream(
    url: str,
    request: TaskRequest | ChatRequest,
    *,
    token: str | None = None,
    pool: str | None = None,
    connect_timeout_s: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    window: int | None = DEFAULT_WINDOW,
) -> AsyncIterator[RelayStream]:
    """Send *request* to the relay at *url*; the block receives its events.

    ::

        request = TaskRequest("Hi", max_tokens=64)
        async with open_relay_stream("ws://10.0.0.2:8765", request, token=token) as events:
            async for event in events:
                ...

    Leaving the block closes the connection, which cancels the task at the relay. A
    ``wss://`` URL is verified with *ssl_context*, or the system's trust by default.
    It runs on Trio, asyncio and uvloop.

    The relay sends at most *window* events past those the block has taken, and the
    client tells it as the block takes them: a block that stops taking events stops
    the relay's stream from the engine, which pauses it there (``PausePolicy``),
    however much the network between them would hold. ``window=None`` sends no
    acknowledgements (the relay is then held back by TCP alone), for a relay older
    than this flow control, which refuses the ``window`` field.

    Raises:
        AdapterError: the relay refused the connection (``status`` 401 for a missing or
            wrong token, 503 when it is full).
        WorkerReset: the relay could not be reached, or closed before the end.
        WorkerError: the error the relay reported, after the events before it.
    """
    if window is not None:
        count("window", window, unit="events")
        if window > MAX_WINDOW:
            raise ValueError(f"window must be at most {MAX_WINDOW} events")
    headers = [] if token is None else [(b"Authorization", f"Bearer {token}".encode())]
    async with connect(
        url, headers, connect_timeout_s=connect_timeout_s, ssl_context=ssl_context
    ) as ws:
        try:
            await ws.send_message(encode_task(request, pool, window=window).decode())
        except ConnectionClosed as exc:
            raise WorkerReset(
                f"the relay closed the connection ({exc.code} {exc.reason})"
            ) from None
        yield RelayStream(ws, request.job_id, window=window)
