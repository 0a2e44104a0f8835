"""The relay's wire format for events, sans-IO, both directions side by side.

Each message is a JSON object whose ``type`` names it::

    {"type": "started", "job_id": "..."}
    {"type": "token", "i": 0, "t": "Once", "ids": [9038]}     ("ids" left out when empty)
    {"type": "prompt_progress", "total": 4000, "cached": 0, "processed": 512, "time_ms": 80}
    {"type": "reasoning", "t": "The user asks"}                 (a chat's)
    {"type": "tool_call_delta", "index": 0, "id": "...", "name": "...", "arguments": "{"}
    {"type": "tool_call", "index": 0, "id": "...", "name": "...", "arguments": "{...}"}
    {"type": "metrics", "prompt_tokens": 5, "prompt_ms": 1.2, ...}
    {"type": "end", "tokens_out": 16, "stop_reason": "limit", ...}
    {"type": "error", "code": "WORKER_RESET", "message": "...", "retriable": true}

A client that asks for a ``window`` with its task takes part in the relay's flow
control: the relay sends at most that many messages past those the client has
acknowledged as taken, and the client acknowledges them as its consumer takes them::

    {"type": "ack", "n": 128}     (the client has taken the relay's first 128 messages)

So the relay stops taking events from the engine's stream while the client's consumer
is away, however much the network between them would hold, and the stream is paused on
the engine (see ``PausePolicy``).

The fields are listed here, one struct a message, so that the wire names are the
relay's own, not the Python names of the events. A decoder skips fields it does not
know, and a message of a kind it does not know, so a client reads the messages of a
newer relay.
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypeAlias

import msgspec

from .. import _exceptions
from .._exceptions import AdapterError, ProtocolError, WorkerError
from .._redact import redact_secrets
from .._types import (
    ChatRequest,
    End,
    Metrics,
    PromptProgress,
    Reasoning,
    Started,
    StreamEvent,
    TaskRequest,
    Token,
    ToolCall,
    ToolCallDelta,
)

__all__ = [
    "MAX_WINDOW",
    "BadTask",
    "RelayTask",
    "decode_ack",
    "decode_event",
    "decode_task",
    "encode_ack",
    "encode_error",
    "encode_event",
    "encode_task",
]


class _Message(msgspec.Struct, frozen=True, tag_field="type", omit_defaults=True):
    """A message of the relay (unknown fields are skipped when decoding)."""


class _Started(_Message, frozen=True, tag="started"):
    job_id: str


class _Token(_Message, frozen=True, tag="token"):
    i: int
    t: str
    ids: tuple[int, ...] = ()
    n: int = 1  # the tokens it stands for (left out when 1)


class _PromptProgress(_Message, frozen=True, tag="prompt_progress", omit_defaults=False):
    total: int
    cached: int
    processed: int
    time_ms: float


class _Reasoning(_Message, frozen=True, tag="reasoning"):
    t: str


class _ToolCall(_Message, frozen=True, tag="tool_call", omit_defaults=False):
    index: int
    id: str
    name: str
    arguments: str


class _ToolCallDelta(_Message, frozen=True, tag="tool_call_delta", omit_defaults=False):
    index: int
    id: str
    name: str
    arguments: str


class _Metrics(_Message, frozen=True, tag="metrics"):
    prompt_tokens: int
    prompt_ms: float
    prompt_tokens_per_s: float
    predicted_tokens: int
    predicted_ms: float
    predicted_tokens_per_s: float
    cached_tokens: int | None = None


class _End(_Message, frozen=True, tag="end"):
    tokens_out: int
    stop_reason: str
    tokens_in: int | None = None
    truncated: bool = False
    stop_word: str | None = None


class _Error(_Message, frozen=True, tag="error", omit_defaults=False):
    code: str
    message: str
    retriable: bool = False
    status: int | None = None


class _Ack(_Message, frozen=True, tag="ack", omit_defaults=False):
    n: int


_Any: TypeAlias = (
    _Started
    | _PromptProgress
    | _Token
    | _Reasoning
    | _ToolCallDelta
    | _ToolCall
    | _Metrics
    | _End
    | _Error
)
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Any)
_ack_decoder = msgspec.json.Decoder(_Ack)

_ERRORS_BY_CODE: dict[str, type[WorkerError]] = {
    cls.code: cls
    for cls in vars(_exceptions).values()
    if isinstance(cls, type) and issubclass(cls, WorkerError)
}


def encode_event(event: StreamEvent) -> bytes:
    """The message for *event*."""
    kind = type(event)
    message: _Message
    if kind is Token:
        assert isinstance(event, Token)
        message = _Token(i=event.i, t=event.text, ids=event.token_ids, n=event.count)
    elif kind is Started:
        assert isinstance(event, Started)
        message = _Started(job_id=event.job_id)
    elif kind is Metrics:
        # Its wire names are its own (a field the wire lacks is a TypeError here).
        message = _Metrics(**msgspec.structs.asdict(event))
    elif kind is Reasoning:
        assert isinstance(event, Reasoning)
        message = _Reasoning(t=event.text)
    elif kind is ToolCall:
        message = _ToolCall(**msgspec.structs.asdict(event))
    elif kind is ToolCallDelta:
        message = _ToolCallDelta(**msgspec.structs.asdict(event))
    elif kind is PromptProgress:
        message = _PromptProgress(**msgspec.structs.asdict(event))
    else:
        message = _End(**msgspec.structs.asdict(event))
    return _encoder.encode(message)


def encode_error(code: str, message: str, *, retriable: bool, status: int | None = None) -> bytes:
    """The message for the failure that ended a task: its code (a
    :class:`WorkerError`'s, or the relay's own ``BAD_TASK``), message, whether it may be
    retried, and the engine's status for an :class:`AdapterError`."""
    return _encoder.encode(_Error(code=code, message=message, retriable=retriable, status=status))


