"""Where the host sends a task, and what it knows of a replica: pure logic, no sockets.

``choose`` is a function of the replicas' state and the task; a ``Replica``'s state
changes only through its methods. The clock is a number the test gives.
"""

from __future__ import annotations

import math
import random

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from llamacpp_adapter import (
    AdapterError,
    HostMetrics,
    LlamaCppHttpAdapter,
    PoolUnavailable,
    PromptTooLarge,
    RetryPolicy,
    SlotUse,
    TaskRequest,
    WorkerProps,
    WorkerReset,
)
from llamacpp_adapter._host.placement import Pools, Sessions, Wait, Waiter, WaitingLine, choose
from llamacpp_adapter._host.replica import Replica

# Made once, never used: a replica needs an adapter, placement never touches it.
ADAPTER = LlamaCppHttpAdapter("http://127.0.0.1:9")
TEXT = TaskRequest("hello")
#: What counts against a replica: a reset does, a 429 (busy, not sick) does not.
POLICY = RetryPolicy()


class Changes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def replica(
    name: str,
    *,
    slots: int | None = 2,
    context: int = 1024,
    unhealthy_after: int = 2,
    on_change: Changes | None = None,
) -> Replica:
    made = Replica(
        "p",
        name,
        ADAPTER,
        HostMetrics(),
        unhealthy_after=unhealthy_after,
        blames=POLICY.blames_replica,
        on_change=on_change or Changes(),
    )
    if slots is not None:
        made.record_props(WorkerProps(slots, None, context, "m.gguf"))
    return made


def pick(replicas: list[Replica], request: TaskRequest = TEXT, **options: object) -> object:
    settings: dict[str, object] = {
        "min_context": 0,
        "avoid": (),
        "now": 0.0,
        "rng": random.Random(0),
    }
    settings.update(options)
    return choose("p", replicas, request, **settings)  # type: ignore[arg-type]


# --- choose ------------------------------------------------------------------------------


def test_no_replica_is_unavailable_at_once() -> None:
    with pytest.raises(PoolUnavailable, match="no replica is bound"):
        pick([])


def test_no_healthy_replica_with_known_slots_is_unavailable() -> None:
    sick = replica("a")
    sick.mark_unhealthy("test")
    unknown = replica("b", slots=None)
    with pytest.raises(PoolUnavailable, match="unhealthy") as raised:
        pick([sick, unknown])
    assert not isinstance(raised.value, PromptTooLarge)


def test_a_prompt_larger_than_every_context_is_too_large() -> None:
    small, larger = replica("a", context=8), replica("b", context=16)
    with pytest.raises(PromptTooLarge) as raised:
        pick([small, larger], TaskRequest(list(range(16))))
    assert raised.value.context_size == 16
    assert raised.value.prompt_tokens == 16
    assert isinstance(raised.value, PoolUnavailable)  # a caller catching that still does


def test_the_prompt_goes_where_it_fits() -> None:
    small, larger = replica("a", context=8, slots=4), replica("b", context=16, slots=1)
    assert pick([small, larger], TaskRequest(list(range(8)))) is larger
    assert pick([small, larger], TaskRequest(list(range(7)))) is small  # more free slots


def test_min_context_leaves_out_smaller_replicas() -> None:
    small, larger = replica("a", context=8, slots=4), replica("b", context=16, slots=1)
    assert pick([small, larger], min_context=9) is larger
    with pytest.raises(PromptTooLarge):
        pick([small, larger], min_context=17)


def test_the_most_free_slots_wins() -> None:
    one, three = replica("a", slots=1), replica("b", slots=3)
    assert pick([one, three]) is three
    three.take()
    three.take()
    assert three.free_slots() == 1
    assert {pick([one, three], rng=random.Random(seed)) for seed in range(20)} == {one, three}


def test_other_clients_use_of_slots_counts() -> None:
    a, b = replica("a", slots=2), replica("b", slots=2)
    a.record_slots(SlotUse(total=2, busy=1))
    assert a.free_slots() == 1
    assert pick([a, b]) is b


def test_a_replica_the_task_failed_on_is_the_last_choice() -> None:
    a, b = replica("a", slots=4), replica("b", slots=1)
    assert pick([a, b], avoid={a}) is b
    b.take()
    assert pick([a, b], avoid={a}) is a  # the only one with a free slot


