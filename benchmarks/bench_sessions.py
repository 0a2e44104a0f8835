"""Conversations across replicas: where the host places a conversation's turns, against
two real llama-servers (the tiny model), each placement on fresh servers with the same
conversations:

* blind: a coin for each turn, between the two replicas (each its own pool), the turn
  waiting for that one's slot;
* by free slots alone, as the host placed every task before conversations
  (``AdapterHost(prefixes=None)``, no session key);
* sessions: each turn carries its conversation's key (``session=``), prefixes on;
* prefixes alone: no key, the host finds each conversation by its prompt's beginning;
* sessions and ``id_slot``: as sessions, each conversation also asking the engine for
  one slot of the replica (the experiment the issue asks for).

Eight conversations of six turns run at once on two replicas of two slots each: a
turn is the conversation so far (a shared 100-token system prompt, then each turn's
200-token message and the model's 150-token answer), as token ids, so that what the
engine could reuse is exact; between a turn's answer and the next, the user reads and writes
for a while (the same times for every placement). Each engine runs on a core of its own,
as two machines would; this process runs beside them (it is not what is measured).

    python -m benchmarks.bench_sessions [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import trio

from llamacpp_adapter import AdapterHost, End, LlamaCppHttpAdapter, Metrics, TaskRequest, Token
from llamacpp_adapter._local.server import LocalLlamaServer

from ._common import CLIENT_CORE, SERVER_CORE, Table, Target, pinned

#: The tiny model's byte tokens past ASCII banned (every token's id is in the stream),
#: and every answer the same length.
ANSWER: dict[str, Any] = {"ignore_eos": True, "logit_bias": [[i, False] for i in range(131, 259)]}
ANSWER_TOKENS = 150
SYSTEM_TOKENS = 100
TURN_TOKENS = 200
SLOTS = 2
#: The tiny model with wide feed-forward layers: its work on a prompt is mostly matrix
#: products, as in a real model (the default's is mostly attention, which makes a cached
#: turn's new tokens cost nearly half of the whole conversation's; NOTES.md).
FEED_FORWARD = 8192
#: Enough context a slot for the last turn (about 2,200 tokens) and its answer.
CONTEXT_PER_SLOT = 4096
#: The time a user takes between an answer and the next turn, drawn in this range.
THINK_S = (0.5, 1.5)
#: The cores of the two replicas; this process runs on either.
CORES = (SERVER_CORE, CLIENT_CORE)


@dataclass(frozen=True)
class Arm:
    """A placement compared: the host's options, whether a turn carries its
    conversation's key, whether it asks for a slot, whether a coin picks its replica."""

    host: dict[str, Any] = field(default_factory=dict)
    keyed: bool = False
    id_slot: bool = False
    coin: bool = False


ARMS: dict[str, Arm] = {
    "blind (a coin a turn)": Arm({"prefixes": None}, coin=True),
    "by free slots (before)": Arm({"prefixes": None}),
    "sessions": Arm(keyed=True),
    "prefixes alone": Arm(),
    "sessions + id_slot": Arm(keyed=True, id_slot=True),
}
BLIND, BEFORE, SESSIONS = "blind (a coin a turn)", "by free slots (before)", "sessions"


@contextlib.contextmanager
def replicas() -> Iterator[list[LocalLlamaServer]]:
    """Two llama-servers, each on a core of its own (as two machines would be)."""
    servers = [
        LocalLlamaServer(
            context=CONTEXT_PER_SLOT * SLOTS, parallel=SLOTS, model_feed_forward=FEED_FORWARD
        )
        for _ in CORES
    ]
    try:
        for server, core in zip(servers, CORES, strict=True):
            with pinned(core):
                server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


@dataclass
class Turn:
    """One turn as the client saw it."""

    conversation: int
    index: int
    prompt: int  # tokens sent
    ttft_s: float
    cached: int
    answer: int


