"""The typed values that cross the public API: the task, the stream's events, and what a
worker reports about itself."""

from __future__ import annotations

import math
import types
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, TypeAlias

import msgspec

from ._validate import is_int, number, optional_int

__all__ = [
    "ChatRequest",
    "End",
    "Metrics",
    "PromptProgress",
    "Reasoning",
    "Started",
    "StreamEvent",
    "TaskRequest",
    "Token",
    "ToolCall",
    "ToolCallDelta",
    "WorkerHealth",
    "WorkerProps",
]

_MAX_KEY_CHARS = 256  # a job_id or a session
_MAX_SEED = 2**32 - 1

# /completion fields that TaskRequest sets itself; ``extra`` may not override them.
_FIELDS_SET_BY_REQUEST: dict[str, str] = {
    "prompt": "prompt",
    "stream": "(always true)",
    "n_predict": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "stop": "stop",
    "return_tokens": "(always true)",
    "return_progress": "prompt_progress",
}


@dataclass(frozen=True, repr=False)
class TaskRequest:
    """One generation task for a llama.cpp worker.

    Give either ``prompt`` (text, or a sequence of token ids) or ``messages`` (chat turns
    such as ``{"role": "user", "content": "Hi"}``, rendered by the server's own chat
    template). The defaults are greedy and so deterministic: ``temperature=0.0``,
    ``top_p=1.0``.

    Args:
        prompt: the prompt text or token ids.
        messages: chat turns, instead of ``prompt``.
        max_tokens: the most tokens to generate; ``None`` lets the engine decide
            (until end of sequence or a full context).
        temperature: sampling temperature, ``>= 0``; ``0`` is greedy.
        top_p: nucleus sampling, in ``[0, 1]``.
        top_k: top-k sampling, forwarded when set.
        seed: the sampler's seed, forwarded when set (``0 <= seed < 2**32``).
        stop: strings that end generation (a single string is one stop string).
        job_id: the orchestrator's id for this task; a random one when not given.
        extra: further llama.cpp ``/completion`` fields, sent as given (e.g.
            ``{"ignore_eos": True}``). It may not set a field this class sets.
        prompt_progress: whether the engine reports its evaluation of the prompt as it
            goes, as :class:`PromptProgress` events before the first token.
        session: the conversation the task is a turn of (a key of the caller's own, at
            most 256 printable characters): :class:`AdapterHost` sends a session's turns
            where its last turn ran, where the engine has its prompt in cache. An
            adapter alone does not use it, and it is never sent to the engine.

    Raises:
        ValueError, TypeError: when a field is out of range or of the wrong type. The
            message names the field, never the prompt.
    """

    prompt: str | Sequence[int] | None = None
    _: KW_ONLY
    messages: Sequence[Mapping[str, Any]] | None = None
    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    extra: Mapping[str, Any] = field(default_factory=dict)
    prompt_progress: bool = False
    session: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # the dataclass is frozen; normalise once, here
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        if self.prompt is not None and not isinstance(self.prompt, str):
            set_(self, "prompt", _token_ids(self.prompt))
        if self.messages is not None:
            set_(self, "messages", _messages(self.messages))
        optional_int("top_k", self.top_k, minimum=0)
        _check_shared(self)
        set_(self, "extra", _extra(self.extra))

    def __repr__(self) -> str:
        # Prompts are not logged, so a repr shows their size only.
        if isinstance(self.prompt, str):
            source = f"prompt=<{len(self.prompt)} chars>"
        elif self.prompt is not None:
            source = f"prompt=<{len(self.prompt)} token ids>"
        else:
            source = f"messages=<{len(self.messages or ())} turns>"
        return (
            f"TaskRequest(job_id={self.job_id!r}, {source}, max_tokens={self.max_tokens}, "
            f"temperature={self.temperature}, top_p={self.top_p}, top_k={self.top_k}, "
            f"seed={self.seed}, stop=<{len(self.stop)}>, extra={sorted(self.extra)}, "
            f"session={self.session!r})"
        )


