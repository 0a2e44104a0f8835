"""The adapter: one llama.cpp server used as a worker over its native HTTP API."""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, Protocol

import anyio
import anyio.abc
import httpx
import msgspec

from ._exceptions import AdapterError, DeadlineUnmet, JobCancelled, ProtocolError, WorkerError
from ._pause import PausePolicy
from ._redact import redact_secrets, secret_mask
from ._requests import ENGINE, EngineRequests
from ._route import check_base_url, engine_route, split_credentials
from ._sansio.chat import ChatStreamDecoder, chat_body
from ._sansio.completion import EXTRA_EVENTS_PER_SLICE, completion_body, echo_bytes
from ._sansio.continuation import Ledger
from ._sansio.errors import error_message, json_or_none
from ._sansio.slots import decode_slot_use
from ._sansio.sse import DEFAULT_MAX_EVENT_BYTES
from ._stream import EventStream, Pausing, ReadObserver
from ._task_form import JobItemSendStream, feed_channel
from ._transports.base import BodySource
from ._transports.direct import DEFAULT_MAX_CONNECTING
from ._types import ChatRequest, SlotUse, TaskRequest, WorkerHealth, WorkerProps
from ._validate import count, is_int
from ._watch import PauseWatch
from .http_util import DEFAULT_TIMEOUTS, default_client, with_bearer

__all__ = ["DEFAULT_PAUSE", "ENGINE", "LlamaCppHttpAdapter", "Placement"]

logger = logging.getLogger("llamacpp_adapter")

_MIN_BUFFER_EVENTS = 8
_LOADING_STATUS = 503
#: The adapter's pause policy unless it is given another (or None).
DEFAULT_PAUSE = PausePolicy()


class Placement(ReadObserver, Protocol):
    """Where a paused stream goes on, when something above the adapter places its
    tasks (the host): it watches the stream, is told of each batch it reads and of the
    pause, and is asked for the adapter to resume on."""

    @property
    def watch_group(self) -> anyio.abc.TaskGroup:
        """A task group open while the stream is, where the adapter's watch may run (a
        stream opened through an exit stack cannot have a group of its own)."""

    def paused(self) -> None:
        """The stream's connection closed for a pause: its slot is free."""

    async def place(self) -> LlamaCppHttpAdapter:
        """The adapter to resume the stream on, its slot counted.

        Raises:
            WorkerError: when no replica can take it.
        """

    async def failed(self, error: WorkerError) -> bool:
        """Opening the resume on the adapter last placed failed with *error*: whether
        to place it again (its slot is released either way)."""

    def resumed(self) -> None:
        """The resume opened on the adapter last placed."""


