"""Pure mapping between this library's types and llama.cpp's native ``/completion`` API.

* :func:`completion_body`: a :class:`TaskRequest` as the JSON body of ``POST /completion``.
* :class:`CompletionStreamDecoder`: the bytes of a streamed ``/completion`` response as
  :class:`Token`, :class:`Metrics` and :class:`End` events. It is sans-IO like
  :class:`SSEDecoder`, which it uses.

llama.cpp streams one SSE event per token, ``data: {json}``; the last one has
``"stop": true`` and carries ``stop_type``, ``timings``, ``tokens_predicted``,
``tokens_evaluated`` and ``truncated``. An error inside the stream comes as
``data: {"error": {...}}``. A stream that ends before its final chunk was cut.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from .._exceptions import EngineError, ProtocolError, WorkerError, WorkerReset
from .._types import End, Metrics, StreamEvent, TaskRequest, Token
from .sse import DEFAULT_MAX_EVENT_BYTES, SSEDecoder

__all__ = ["CompletionStreamDecoder", "completion_body"]

logger = logging.getLogger("llamacpp_adapter")

# How much of a bad payload an error message quotes.
_QUOTED_PAYLOAD_CHARS = 200


def completion_body(request: TaskRequest, *, prompt: str | None = None) -> dict[str, Any]:
    """Return the JSON body of a streamed ``POST /completion`` for *request*.

    Args:
        request: the task.
        prompt: the rendered prompt text, for a request given as ``messages`` (the
            server's ``/apply-template`` renders them); ignored otherwise.

    Raises:
        ValueError: if *request* has ``messages`` and no *prompt* is given.
    """
    if request.prompt is not None:
        prompt_value: str | list[int] = (
            request.prompt if isinstance(request.prompt, str) else list(request.prompt)
        )
    elif prompt is not None:
        prompt_value = prompt
    else:
        raise ValueError("a request given as messages needs its rendered prompt")
    body: dict[str, Any] = {
        "prompt": prompt_value,
        "stream": True,
        "return_tokens": True,
        "n_predict": -1 if request.max_tokens is None else request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
    }
    if request.top_k is not None:
        body["top_k"] = request.top_k
    if request.seed is not None:
        body["seed"] = request.seed
    if request.stop:
        body["stop"] = list(request.stop)
    body.update(request.extra)
    return body


# gc=False: many of these are made per second, and tracking them for the cycle
# collector (which then runs more often) cost a third of the decoding time. They hold
# only strings, numbers and other such structs, so they can never be part of a cycle.


class _Timings(msgspec.Struct, gc=False):
    prompt_n: int = 0
    prompt_ms: float = 0.0
    prompt_per_second: float = 0.0
    predicted_n: int = 0
    predicted_ms: float = 0.0
    predicted_per_second: float = 0.0
    cache_n: int | None = None


class _ErrorBody(msgspec.Struct, gc=False):
    message: str = ""
    type: str | None = None
    code: int | None = None


class _Chunk(msgspec.Struct, gc=False):
    # Unknown fields are ignored; missing ones are None and checked where they matter.
    content: str | None = None
    # A list, made a tuple for the event: msgspec decodes a list about 100 ns faster.
    tokens: list[int] = msgspec.field(default_factory=list)
    stop: bool | None = None
    tokens_predicted: int | None = None
    tokens_evaluated: int | None = None
    stop_type: str | None = None
    stopping_word: str | None = None
    truncated: bool = False
    timings: _Timings | None = None
    error: _ErrorBody | str | None = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)


class CompletionStreamDecoder:
    """Turn the bytes of a streamed ``/completion`` response into events.

    :meth:`feed` returns :class:`Token` events (``i`` = 0, 1, 2, ...), then, from the
    final chunk, :class:`Metrics` and :class:`End`. It hands back everything one read
    completes at once; most reads are decoded with one ``msgspec`` call.

    Errors never cost events: when a read completes events before a fault, those events
    are returned, the error is kept in :attr:`pending_error`, and the next call raises
    it. A caller that wants the error at once checks :attr:`pending_error` after each
    :meth:`feed`.

    Raises (from :meth:`feed` and :meth:`close`):
        ProtocolError: bad SSE, bad JSON, a chunk without its fields, an event over
            *max_event_bytes*, out-of-order token counts, or data after the final chunk.
        EngineError: the engine reported an error in the stream.
        WorkerReset: from :meth:`close`, when the stream ended before its final chunk.
    """

    __slots__ = ("_error", "_finished", "_last_predicted", "_next_i", "_sse")

    def __init__(self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        # Older llama-server builds write a failure as an "error:" field.
        self._sse = SSEDecoder(max_event_bytes, error_field=True)
        self._next_i = 0
        self._last_predicted = 0
        self._finished = False
        self._error: WorkerError | None = None

    @property
    def finished(self) -> bool:
        """Whether the final chunk has arrived (and :class:`End` was returned)."""
        return self._finished

    @property
    def tokens_decoded(self) -> int:
        """How many :class:`Token` events :meth:`feed` has returned."""
        return self._next_i

    @property
    def pending_error(self) -> WorkerError | None:
        """The error that the next call will raise, if a fault was found."""
        return self._error

    def feed(self, data: bytes) -> list[StreamEvent]:
        """Feed the next bytes of the response body; return the events they complete."""
        if self._error is not None:
            raise self._error
        events: list[StreamEvent] = []
        try:
            for item in self._sse.feed_message_data(data, objects=True):
                if isinstance(item, str):
                    self._take_payload(item, events)
                else:
                    self._take_run(*item, events)
            if self._sse.broken:
                self._sse.feed(b"")  # raises the decoder's pending error
        except WorkerError as exc:
            self._error = exc
            if not events:
                raise
        return events

    def close(self) -> list[StreamEvent]:
        """End the response body.

        Raises:
            WorkerReset: if the final chunk never came.
        """
        if self._error is not None:
            raise self._error
        self._sse.close()
        if not self._finished:
            self._error = WorkerReset(
                f"the stream ended before its final chunk, after {self._next_i} tokens"
            )
            raise self._error
        return []

    def _take_run(self, run: bytes, count: int, events: list[StreamEvent]) -> None:
        # A run is *count* payloads joined by CR, none holding a CR or LF, each starting
        # with "{" and ending with "}". If the whole decodes as that many JSON values
        # (decode_lines takes any whitespace between them), each payload is exactly one
        # JSON value: a value spanning two payloads would have to follow a closing "}"
        # with "{" inside a container, which JSON forbids, and a string cannot hold a
        # bare CR.
        try:
            if count == 1:
                chunks = [_chunk_decoder.decode(run)]
            else:
                chunks = _chunk_decoder.decode_lines(run)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            pass  # decoded one at a time below, to find which payload is bad
        else:
            if len(chunks) == count:
                self._take_chunks(chunks, events)
                return
        for payload in run.split(b"\r"):
            self._take_payload(payload.decode("utf-8", "replace"), events)

    def _take_payload(self, payload: str, events: list[StreamEvent]) -> None:
        try:
            chunk = _chunk_decoder.decode(payload)
        except (msgspec.DecodeError, RecursionError) as exc:
            quoted = payload[:_QUOTED_PAYLOAD_CHARS]
            raise ProtocolError(f"bad JSON in the stream ({exc}): {quoted!r}") from exc
        self._take_chunks([chunk], events)

    def _take_chunks(self, chunks: list[_Chunk], events: list[StreamEvent]) -> None:
        if self._finished:
            raise ProtocolError("data after the stream's final chunk")
        append = events.append
        as_tuple = tuple
        i = self._next_i
        last = self._last_predicted
        try:
            for chunk in chunks:
                content = chunk.content
                if chunk.stop is not False or content is None or chunk.error is not None:
                    self._next_i, self._last_predicted = i, last
                    self._take_special(chunk, events)
                    i, last = self._next_i, self._last_predicted
                    if self._finished and chunk is not chunks[-1]:
                        raise ProtocolError("data after the stream's final chunk")
                    continue
                predicted = chunk.tokens_predicted
                if predicted is not None:
                    if predicted <= last:
                        _log_out_of_order(predicted, last)
                        raise ProtocolError(
                            f"token count went from {last} to {predicted}; "
                            "it must increase with every chunk"
                        )
                    last = predicted
                append(Token(i, content, as_tuple(chunk.tokens)))
                i += 1
        finally:
            self._next_i, self._last_predicted = i, last

    def _take_special(self, chunk: _Chunk, events: list[StreamEvent]) -> None:
        """A chunk that is not a plain token: an error, the final chunk, or a bad one."""
        error = chunk.error
        if error is not None:
            if isinstance(error, str):
                raise EngineError(error)
            raise EngineError(error.message, error_type=error.type, engine_code=error.code)
        if chunk.stop is None or chunk.content is None:
            missing = "stop" if chunk.stop is None else "content"
            raise ProtocolError(f"a stream chunk has no {missing!r} field")
        if chunk.content or chunk.tokens:
            events.append(Token(self._next_i, chunk.content, tuple(chunk.tokens)))
            self._next_i += 1
        timings = chunk.timings
        if timings is not None:
            events.append(
                Metrics(
                    prompt_tokens=timings.prompt_n,
                    prompt_ms=timings.prompt_ms,
                    prompt_tokens_per_s=timings.prompt_per_second,
                    predicted_tokens=timings.predicted_n,
                    predicted_ms=timings.predicted_ms,
                    predicted_tokens_per_s=timings.predicted_per_second,
                    cached_tokens=timings.cache_n,
                )
            )
        tokens_out = chunk.tokens_predicted
        if tokens_out is None:
            tokens_out = timings.predicted_n if timings is not None else self._next_i
        events.append(
            End(
                tokens_out=tokens_out,
                stop_reason=chunk.stop_type or "none",
                tokens_in=chunk.tokens_evaluated,
                truncated=chunk.truncated,
                stop_word=chunk.stopping_word or None,
            )
        )
        self._finished = True


def _log_out_of_order(predicted: int, last: int) -> None:
    logger.warning(
        "token count out of order in the stream: %d after %d",
        predicted,
        last,
        extra={"engine": "llama.cpp"},
    )
