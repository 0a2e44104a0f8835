"""llama-server's streamed chat completion (``POST /v1/chat/completions``) as events,
sans-IO: :class:`ChatStreamDecoder`.

The server parses what the model writes with the model's own chat format, and streams
OpenAI's chunks: ``choices[0].delta`` holds ``content``, ``reasoning_content`` or
``tool_calls`` deltas, ``finish_reason`` ends the choice; with
``stream_options.include_usage`` a last chunk with no choice carries ``usage`` and the
engine's ``timings``; then ``data: [DONE]``. A call's first delta carries its index, id
and name (and perhaps the first piece of its arguments); later ones, its index and more
of its arguments.

The decoder gives, in order: a :class:`Token` for each content delta (``i`` = 0, 1, 2,
... with no gap), a :class:`Reasoning` for each reasoning delta, a :class:`ToolCall`
for each call once it is complete (a delta of anything else comes: the next call,
reasoning or content; or the choice finishes), then :class:`Metrics` (when the engine
sent its timings) and :class:`End` at ``[DONE]``; asked, a :class:`ToolCallDelta` for
each delta of a call as it comes. A delta for a call already complete is a
:class:`ProtocolError`.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import msgspec

from .._exceptions import ProtocolError
from .._types import (
    ChatRequest,
    End,
    Metrics,
    PromptProgress,
    Reasoning,
    StreamEvent,
    Token,
    ToolCall,
    ToolCallDelta,
)
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

__all__ = ["ChatEvent", "ChatStreamDecoder", "chat_body"]

#: An event of a chat stream, as the decoder gives them.
ChatEvent: TypeAlias = PromptProgress | Token | Reasoning | ToolCallDelta | ToolCall | Metrics | End

_DONE = "[DONE]"


def chat_body(request: ChatRequest) -> dict[str, Any]:
    """The JSON body of ``POST /v1/chat/completions`` for *request*: streamed, with the
    usage and the engine's timings after the last choice."""
    body: dict[str, Any] = {
        "messages": [dict(message) for message in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": request.temperature,
        "top_p": request.top_p,
    }
    if request.tools is not None:
        body["tools"] = [dict(tool) for tool in request.tools]
    choice = request.tool_choice
    if choice is not None:
        body["tool_choice"] = choice if isinstance(choice, str) else dict(choice)
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.seed is not None:
        body["seed"] = request.seed
    if request.stop:
        body["stop"] = list(request.stop)
    if request.prompt_progress:
        body["return_progress"] = True
    body.update(request.extra)
    return body


class _Function(msgspec.Struct, gc=False):
    name: str | None = None
    arguments: str | None = None


class _CallDelta(msgspec.Struct, gc=False):
    index: int
    id: str | None = None
    function: _Function | None = None


class _Delta(msgspec.Struct, gc=False):
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_CallDelta] | None = None


class _Choice(msgspec.Struct, gc=False):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Details(msgspec.Struct, gc=False):
    cached_tokens: int | None = None


class _Usage(msgspec.Struct, gc=False):
    completion_tokens: int
    prompt_tokens: int
    prompt_tokens_details: _Details | None = None


class _Chunk(msgspec.Struct, gc=False):
    choices: list[_Choice] | None = None
    prompt_progress: Progress | None = None
    usage: _Usage | None = None
    timings: Timings | None = None
    error: ErrorBody | str | None = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)


class _Call:
    """A tool call being streamed: its arguments so far."""

    __slots__ = ("arguments", "id", "index", "name")

    def __init__(self, index: int, call_id: str, name: str) -> None:
        self.index = index
        self.id = call_id
        self.name = name
        self.arguments: list[str] = []

    def done(self) -> ToolCall:
        return ToolCall(self.index, self.id, self.name, "".join(self.arguments))


