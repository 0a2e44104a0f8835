"""The retry policy's decisions: pure logic, no sockets, the clock a number."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamacpp_adapter import (
    AdapterError,
    DeadlineUnmet,
    DecodeTimeout,
    EngineError,
    GiveUp,
    PromptTooLarge,
    ProtocolError,
    RetryLater,
    RetryPolicy,
    TryLargerContext,
    WorkerError,
    WorkerReset,
)

POLICY = RetryPolicy(deadline_s=30.0, max_attempts=3, initial_backoff_s=0.1, max_backoff_s=1.0)


def decide(error: WorkerError, **options: object) -> object:
    settings: dict[str, object] = {
        "attempts": 1,
        "context_size": 4096,
        "now": 0.0,
        "retry_deadline": 30.0,
        "rng": random.Random(0),
    }
    settings.update(options)
    return POLICY.decide(error, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "error",
    [
        WorkerReset("cut"),
        DecodeTimeout("slow"),
        AdapterError("busy", status=429),
        AdapterError("loading", status=503),
    ],
)
def test_a_retriable_failure_is_tried_again_after_a_backoff(error: WorkerError) -> None:
    decision = decide(error)
    assert isinstance(decision, RetryLater)
    assert 0 <= decision.delay <= POLICY.initial_backoff_s


@pytest.mark.parametrize(
    "error",
    [
        AdapterError("bad", status=400),
        ProtocolError("garbage"),
        EngineError("oom"),
        DeadlineUnmet("late"),
        DeadlineUnmet("late", retriable=True),  # a deadline is never retried
    ],
)
def test_the_task_s_own_faults_are_not_retried(error: WorkerError) -> None:
    assert decide(error) == GiveUp(error)


def test_attempts_are_bounded() -> None:
    reset = WorkerReset("cut")
    assert isinstance(decide(reset, attempts=2), RetryLater)
    assert decide(reset, attempts=3) == GiveUp(reset)


class Fixed(random.Random):
    """Draws the same point of every range: 0 is the start, 1 its end."""

    def __init__(self, at: float) -> None:
        super().__init__()
        self.at = at

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.at


def test_a_backoff_past_the_retry_deadline_gives_up() -> None:
    reset = WorkerReset("cut")
    assert decide(reset, now=29.95, rng=Fixed(0.0)) == RetryLater(0.0)
    assert decide(reset, now=29.95, rng=Fixed(1.0)) == GiveUp(reset)  # 29.95 + 0.1 > 30
    assert decide(reset, now=30.0, rng=Fixed(0.0)) == GiveUp(reset)


def test_a_prompt_too_large_goes_to_a_larger_context() -> None:
    too_large = PromptTooLarge("too large", context_size=2048)
    assert decide(too_large, context_size=2048) == TryLargerContext(2049)
    assert decide(too_large, context_size=None) == GiveUp(too_large)


def test_the_backoff_doubles_up_to_its_ceiling() -> None:
    ceilings = [POLICY.backoff(retry, Fixed(1.0)) for retry in range(1, 7)]
    assert ceilings == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


@given(st.integers(1, 60), st.integers(0, 2**32))
def test_every_backoff_is_within_its_ceiling(retry: int, seed: int) -> None:
    delay = POLICY.backoff(retry, random.Random(seed))
    assert 0 <= delay <= min(POLICY.max_backoff_s, POLICY.initial_backoff_s * 2 ** (retry - 1))


def test_the_retry_deadline_is_the_earlier_of_the_two() -> None:
    assert POLICY.retry_deadline(100.0, float("inf")) == 130.0
    assert POLICY.retry_deadline(100.0, 110.0) == 110.0


def test_a_wait_for_a_replica_that_ran_out() -> None:
    last = WorkerReset("cut")
    # Only the retry deadline passed: the failure that led here stands.
    assert POLICY.out_of_time(last, now=31.0, deadline=60.0, pool="p") is last
    # The caller's deadline passed, or nothing had failed yet.
    late = POLICY.out_of_time(last, now=60.0, deadline=60.0, pool="p")
    assert isinstance(late, DeadlineUnmet)
    assert "'p'" in str(late)
    assert isinstance(POLICY.out_of_time(None, now=1.0, deadline=60.0, pool="p"), DeadlineUnmet)


@pytest.mark.parametrize(
    ("error", "blamed"),
    [
        (WorkerReset("cut"), True),
        (DecodeTimeout("slow"), True),
        (AdapterError("down", status=502), True),
        (AdapterError("busy", status=429), False),  # busy, not sick
        (AdapterError("bad", status=400), False),
        (PromptTooLarge("large"), False),
        (ProtocolError("garbage"), False),
    ],
)
def test_what_counts_against_a_replica(error: WorkerError, blamed: bool) -> None:
    assert POLICY.blames_replica(error) is blamed


def test_a_policy_is_checked_when_made() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(TypeError, match="deadline_s"):
        RetryPolicy(deadline_s="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_backoff_s"):
        RetryPolicy(max_backoff_s=float("inf"))
