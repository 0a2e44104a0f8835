"""When a stream is paused on the engine: :class:`PausePolicy`.

llama-server goes on generating while its client reads nothing (its HTTP side blocks;
its slot does not), up to ``max_tokens``, and holds what it made in memory. Only
closing the stream's connection stops it. So a stream whose consumer has stopped
taking events, and that the engine has run ahead of, is *paused*: its connection closes
(the slot is free for other tasks, and its cache keeps the prompt and what was
generated), the events already read stay with the stream, and once the consumer has
taken them the stream is *resumed* by a request that goes on where the first stopped.
The consumer sees one stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._types import TaskRequest
from ._validate import count, seconds

__all__ = ["PausePolicy"]

#: ``/completion`` fields whose effect depends on what the request itself generated, so
#: that a second request could not go on as the first would have, with their neutral
#: values (a field at its neutral value does not stop a pause).
_STATEFUL_FIELDS: Mapping[str, Any] = {
    "grammar": "",  # the grammar's state
    "json_schema": None,
    "mirostat": 0,  # the sampler's running estimate
    "repeat_penalty": 1.0,  # penalties over the tokens generated
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "dry_multiplier": 0.0,
    "n_indent": 0,  # indentation counted from the request's first line
    "t_max_predict_ms": 0,  # a time limit of the request
    "response_fields": None,  # the final chunk's shape
    "cache_prompt": True,  # without the cache a resume costs the whole prompt
}


@dataclass(frozen=True)
class PausePolicy:
    """When a stream whose consumer stopped taking events is paused on the engine.

    A stream is paused when its consumer has taken no event for *pause_after* seconds
    and the engine is *backlog* events ahead of it: the stream reads ahead while its
    consumer is away, and once that many events wait, it closes its connection. The
    engine stops, its slot is free, and it has generated, while the consumer was away,
    the events that wait plus those the connection held when it closed. When the
    consumer has taken the events that wait, the stream goes on with a request whose
    prompt is the task's followed by the token ids generated so far, for the tokens
    still to generate: the engine finds that prefix in its cache.

    At temperature 0 the text of a paused and resumed stream is that of one never
    paused, byte for byte. With sampling, the tokens after a resume are drawn by a new
    request: a ``seed`` makes a run repeatable, but a paused run differs from an unpaused
    one from the resume on (the sampler starts again, with the seed moved on by the
    tokens generated).

    Which streams: those of a task with a ``max_tokens`` of at least *min_max_tokens*,
    while more than *backlog* tokens remain (a task with no ``max_tokens`` is not
    paused: give it one), and whose ``extra`` sets no field whose effect depends on
    what the request generated (``grammar``, ``json_schema``, ``mirostat``, repetition
    penalties, ``n_indent``, ``t_max_predict_ms``, ``response_fields``) nor turns the
    cache off.

    llama-server leaves out the id of a token it held back while a UTF-8 character was
    incomplete (a character written a byte at a time), so a stream can go on exactly
    only from where every id before is known and no text is held back. Past that point,
    a stream at temperature 0 is resumed from it (the engine generates the same tokens
    again, and the consumer does not see them twice) while they are at most *backlog*
    tokens; a sampled stream is not paused there.

    Args:
        pause_after: seconds the consumer must have taken nothing (it is noticed within
            half as much again).
        backlog: events read ahead and waiting that make a pause (``None``: the
            adapter's ``buffer``, so that no more events wait than without pauses).
        min_max_tokens: the smallest ``max_tokens`` of a task that may be paused.
    """

    pause_after: float = 0.1
    backlog: int | None = None
    min_max_tokens: int = 1024

    def __post_init__(self) -> None:
        seconds("pause_after", self.pause_after, positive=True)
        if self.backlog is not None:
            count("backlog", self.backlog, unit="events")
        count("min_max_tokens", self.min_max_tokens, minimum=0, unit="tokens")

    def applies_to(self, request: TaskRequest, *, backlog: int) -> bool:
        """Whether a stream of *request* may be paused, with a bound of *backlog*
        events."""
        if request.max_tokens is None or request.max_tokens < max(self.min_max_tokens, backlog):
            return False
        extra = request.extra
        return not any(
            key in extra and extra[key] != neutral for key, neutral in _STATEFUL_FIELDS.items()
        )