def test_no_free_slot_means_wait_for_a_change() -> None:
    a = replica("a", slots=1)
    a.take()
    assert pick([a]) == Wait(math.inf)
    a.release()
    assert pick([a]) is a


def test_retry_after_keeps_a_replica_out_until_it_passes() -> None:
    a, b = replica("a"), replica("b")
    busy = AdapterError("busy", status=429, retry_after=3.0)
    a.record_failure(busy, now=10.0)
    b.record_failure(AdapterError("busy", status=429, retry_after=5.0), now=10.0)
    assert pick([a, b], now=12.0) == Wait(13.0)
    assert pick([a, b], now=13.0) is a
    assert pick([a, b], now=15.0) in (a, b)


def test_the_draw_among_equals_follows_the_rng() -> None:
    replicas = [replica(name) for name in "abcd"]
    first = [pick(replicas, rng=random.Random(7)) for _ in range(5)]
    assert first == [pick(replicas, rng=random.Random(7)) for _ in range(5)]


# --- Replica: its state and its transitions --------------------------------------------


def test_a_run_of_blamed_failures_marks_a_replica_unhealthy() -> None:
    changes = Changes()
    a = replica("a", unhealthy_after=2, on_change=changes)
    before = changes.count
    a.record_failure(WorkerReset("cut"), now=0.0)
    assert a.healthy
    a.record_failure(WorkerReset("cut"), now=0.0)
    assert not a.healthy
    assert not a.placeable
    assert changes.count > before  # a waiting task looks again
    a.mark_healthy()
    assert a.healthy
    assert a.placeable


def test_a_failure_not_blamed_and_a_first_token_keep_it_healthy() -> None:
    a = replica("a", unhealthy_after=2)
    for _ in range(5):
        a.record_failure(AdapterError("busy", status=429), now=0.0)
    assert a.healthy
    a.record_failure(WorkerReset("cut"), now=0.0)
    a.record_first_token(0.01)  # ends the run
    a.record_failure(WorkerReset("cut"), now=0.0)
    assert a.healthy


def test_learned_props_count_what_other_clients_use() -> None:
    a = replica("a", slots=None)
    assert not a.placeable
    assert a.free_slots() == 0
    a.take()
    a.record_props(WorkerProps(4, 1, 2048, "m.gguf"))  # 3 busy: 1 ours, 2 others'
    status = a.status()
    assert (status.slots_total, status.context_size, status.in_flight) == (4, 2048, 1)
    assert status.free_slots == 1


def test_release_tells_waiting_tasks() -> None:
    changes = Changes()
    a = replica("a", on_change=changes)
    a.take()
    before = changes.count
    a.release()
    assert changes.count == before + 1
    assert a.in_flight == 0


# --- Pinned replica sets ---------------------------------------------------------------


def bound(
    pools: Pools,
    name: str,
    *,
    slots: int = 2,
    build: str | None = None,
    model: str | None = None,
    looked: bool = True,
) -> Replica:
    """A replica bound to *pools*' pool "p", its props learned (its engine build and
    model with them, when given), its first look done unless told otherwise."""
    made = Replica(
        "p",
        name,
        ADAPTER,
        HostMetrics(),
        unhealthy_after=2,
        blames=POLICY.blames_replica,
        on_change=pools.changed,
        on_learned=pools.check_pin,
    )
    pools.add(made)
    made.record_props(
        WorkerProps(slots, None, 1024, "m.gguf", build_info=build, model_digest=model)
    )
    if looked:
        made.record_first_look()
    return made


def learned(pools: Pools, name: str, build: str, model: str) -> Replica:
    return bound(pools, name, build=build, model=model, looked=False)


def test_a_replica_unlike_its_pool_s_first_gets_no_work() -> None:
    pools = Pools(slot_wait_s=1.0, rng=random.Random(0))
    first = learned(pools, "a", "b100-aaaa", "digest-one")
    same = learned(pools, "b", "b100-aaaa", "digest-one")
    other_model = learned(pools, "c", "b100-aaaa", "digest-two")
    other_build = learned(pools, "d", "b200-bbbb", "digest-one")
    assert first.mismatch is None
    assert same.mismatch is None
    assert other_model.mismatch is not None
    assert "model digest-two" in other_model.mismatch
    assert other_build.mismatch is not None
    assert "engine build b200-bbbb where a runs b100-aaaa" in other_build.mismatch
    assert not other_model.placeable
    assert {pick(pools.of("p"), rng=random.Random(s)) for s in range(20)} == {first, same}
    assert other_model.status().mismatch == other_model.mismatch
    # The first replica leaves: the pin moves to the next one bound, and c and d differ
    # from it as before; once b leaves too, c is the first, and d differs in both.
    pools.remove("p", "a")
    assert (same.mismatch, other_build.mismatch is None) == (None, False)
    pools.remove("p", "b")
    assert other_model.mismatch is None
    assert other_build.mismatch is not None
    assert "model" in other_build.mismatch