def _check_shared(request: TaskRequest | ChatRequest) -> None:
    """Check and normalise the fields a task and a chat share: max_tokens, seed,
    temperature, top_p, stop, job_id, prompt_progress and session."""
    set_ = object.__setattr__  # the dataclasses are frozen; normalise once, here
    if not isinstance(request.prompt_progress, bool):
        raise TypeError("prompt_progress must be a bool")
    optional_int("max_tokens", request.max_tokens, minimum=1)
    optional_int("seed", request.seed, minimum=0, maximum=_MAX_SEED)
    set_(request, "temperature", number("temperature", request.temperature, 0.0, math.inf))
    set_(request, "top_p", number("top_p", request.top_p, 0.0, 1.0))
    set_(request, "stop", _stop(request.stop))
    _key("job_id", request.job_id)
    if request.session is not None:
        _key("session", request.session)


def _key(name: str, value: object) -> None:
    """Check a key of the caller's: a non-empty str, printable, not too long."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str")
    if len(value) > _MAX_KEY_CHARS or not value.isprintable():
        raise ValueError(f"{name} must be printable and at most {_MAX_KEY_CHARS} characters")


def _json_only(name: str, value: object) -> None:
    """Raise TypeError, naming *name*, unless *value* holds JSON values only."""
    try:
        msgspec.json.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"{name} must hold JSON values only") from exc


def _token_ids(value: object) -> tuple[int, ...]:
    if not isinstance(value, Sequence) or isinstance(value, bytes | bytearray):
        raise TypeError("prompt must be a str or a sequence of token ids")
    ids = tuple(value)
    for token_id in ids:
        if not is_int(token_id) or token_id < 0:
            raise ValueError("prompt token ids must be ints >= 0")
    return ids


def _messages(value: object) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(value, Sequence) or isinstance(value, str | bytes | bytearray):
        raise TypeError("messages must be a sequence of mappings")
    turns: list[Mapping[str, Any]] = []
    for turn in value:
        if not isinstance(turn, Mapping):
            raise TypeError("each message must be a mapping with 'role' and 'content'")
        if not isinstance(turn.get("role"), str) or "content" not in turn:
            raise ValueError("each message needs a str 'role' and a 'content'")
        turns.append(types.MappingProxyType(dict(turn)))
    if not turns:
        raise ValueError("messages must not be empty")
    return tuple(turns)


def _stop(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, Sequence):
        raise TypeError("stop must be a str or a sequence of str")
    stops = tuple(value)
    if not all(isinstance(s, str) and s for s in stops):
        raise ValueError("stop strings must be non-empty str")
    return stops


def _extra(
    value: object,
    fields: Mapping[str, str] = _FIELDS_SET_BY_REQUEST,
    owner: str = "TaskRequest",
) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError("extra must be a mapping")
    for key in value:
        if not isinstance(key, str):
            raise TypeError("extra keys must be str")
        if key in fields:
            raise ValueError(f"extra may not set {key!r}; it is set from {owner} {fields[key]}")
    copy = dict(value)
    _json_only("extra", copy)
    return types.MappingProxyType(copy)


# --- A chat turn -------------------------------------------------------------------------

# /v1/chat/completions fields that ChatRequest sets itself; ``extra`` may not set them.
_FIELDS_SET_BY_CHAT: dict[str, str] = {
    "messages": "messages",
    "stream": "(always true)",
    "stream_options": "(usage always asked for)",
    "tools": "tools",
    "tool_choice": "tool_choice",
    "max_tokens": "max_tokens",
    "n_predict": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
    "return_progress": "prompt_progress",
}
_TOOL_CHOICES = ("auto", "none", "required")


@dataclass(frozen=True, repr=False)
class ChatRequest:
    """One chat completion for a llama.cpp worker, through its chat endpoint
    (``POST /v1/chat/completions``): the server renders the turns with the model's own
    template and parses what the model writes into its answer, its reasoning and its
    tool calls. The defaults are greedy: ``temperature=0.0``, ``top_p=1.0``.

    Args:
        messages: the conversation so far, OpenAI's way: mappings with a ``role``
            (``"system"``, ``"user"``, ``"assistant"``, ``"tool"``) and a ``content``
            (an assistant turn with ``tool_calls`` may have none; a tool's answer names
            its call by ``tool_call_id``).
        tools: the tools the model may call, OpenAI's way:
            ``{"type": "function", "function": {"name": ..., "parameters": {...}}}``.
        tool_choice: ``"auto"``, ``"none"``, ``"required"``, or
            ``{"type": "function", "function": {"name": ...}}`` naming one of *tools*.
        max_tokens: the most tokens to generate; ``None`` lets the engine decide.
        temperature: sampling temperature, ``>= 0``; ``0`` is greedy.
        top_p: nucleus sampling, in ``[0, 1]``.
        seed: the sampler's seed, forwarded when set (``0 <= seed < 2**32``).
        stop: strings that end generation.
        job_id: the orchestrator's id for this task; a random one when not given.
        extra: further fields of the chat endpoint, sent as given (e.g.
            ``{"chat_template_kwargs": {"enable_thinking": False}}``). It may not set a
            field this class sets.
        prompt_progress: whether the engine reports its evaluation of the prompt as it
            goes, as :class:`PromptProgress` events before the first output.
        call_deltas: whether each piece of a tool call comes as it is streamed, as a
            :class:`ToolCallDelta`, for a caller that shows a call being written; the
            whole :class:`ToolCall` comes after them either way.
        session: the conversation the chat is a turn of, as on :class:`TaskRequest`.

    Raises:
        ValueError, TypeError: when a field is out of range or of the wrong type, before
            anything is sent. The message names the field, never a message's content.
    """

    messages: Sequence[Mapping[str, Any]]
    _: KW_ONLY
    tools: Sequence[Mapping[str, Any]] | None = None
    tool_choice: str | Mapping[str, Any] | None = None
    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    extra: Mapping[str, Any] = field(default_factory=dict)
    prompt_progress: bool = False
    call_deltas: bool = False
    session: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # the dataclass is frozen; normalise once, here
        if not isinstance(self.call_deltas, bool):
            raise TypeError("call_deltas must be a bool")
        set_(self, "messages", _chat_messages(self.messages))
        names: list[str] = []
        if self.tools is not None:
            tools, names = _tools(self.tools)
            set_(self, "tools", tools)
        _tool_choice(self.tool_choice, names)
        _check_shared(self)
        set_(self, "extra", _extra(self.extra, _FIELDS_SET_BY_CHAT, "ChatRequest"))

    def __repr__(self) -> str:
        # Messages are not logged, so a repr shows their number only.
        return (
            f"ChatRequest(job_id={self.job_id!r}, messages=<{len(self.messages)} turns>, "
            f"tools={[t['function']['name'] for t in self.tools or ()]}, "
            f"max_tokens={self.max_tokens}, temperature={self.temperature}, "
            f"top_p={self.top_p}, seed={self.seed}, stop=<{len(self.stop)}>, "
            f"extra={sorted(self.extra)}, session={self.session!r})"
        )


def _chat_messages(value: object) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(value, Sequence) or isinstance(value, str | bytes | bytearray):
        raise TypeError("messages must be a sequence of mappings")
    turns: list[dict[str, Any]] = []
    for n, turn in enumerate(value):
        if not isinstance(turn, Mapping):
            raise TypeError(f"messages[{n}] must be a mapping with a 'role'")
        role = turn.get("role")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{n}] needs a str 'role'")
        if "content" not in turn and not (role == "assistant" and turn.get("tool_calls")):
            raise ValueError(
                f"messages[{n}] needs a 'content' (or, from the assistant, 'tool_calls')"
            )
        turns.append(dict(turn))
    if not turns:
        raise ValueError("messages must not be empty")
    _json_only("messages", turns)
    return tuple(types.MappingProxyType(turn) for turn in turns)


def _tools(value: object) -> tuple[tuple[Mapping[str, Any], ...], list[str]]:
    if not isinstance(value, Sequence) or isinstance(value, str | bytes | bytearray):
        raise TypeError("tools must be a sequence of mappings")
    tools: list[dict[str, Any]] = []
    names: list[str] = []
    for n, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"tools[{n}] must be a mapping "
                '{"type": "function", "function": {"name": ..., ...}} with a str name'
            )
        if name in names:
            raise ValueError(f"tools[{n}]: a second tool named {name!r}")
        names.append(name)
        assert isinstance(tool, Mapping)
        tools.append(dict(tool))
    _json_only("tools", tools)
    return tuple(types.MappingProxyType(tool) for tool in tools), names


def _tool_choice(value: object, names: list[str]) -> None:
    if value is None or value in ("auto", "none"):
        return
    if value == "required":
        if not names:
            raise ValueError("tool_choice 'required' needs tools")
        return
    if isinstance(value, str):  # a str, of a value it may not have
        raise ValueError(f"tool_choice must be one of {_TOOL_CHOICES} or name a tool")  # noqa: TRY004
    function = value.get("function") if isinstance(value, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(name, str):
        raise TypeError(
            "tool_choice must be a str or {'type': 'function', 'function': {'name': ...}}"
        )
    if name not in names:
        raise ValueError(f"tool_choice names {name!r}, which is not among the tools")


# --- Events ---------------------------------------------------------------------------
# Frozen msgspec structs: typed, immutable, with a readable repr, and several times
# cheaper to create than frozen dataclasses (one is made per token). They hold only
# strings, numbers and tuples of numbers, so they cannot be part of a reference cycle:
# gc=False spares the cycle collector from tracking them.


class Started(msgspec.Struct, frozen=True, gc=False):
    """The engine accepted the task; tokens follow.

    Attributes:
        job_id: the task's ``job_id``.
    """

    job_id: str


class Token(msgspec.Struct, frozen=True, gc=False, repr_omit_defaults=True):
    """A piece of generated text.

    Attributes:
        i: this event's position among the stream's tokens: 0, 1, 2, ... with no gap.
        text: the text the engine sent with it (it may be empty while the engine holds
            back an incomplete UTF-8 sequence; the joined texts are the whole output).
        token_ids: the token ids the engine sent with it. llama.cpp leaves out the ids
            of tokens it held back while a UTF-8 character was incomplete (the text is
            whole), so a stream's ids can be fewer than ``End.tokens_out``.
        count: the tokens the engine generated for it, from its running count: more
            than 1 when it held some back (an incomplete UTF-8 character) and sent them
            at once. A chat's stream does not say: 1.
    """

    i: int
    text: str
    token_ids: tuple[int, ...] = ()
    count: int = 1


class PromptProgress(msgspec.Struct, frozen=True, gc=False):
    """How far the engine has evaluated the prompt, before the first token, when the
    request asks (``prompt_progress=True``).

    Attributes:
        total: the prompt's tokens.
        cached: those found in the engine's cache, not evaluated again.
        processed: those evaluated so far.
        time_ms: the time the evaluation has taken so far.
    """

    total: int
    cached: int
    processed: int
    time_ms: float


class Reasoning(msgspec.Struct, frozen=True, gc=False):
    """A piece of the model's reasoning, as the engine's chat parser set it apart from
    the answer (a chat stream's ``reasoning_content`` delta).

    Attributes:
        text: the piece; the joined pieces are the whole reasoning.
    """

    text: str


class ToolCall(msgspec.Struct, frozen=True, gc=False):
    """A call of a tool the model made, whole: given once its last delta came (the next
    call started, or the answer ended).

    Attributes:
        index: its place among the answer's calls: 0, 1, ...
        id: the id the engine gave it, which the tool's answer names.
        name: the tool's name.
        arguments: the arguments, the JSON text exactly as the engine sent it (joined
            across its deltas): ``json.loads`` it, and tell the model if it fails.
    """

    index: int
    id: str
    name: str
    arguments: str


class ToolCallDelta(msgspec.Struct, frozen=True, gc=False):
    """A piece of a tool call as it is streamed, for a caller that shows it being
    written (given only when the :class:`ChatRequest` asks, with ``call_deltas``). The
    call's :class:`ToolCall` comes after its last piece.

    Attributes:
        index: the call's place among the answer's calls: 0, 1, ...
        id: the call's id.
        name: the tool's name.
        arguments: this piece of the arguments' JSON text (perhaps empty: the call's
            first delta may carry its name alone); the pieces joined are the call's.
    """

    index: int
    id: str
    name: str
    arguments: str


class Metrics(msgspec.Struct, frozen=True, gc=False):
    """The engine's own timings for the task, sent once before :class:`End`.

    Attributes:
        prompt_tokens: prompt tokens evaluated (not counting those reused from cache).
        prompt_ms: time spent on the prompt.
        prompt_tokens_per_s: prompt throughput.
        predicted_tokens: tokens generated.
        predicted_ms: time spent generating.
        predicted_tokens_per_s: generation throughput.
        cached_tokens: prompt tokens reused from the cache, when reported.
    """

    prompt_tokens: int
    prompt_ms: float
    prompt_tokens_per_s: float
    predicted_tokens: int
    predicted_ms: float
    predicted_tokens_per_s: float
    cached_tokens: int | None = None


class End(msgspec.Struct, frozen=True, gc=False):
    """The stream ended normally. Always the last event.

    Attributes:
        tokens_out: tokens generated, as the engine counted them. This can exceed the
            tokens whose text was streamed: at a length limit llama.cpp drops a held-back
            incomplete UTF-8 tail from the stream (its unstreamed answer shows U+FFFD).
        stop_reason: why generation stopped, in the engine's words: ``"eos"`` (end of
            sequence), ``"limit"`` (``max_tokens`` or the context), ``"word"`` (a stop
            string).
        tokens_in: prompt tokens evaluated, when reported.
        truncated: whether the engine cut the prompt to fit its context.
        stop_word: the stop string that matched, when ``stop_reason == "word"``.
    """

    tokens_out: int
    stop_reason: str
    tokens_in: int | None = None
    truncated: bool = False
    stop_word: str | None = None


StreamEvent: TypeAlias = (
    Started | PromptProgress | Token | Reasoning | ToolCallDelta | ToolCall | Metrics | End
)
"""Any event of a task's stream. A completion's stream gives ``Started``, ``Token``\\ s,
``Metrics`` and ``End``; a chat's (:class:`ChatRequest`) ``Reasoning`` and ``ToolCall``
too (and ``ToolCallDelta`` when it asks), among its tokens: a ``match`` on the four that
came first sees no other on a completion stream, and should have a ``case _:`` for a
chat's. Its first name, ``TokenEvent``, still imports, with a DeprecationWarning."""


