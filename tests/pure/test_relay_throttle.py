"""The relay's throttle of wrong tokens, without a socket: a burst answered at once, then
one answer per interval however many come at once, none past the bound, each address on
its own, and a table that stays bounded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamacpp_adapter import TokenThrottle
from llamacpp_adapter._relay.throttle import WrongTokens, address_key


def test_a_burst_is_answered_at_once_then_one_an_interval() -> None:
    table = WrongTokens(TokenThrottle(burst=3, per_second=2.0, max_wait_s=10.0))
    waits = [table.wrong("10.0.0.1", 100.0) for _ in range(6)]
    assert waits == [0.0, 0.0, 0.0, 0.5, 1.0, 1.5]


def test_the_budget_refills_at_the_rate() -> None:
    table = WrongTokens(TokenThrottle(burst=2, per_second=1.0, max_wait_s=10.0))
    assert [table.wrong("a", 0.0) for _ in range(2)] == [0.0, 0.0]
    assert table.wrong("a", 1.0) == 0.0  # one came back in a second
    assert table.wrong("a", 1.0) == 1.0
    assert table.wrong("a", 10.0) == 0.0  # all came back


def test_past_the_bound_it_is_closed_unanswered_and_not_counted() -> None:
    table = WrongTokens(TokenThrottle(burst=1, per_second=1.0, max_wait_s=2.0))
    assert [table.wrong("a", 0.0) for _ in range(3)] == [0.0, 1.0, 2.0]
    assert table.wrong("a", 0.0) is None
    assert table.wrong("a", 0.0) is None
    assert table.wrong("a", 1.0) == 2.0  # the refused ones took no turn


def test_addresses_are_slowed_each_on_its_own() -> None:
    table = WrongTokens(TokenThrottle(burst=1, per_second=1.0))
    assert table.wrong("a", 0.0) == 0.0
    assert table.wrong("a", 0.0) == 1.0
    assert table.wrong("b", 0.0) == 0.0


@given(
    st.lists(
        st.tuples(st.integers(0, 50), st.floats(0.0, 0.5, allow_nan=False)),
        max_size=300,
    )
)
def test_answers_never_come_faster_than_the_budget_allows(
    attempts: list[tuple[int, float]],
) -> None:
    """Whatever the arrivals, the answers given (at now + wait) within any window of T
    seconds number at most burst + T * per_second, and none waits past the bound."""
    throttle = TokenThrottle(burst=4, per_second=5.0, max_wait_s=3.0)
    table = WrongTokens(throttle)
    now = 0.0
    answered: list[float] = []
    for address, step in attempts:
        now += step
        if address % 2:  # others, which fill the table
            table.wrong(f"10.0.0.{address}", now)
        else:
            wait = table.wrong("one", now)
            if wait is not None:
                assert wait <= throttle.max_wait_s
                answered.append(now + wait)
    answered.sort()
    for i, start in enumerate(answered):
        for j in range(i, len(answered)):
            window = answered[j] - start
            assert j - i + 1 <= throttle.burst + window * throttle.per_second + 1e-6


def test_the_table_is_bounded_and_forgets_whole_budgets() -> None:
    table = WrongTokens(TokenThrottle(burst=1, per_second=1.0, max_addresses=100))
    for n in range(1000):
        table.wrong(f"10.0.{n // 256}.{n % 256}", 0.0)
    assert len(table) == 100
    table.wrong("late", 5.0)  # every other budget is whole by now
    assert len(table) == 1


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("/run/relay.sock", "/run/relay.sock"),
    ],
)
def test_an_ipv6_host_counts_by_its_network(host: str, key: str) -> None:
    assert address_key(host) == key


@pytest.mark.parametrize(
    ("fields", "error", "says"),
    [
        ({"burst": 0}, ValueError, "burst"),
        ({"burst": 1.5}, TypeError, "burst"),
        ({"per_second": 0}, ValueError, "per_second"),
        ({"per_second": float("inf")}, ValueError, "per_second"),
        ({"max_wait_s": -1}, ValueError, "max_wait_s"),
        ({"max_addresses": 0}, ValueError, "max_addresses"),
    ],
)
def test_a_bad_throttle_is_refused_with_its_field_named(
    fields: dict[str, object], error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=says):
        TokenThrottle(**fields)  # type: ignore[arg-type]
