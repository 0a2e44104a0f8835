"""Where a prompt's beginning was last evaluated: :class:`PrefixPolicy`, how the host
weighs an engine's cache against load, and :class:`Prefixes`, a bounded table of the
digests of prompts' beginnings and the replicas that evaluated them. Pure.

A prompt is cut into blocks, and each block's digest is of the prompt from its start to
the block's end: two prompts that share a beginning share the digests of the blocks it
covers, whatever follows. A conversation's next turn repeats its last turn's prompt, so
a turn without a ``session`` key finds its conversation this way too.
"""

from __future__ import annotations

import hashlib
import math
from array import array
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from .._types import ChatRequest, TaskRequest
from .._validate import count, number

if TYPE_CHECKING:  # the package imports the policy without the host's metrics
    from .replica import Replica

__all__ = ["PrefixPolicy", "Prefixes", "by_prefix"]

#: What a text or a chat's JSON is counted as: about four bytes a token.
_BYTES_PER_TOKEN = 4
#: Token ids are digested as 8-byte words.
_ID_BYTES = 8
_DIGEST_BYTES = 16


@dataclass(frozen=True)
class PrefixPolicy:
    """How the host places a task whose prompt begins like one a replica evaluated
    before, where the engine likely has that beginning in cache (a shared system prompt,
    a document, a conversation's earlier turns).

    A task with no replica of its own (a paused stream's, a conversation's last turn's)
    goes to the ready replica that evaluated the longest beginning of its prompt, of at
    least *min_tokens*, among those no busier than the least busy by more than
    *balance* (a share of their slots); without one, to the one with the most free
    slots. So one hot beginning does not pile every task onto one replica: the others
    take it once it is busier, and then hold it too.

    Args:
        block_tokens: the length of a block, in tokens (a text is counted at four bytes
            a token, and a chat's messages and tools as their JSON).
        min_tokens: the shortest shared beginning worth going to a replica for.
        balance: how much busier a replica holding the beginning may be than the least
            busy ready replica, as a share of its slots (0 to 1).
        max_digests: the blocks' digests remembered, of all prompts; past it the least
            recently seen is forgotten.
        holders: the replicas remembered for each digest, the most recent first.
        max_tokens: how much of a prompt's beginning is digested.
    """

    block_tokens: int = 64
    min_tokens: int = 256
    balance: float = 0.5
    max_digests: int = 65_536
    holders: int = 4
    max_tokens: int = 65_536

    def __post_init__(self) -> None:
        for name in ("block_tokens", "max_digests", "holders", "max_tokens"):
            count(name, getattr(self, name))
        count("min_tokens", self.min_tokens, minimum=0)
        number("balance", self.balance, 0.0, 1.0)

    def digests(self, request: TaskRequest | ChatRequest) -> tuple[bytes, ...]:
        """The digests of *request*'s prompt up to the end of each of its whole blocks;
        none when it is shorter than *min_tokens* (no task would be placed by it)."""
        if isinstance(request, ChatRequest):
            kind, width = b"c", _BYTES_PER_TOKEN
            encode = msgspec.json.encode
            data = b"".join(
                [encode([dict(t) for t in request.tools or ()])]
                + [encode(dict(m)) for m in request.messages]
            )
        elif isinstance(request.prompt, str):
            kind, width = b"t", _BYTES_PER_TOKEN
            data = request.prompt.encode("utf-8", "surrogatepass")
        else:
            kind, width = b"i", _ID_BYTES
            data = array("Q", request.prompt or ()).tobytes()
        block = self.block_tokens * width
        blocks = min(len(data), self.max_tokens * width) // block
        if blocks * self.block_tokens < self.min_tokens:
            return ()
        running = hashlib.blake2b(kind, digest_size=_DIGEST_BYTES)
        digests = []
        view = memoryview(data)
        for start in range(0, blocks * block, block):
            running.update(view[start : start + block])
            digests.append(running.copy().digest())
        return tuple(digests)


class Prefixes:
    """For each of the last *limit* digests seen, the names of the replicas that
    evaluated the prompt beginning it stands for, at most *holders*, by pool. Pure: a
    fixed-size table, the least recently seen digest forgotten first."""

    def __init__(self, *, limit: int, holders: int) -> None:
        self._limit = limit
        self._holders = holders
        self._where: OrderedDict[tuple[str, bytes], tuple[str, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._where)

    def held(self, pool: str, digests: Sequence[bytes], *, block_tokens: int) -> dict[str, int]:
        """For each replica of *pool* that evaluated a beginning of the prompt of
        *digests*, the tokens of the longest such beginning."""
        found: dict[str, int] = {}
        for depth in range(len(digests), 0, -1):
            for name in self._where.get((pool, digests[depth - 1]), ()):
                found.setdefault(name, depth * block_tokens)
        return found

    def evaluated(self, pool: str, digests: Sequence[bytes], replica: str) -> None:
        """*replica* of *pool* was given the prompt of *digests*: it holds each
        beginning now, as the most recent of their holders."""
        where, holders = self._where, self._holders
        for digest in digests:
            key = (pool, digest)
            before = where.pop(key, ())
            where[key] = (replica, *(n for n in before if n != replica))[:holders]
        while len(where) > self._limit:
            where.popitem(last=False)


def by_prefix(
    ready: Collection[Replica], cached: Mapping[str, int], policy: PrefixPolicy
) -> list[Replica]:
    """Of the *ready* replicas, those to place a task on for its prompt's beginning
    (*cached*: each replica's tokens of it, by name), as *policy* says: the ones holding
    the longest beginning of at least ``min_tokens``, among those within ``balance`` of
    the least busy; none when no replica qualifies."""
    busy = {r: _busy_share(r) for r in ready}
    least = min(busy.values(), default=0.0)
    near = [
        r
        for r in ready
        if busy[r] - least <= policy.balance and cached.get(r.name, 0) >= policy.min_tokens
    ]
    if not near:
        return []
    longest = max(cached[r.name] for r in near)
    return [r for r in near if cached[r.name] == longest]


def _busy_share(replica: Replica) -> float:
    total = replica.slots_total
    if not total:
        return math.inf
    return 1.0 - replica.free_slots() / total