class LlamaCppHttpAdapter(anyio.abc.AsyncResource):
    """A llama.cpp server (``llama-server``) as a worker.

    Args:
        base_url: the server's address, e.g. ``"http://127.0.0.1:8080"``.
        api_key: sent as a bearer token; it is masked in every log line, error and repr.
        client: an ``httpx.AsyncClient`` to use (the caller keeps owning it); by default
            the adapter makes one with :func:`default_client` and closes it in
            :meth:`aclose`. Without *client*, a stream takes the direct path: a
            connection of its own, read with nothing between the socket and the parser
            (the default client's timeouts and TLS verification apply; a proxy named by
            the environment sends streams through httpx instead). With *client*,
            streams go through it as every other request does, so its proxies, TLS
            settings, auth and transports apply, at httpx's cost per read. Either way a
            stream's connection is closed with the stream (llama-server closes it), and
            a request other than a stream that meets a kept connection the server had
            closed is sent once more.
        timeouts: the default client's timeouts. The read timeout (the client's own,
            with *client*) bounds each wait on the stream, and the time an event may
            take to arrive once its first bytes have: past it, :class:`DecodeTimeout`.
        buffer: the most events decoded but not yet taken by the consumer, per stream
            (at least 8). A slower consumer makes the adapter stop reading the socket.
        max_event_bytes: the bound on one SSE event from the server, beyond the room
            made for what a stream's final chunk repeats of its request (llama-server
            repeats the prompt there): up to six times the request's bytes.
        pause: when a stream whose consumer stopped taking events is paused on the
            engine (its connection closed, so that llama-server stops generating, and
            resumed where it stopped once the consumer has taken what was read):
            ``PausePolicy()`` by default; ``None`` never pauses, and
            llama-server then goes on generating up to ``max_tokens`` while a consumer
            is away. One task watches every stream of the adapter that may be
            paused; it runs in the task group of one of their ``submit()`` blocks
            (each has one) or of the host's.
        max_connecting: the most connections the direct path makes to the server at
            once (64 by default); a stream that would be one more waits until one of
            them is made, within the pool timeout (past it, :class:`WorkerReset`),
            then connects within the connect timeout. Thousands of streams opened
            together would otherwise overflow the server's listen queue, and the
            connects it drops are tried again a second or more later. (Through
            *client*, httpx's own limits apply.)

    The adapter takes its configuration from its arguments only; it never reads the
    environment. Use it as an async context manager, or call :meth:`aclose`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        client: httpx.AsyncClient | None = None,
        timeouts: httpx.Timeout | None = None,
        buffer: int = 64,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        pause: PausePolicy | None = DEFAULT_PAUSE,
        max_connecting: int = DEFAULT_MAX_CONNECTING,
    ) -> None:
        base_url, basic_auth = split_credentials(check_base_url(base_url))
        #: The server's address, without any user or password it was given with.
        self.base_url = base_url
        self._safe_url = redact_secrets(self.base_url)  # for log lines
        count("buffer", buffer, minimum=_MIN_BUFFER_EVENTS, unit="events")
        count("max_connecting", max_connecting, unit="connection")
        if client is not None and timeouts is not None:
            raise ValueError("give timeouts to your own client, not to the adapter")
        headers = {"Accept": "application/json"}
        if basic_auth is not None and api_key is None:
            headers["Authorization"] = basic_auth
        self._headers = with_bearer(headers, api_key)
        self._key_mask = None if api_key is None else secret_mask(api_key)
        self._owns_client = client is None
        # Streams take the direct path, with no HTTP client between the socket and the
        # parser, unless the caller brought a client (proxies, its own TLS or auth: what
        # it does, httpx does, for every request) or the environment names a proxy for
        # the server. The adapter's own client takes the route it decides, proxy or none.
        direct = None
        if client is None:
            route = engine_route(base_url, timeouts or DEFAULT_TIMEOUTS, max_connecting)
            client = default_client(
                timeouts=timeouts, proxy=route.proxy, tls=route.tls, trust_env=False
            )
            direct = route.direct
        self._client = client
        self._buffer = buffer
        self._chunks_per_read = buffer - EXTRA_EVENTS_PER_SLICE
        self._max_event_bytes = max_event_bytes
        read_timeout = self._client.timeout.read
        self._event_timeout_s = math.inf if read_timeout is None else read_timeout
        self._requests = EngineRequests(
            base_url, self._client, self._headers, direct, self._safe_url
        )
        if pause is not None and not isinstance(pause, PausePolicy):
            raise TypeError("pause must be a PausePolicy or None")
        #: When a stream is paused on the engine (``None``: never).
        self.pause = pause
        self._watch = PauseWatch(math.inf if pause is None else pause.pause_after / 2)
        # The open streams by job id: a list, which costs a quarter of a set's memory
        # for the one stream a job has.
        self._streams: dict[str, list[EventStream]] = {}
        # One bound method of each, for every stream.
        self._on_end = self._log_end
        self._steps = (self._enter, self._leave)  # a submit() block's
        self._closed = False

    def __repr__(self) -> str:
        key = "" if self._key_mask is None else f", api_key={self._key_mask}"
        return f"{type(self).__name__}({self._safe_url!r}{key})"

    async def aclose(self) -> None:
        """Close the adapter and, if it made it, its HTTP client."""
        self._closed = True
        if self._owns_client:
            await self._client.aclose()

    # --- Streaming ---------------------------------------------------------------------

    def submit(
        self,
        request: TaskRequest | ChatRequest,
        *,
        timeout: float | None = None,
        _placement: Placement | None = None,
    ) -> AbstractAsyncContextManager[EventStream]:
        """Run *request* on the engine; the block receives its :class:`EventStream`.

        ::

            async with adapter.submit(request) as events:
                async for event in events:
                    ...

        Failures before the stream opens (refused, unreachable, bad status, a prompt
        larger than the context) are raised on entering the block; later ones from
        the iteration, after the events before them.

        Leaving the block, normally, by ``break``, by an exception or by cancellation,
        closes the response at once; llama-server then stops generating and frees its
        slot. A stream the adapter's :class:`PausePolicy` may pause is watched while
        the block runs, by the adapter's one watching task, which may run in a task
        group the block opens.

        Args:
            request: the task.
            timeout: an overall deadline in seconds, from now until ``End``; when it
                passes, :class:`DeadlineUnmet` is raised.

        Raises:
            WorkerError: one of its subclasses, as described above.
        """
        return _Submission(*self._steps, request, timeout, _placement)

    async def _enter(
        self,
        request: TaskRequest | ChatRequest,
        *,
        within: float | None,
        placement: Placement | None,
    ) -> tuple[EventStream, AbstractAsyncContextManager[None] | None]:
        """Open *request*'s stream (within *within* seconds, if not None, it must end)
        and watch it where it may pause; return it, and the block that watches it where
        the adapter's own task group is needed."""
        if self._closed:
            raise RuntimeError("the adapter is closed")
        pause = self.pause
        backlog = self._buffer if pause is None or pause.backlog is None else pause.backlog
        decoder = None  # a completion's, made by its stream
        pausable = (
            isinstance(request, TaskRequest)
            and pause is not None
            and pause.applies_to(request, backlog=backlog)
        )
        deadline = math.inf if within is None else anyio.current_time() + within
        source, fields, echoed = await self._open_by(
            request, pausable=pausable, deadline=deadline, within=within
        )
        if isinstance(request, ChatRequest):
            decoder = ChatStreamDecoder(
                max_event_bytes=self._max_event_bytes, call_deltas=request.call_deltas
            )
        pausing = None
        if pausable:
            assert isinstance(request, TaskRequest)
            pausing = Pausing(
                backlog,
                fields,
                Ledger(
                    greedy=request.temperature == 0,
                    stops=bool(request.stop),
                    max_tokens=request.max_tokens,
                ),
                paused=placement.paused if placement is not None else _nothing,
                reopen=functools.partial(self._reopen, placement=placement),
            )
        stream = EventStream(
            request.job_id,
            source,
            # The final chunk repeats what the request sent: the bound makes room for it.
            max_event_bytes=self._max_event_bytes + echoed,
            chunks_per_read=self._chunks_per_read,
            deadline=deadline,
            event_timeout_s=self._event_timeout_s,
            on_end=self._on_end,
            pausing=pausing,
            decoder=decoder,
            observer=placement,
        )
        self._streams.setdefault(request.job_id, []).append(stream)
        if pausing is None:
            return stream, None
        if placement is not None:
            self._watch.add(stream, placement.watch_group)
            return stream, None
        watching = _watched(self._watch, stream)
        try:
            await watching.__aenter__()
        except BaseException:
            await self._leave(stream)
            raise
        return stream, watching

    async def _leave(self, stream: EventStream) -> None:
        self._watch.discard(stream)
        self._forget(stream)
        await stream.aclose()

    async def stream_into(
        self,
        request: TaskRequest | ChatRequest,
        send_stream: JobItemSendStream,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - it becomes DeadlineUnmet, not a cancel
        task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run *request* as a task that sends its events into *send_stream*, the send end
        of a bounded memory channel, as ``(job_id, event)`` items; start it with
        ``start``, which returns the job id once the stream has opened::

            send, receive = anyio.create_memory_object_stream[JobItem](64)
            async with anyio.create_task_group() as group:
                await group.start(adapter.stream_into, request, send)
                async with receive:
                    async for job_id, event in receive:
                        ...

        The items are ``Started``, the ``Token``\\ s, ``Metrics`` and ``End``, in order.
        The stream is read only once the last read's events are sent, so a receiver
        that falls behind (the channel is full) holds the read back, and one that
        stops taking items pauses the stream on the engine (see :class:`PausePolicy`).

        * A failure before the stream opens (refused, unreachable, a prompt larger than
          the context) is raised by ``start``, as ``submit()`` raises it.
        * A failure after the stream opened is sent as ``(job_id, error)``, the
          :class:`WorkerError` itself, after the job's earlier events: its last item. It
          never cancels the other tasks of the group.
        * *send_stream* is closed when the job ends, so that the receiver sees the end
          once every task feeding it is done: give each task its own ``clone()``.
        * A receiver that closes its end, or a cancelled task group, ends the task
          quietly: the response closes, and the engine frees the slot.

        Args:
            request: the task.
            send_stream: anyio's ``MemoryObjectSendStream`` or Trio's
                ``MemorySendChannel``.
            timeout: an overall deadline in seconds, as for :meth:`submit`.
        """
        opening = self.submit(request, timeout=timeout)
        await feed_channel(opening, request.job_id, send_stream, task_status)

    async def cancel(self, job_id: str) -> bool:
        """End the streams of *job_id* open on this adapter, best effort: their
        responses close, so the engine frees their slots, and their consumers get
        :class:`JobCancelled`.

        Returns:
            whether a stream of that job was open here.
        """
        streams = list(self._streams.get(job_id, ()))
        for stream in streams:
            await stream.cancel(JobCancelled(f"job {job_id!r} was cancelled"))
        return bool(streams)

    def _forget(self, stream: EventStream) -> None:
        streams = self._streams.get(stream.job_id)
        if streams is not None and stream in streams:
            streams.remove(stream)
            if not streams:
                del self._streams[stream.job_id]

    async def _open_by(
        self,
        request: TaskRequest | ChatRequest,
        *,
        pausable: bool,
        deadline: float,
        within: float | None,
    ) -> tuple[BodySource, dict[str, Any], int]:
        """Open *request*'s stream before *deadline* (*within* seconds of the call);
        return its body, the fields of its request where it may be paused (else none:
        they are not kept while it runs), and the most bytes the engine may send back
        of what the request sent."""
        with anyio.CancelScope(deadline=deadline):
            if isinstance(request, ChatRequest):
                return await self._open_chat(request), {}, 0
            source, fields, echoed = await self._open_stream(request, pausable=pausable)
            return source, fields if pausable else {}, echoed
        raise DeadlineUnmet(f"the stream did not open within {within} s")

    async def _open_stream(
        self, request: TaskRequest, *, pausable: bool
    ) -> tuple[BodySource, dict[str, Any], int]:
        """Open the stream; return its body, the fields of its request, and the most
        bytes the engine may send back of what the request sent (llama-server's final
        chunk repeats the prompt). A stream that may be paused asks for the engine's
        timings with every token, so that those of a request it leaves are known."""
        prompt = None
        if request.messages is not None:
            prompt = await self.apply_template(request.messages)
        fields = completion_body(request, prompt=prompt)
        if pausable:
            fields.setdefault("timings_per_token", True)
        body = msgspec.json.encode(fields)
        source = await self._requests.open_stream(body)
        logger.debug(
            "stream opened",
            extra={"job_id": request.job_id, "engine": ENGINE, "url": self._safe_url},
        )
        return source, fields, echo_bytes(fields["prompt"], len(body))

    async def _open_chat(self, request: ChatRequest) -> BodySource:
        """Open the stream of a chat completion (``POST /v1/chat/completions``)."""
        body = msgspec.json.encode(chat_body(request))
        source = await self._requests.open_stream(body, path="/v1/chat/completions")
        logger.debug(
            "chat stream opened",
            extra={"job_id": request.job_id, "engine": ENGINE, "url": self._safe_url},
        )
        return source

    async def _reopen(self, body: bytes, *, placement: Placement | None) -> BodySource:
        """Open *body*, the request that resumes a paused stream: here, or where
        *placement* places it."""
        if placement is None:
            return await self._requests.open_stream(body)
        while True:
            adapter = await placement.place()
            try:
                source = await adapter._requests.open_stream(body)
            except WorkerError as exc:
                if not await placement.failed(exc):
                    raise
            else:
                placement.resumed()
                return source

    def _log_end(self, stream: EventStream, failure: WorkerError | None) -> None:
        fields = {
            "job_id": stream.job_id,
            "engine": ENGINE,
            "tokens_out": stream.tokens_decoded,
            "decode_time_ms": round((time.monotonic() - stream.opened_at) * 1000, 3),
        }
        if failure is None:
            logger.debug("stream ended", extra=fields)
        elif isinstance(failure, JobCancelled):
            logger.info("stream cancelled", extra=fields)
        else:
            logger.warning("stream failed: %s (%s)", failure.code, failure, extra=fields)

    # --- Requests to the other endpoints -----------------------------------------------

    async def health(self) -> WorkerHealth:
        """Ask ``GET /health`` whether the server is up and ready. Never raises for an
        unreachable or failing server: that is what the answer says."""
        try:
            response, content = await self._requests.fetch("GET", "/health")
        except WorkerError as exc:
            return WorkerHealth(live=False, ready=False, status="unreachable", message=str(exc))
        body = json_or_none(content)
        fields = body if isinstance(body, dict) else {}
        if not isinstance(fields.get("status"), str) and "error" not in fields:
            # Live means a llama-server answered: its /health is JSON with a status, or
            # its error object.
            kind = response.headers.get("content-type", "no content type").split(";")[0]
            message = (
                f"the server answered {response.status_code} ({kind}), not as llama-server "
                "does: is the URL that of a llama-server?"
            )
            return WorkerHealth(live=False, ready=False, status="not llama-server", message=message)
        idle = _int_or_none(fields.get("slots_idle"))
        processing = _int_or_none(fields.get("slots_processing"))
        if response.status_code == 200:
            status = str(fields.get("status", "ok"))
            return WorkerHealth(True, True, status, None, idle, processing)
        message, _ = error_message(body, response.reason_phrase)
        status = "loading model" if response.status_code == _LOADING_STATUS else "error"
        return WorkerHealth(True, False, status, redact_secrets(message), idle, processing)

    async def props(self) -> WorkerProps:
        """What the server says about itself, from ``GET /props`` and ``GET /slots``
        (``slots_free`` is ``None`` when the server does not expose ``/slots``)."""
        props = await self._requests.get_json("/props")
        if not isinstance(props, dict):
            raise ProtocolError("GET /props did not return a JSON object")
        try:
            use: SlotUse | None = await self.slot_use()
        except AdapterError as exc:
            if exc.status not in (404, 501):
                raise
            use = None
        settings = props.get("default_generation_settings") or {}
        total = _int_or_none(props.get("total_slots"))
        context = _int_or_none(settings.get("n_ctx"))
        if total is None or context is None:
            raise ProtocolError("GET /props lacks total_slots or n_ctx")
        free = None if use is None else use.total - use.busy
        return WorkerProps(
            slots_total=total,
            slots_free=free,
            context_size=context,
            model_path=str(props.get("model_path", "")),
            model_alias=props.get("model_alias") or None,
            build_info=props.get("build_info") or None,
            model_digest=await self.model_digest(props),
            default_generation_settings=dict(settings.get("params") or settings),
        )

    async def props_json(self) -> dict[str, Any]:
        """``GET /props`` as the server sent it (:meth:`props` reads what the adapter
        needs from it): its build, model, chat template, default settings and more.

        Raises:
            ProtocolError: the answer is not a JSON object.
        """
        props = await self._requests.get_json("/props")
        if not isinstance(props, dict):
            raise ProtocolError("GET /props did not return a JSON object")
        return props

    async def engine_version(self) -> str:
        """The server's build, from ``GET /props`` (e.g. ``"b6000-1a2b3c4d"``)."""
        props = await self._requests.get_json("/props")
        build = props.get("build_info") if isinstance(props, dict) else None
        if not isinstance(build, str):
            raise ProtocolError("GET /props lacks build_info")
        return build

    async def model_digest(self, props: Mapping[str, Any] | None = None) -> str:
        """A stable digest of the model as the server reports it, so that a replica set
        can check that its engines serve the same model: the model file's name, the
        metadata of ``GET /v1/models`` (vocabulary, training context, width, parameter
        count, file size and type) and the chat template and special tokens of
        ``GET /props``. Settings of the server (context size, slots, alias) are left
        out. The server reports no hash of the weights, so two files of the same name
        and shape with different weights get the same digest.
        """
        if props is None:
            props = await self._requests.get_json("/props")
        models = await self._requests.get_json("/v1/models")
        if not isinstance(props, Mapping) or not isinstance(models, dict):
            raise ProtocolError("GET /props or /v1/models did not return a JSON object")
        entries = models.get("data") or []
        meta = entries[0].get("meta") if entries and isinstance(entries[0], dict) else None
        return _model_digest(props, meta if isinstance(meta, dict) else {})

    async def slots(self) -> list[dict[str, Any]]:
        """The server's slots, from ``GET /slots``, every field of each (to count them,
        :meth:`slot_use` costs far less)."""
        slots = await self._requests.get_json("/slots")
        if not isinstance(slots, list):
            raise ProtocolError("GET /slots did not return a JSON list")
        return slots

    async def slot_use(self) -> SlotUse:
        """How many slots the server has and how many are busy, from ``GET /slots``,
        read without decoding the rest of each slot (a server of thousands of slots
        answers megabytes).

        Raises:
            ProtocolError: the answer is not a JSON list of slot objects.
        """
        return await self._requests.decode("/slots", decode_slot_use)

    async def metrics(self) -> dict[str, float]:
        """The engine's Prometheus metrics from ``GET /metrics`` (the server needs
        ``--metrics``), parsed: sample name (with its labels, if any) to value."""
        from prometheus_client.parser import text_string_to_metric_families

        text = (await self._requests.request("GET", "/metrics")).decode("utf-8", "replace")
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError as exc:
            raise ProtocolError(f"GET /metrics is not Prometheus text: {exc}") from exc
        samples: dict[str, float] = {}
        for family in families:
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    async def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """The token ids of *text*, from ``POST /tokenize``."""
        fields = {"content": text, "add_special": add_special}
        body = await self._requests.post_json("/tokenize", fields)
        tokens = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise ProtocolError("POST /tokenize did not return a list of token ids")
        return tokens

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        """The text of *token_ids*, from ``POST /detokenize``."""
        body = await self._requests.post_json("/detokenize", {"tokens": list(token_ids)})
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, str):
            raise ProtocolError("POST /detokenize did not return text")
        return content

    async def apply_template(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """*messages* rendered by the server's chat template (``POST /apply-template``)."""
        turns = {"messages": [dict(m) for m in messages]}
        body = await self._requests.post_json("/apply-template", turns)
        prompt = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(prompt, str):
            raise ProtocolError("POST /apply-template did not return a prompt")
        return prompt


# --- Helpers ---------------------------------------------------------------------------


def _nothing() -> None:
    pass


class _Enter(Protocol):
    async def __call__(
        self,
        request: TaskRequest | ChatRequest,
        *,
        within: float | None,
        placement: Placement | None,
    ) -> tuple[EventStream, AbstractAsyncContextManager[None] | None]: ...


class _Submission:
    """The block of :meth:`LlamaCppHttpAdapter.submit`: it opens the stream on entering
    and closes it on leaving. (A class of its own, not a generator's context manager:
    one of those and its generator's frame held about 1 KB a stream, kept for as long
    as the stream is open.)"""

    __slots__ = ("_enter", "_leave", "_placement", "_request", "_stream", "_timeout", "_watching")

    def __init__(
        self,
        enter: _Enter,
        leave: Callable[[EventStream], Awaitable[None]],
        request: TaskRequest | ChatRequest,
        timeout: float | None,
        placement: Placement | None,
    ) -> None:
        self._enter = enter
        self._leave = leave
        self._request = request
        self._timeout = timeout
        self._placement = placement
        self._stream: EventStream | None = None
        self._watching: AbstractAsyncContextManager[None] | None = None

    async def __aenter__(self) -> EventStream:
        if self._stream is not None:
            raise RuntimeError("a submit() block is entered once")
        self._stream, self._watching = await self._enter(
            self._request, within=self._timeout, placement=self._placement
        )
        return self._stream

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stream, watching = self._stream, self._watching
        assert stream is not None, "left before entered"
        self._watching = None
        try:
            if watching is not None:
                await watching.__aexit__(kind, error, traceback)
        finally:
            await self._leave(stream)


@asynccontextmanager
async def _watched(watch: PauseWatch, stream: EventStream) -> AsyncIterator[None]:
    """Have *watch* look at *stream* while the block runs, in a task group of the
    block's own. The block's own exception comes out as itself, not in an exception
    group: the watch raises nothing."""
    lone: BaseException | None = None
    try:
        async with anyio.create_task_group() as group:
            watch.add(stream, group)
            try:
                yield
            finally:
                watch.discard(stream)
    except BaseExceptionGroup as errors:
        if len(errors.exceptions) != 1:
            raise
        lone = errors.exceptions[0]
    if lone is not None:
        raise lone


def _int_or_none(value: Any) -> int | None:
    return value if is_int(value) else None


def _model_digest(props: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    path = str(props.get("model_path", "")).replace("\\", "/").rsplit("/", 1)[-1]
    identity = {
        "model_file": path,
        "model_ftype": props.get("model_ftype"),
        "bos_token": props.get("bos_token"),
        "eos_token": props.get("eos_token"),
        "chat_template": props.get("chat_template"),
        "meta": {key: value for key, value in meta.items() if key != "n_ctx"},
    }
    canonical = msgspec.json.encode(identity, order="sorted")
    return "sha256:" + hashlib.sha256(canonical).hexdigest()
