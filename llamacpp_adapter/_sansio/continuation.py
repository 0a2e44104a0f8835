"""What a stream has generated, kept so that it can be paused on the engine and resumed
exactly: :class:`Ledger`. Pure: the stream's decoder feeds it each token chunk.

llama-server stops generating only when the connection of its stream closes. So a
stream whose consumer stops taking events is *paused* by closing that connection, and
*resumed* by a new request whose prompt is the task's prompt followed by the token ids
generated so far (:func:`~llamacpp_adapter._sansio.completion.continuation_body`): the
engine finds that prefix in its cache, and goes on from there at the cost of about one
step. The consumer sees one stream.

Where a stream can go on from exactly is a *resume point*: a token up to which every
generated token's id is known and no text is held back. llama-server leaves out the id
of a token it holds back while a UTF-8 character is incomplete (the id never comes), and
holds back text that may begin a stop string (sending it, or not, with a later token).
Past the last resume point:

* at temperature 0 the engine generates the same tokens again from it: the ledger drops
  those the consumer already has, and checks that they are the same (by their count and
  a checksum of their text). That costs those tokens' time: the stream pauses only
  while they are few (:meth:`Ledger.can_resume`);
* with sampling it would not: such a stream is not paused.
"""

from __future__ import annotations

import zlib
from typing import Protocol

from .._exceptions import WorkerReset

__all__ = ["Ledger", "Totals"]


class _Timings(Protocol):
    """The engine's timings of one request, as its chunks carry them."""

    prompt_n: int
    prompt_ms: float
    predicted_n: int
    predicted_ms: float
    cache_n: int | None


class Totals:
    """The engine's timings added up over the requests of one stream."""

    __slots__ = ("cache_n", "predicted_ms", "predicted_n", "prompt_ms", "prompt_n")

    def __init__(self) -> None:
        self.prompt_n = 0
        self.prompt_ms = 0.0
        self.predicted_n = 0
        self.predicted_ms = 0.0
        self.cache_n: int | None = None

    def add(self, timings: _Timings) -> None:
        self.prompt_n += timings.prompt_n
        self.prompt_ms += timings.prompt_ms
        self.predicted_n += timings.predicted_n
        self.predicted_ms += timings.predicted_ms
        if timings.cache_n is not None:
            self.cache_n = (self.cache_n or 0) + timings.cache_n