@dataclass
class Run:
    turns: list[Turn] = field(default_factory=list)
    wall_s: float = 0.0
    by_replica: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Conversation:
    """What a user says, as token ids (the first message begins with the shared system
    prompt), the time they take before each turn, and the coins of the blind placement."""

    said: list[list[int]]
    think_s: list[float]
    coins: list[int]


def conversations(count: int, turns: int, seed: int) -> list[Conversation]:
    rng = random.Random(seed)
    system = [rng.randrange(3, 131) for _ in range(SYSTEM_TOKENS)]
    made = []
    for _ in range(count):
        said = [[rng.randrange(3, 131) for _ in range(TURN_TOKENS)] for _ in range(turns)]
        said[0] = system + said[0]
        think = [rng.uniform(*THINK_S) for _ in range(turns)]
        made.append(Conversation(said, think, [rng.randrange(2) for _ in range(turns)]))
    return made


async def _conversations(urls: list[str], name: str, users: list[Conversation]) -> Run:
    arm = ARMS[name]
    run = Run()
    async with contextlib.AsyncExitStack() as stack:
        host = await stack.enter_async_context(AdapterHost(slot_wait_s=600, **arm.host))
        pools = [f"r{n}" if arm.coin else "p" for n in range(len(urls))]
        for n, url in enumerate(urls):
            adapter = await stack.enter_async_context(LlamaCppHttpAdapter(url))
            host.bind(pools[n], f"r{n}", adapter)
        for pool in set(pools):
            await host.wait_ready(pool)

        async def conversation(c: int) -> None:
            user = users[c]
            history: list[int] = []
            for index, message in enumerate(user.said):
                await trio.sleep(user.think_s[index])
                history += message
                extra = dict(ANSWER, id_slot=c % SLOTS) if arm.id_slot else ANSWER
                task = TaskRequest(
                    history,
                    max_tokens=ANSWER_TOKENS,
                    temperature=0.0,
                    extra=extra,
                    session=f"conversation-{c}" if arm.keyed else None,
                )
                pool = pools[user.coins[index]]
                asked = time.perf_counter()
                first = cached = -1.0
                answer: list[int] = []
                async with host.submit(pool, task) as events:
                    async for event in events:
                        if isinstance(event, Token):
                            if first < 0:
                                first = time.perf_counter() - asked
                            answer += event.token_ids
                        elif isinstance(event, Metrics):
                            cached = event.cached_tokens if event.cached_tokens is not None else -1
                        elif isinstance(event, End):
                            assert event.tokens_out == len(answer), "an id left out"
                run.turns.append(Turn(c, index, len(history), first, int(cached), len(answer)))
                history += answer

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for c in range(len(users)):
                nursery.start_soon(conversation, c)
        run.wall_s = time.perf_counter() - started
        for sample in host.metrics.registry.collect():
            for each in sample.samples:
                if each.name == "llamacpp_adapter_requests_total":
                    name = each.labels["replica"]
                    run.by_replica[name] = run.by_replica.get(name, 0) + int(each.value)
    return run


@dataclass
class Figures:
    reused: float  # follow-up turns that took 90 % of what their last turn left
    cached_share: float  # of the follow-up turns' prompt tokens, those taken from cache
    ttft_follow_ms: float
    ttft_first_ms: float
    busier: float  # turns of the busier replica over the other's
    tokens_per_s: float

    @classmethod
    def of(cls, runs: list[Run]) -> Figures:
        """The figures of *runs* (rounds of one placement), their turns taken together."""
        follow, first, reused = [], [], 0
        for run in runs:
            by_turn = {(t.conversation, t.index): t for t in run.turns}
            for t in run.turns:
                if t.index == 0:
                    first.append(t)
                    continue
                follow.append(t)
                last = by_turn[t.conversation, t.index - 1]
                reused += t.cached >= 0.9 * (last.prompt + last.answer)
        busier = max(max(r.by_replica.values()) / max(min(r.by_replica.values()), 1) for r in runs)
        return cls(
            reused=reused / len(follow),
            cached_share=sum(t.cached for t in follow) / sum(t.prompt for t in follow),
            ttft_follow_ms=statistics.median(t.ttft_s for t in follow) * 1000,
            ttft_first_ms=statistics.median(t.ttft_s for t in first) * 1000,
            busier=busier,
            tokens_per_s=sum(t.answer for r in runs for t in r.turns) / sum(r.wall_s for r in runs),
        )