# --- What a worker reports ------------------------------------------------------------


class WorkerHealth(msgspec.Struct, frozen=True):
    """A worker's answer to ``GET /health``.

    Attributes:
        live: a llama-server answered (a server that answers otherwise is not live:
            ``status`` is then ``"not llama-server"``).
        ready: it can take work now (not loading, not failed).
        status: the server's own word for its state (``"ok"``, ``"loading model"``,
            ``"error"``), or ``"unreachable"`` or ``"not llama-server"``.
        message: the server's message when it is not ready, redacted.
        slots_idle: idle slots, when the server reports them.
        slots_processing: busy slots, when the server reports them.
    """

    live: bool
    ready: bool
    status: str
    message: str | None = None
    slots_idle: int | None = None
    slots_processing: int | None = None


class SlotUse(msgspec.Struct, frozen=True):
    """How a worker's slots are used, from ``GET /slots``.

    Attributes:
        total: the slots the server has.
        busy: the slots processing a task when asked (any client's).
    """

    total: int
    busy: int


class WorkerProps(msgspec.Struct, frozen=True):
    """What a worker says about itself (``GET /props`` and ``GET /slots``).

    Attributes:
        slots_total: parallel slots (``-np``).
        slots_free: slots not processing a task when asked, or ``None`` when the server
            does not expose ``/slots``.
        context_size: tokens of context per slot.
        model_path: the model file the server loaded.
        model_alias: the model's alias, when set.
        build_info: the server's build, e.g. ``"b6000-1a2b3c4d"``.
        model_digest: a stable digest of the model's identity as the server reports it.
        default_generation_settings: the server's defaults for a completion.
    """

    slots_total: int
    slots_free: int | None
    context_size: int
    model_path: str
    model_alias: str | None = None
    build_info: str | None = None
    model_digest: str = ""
    default_generation_settings: dict[str, Any] = msgspec.field(default_factory=dict)