class _Kind(msgspec.Struct, gc=False):
    type: str


_kind_decoder = msgspec.json.Decoder(_Kind)
_KNOWN_KINDS = frozenset(
    {"started", "prompt_progress", "token", "reasoning", "tool_call_delta", "tool_call"}
    | {"metrics", "end", "error"}
)


def decode_event(data: bytes | str) -> StreamEvent | WorkerError | None:
    """The event in a message, or the failure an ``error`` message carries (returned,
    not raised); ``None`` for a message of a kind this client does not know (a newer
    relay's), which it skips.

    Raises:
        ProtocolError: if *data* is not a message of the relay.
    """
    try:
        message = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        try:
            tag: str | None = _kind_decoder.decode(data).type
        except (msgspec.DecodeError, RecursionError):
            tag = None
        if tag is not None and tag not in _KNOWN_KINDS:
            return None
        raise ProtocolError(f"the relay sent a malformed event: {exc}"[:300]) from None
    except msgspec.DecodeError:
        raise ProtocolError("the relay sent a message that is not JSON") from None
    except RecursionError:
        raise ProtocolError("the relay sent a message nested too deeply") from None
    kind = type(message)
    if kind is _Token:
        assert isinstance(message, _Token)
        return Token(i=message.i, text=message.t, token_ids=message.ids, count=message.n)
    if kind is _Started:
        assert isinstance(message, _Started)
        return Started(job_id=message.job_id)
    if kind is _Metrics:
        return Metrics(**msgspec.structs.asdict(message))
    if kind is _Reasoning:
        assert isinstance(message, _Reasoning)
        return Reasoning(message.t)
    if kind is _ToolCall:
        return ToolCall(**msgspec.structs.asdict(message))
    if kind is _ToolCallDelta:
        return ToolCallDelta(**msgspec.structs.asdict(message))
    if kind is _PromptProgress:
        return PromptProgress(**msgspec.structs.asdict(message))
    if kind is _End:
        return End(**msgspec.structs.asdict(message))
    assert isinstance(message, _Error)
    return _error(message)


def _error(message: _Error) -> WorkerError:
    error_class = _ERRORS_BY_CODE.get(message.code, WorkerError)
    error: WorkerError
    if error_class is AdapterError:
        error = AdapterError(message.message, status=message.status or 0)
    else:
        error = error_class(message.message)
    error.retriable = message.retriable
    return error


# --- What a client sends -----------------------------------------------------------------

#: The fields of a task message, all of them: another is refused.
TASK_FIELDS = frozenset(
    {"prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop"}
    | {"job_id", "extra", "pool", "window", "prompt_progress", "session"}
)
#: The fields of a chat's task message (``"kind": "chat"``), all of them.
CHAT_TASK_FIELDS = frozenset(
    {"kind", "messages", "tools", "tool_choice", "max_tokens", "temperature", "top_p"}
    | {"seed", "stop", "job_id", "extra", "pool", "window", "prompt_progress", "call_deltas"}
    | {"session"}
)
#: The largest window a client may ask for, in messages.
MAX_WINDOW = 1 << 20


