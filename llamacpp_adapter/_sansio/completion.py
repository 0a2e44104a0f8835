"""Pure mapping between this library's types and llama.cpp's native ``/completion`` API.

* :func:`completion_body`: a :class:`TaskRequest` as the JSON body of ``POST /completion``.
* :func:`continuation_body`: the body that resumes a paused stream where it stopped.
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

from .._exceptions import ProtocolError
from .._types import End, StreamEvent, TaskRequest, Token
from .continuation import Ledger
from .engine_json import (
    ErrorBody,
    Progress,
    Timings,
    metrics_event,
    progress_event,
    raise_engine_error,
)
from .json_events import JsonStreamDecoder
from .sse import DEFAULT_MAX_EVENT_BYTES

__all__ = [
    "EXTRA_EVENTS_PER_SLICE",
    "CompletionStreamDecoder",
    "completion_body",
    "continuation_body",
    "echo_bytes",
]

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
    if request.prompt_progress:
        body["return_progress"] = True
    body.update(request.extra)
    return body


_SEEDS = 2**32


def continuation_body(
    fields: dict[str, Any], generated: list[int], remaining: int | None
) -> dict[str, Any]:
    """The body that resumes the stream of *fields* (a body :func:`completion_body`
    made) after the tokens *generated*, with *remaining* tokens still to generate
    (``None``: no bound).

    The prompt is the task's followed by the generated ids: a text prompt is sent as
    the first item of a mixed list, which llama-server tokenizes as it tokenized the
    text alone (with its BOS), so the prefix is token for token what the engine has in
    its cache. A seeded sampler gets the seed moved on by the tokens generated, so that
    the new request does not draw again the numbers the first one drew.
    """
    body = dict(fields)
    body.pop("return_progress", None)  # the consumer saw the prompt's evaluation
    prompt = fields["prompt"]
    body["prompt"] = [prompt, *generated] if isinstance(prompt, str) else [*prompt, *generated]
    body["n_predict"] = -1 if remaining is None else remaining
    seed = fields.get("seed")
    if generated and isinstance(seed, int) and fields.get("temperature", 0.0) > 0:
        body["seed"] = (seed + len(generated)) % _SEEDS
    return body


#: What the engine's JSON may take for one byte the request sent: a control character
#: comes back escaped as ``\u00XX``.
_ESCAPED_BYTES_PER_BYTE = 6
#: The most bytes of text one token of a prompt given as token ids may come back as.
_MAX_TOKEN_TEXT_BYTES = 64


def echo_bytes(prompt: str | list[Any], body_bytes: int) -> int:
    """The most bytes an answer may spend repeating a request of *body_bytes* bytes
    whose prompt is *prompt* (token ids come back as their text): llama-server's final
    chunk repeats the prompt, so a bound on one event must make room for it."""
    echoed = body_bytes
    if not isinstance(prompt, str):
        echoed += len(prompt) * _MAX_TOKEN_TEXT_BYTES
    return _ESCAPED_BYTES_PER_BYTE * echoed


# gc=False: many of these are made per second, and tracking them for the cycle
# collector (which then runs more often) cost a third of the decoding time. They hold
# only strings, numbers and other such structs, so they can never be part of a cycle.


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
    timings: Timings | None = None
    error: ErrorBody | str | None = None
    prompt_progress: Progress | None = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)

#: Events a slice of N of the stream's events may give beyond N: the final chunk gives a
#: Token, its Metrics and End; a chat's [DONE] the call it completes, Metrics and End. (A
#: chat chunk that starts several calls completes all but the last: no more than its
#: bytes hold.)
EXTRA_EVENTS_PER_SLICE = 3


class CompletionStreamDecoder(JsonStreamDecoder[_Chunk]):
    """Turn the bytes of a streamed ``/completion`` response into events.

    It returns :class:`Token` events (``i`` = 0, 1, 2, ...), then, from the final chunk,
    :class:`Metrics` and :class:`End`. It is driven as every :class:`JsonStreamDecoder`
    (:meth:`feed`, or :meth:`receive_data` and :meth:`next_events`, then :meth:`close`).

    Most reads are decoded with one ``msgspec`` call (see :class:`JsonEventReader`);
    anything but a run of ``data: {json}`` lines goes through :class:`SSEDecoder` and its
    WHATWG rules, with the same events as the result.

    Args:
        max_event_bytes: the bound on one event.
        ledger: the ledger of a stream that may be paused, over the requests it takes
            (this decoder reads one of them).

    Raises (from :meth:`feed`, :meth:`next_events` and :meth:`close`):
        ProtocolError: bad SSE, bad JSON, a chunk without its fields, an event over
            *max_event_bytes*, out-of-order token counts, or data after the final chunk.
        EngineError: the engine reported an error in the stream.
        WorkerReset: from :meth:`close`, when the stream ended before its final chunk.
    """

    __slots__ = ("_last_predicted", "_ledger")

    _CUT = "the stream ended before its final chunk"

    def __init__(
        self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES, ledger: Ledger | None = None
    ) -> None:
        super().__init__(
            _chunk_decoder,
            max_event_bytes=max_event_bytes,
            first_i=0 if ledger is None else ledger.events,
        )
        self._ledger = ledger
        self._last_predicted = 0

    def _take_data(self, payload: str, events: list[StreamEvent]) -> None:
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
        ledger = self._ledger
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
                count = 1
                if predicted is not None:
                    if predicted <= last:
                        progress = chunk.prompt_progress
                        if progress is not None and predicted == 0:
                            # The prompt's evaluation, before the first token.
                            append(progress_event(progress))
                            continue
                        _log_out_of_order(predicted, last)
                        raise ProtocolError(
                            f"token count went from {last} to {predicted}; "
                            "it must increase with every chunk"
                        )
                    count = predicted - last
                    last = predicted
                if ledger is not None and not ledger.token(
                    content, chunk.tokens, predicted, chunk.timings
                ):
                    i += 1  # generated again after a resume: the consumer has it
                    continue
                append(Token(i, content, as_tuple(chunk.tokens), count))
                i += 1
        finally:
            self._next_i, self._last_predicted = i, last

    def _take_special(self, chunk: _Chunk, events: list[StreamEvent]) -> None:
        """A chunk that is not a plain token: an error, the final chunk, or a bad one."""
        if chunk.error is not None:
            raise_engine_error(chunk.error)
        if chunk.stop is None or chunk.content is None:
            missing = "stop" if chunk.stop is None else "content"
            raise ProtocolError(f"a stream chunk has no {missing!r} field")
        ledger = self._ledger
        if chunk.content or chunk.tokens:
            i = self._next_i
            self._next_i += 1
            if ledger is None or ledger.token(
                chunk.content, chunk.tokens, chunk.tokens_predicted, chunk.timings
            ):
                total = chunk.tokens_predicted
                count = max(total - self._last_predicted, 1) if total is not None else 1
                events.append(Token(i, chunk.content, tuple(chunk.tokens), count))
        timings = chunk.timings
        tokens_out, tokens_in = chunk.tokens_predicted, chunk.tokens_evaluated
        metrics = None
        if ledger is not None:
            tokens_out, tokens_in, totals = ledger.end(tokens_out, tokens_in, timings)
            if totals is not None and ledger.parts > 1:
                metrics = metrics_event(totals)
        if timings is not None:
            events.append(metrics or metrics_event(timings))
        if tokens_out is None:
            tokens_out = timings.predicted_n if timings is not None else self._next_i
        events.append(
            End(
                tokens_out=tokens_out,
                stop_reason=chunk.stop_type or "none",
                tokens_in=tokens_in,
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