def sessions(*, quick: bool) -> tuple[Table, list[Target]]:
    count, turns = 8, 6
    rounds = 1 if quick else 4
    last_prompt = SYSTEM_TOKENS + turns * TURN_TOKENS + (turns - 1) * ANSWER_TOKENS
    table = Table(
        "Conversations across replicas: where each turn is placed",
        [
            "placement",
            "follow-ups reusing their cache",
            "cached share of follow-up prompts",
            "follow-up TTFT p50 ms",
            "first-turn TTFT p50 ms",
            "busier replica's turns / other's",
            "tokens/s",
        ],
        notes=[
            f"Two llama-server replicas of {SLOTS} slots (the tiny model with "
            f"{FEED_FORWARD:,}-wide feed-forward layers, --cache-ram at its default), each "
            f"on a core of its own; {count} conversations "
            f"of {turns} turns at once, each turn the conversation so far as token ids "
            f"({SYSTEM_TOKENS}-token shared system prompt, {TURN_TOKENS} tokens a message, "
            f"{ANSWER_TOKENS}-token answers; {last_prompt:,} tokens at the last turn), "
            f"{THINK_S[0]}-{THINK_S[1]} s between an answer and the next turn. A "
            "follow-up reuses its cache when the engine took from cache at least 90 % of "
            "the tokens its last turn left there (Metrics.cached_tokens). The turns of "
            f"{rounds} round(s) taken together, each round with its own conversations and "
            "coins, each placement on fresh servers, the placements alternated; the busier "
            "replica's share is the round's that was most uneven.",
        ],
    )
    found: dict[str, list[Run]] = {arm: [] for arm in ARMS}
    for round_ in range(rounds):
        users = conversations(count, turns, seed=round_)
        for arm in ARMS:
            with replicas() as servers:
                urls = [s.base_url for s in servers]
                found[arm].append(trio.run(_conversations, urls, arm, users))
    figures = {arm: Figures.of(runs) for arm, runs in found.items()}
    for arm, f in figures.items():
        table.add(
            arm,
            f"{f.reused:.2f}",
            f"{f.cached_share:.2f}",
            f.ttft_follow_ms,
            f.ttft_first_ms,
            f"{f.busier:.2f}",
            f.tokens_per_s,
        )
    ours, blind = figures[SESSIONS], figures[BLIND]
    ttft = ours.ttft_follow_ms / blind.ttft_follow_ms
    rate = ours.tokens_per_s / figures[BEFORE].tokens_per_s
    return table, [
        Target("follow-ups reusing their cache >= 0.9", f"{ours.reused:.2f}", ours.reused >= 0.9),
        Target(
            "follow-up TTFT p50, sessions <= 0.5x blind",
            f"{ttft:.2f}x",
            ttft <= 0.5,
            factor=1 / ttft,
            goal=2.0,
        ),
        Target(
            "busier replica's turns <= 1.5x the other's",
            f"{ours.busier:.2f}x",
            ours.busier <= 1.5,
        ),
        Target(
            "tokens/s, sessions >= by free slots (before)",
            f"{rate:.2f}x",
            rate >= 1.0,
            factor=rate,
            goal=1.0,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    table, targets = sessions(quick=args.quick)
    print(table.markdown())
    for target in targets:
        print(f"{'met' if target.met else 'NOT MET'}: {target.name}: {target.measured}")


if __name__ == "__main__":
    main()