def test_an_unpinned_pool_gives_work_to_every_replica() -> None:
    pools = Pools(slot_wait_s=1.0, rng=random.Random(0), pinned=False)
    learned(pools, "a", "b100-aaaa", "digest-one")
    other = learned(pools, "b", "b200-bbbb", "digest-two")
    assert other.mismatch is None
    assert other.placeable


def test_a_pool_of_mismatched_replicas_says_why_it_is_unavailable() -> None:
    pools = Pools(slot_wait_s=1.0, rng=random.Random(0))
    first = learned(pools, "a", "b100-aaaa", "digest-one")
    learned(pools, "b", "b100-aaaa", "digest-two")
    first.mark_unhealthy("test")
    with pytest.raises(PoolUnavailable, match="another engine build or model"):
        pick(pools.of("p"))


# --- The waiting line ------------------------------------------------------------------


async def test_a_freed_slot_goes_to_the_task_that_waited_longest() -> None:
    """A task that arrives as a slot frees does not take it from one already waiting."""
    pools = Pools(slot_wait_s=60.0, rng=random.Random(0))
    pools.open()
    only = bound(pools, "a", slots=1)
    order: list[str] = []

    async def task(name: str) -> None:
        placed = await pools.place("p", TEXT, deadline=math.inf, min_context=0, avoid=())
        assert placed is not None
        assert placed[0] is only
        order.append(name)
        only.release()

    only.take()  # the one slot is busy
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task, "waited")
        await wait_all_tasks_blocked()
        only.release()
        await task("newcomer")  # arrives as the slot frees, before the waiting task runs
    assert order == ["waited", "newcomer"]


def waiter(ticket: int, request: TaskRequest = TEXT, **options: object) -> Waiter:
    return Waiter(ticket, request, **options)  # type: ignore[arg-type]


def serve(line: WaitingLine, replicas: list[Replica], now: float = 0.0) -> float:
    return line.serve("p", replicas, now=now, rng=random.Random(0))


def test_the_line_serves_the_lowest_ticket_first_whatever_the_order_of_joining() -> None:
    a = replica("a", slots=2)
    line = WaitingLine()
    waiters = [waiter(5), waiter(1), waiter(3)]
    for each in waiters:
        line.join(each)
    assert serve(line, [a]) == math.inf
    assert [w.ticket for w in waiters if w.placed is a] == [1, 3]
    assert [w.ticket for w in line] == [5]
    assert a.in_flight == 2
    a.release()
    serve(line, [a])
    assert waiters[0].placed is a
    assert len(line) == 0


def test_each_waiter_served_is_told_once() -> None:
    told: list[int] = []
    line = WaitingLine()
    for ticket in (1, 2):
        line.join(waiter(ticket, served=lambda t=ticket: told.append(t)))
    serve(line, [replica("a", slots=1)])
    assert told == [1]


def test_a_task_that_needs_a_larger_context_does_not_hold_back_one_that_fits() -> None:
    small = replica("small", slots=1, context=512)
    line = WaitingLine()
    large_task = waiter(1, min_context=4096)
    fits = waiter(2)
    line.join(large_task)
    line.join(fits)
    big = replica("big", slots=1, context=8192)
    big.take()  # busy
    serve(line, [small, big])
    assert (large_task.placed, fits.placed) == (None, small)
    big.release()
    serve(line, [small, big])
    assert large_task.placed is big


def test_a_task_past_its_deadline_is_given_nothing() -> None:
    line = WaitingLine()
    late = waiter(1, deadline=5.0)
    line.join(late)
    serve(line, [replica("a")], now=5.0)
    assert late.placed is None
    assert list(line) == [late]  # its own task ends its wait


def test_a_task_that_can_never_be_placed_is_failed() -> None:
    line = WaitingLine()
    doomed = waiter(1, TaskRequest([1] * 2000))
    line.join(doomed)
    serve(line, [replica("a", context=1024)])
    assert isinstance(doomed.refused, PromptTooLarge)
    assert len(line) == 0


