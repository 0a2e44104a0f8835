"""How the host tries a task again: :class:`RetryPolicy` and the decision it returns.

Pure: the policy reads the error, the attempts, the clock's reading and the deadline it
is given, and answers with a decision; the host's stream carries it out. Nothing here
sleeps or reads a clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .._exceptions import AdapterError, DeadlineUnmet, PromptTooLarge, WorkerError
from .._validate import count, seconds

__all__ = ["GiveUp", "RetryDecision", "RetryLater", "RetryPolicy", "TryLargerContext"]


@dataclass(frozen=True)
class RetryLater:
    """Try the task again after *delay* seconds, on a replica it has not failed on when
    the pool has one."""

    delay: float


@dataclass(frozen=True)
class TryLargerContext:
    """Try the task again at once, on a replica whose context holds at least
    *min_context* tokens."""

    min_context: int


@dataclass(frozen=True)
class GiveUp:
    """Raise *error*: the task is not tried again."""

    error: WorkerError


RetryDecision = RetryLater | TryLargerContext | GiveUp


@dataclass(frozen=True)
class RetryPolicy:
    """How a task that failed before its first token is tried again.

    Only retriable failures are retried (a refused or cut connection, no data within the
    read timeout, 429 and 5xx answers, 503 while a model loads), and only until the
    task's first token: after it, the caller gets the error after the tokens already
    delivered. Each retry waits a random time between 0 and the backoff, which doubles
    from ``initial_backoff_s`` up to ``max_backoff_s``; a replica that sent
    ``Retry-After`` gets no task until that time has passed. A prompt a replica says is
    too large for its context goes to a replica with a larger one, at once.

    Every rule is in :meth:`decide`, :meth:`out_of_time` and :meth:`blames_replica`;
    a subclass may change them.

    Args:
        deadline_s: the most time from ``submit()`` until the task's stream is open and
            has not failed, across all its attempts; then the last failure is raised.
        max_attempts: the most attempts of one task.
        initial_backoff_s: the first backoff.
        max_backoff_s: the largest backoff.
    """

    deadline_s: float = 30.0
    max_attempts: int = 5
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        count("max_attempts", self.max_attempts)
        for name in ("deadline_s", "initial_backoff_s", "max_backoff_s"):
            seconds(name, getattr(self, name))

    def backoff(self, retry: int, rng: random.Random) -> float:
        """The wait before retry number *retry* (1, 2, ...): full jitter."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * 2 ** (retry - 1))
        return rng.uniform(0, ceiling)

    def retry_deadline(self, submitted_at: float, deadline: float) -> float:
        """When a task submitted at *submitted_at*, with the caller's *deadline*, stops
        being tried again (on the clock that gave both)."""
        return min(deadline, submitted_at + self.deadline_s)

    def decide(
        self,
        error: WorkerError,
        *,
        attempts: int,
        context_size: int | None,
        now: float,
        retry_deadline: float,
        rng: random.Random,
    ) -> RetryDecision:
        """What to do after attempt number *attempts* failed with *error*, before the
        task's first token, on a replica whose context is *context_size* (None when
        unknown), at *now*."""
        if isinstance(error, PromptTooLarge):
            if context_size is None:
                return GiveUp(error)
            return TryLargerContext(context_size + 1)
        if not error.retriable or isinstance(error, DeadlineUnmet):
            return GiveUp(error)
        if attempts >= self.max_attempts:
            return GiveUp(error)
        delay = self.backoff(attempts, rng)
        if now + delay >= retry_deadline:
            return GiveUp(error)
        return RetryLater(delay)

    def out_of_time(
        self, last: WorkerError | None, *, now: float, deadline: float, pool: str
    ) -> WorkerError:
        """The error for a task whose wait for a replica ran out at *now*: the last
        failure (*last*) when only the retry deadline passed, else :class:`DeadlineUnmet`
        (the caller's *deadline* passed, or nothing had failed)."""
        if last is not None and now < deadline:
            return last
        return DeadlineUnmet(f"no replica of pool {pool!r} took the task in time")

    def blames_replica(self, error: WorkerError) -> bool:
        """Whether *error* counts toward marking the replica that raised it unhealthy:
        a retriable failure, but not 429 (a busy replica is not a sick one). A task's
        own fault (a bad request, a prompt too large) never does."""
        return error.retriable and not (isinstance(error, AdapterError) and error.status == 429)