class BadTask(ValueError):
    """A client's task message that the relay cannot run; the message says why."""


class RelayTask(NamedTuple):
    """A client's task message, decoded.

    Attributes:
        request: the task.
        pool: the pool it names, or ``None``.
        window: the messages the relay may send past those acknowledged, or ``None``
            (the client sends no acknowledgements).
        fields: the names of the fields it gave.
    """

    request: TaskRequest | ChatRequest
    pool: str | None
    window: int | None
    fields: frozenset[str]


def encode_ack(taken: int) -> bytes:
    """The message by which a client says it has taken the relay's first *taken*
    messages."""
    return _encoder.encode(_Ack(n=taken))


def decode_ack(data: str | bytes) -> int:
    """The count a client's ``ack`` message carries.

    Raises:
        ProtocolError: if *data* is not an ``ack`` message.
    """
    try:
        ack = _ack_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError):
        raise ProtocolError("the client sent a message that is not an ack") from None
    if ack.n < 0:
        raise ProtocolError("an ack counts the messages taken: it cannot be negative")
    return ack.n


def encode_task(
    request: TaskRequest | ChatRequest, pool: str | None = None, *, window: int | None = None
) -> bytes:
    """The message that asks a relay to run *request* (in *pool*, for a relay over a
    host; with flow control when a *window* is given). A chat's says ``"kind":
    "chat"``."""
    fields: dict[str, Any] = {
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "stop": list(request.stop),
        "job_id": request.job_id,
    }
    if isinstance(request, ChatRequest):
        fields["kind"] = "chat"
        fields["messages"] = [dict(m) for m in request.messages]
        if request.tools is not None:
            fields["tools"] = [dict(tool) for tool in request.tools]
        choice = request.tool_choice
        if choice is not None:
            fields["tool_choice"] = choice if isinstance(choice, str) else dict(choice)
        if request.call_deltas:
            fields["call_deltas"] = True
    else:
        fields["top_k"] = request.top_k
        if request.prompt is not None:
            prompt = request.prompt
            fields["prompt"] = prompt if isinstance(prompt, str) else list(prompt)
        else:
            fields["messages"] = [dict(m) for m in request.messages or ()]
    if request.extra:
        fields["extra"] = dict(request.extra)
    if request.prompt_progress:
        fields["prompt_progress"] = True
    if request.session is not None:
        fields["session"] = request.session
    if pool is not None:
        fields["pool"] = pool
    if window is not None:
        fields["window"] = window
    return _encoder.encode(fields)


def decode_task(data: str | bytes) -> RelayTask:
    """The task in a client's message.

    Raises:
        BadTask: if the message is not a task: not JSON, not an object, a field this
            format does not have, or a value :class:`TaskRequest` refuses.
    """
    try:
        fields = msgspec.json.decode(data)
    except msgspec.DecodeError:
        raise BadTask("the task is not JSON") from None
    except RecursionError:
        raise BadTask("the task is nested too deeply") from None
    if not isinstance(fields, dict):
        raise BadTask("the task must be a JSON object")
    given = frozenset(fields)
    chat = fields.pop("kind", None)
    if chat not in (None, "chat"):
        raise BadTask("kind must be 'chat' (or left out, for a completion)")
    unknown = sorted(given - (CHAT_TASK_FIELDS if chat else TASK_FIELDS))
    if unknown:
        raise BadTask(f"unknown task fields: {', '.join(map(repr, unknown))[:200]}")
    pool = fields.pop("pool", None)
    if pool is not None and (not isinstance(pool, str) or not pool):
        raise BadTask("pool must be a non-empty string")
    window = fields.pop("window", None)
    if window is not None and (type(window) is not int or not 1 <= window <= MAX_WINDOW):
        raise BadTask(f"window must be an integer from 1 to {MAX_WINDOW}")
    try:
        if chat:
            messages = fields.pop("messages", None)
            if messages is None:
                raise BadTask("a chat's task needs messages")
            return RelayTask(ChatRequest(messages, **fields), pool, window, given)
        return RelayTask(TaskRequest(**fields), pool, window, given)
    except (TypeError, ValueError) as exc:
        raise BadTask(redact_secrets(str(exc))[:500]) from None