def test_the_line_looks_again_when_a_retry_after_runs_out() -> None:
    a = replica("a")
    a.record_failure(AdapterError("busy", status=429, retry_after=2.0), now=10.0)
    line = WaitingLine()
    line.join(waiter(1))
    assert serve(line, [a], now=10.0) == 12.0
    assert serve(line, [a], now=12.0) == math.inf
    assert len(line) == 0


def test_a_task_waits_for_a_replica_bound_a_moment_before_it_and_keeps_its_place() -> None:
    a = replica("a", slots=1)
    a.record_first_look()
    new = replica("new", slots=1)  # bound a moment ago: its first look is on its way
    new.take()  # busy: one slot in all is free
    line = WaitingLine()
    early, late = waiter(1, learning=[new]), waiter(2, learning=[new])
    line.join(late)
    line.join(early)
    serve(line, [a, new])
    assert (early.placed, late.placed) == (None, None)
    new.record_first_look()
    serve(line, [a, new])
    assert (early.placed, late.placed) == (a, None)


def test_a_mismatched_replica_stays_reported_as_such_through_a_run_of_health() -> None:
    metrics = HostMetrics()
    pools = Pools(slot_wait_s=1.0, rng=random.Random(0))
    learned(pools, "a", "b100-aaaa", "digest-one")
    other = Replica(
        "p",
        "b",
        ADAPTER,
        metrics,
        unhealthy_after=2,
        blames=POLICY.blames_replica,
        on_change=pools.changed,
        on_learned=pools.check_pin,
    )
    pools.add(other)
    other.record_props(
        WorkerProps(2, None, 1024, "m.gguf", build_info="b100-aaaa", model_digest="x")
    )

    def gauge() -> float | None:
        return metrics.registry.get_sample_value(
            "llamacpp_adapter_replica_mismatched",
            {"engine": "llama.cpp", "pool": "p", "replica": "b"},
        )

    assert other.mismatch is not None
    assert gauge() == 1
    other.mark_unhealthy("a probe failed")
    other.mark_healthy()
    assert other.status().mismatch is not None  # it still gets no work
    assert gauge() == 1  # and the gauge still says so


# --- Conversations -----------------------------------------------------------------------


def test_a_conversation_waits_for_its_replica_until_its_bound_then_goes_elsewhere() -> None:
    a, b = replica("a", slots=1), replica("b", slots=2)
    assert pick([a, b], prefer=a, stick_until=5.0, now=1.0) is a  # over b's two free slots
    a.take()
    assert pick([a, b], prefer=a, stick_until=5.0, now=1.0) == Wait(5.0)
    assert pick([a, b], prefer=a, stick_until=5.0, now=5.0) is b
    # Without a bound (a paused stream's preference), it goes elsewhere at once.
    assert pick([a, b], prefer=a, now=1.0) is b


def test_a_conversation_waits_no_longer_than_its_replica_s_retry_after() -> None:
    a, b = replica("a"), replica("b")
    a.record_failure(AdapterError("busy", status=429, retry_after=2.0), now=0.0)
    assert pick([a, b], prefer=a, stick_until=5.0, now=1.0) == Wait(2.0)
    assert pick([a, b], prefer=a, stick_until=5.0, now=2.0) is a


def test_a_replica_counts_its_prompt_tokens_and_those_its_cache_spared() -> None:
    metrics = HostMetrics()
    a = Replica(
        "p", "a", ADAPTER, metrics, unhealthy_after=2, blames=POLICY.blames_replica,
        on_change=Changes(),
    )  # fmt: skip
    assert a.status().cache_hit_rate is None
    a.record_prompt(100, 300)
    a.record_prompt(50, None)  # an engine that does not say
    status = a.status(sessions=2)
    assert (status.prompt_tokens, status.prompt_tokens_cached, status.sessions) == (450, 300, 2)
    assert status.cache_hit_rate == 300 / 450
    labels = {"engine": "llama.cpp", "pool": "p", "replica": "a"}
    sample = metrics.registry.get_sample_value
    assert sample("llamacpp_adapter_prompt_tokens_total", labels) == 450
    assert sample("llamacpp_adapter_prompt_tokens_cached_total", labels) == 300