class Ledger:
    """What one stream has generated, over every request (*part*) it took.

    Args:
        greedy: whether the task samples greedily (temperature 0): the engine then
            generates the same tokens from the same prefix.
        stops: whether the task has stop strings (the engine may hold text back).
        max_tokens: the task's ``max_tokens`` (``None``: no bound).

    Attributes:
        tokens: tokens generated and received, over every part.
        events: :class:`~llamacpp_adapter.Token` events decoded: the next event's ``i``.
        parts: the requests the stream has taken (1 until it is resumed).
    """

    __slots__ = (
        "_after_crc",
        "_base",
        "_check_crc",
        "_check_tokens",
        "_done",
        "_emit_from",
        "_greedy",
        "_ids",
        "_last_timings",
        "_max_tokens",
        "_part_crc",
        "_pending",
        "_resume_events",
        "_resume_tokens",
        "_stops",
        "_whole",
        "events",
        "parts",
        "tokens",
    )

    def __init__(self, *, greedy: bool, stops: bool, max_tokens: int | None) -> None:
        self._greedy = greedy
        self._stops = stops
        self._max_tokens = max_tokens
        self.tokens = 0
        self.events = 0
        self.parts = 1
        self._base = 0  # tokens generated before this part's prompt ends
        self._ids: list[int] = []  # the generated ids, every one known from the first
        self._whole = True  # no id is missing so far
        self._resume_tokens = 0  # the last resume point: tokens up to it,
        self._resume_events = 0  # and the token events up to it
        self._after_crc = 0  # the checksum of the text of the token events after it
        self._part_crc = 0  # that of every token event of this part
        self._pending: tuple[int, int] | None = None  # a resume point once a token follows
        self._emit_from = 0  # events before this index the consumer has already
        self._check_crc = 0
        self._check_tokens = 0
        self._done = Totals()  # the timings of the parts before this one
        self._last_timings: _Timings | None = None  # this part's, as last sent

    def token(
        self, content: str, ids: list[int], predicted: int | None, timings: _Timings | None
    ) -> bool:
        """Take one token chunk of the current part: its text, its ids, the part's count
        of tokens generated (``tokens_predicted``) and its timings (when the request
        asks for them with every token). Returns whether the consumer gets it (not when
        it was generated again after a resume).

        Raises:
            WorkerReset: when tokens generated again are not those the consumer has.
        """
        if timings is not None:
            self._last_timings = timings
        count = self.tokens + len(ids) if predicted is None else self._base + predicted
        new = count - self.tokens
        self.tokens = count
        i = self.events
        self.events = i + 1
        if self._whole:
            if new == len(ids):
                self._ids += ids
            else:
                self._whole = False
        text = content.encode("utf-8", "surrogatepass")
        crc = self._part_crc = zlib.crc32(text, self._part_crc)
        if not self._stops:
            if self._whole:
                self._resume_tokens, self._resume_events = count, i + 1
                self._after_crc = 0
            else:
                self._after_crc = zlib.crc32(text, self._after_crc)
        else:
            # A stop string that matches sends the text before it with the token that
            # completed it, then the final chunk: a chunk is a resume point only once
            # the next token's chunk came (no stop matched on it). The point stays where
            # it is while the events the consumer has come again: a pause among them
            # goes on from it, as their check counts from it.
            pending = self._pending
            if pending is not None and i >= self._emit_from:
                self._resume_tokens, self._resume_events = pending
                self._after_crc = 0
                self._pending = None
            self._after_crc = zlib.crc32(text, self._after_crc)
            if self._whole and content:
                self._pending = (count, i + 1)
        if i >= self._emit_from:
            return True
        if i == self._emit_from - 1 and (crc != self._check_crc or count != self._check_tokens):
            raise WorkerReset(
                "the stream was resumed, and the engine did not generate again the tokens "
                f"it had sent (after {count} tokens): it cannot go on exactly"
            )
        return False

    def can_resume(self, regenerate: int) -> bool:
        """Whether the stream can be resumed exactly from here: it stands at a resume
        point, or it samples greedily and at most *regenerate* tokens came after the
        last one (the engine generates them again)."""
        behind = self.tokens - self._resume_tokens
        return behind == 0 or (self._greedy and behind <= regenerate)

    @property
    def remaining(self) -> int | None:
        """Tokens still to generate (``None``: no bound)."""
        return None if self._max_tokens is None else self._max_tokens - self.tokens

    def continuation(self) -> tuple[list[int], int]:
        """Where the next part begins: the ids generated up to the last resume point
        (the new request's prompt is the task's followed by them), and how many."""
        point = self._resume_tokens
        return self._ids[:point], point

    def resume(self) -> None:
        """Begin the next part, from the last resume point (its request is open): the
        events after that point come again, and are dropped."""
        point = self._resume_tokens
        del self._ids[point:]
        if self.events >= self._emit_from:
            # (Paused again before the engine gave back every event the consumer has,
            # those are still the ones to drop and to check.)
            self._emit_from = self.events
            self._check_crc, self._check_tokens = self._after_crc, self.tokens
        self.events = self._resume_events
        self.tokens = self._base = point
        self._whole = True
        self._after_crc = self._part_crc = 0
        self._pending = None
        if self._last_timings is not None:
            self._done.add(self._last_timings)
            self._last_timings = None
        self.parts += 1

    def end(
        self, predicted: int | None, evaluated: int | None, timings: _Timings | None
    ) -> tuple[int | None, int | None, Totals | None]:
        """The stream's final chunk came: its tokens generated in all, its prompt's
        tokens (the task's, not the part's), and the timings of every part added up
        (``None`` without the final chunk's own).

        Raises:
            WorkerReset: when the stream ended before it gave again every token the
                consumer has.
        """
        if self.events < self._emit_from:
            raise WorkerReset(
                "the stream was resumed, and it ended before the engine generated again "
                f"the {self._emit_from} events the consumer has: it cannot go on exactly"
            )
        tokens_out = None if predicted is None else self._base + predicted
        tokens_in = None if evaluated is None else evaluated - self._base
        if timings is None:
            return tokens_out, tokens_in, None
        totals = Totals()
        totals.add(self._done)
        totals.add(timings)
        return tokens_out, tokens_in, totals
