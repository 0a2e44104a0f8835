"""Where a task goes for its prompt's beginning: the digests of a prompt's blocks, the
bounded table of who evaluated them, and the choice weighed against load. Pure logic,
no sockets."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamacpp_adapter import ChatRequest, PrefixPolicy, TaskRequest
from llamacpp_adapter._host.placement import Pools
from llamacpp_adapter._host.prefixes import Prefixes

from .test_placement import bound, pick, replica

POLICY = PrefixPolicy(block_tokens=4, min_tokens=8)
#: 64 characters: 4 blocks of 4 tokens (16 bytes each).
SYSTEM = "You are a careful assistant who answers in one short sentence only!"[:64]


def text(*parts: str) -> TaskRequest:
    return TaskRequest("".join(parts))


# --- Digests -----------------------------------------------------------------------------


@given(st.text(min_size=0, max_size=300), st.text(max_size=300))
def test_prompts_that_share_a_beginning_share_the_digests_of_its_whole_blocks(
    head: str, tail: str
) -> None:
    short = POLICY.digests(text(head))
    longer = POLICY.digests(text(head, tail))
    assert longer[: len(short)] == short
    whole = len(head.encode("utf-8", "surrogatepass")) // 16
    assert len(short) == (whole if whole * 4 >= POLICY.min_tokens else 0)


def test_a_change_in_a_block_changes_its_digest_and_every_one_after() -> None:
    before = POLICY.digests(text(SYSTEM))
    after = POLICY.digests(text(SYSTEM[:20] + "X" + SYSTEM[21:]))
    assert before[0] == after[0]  # bytes 0-15
    assert all(b != a for b, a in zip(before[1:], after[1:], strict=True))


def test_text_ids_and_chats_never_share_a_digest() -> None:
    as_text = POLICY.digests(TaskRequest("a" * 64))
    as_ids = POLICY.digests(TaskRequest([97] * 16))
    as_chat = POLICY.digests(ChatRequest([{"role": "user", "content": "a" * 64}]))
    assert as_text
    assert as_ids
    assert as_chat
    assert not set(as_text) & set(as_ids)
    assert not set(as_chat) & (set(as_text) | set(as_ids))


def test_a_conversation_s_next_turn_begins_with_its_last_turn() -> None:
    turn = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi " * 20}]
    last = POLICY.digests(ChatRequest(turn))
    reply = [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "More?"}]
    following = POLICY.digests(ChatRequest([*turn, *reply]))
    assert len(following) > len(last)
    assert following[: len(last)] == last
    # The tools come first in the template: other tools, another beginning.
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    assert POLICY.digests(ChatRequest(turn, tools=[tool]))[0] != last[0]


def test_token_ids_are_digested_by_blocks_of_ids() -> None:
    ids = list(range(1000, 1040))
    digests = POLICY.digests(TaskRequest(ids))
    assert len(digests) == 10
    assert POLICY.digests(TaskRequest([*ids[:20], 7, *ids[21:]]))[:5] == digests[:5]


def test_a_short_prompt_and_a_long_one_past_the_bound_cost_what_they_are_allowed() -> None:
    assert POLICY.digests(text("a" * 31)) == ()  # under min_tokens: nothing to place by
    capped = PrefixPolicy(block_tokens=4, min_tokens=4, max_tokens=40)
    assert len(capped.digests(text("a" * 10_000))) == 10


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("block_tokens", 0, ValueError),
        ("block_tokens", 1.5, TypeError),
        ("min_tokens", -1, ValueError),
        ("balance", 1.5, ValueError),
        ("balance", math.nan, ValueError),
        ("balance", "0.5", TypeError),
        ("max_digests", 0, ValueError),
        ("holders", 0, ValueError),
    ],
)
def test_a_bad_policy_is_refused_with_its_field_named(
    field: str, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match=field):
        PrefixPolicy(**{field: value})  # type: ignore[arg-type]


# --- The table ---------------------------------------------------------------------------


def test_the_table_gives_each_replica_s_longest_beginning_of_the_prompt() -> None:
    table = Prefixes(limit=100, holders=4)
    document = POLICY.digests(text(SYSTEM, "x" * 64))  # 8 blocks
    table.evaluated("p", document[:4], "a")  # a evaluated the system prompt alone
    table.evaluated("p", document, "b")
    assert table.held("p", document, block_tokens=4) == {"a": 16, "b": 32}
    assert table.held("other pool", document, block_tokens=4) == {}


def test_the_table_is_bounded_and_forgets_the_least_recently_seen() -> None:
    table = Prefixes(limit=8, holders=2)
    old, new = POLICY.digests(text("o" * 64)), POLICY.digests(text("n" * 128))
    table.evaluated("p", old, "a")
    table.evaluated("p", new, "b")  # 8 blocks: the old ones go
    assert len(table) == 8
    assert table.held("p", old, block_tokens=4) == {}
    for name in ("c", "d", "b"):
        table.evaluated("p", new, name)
    assert table.held("p", new, block_tokens=4) == {"b": 32, "d": 32}  # the last two


# --- Placement ---------------------------------------------------------------------------


def test_a_task_goes_where_its_beginning_was_evaluated_over_more_free_slots() -> None:
    a, b = replica("a", slots=4), replica("b", slots=4)
    a.take()
    assert pick([a, b], cached={"a": 64}, prefixes=POLICY) is a
    assert pick([a, b], cached={"a": 4}, prefixes=POLICY) is b  # under min_tokens
    assert pick([a, b], cached={"a": 64}, prefixes=None) is b  # placement by slots alone
    assert pick([a, b], cached={"a": 16, "b": 64}, prefixes=POLICY) is b  # the longest


def test_a_replica_holding_the_beginning_is_passed_over_once_much_busier() -> None:
    a, b = replica("a", slots=4), replica("b", slots=4)
    for _ in range(2):
        a.take()
    assert pick([a, b], cached={"a": 64}, prefixes=POLICY) is a  # half busy: within 0.5
    a.take()
    assert pick([a, b], cached={"a": 64}, prefixes=POLICY) is b


@pytest.mark.parametrize("slots", [2, 4, 8])
async def test_a_hot_prefix_spreads_across_replicas_under_load(slots: int) -> None:
    """Tasks sharing one long beginning, arriving while the earlier ones still run: the
    replica holding it is never busier than the other by more than the policy's balance
    (and a slot), and once both hold it each task goes where it is."""
    pools = Pools(slot_wait_s=0.0, rng=random.Random(0), prefixes=POLICY)
    pools.open()
    a, b = bound(pools, "a", slots=slots), bound(pools, "b", slots=slots)
    widest = 0
    for n in range(2 * slots):
        task = TaskRequest(SYSTEM + f"question {n}")
        got = await pools.place("p", task, deadline=math.inf, min_context=0, avoid=())
        assert got is not None
        widest = max(widest, abs(a.in_flight - b.in_flight))
    assert widest <= POLICY.balance * slots + 1
    assert a.in_flight == b.in_flight == slots
    digests = POLICY.digests(TaskRequest(SYSTEM))
    assert set(pools.prefixes.held("p", digests, block_tokens=4)) == {"a", "b"}


async def test_tasks_one_at_a_time_go_to_the_replica_that_holds_their_beginning() -> None:
    pools = Pools(slot_wait_s=0.0, rng=random.Random(1), prefixes=POLICY)
    pools.open()
    bound(pools, "a", slots=2), bound(pools, "b", slots=2)
    conversation = SYSTEM
    where = []
    for turn in range(6):
        conversation += f" turn {turn} " * 4
        got = await pools.place(
            "p", TaskRequest(conversation), deadline=math.inf, min_context=0, avoid=()
        )
        assert got is not None
        got[0].release()
        where.append(got[0].name)
    assert len(set(where)) == 1  # the first turn's draw, then where it was evaluated


async def test_without_a_policy_the_table_stays_empty() -> None:
    pools = Pools(slot_wait_s=0.0, rng=random.Random(0))
    pools.open()
    bound(pools, "a")
    got = await pools.place("p", text(SYSTEM * 4), deadline=math.inf, min_context=0, avoid=())
    assert got is not None
    assert len(pools.prefixes) == 0