def test_the_sessions_table_is_bounded_and_forgets_the_least_recently_placed() -> None:
    table = Sessions(limit=2)
    table.ran("p", "one", "a")
    table.ran("p", "two", "b")
    table.ran("p", "one", "b")  # placed again: the most recent
    table.ran("p", "three", "a")
    assert len(table) == 2
    assert table.replica_of("p", "two") is None
    assert (table.replica_of("p", "one"), table.replica_of("p", "three")) == ("b", "a")
    assert table.replica_of("other pool", "one") is None
    assert (table.on("p", "a"), table.on("p", "b")) == (1, 1)


async def test_a_conversation_sticks_spills_after_its_wait_and_follows_the_spill(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pools = Pools(slot_wait_s=60.0, rng=random.Random(0), session_wait_s=2.0)
    pools.open()
    a, b = bound(pools, "a", slots=2), bound(pools, "b", slots=1)
    turn = TaskRequest("hello", session="conversation")

    async def place() -> tuple[Replica, float]:
        asked = trio.current_time()
        placed = await pools.place("p", turn, deadline=math.inf, min_context=0, avoid=())
        assert placed is not None
        placed[0].release()
        return placed[0], placed[1] - asked

    pools.sessions.ran("p", "conversation", "b")
    assert await place() == (b, 0.0)  # b, where its cache is, over a's two free slots
    b.take()
    assert await place() == (a, 2.0)  # b stays full: after the wait, a, and now a's
    assert pools.sessions.replica_of("p", "conversation") == "a"
    b.release()
    assert await place() == (a, 0.0)


async def test_a_conversation_whose_replica_was_unbound_goes_elsewhere() -> None:
    pools = Pools(slot_wait_s=60.0, rng=random.Random(0))
    pools.open()
    bound(pools, "a", slots=1)
    b = bound(pools, "b", slots=1)
    pools.sessions.ran("p", "conversation", "a")
    pools.remove("p", "a")
    turn = TaskRequest("hello", session="conversation")
    placed = await pools.place("p", turn, deadline=math.inf, min_context=0, avoid=())
    assert placed is not None
    assert placed[0] is b
    assert pools.sessions.replica_of("p", "conversation") == "b"


def test_a_new_conversation_goes_where_the_fewest_conversations_are() -> None:
    a, b = replica("a", slots=4), replica("b", slots=4)
    b.take()
    assert pick([a, b], sessions={"a": 3, "b": 2}) is b  # over a's more free slots
    assert pick([a, b], sessions={"a": 2, "b": 2}) is a  # equal: by free slots
    for _ in range(3):
        b.take()
    assert pick([a, b], sessions={"a": 3, "b": 2}) is a  # b is full: a


def test_the_sessions_table_counts_the_conversations_on_each_replica() -> None:
    table = Sessions(limit=3)
    for session, where in (("one", "a"), ("two", "a"), ("three", "b"), ("one", "b")):
        table.ran("p", session, where)
    assert dict(table.counts("p")) == {"a": 1, "b": 2}
    table.ran("p", "four", "a")  # "two", the least recently placed, is forgotten
    assert dict(table.counts("p")) == {"a": 1, "b": 2}
    assert table.replica_of("p", "two") is None
    assert dict(table.counts("other pool")) == {}


async def test_conversations_arriving_together_spread_evenly() -> None:
    """Each conversation placed is work to come: b, half busy with other work, still gets
    half of them, where free slots alone would give a six."""
    pools = Pools(slot_wait_s=60.0, rng=random.Random(3))
    pools.open()
    bound(pools, "a", slots=8)
    b = bound(pools, "b", slots=8)
    for _ in range(4):
        b.take()
    for n in range(8):
        task = TaskRequest("hello", session=f"conversation {n}")
        placed = await pools.place("p", task, deadline=math.inf, min_context=0, avoid=())
        assert placed is not None
        placed[0].release()
    assert (pools.sessions.on("p", "a"), pools.sessions.on("p", "b")) == (4, 4)


def test_a_conversation_leaves_a_replica_with_two_more_conversations_than_another() -> None:
    a, b = replica("a"), replica("b")
    assert pick([a, b], prefer=a, stick_until=5.0, sessions={"a": 4, "b": 3}) is a
    assert pick([a, b], prefer=a, stick_until=5.0, sessions={"a": 5, "b": 3}) is b
    b.take()
    b.take()  # b is full: it could not take it now, so the conversation stays
    assert pick([a, b], prefer=a, stick_until=5.0, sessions={"a": 5, "b": 3}) is a
