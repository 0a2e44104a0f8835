"""Where a task goes: :func:`choose`, a pure function of the replicas' state and the
task, and :class:`Pools`, the host's pools, which wait for a slot with it.

The choice and the count of the stream on the replica chosen happen with no await
between, so two tasks can never both take the last free slot.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

import anyio

from ._exceptions import PoolUnavailable, PromptTooLarge
from ._replica import Replica
from ._types import TaskRequest

__all__ = ["Pools", "Wait", "choose", "pin_mismatch"]


@dataclass(frozen=True)
class Wait:
    """No replica can take the task now: look again at *until* (on the clock
    :func:`choose` was given), or sooner if a replica changes (``math.inf``: only then)."""

    until: float


def choose(
    pool: str,
    replicas: Sequence[Replica],
    request: TaskRequest,
    *,
    min_context: int,
    avoid: Collection[Replica],
    now: float,
    rng: random.Random,
) -> Replica | Wait:
    """The replica of *pool* to run *request* on: of those healthy, with their slots
    known and a context of at least *min_context* tokens (and more than the prompt's,
    when it is given as ids), past any ``Retry-After`` at *now* and with a free slot,
    one that the task has not failed on (*avoid*) before one it has, then one with the
    most free slots, drawn with *rng* among equals.

    Raises:
        PoolUnavailable: when no replica could ever take the task: none is bound, or
            none is healthy.
        PromptTooLarge: when no healthy replica's context is large enough.
    """
    if not replicas:
        raise PoolUnavailable(f"no replica is bound to pool {pool!r}")
    placeable = [r for r in replicas if r.placeable]
    if not placeable:
        if any(r.mismatch is not None for r in replicas):
            raise PoolUnavailable(
                f"every replica of pool {pool!r} is unhealthy or runs another engine build "
                "or model than its first"
            )
        raise PoolUnavailable(f"every replica of pool {pool!r} is unhealthy")
    prompt = _prompt_tokens(request)
    needed = max(min_context, prompt + 1)
    fitting = [r for r in placeable if r.context_size is None or r.context_size >= needed]
    if not fitting:
        largest = max(r.context_size or 0 for r in placeable)
        raise PromptTooLarge(
            f"the task is larger than the context of every replica of {pool!r}",
            prompt_tokens=prompt or None,
            context_size=largest,
        )
    ready = [r for r in fitting if r.cool_until <= now and r.free_slots() > 0]
    if not ready:
        return Wait(min((r.cool_until for r in fitting if r.cool_until > now), default=math.inf))
    ready = [r for r in ready if r not in avoid] or ready
    most = max(r.free_slots() for r in ready)
    return rng.choice([r for r in ready if r.free_slots() == most])


def pin_mismatch(first: Replica, other: Replica) -> str | None:
    """How *other* differs from its pool's *first* replica in engine build or model, or
    ``None`` when it does not."""
    if first.identity is None or other.identity is None or other.identity == first.identity:
        return None
    (first_build, first_model), (build, model) = first.identity, other.identity
    what = []
    if build != first_build:
        what.append(f"engine build {build} where {first.name} runs {first_build}")
    if model != first_model:
        what.append(f"model {model[:12]} where {first.name} runs {first_model[:12]}")
    return "it runs " + " and ".join(what)


def _prompt_tokens(request: TaskRequest) -> int:
    """The prompt's token count when it is given as ids; 0 (unknown) for text."""
    prompt = request.prompt
    return 0 if prompt is None or isinstance(prompt, str) else len(prompt)