class ChatStreamDecoder(JsonStreamDecoder[_Chunk]):
    """Turn the bytes of a streamed chat completion into events; it is driven as every
    :class:`JsonStreamDecoder`::

        decoder = ChatStreamDecoder()
        for data in body:
            for event in decoder.feed(data):
                ...
        decoder.close()

    A fault costs no event: the events before it are returned, the fault is kept in
    :attr:`error`, and the next call raises it.

    Args:
        max_event_bytes: the bound on one SSE event.
        call_deltas: give each delta of a call as a :class:`ToolCallDelta` as it comes,
            before the call's :class:`ToolCall`.
    """

    __slots__ = ("_call", "_call_deltas", "_calls_done", "_stop_reason", "_timings", "_usage")

    _CUT = "the chat stream ended before its end"

    def __init__(
        self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES, call_deltas: bool = False
    ) -> None:
        super().__init__(_chunk_decoder, max_event_bytes=max_event_bytes)
        self._call_deltas = call_deltas
        self._call: _Call | None = None  # the call being streamed
        self._calls_done = 0  # calls complete: the next one's index is at least this
        self._stop_reason: str | None = None
        self._usage: _Usage | None = None
        self._timings: Timings | None = None

    def _take_data(self, data: str, events: list[StreamEvent]) -> None:
        """An event's data, not decoded with a run of others."""
        if data == _DONE:
            if self._finished:
                raise ProtocolError("the chat stream went on after [DONE]")
            self._end(events)
            return
        try:
            chunk = _chunk_decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise ProtocolError(f"a malformed chat chunk: {exc}"[:300]) from None
        except msgspec.DecodeError:
            raise ProtocolError("a chat chunk that is not JSON") from None
        except RecursionError:
            raise ProtocolError("a chat chunk nested too deeply") from None
        self._take_chunks([chunk], events)

    def _take_chunks(self, chunks: list[_Chunk], events: list[StreamEvent]) -> None:
        if self._finished:  # only [DONE] finishes, and it is never in a run of objects
            raise ProtocolError("the chat stream went on after [DONE]")
        append = events.append
        i = self._next_i
        try:
            for chunk in chunks:
                # Most chunks are one choice's content delta, and nothing else.
                choices = chunk.choices
                if (
                    choices is not None
                    and len(choices) == 1
                    and self._call is None
                    and chunk.timings is None
                    and chunk.usage is None
                    and chunk.prompt_progress is None
                    and chunk.error is None
                ):
                    choice = choices[0]
                    delta = choice.delta
                    if (
                        delta is not None
                        and choice.finish_reason is None
                        and delta.reasoning_content is None
                        and delta.tool_calls is None
                    ):
                        content = delta.content
                        if content:
                            append(Token(i, content))
                            i += 1
                        continue
                self._next_i = i
                self._take_chunk(chunk, events)
                i = self._next_i
        finally:
            self._next_i = i

    def _take_chunk(self, chunk: _Chunk, events: list[StreamEvent]) -> None:
        if chunk.error is not None:
            raise_engine_error(chunk.error)
        if chunk.prompt_progress is not None:
            events.append(progress_event(chunk.prompt_progress))
        if chunk.usage is not None:
            self._usage = chunk.usage
        if chunk.timings is not None:
            self._timings = chunk.timings
        for choice in chunk.choices or ():
            delta = choice.delta
            if delta is not None:
                self._take_delta(delta, events)
            if choice.finish_reason is not None:
                self._finish_call(events)
                self._stop_reason = choice.finish_reason

    def _take_delta(self, delta: _Delta, events: list[StreamEvent]) -> None:
        if delta.reasoning_content:
            self._finish_call(events)
            events.append(Reasoning(delta.reasoning_content))
        if delta.content:
            self._finish_call(events)
            events.append(Token(self._next_i, delta.content))
            self._next_i += 1
        for part in delta.tool_calls or ():
            self._take_call(part, events)

    def _take_call(self, part: _CallDelta, events: list[StreamEvent]) -> None:
        call = self._call
        function = part.function
        if call is None or part.index != call.index:
            if part.index < self._calls_done or (call is not None and part.index < call.index):
                raise ProtocolError(f"a tool-call delta for call {part.index}, already complete")
            name = function.name if function is not None else None
            if part.id is None or not name:
                raise ProtocolError(
                    f"a tool-call delta for call {part.index}, which never started "
                    "(its first delta has its id and name)"
                )
            self._finish_call(events)
            call = self._call = _Call(part.index, part.id, name)
        piece = function.arguments if function is not None else None
        if piece:
            call.arguments.append(piece)
        if self._call_deltas:
            events.append(ToolCallDelta(call.index, call.id, call.name, piece or ""))

    def _finish_call(self, events: list[StreamEvent]) -> None:
        call = self._call
        if call is not None:
            events.append(call.done())
            self._calls_done = call.index + 1
            self._call = None

    def _end(self, events: list[StreamEvent]) -> None:
        if self._stop_reason is None:
            raise ProtocolError("the chat stream ended with no finish_reason")
        self._finish_call(events)
        timings, usage = self._timings, self._usage
        if timings is not None:
            details = usage.prompt_tokens_details if usage is not None else None
            cached = details.cached_tokens if details is not None else None
            events.append(metrics_event(timings, cached=cached))
        if usage is not None:
            tokens_out, tokens_in = usage.completion_tokens, usage.prompt_tokens
        elif timings is not None:
            tokens_out, tokens_in = timings.predicted_n, timings.prompt_n
        else:
            tokens_out, tokens_in = self._next_i, None
        events.append(
            End(tokens_out=tokens_out, stop_reason=self._stop_reason, tokens_in=tokens_in)
        )
        self._finished = True