class Pools:
    """The host's pools of replicas, and the wait for a free slot.

    Args:
        slot_wait_s: how long :meth:`place` waits for a free slot.
        rng: the source of the draw among equal replicas.
        pinned: whether a pool's replicas must run its first replica's engine build and
            model (see :meth:`check_pin`).
    """

    def __init__(self, *, slot_wait_s: float, rng: random.Random, pinned: bool = True) -> None:
        self._slot_wait_s = slot_wait_s
        self._pinned = pinned
        self._rng = rng
        self._pools: dict[str, dict[str, Replica]] = {}
        self._changed: anyio.Event | None = None  # made inside the event loop

    def __iter__(self) -> Iterator[Replica]:
        """Every replica of every pool."""
        for replicas in self._pools.values():
            yield from replicas.values()

    def names(self) -> dict[str, list[str]]:
        return {pool: sorted(replicas) for pool, replicas in self._pools.items()}

    def of(self, pool: str) -> list[Replica]:
        return list(self._pools.get(pool, {}).values())

    def add(self, replica: Replica) -> None:
        """Raises ValueError if the pool already has a replica of that name."""
        replicas = self._pools.setdefault(replica.pool, {})
        if replica.name in replicas:
            raise ValueError(f"pool {replica.pool!r} already has a replica {replica.name!r}")
        replicas[replica.name] = replica
        self.changed()

    def remove(self, pool: str, name: str) -> Replica:
        """Raises KeyError if there is no such replica."""
        try:
            replica = self._pools[pool].pop(name)
        except KeyError:
            raise KeyError(f"pool {pool!r} has no replica {name!r}") from None
        if not self._pools[pool]:
            del self._pools[pool]
        self._check_pool(pool)  # it may have been the first: the pin may move
        self.changed()
        return replica

    def check_pin(self, replica: Replica) -> None:
        """Check *replica*'s pool, now that *replica*'s engine and model are known: each
        replica that runs another engine build or model than the pool's first (the first
        bound of those known) is told it differs, and gets no work."""
        self._check_pool(replica.pool)

    def _check_pool(self, pool: str) -> None:
        if not self._pinned:
            return
        replicas = self.of(pool)
        first = next((r for r in replicas if r.identity is not None), None)
        if first is None:
            return
        for each in replicas:
            if each.identity is not None:
                each.differs(pin_mismatch(first, each))

    def open(self) -> None:
        """Start telling waiting tasks of changes (inside the event loop)."""
        self._changed = anyio.Event()

    def changed(self) -> None:
        """A replica changed: tasks waiting for one look again."""
        if self._changed is not None:
            self._changed.set()
            self._changed = anyio.Event()

    def _wait_event(self) -> anyio.Event:
        if self._changed is None:
            raise RuntimeError("use the host inside its async with block")
        return self._changed

    async def wait_ready(self, pool: str, name: str | None) -> None:
        """Wait until replica *name* of *pool* (without *name*, any of its replicas) may
        be given work.

        Raises:
            PoolUnavailable: when replica *name* runs another engine build or model than
                its pool's first replica (it would wait for ever).
        """
        while True:
            changed = self._wait_event()
            bound = self._pools.get(pool, {})
            candidates = list(bound.values()) if name is None else [bound.get(name)]
            named = candidates[0] if name is not None else None
            if named is not None and named.mismatch is not None:
                raise PoolUnavailable(
                    f"replica {name!r} of pool {pool!r} gets no work: {named.mismatch}"
                )
            if any(r is not None and r.placeable for r in candidates):
                return
            await changed.wait()

    async def place(
        self,
        pool: str,
        request: TaskRequest,
        *,
        deadline: float,
        min_context: int,
        avoid: Collection[Replica],
    ) -> Replica | None:
        """Choose a replica of *pool* for *request* and count a stream on it (the
        caller releases it); None when *deadline* passes first.

        Raises:
            PoolUnavailable: when no replica could take the task, or none had a free
                slot within ``slot_wait_s``.
        """
        # A replica bound a moment ago is learned first (bounded by its watcher).
        for replica in self.of(pool):
            await replica.wait_first_look()
        slot_deadline = anyio.current_time() + self._slot_wait_s
        while True:
            changed = self._wait_event()
            now = anyio.current_time()
            choice = choose(
                pool,
                self.of(pool),
                request,
                min_context=min_context,
                avoid=avoid,
                now=now,
                rng=self._rng,
            )
            if now >= deadline:
                return None
            if isinstance(choice, Replica):
                choice.take()
                return choice
            if now >= slot_deadline:
                raise PoolUnavailable(
                    f"no replica of pool {pool!r} had a free slot within {self._slot_wait_s} s"
                )
            with anyio.move_on_after(min(slot_deadline, deadline, choice.until) - now):
                await changed.wait()
