"""Where a task goes: :func:`choose`, a pure function of the replicas' state and the
task; :class:`WaitingLine`, the tasks of a pool waiting for a replica, served first come,
first served; :class:`Sessions`, where each conversation's last turn ran; and
:class:`Pools`, the host's pools, which run them (and remember where prompts' beginnings
were evaluated, in :mod:`.prefixes`).

The choice and the count of the stream on the replica chosen happen with no await
between, so two tasks can never both take the last free slot. A slot that frees is given
at once, in the same step, to the task that has waited longest and can use it: a task
that arrives as it frees waits its turn.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import anyio

from .._exceptions import PoolUnavailable, PromptTooLarge, WorkerError
from .._types import ChatRequest, TaskRequest
from .prefixes import Prefixes, PrefixPolicy, by_prefix
from .replica import Replica

__all__ = ["Pools", "Sessions", "Wait", "Waiter", "WaitingLine", "choose", "pin_mismatch"]

#: How long a conversation's turn waits for a free slot on the replica that ran its last
#: turn, where the engine has its prompt in cache, before it goes to another.
DEFAULT_SESSION_WAIT_S = 1.0
#: The conversations whose replica the host remembers; past it, the least recently used
#: is forgotten (its next turn is placed as a new one).
DEFAULT_MAX_SESSIONS = 65_536

#: What a ticket at the head of the line is lowered by: more than any count of tickets.
_HEAD_OF_LINE = 1 << 62


@dataclass(frozen=True)
class Wait:
    """No replica can take the task now: look again at *until* (on the clock
    :func:`choose` was given), or sooner if a replica changes (``math.inf``: only then)."""

    until: float


def choose(
    pool: str,
    replicas: Sequence[Replica],
    request: TaskRequest | ChatRequest,
    *,
    min_context: int,
    avoid: Collection[Replica],
    now: float,
    rng: random.Random,
    prefer: Replica | None = None,
    stick_until: float = -math.inf,
    cached: Mapping[str, int] | None = None,
    prefixes: PrefixPolicy | None = None,
    sessions: Mapping[str, int] | None = None,
) -> Replica | Wait:
    """The replica of *pool* to run *request* on: of those healthy, with their slots
    known and a context of at least *min_context* tokens (and more than the prompt's,
    when it is given as ids), past any ``Retry-After`` at *now* and with a free slot,
    *prefer* if it is one of them (where the task's cache is: a paused stream's, a
    conversation's); until *stick_until*, a wait for *prefer* when it could take the
    task but has no free slot now; then one that the task has not failed on (*avoid*)
    before one it has; of those, for a conversation's turn (*sessions*: the
    conversations on each replica, by name; a conversation is work to come) with no
    replica (its first, or its replica is gone), or whose replica (*prefer*) has two
    more than a ready one, one with the fewest; of those, where *prefixes* says to go
    for the tokens of the prompt's beginning each one holds (*cached*, by replica name;
    see :func:`.prefixes.by_prefix`); then one with the most free slots, drawn with
    *rng* among equals.

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
    if prefer is not None and sessions is not None and ready:
        # A conversation leaves a replica that has two more than another could take.
        fewest = min(sessions.get(r.name, 0) for r in ready)
        if sessions.get(prefer.name, 0) - fewest >= 2:
            prefer = None
    if prefer is not None and prefer in fitting:
        if prefer in ready:
            return prefer
        if now < stick_until:
            # Its cache is there: wait for a slot (a change wakes the wait sooner).
            cooling = prefer.cool_until > now
            return Wait(min(stick_until, prefer.cool_until) if cooling else stick_until)
    if not ready:
        return Wait(min((r.cool_until for r in fitting if r.cool_until > now), default=math.inf))
    ready = [r for r in ready if r not in avoid] or ready
    if sessions is not None:
        fewest = min(sessions.get(r.name, 0) for r in ready)
        ready = [r for r in ready if sessions.get(r.name, 0) == fewest]
    if cached and prefixes is not None:
        ready = by_prefix(ready, cached, prefixes) or ready
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


def _prompt_tokens(request: TaskRequest | ChatRequest) -> int:
    """The prompt's token count when it is given as ids; 0 (unknown) for text and for
    a chat's turns."""
    if isinstance(request, ChatRequest):
        return 0
    prompt = request.prompt
    return 0 if prompt is None or isinstance(prompt, str) else len(prompt)


@dataclass(eq=False)
class Waiter:
    """A task waiting for a replica of its pool.

    Attributes:
        ticket: its place in the line: a lower ticket came first.
        request: the task.
        min_context: the context it needs at least, in tokens.
        avoid: replicas it failed on (taken last).
        deadline: when it stops waiting; past it, it is given nothing.
        learning: replicas bound a moment before it came, whose first look it waits
            for before it is placed (so that it goes where it fits best).
        prefer: the replica it goes to when that one has a free slot (where its cache
            is: a paused stream's, a conversation's).
        stick_until: until when it waits for *prefer* rather than go elsewhere.
        cached: for each replica (by name) that evaluated a beginning of its prompt, the
            tokens of the longest, when it arrived.
        conversation: whether it is a conversation's turn (placed by the conversations
            on each replica too).
        served: called once it is placed or failed.
        placed: the replica it was given (its slot counted), once placed.
        placed_at: when it was given it.
        failed: why it can never be placed (a pool with no healthy replica, a prompt
            larger than every context), once known.
    """

    ticket: int
    request: TaskRequest | ChatRequest
    min_context: int = 0
    avoid: Collection[Replica] = ()
    deadline: float = math.inf
    learning: Collection[Replica] = ()
    served: Callable[[], None] = field(default=lambda: None, repr=False)
    prefer: Replica | None = None
    stick_until: float = -math.inf
    cached: Mapping[str, int] = field(default_factory=dict)
    conversation: bool = False
    placed: Replica | None = None
    placed_at: float = math.nan
    refused: WorkerError | None = None


class WaitingLine:
    """The tasks of one pool waiting for a replica, in the order of their tickets.

    Pure: it is told the replicas and the time, and hands out slots with
    :meth:`serve`. A task is given a replica only when no task ahead of it can use one:
    one ahead that needs more context than any free replica has does not hold back one
    behind it that fits.
    """

    def __init__(self) -> None:
        self._waiters: list[Waiter] = []

    def __len__(self) -> int:
        return len(self._waiters)

    def __iter__(self) -> Iterator[Waiter]:
        return iter(self._waiters)

    def join(self, waiter: Waiter) -> None:
        bisect.insort(self._waiters, waiter, key=lambda each: each.ticket)

    def leave(self, waiter: Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def serve(
        self,
        pool: str,
        replicas: Sequence[Replica],
        *,
        now: float,
        rng: random.Random,
        prefixes: PrefixPolicy | None = None,
        sessions: Sessions | None = None,
    ) -> float:
        """Give each waiting task, first ticket first, the replica :func:`choose`
        picks for it, counting its stream there; a task that can never be placed is
        failed (*prefixes*: how a prompt's beginning held by a replica counts;
        *sessions*: the conversations on each replica). Each
        task served leaves the line, and is told; one past its deadline is
        left for its own task to end, one still learning its replicas waits for them.
        Returns when to look again if nothing changes (``math.inf``: only on a
        change)."""
        look_again = math.inf
        for waiter in list(self._waiters):
            if now >= waiter.deadline or not all(r.has_looked for r in waiter.learning):
                continue
            try:
                choice = choose(
                    pool,
                    replicas,
                    waiter.request,
                    min_context=waiter.min_context,
                    avoid=waiter.avoid,
                    now=now,
                    rng=rng,
                    prefer=waiter.prefer,
                    stick_until=waiter.stick_until,
                    cached=waiter.cached,
                    prefixes=prefixes,
                    sessions=(sessions.counts(pool) if waiter.conversation and sessions else None),
                )
            except WorkerError as exc:
                waiter.refused = exc
            else:
                if isinstance(choice, Wait):
                    look_again = min(look_again, choice.until)
                    continue
                choice.take()
                waiter.placed, waiter.placed_at = choice, now
            self._waiters.remove(waiter)
            waiter.served()
        return look_again


class Sessions:
    """Which replica ran each conversation's last turn, by pool: a table of at most
    *limit* conversations, the least recently placed forgotten first. Pure.

    A conversation whose replica is no longer bound is placed as a new one; its next
    placement is remembered instead.
    """

    def __init__(self, limit: int = DEFAULT_MAX_SESSIONS) -> None:
        self._limit = limit
        self._where: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._counts: dict[str, dict[str, int]] = {}  # pool -> replica -> conversations

    def __len__(self) -> int:
        return len(self._where)

    def replica_of(self, pool: str, session: str) -> str | None:
        """The name of the replica that ran *session*'s last turn in *pool*, if known."""
        return self._where.get((pool, session))

    def ran(self, pool: str, session: str, replica: str) -> None:
        """A turn of *session* was placed on *replica*: the next goes there too."""
        key = (pool, session)
        before = self._where.pop(key, None)
        if before is not None:
            self._count(pool, before, -1)
        self._where[key] = replica
        self._count(pool, replica, 1)
        if len(self._where) > self._limit:
            (forgotten_pool, _), forgotten = self._where.popitem(last=False)
            self._count(forgotten_pool, forgotten, -1)

    def _count(self, pool: str, replica: str, change: int) -> None:
        counts = self._counts.setdefault(pool, {})
        counts[replica] = counts.get(replica, 0) + change
        if not counts[replica]:
            del counts[replica]
            if not counts:
                del self._counts[pool]

    def on(self, pool: str, replica: str) -> int:
        """How many of the conversations remembered ran their last turn on *replica*."""
        return self._counts.get(pool, {}).get(replica, 0)

    def counts(self, pool: str) -> Mapping[str, int]:
        """The conversations remembered on each replica of *pool* that has any, by name."""
        return self._counts.get(pool, {})


class Pools:
    """The host's pools of replicas, and the wait for a free slot.

    Args:
        slot_wait_s: how long :meth:`place` waits for a free slot (in its pool's
            :class:`WaitingLine`).
        rng: the source of the draw among equal replicas.
        pinned: whether a pool's replicas must run its first replica's engine build and
            model (see :meth:`check_pin`).
        session_wait_s: how long a conversation's turn waits for the replica of its
            last turn when that one has no free slot, before it goes to another.
        max_sessions: the conversations remembered (see :class:`Sessions`).
        prefixes: how a task goes where its prompt's beginning was evaluated (``None``:
            it does not).
    """

    def __init__(
        self,
        *,
        slot_wait_s: float,
        rng: random.Random,
        pinned: bool = True,
        session_wait_s: float = DEFAULT_SESSION_WAIT_S,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        prefixes: PrefixPolicy | None = None,
    ) -> None:
        self._slot_wait_s = slot_wait_s
        self._session_wait_s = session_wait_s
        self.sessions = Sessions(max_sessions)
        self._prefix_policy = prefixes
        table = prefixes or PrefixPolicy()
        self.prefixes = Prefixes(limit=table.max_digests, holders=table.holders)
        self._pinned = pinned
        self._rng = rng
        self._pools: dict[str, dict[str, Replica]] = {}
        self._lines: dict[str, WaitingLine] = {}
        self._tickets = itertools.count()
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
                each.set_mismatch(pin_mismatch(first, each))

    def open(self) -> None:
        """Start telling waiting tasks of changes (inside the event loop)."""
        self._changed = anyio.Event()

    def changed(self) -> None:
        """A replica changed: the waiting lines are served, and tasks waiting for a
        replica to be ready look again."""
        if self._changed is not None:
            self._changed.set()
            self._changed = anyio.Event()
        for pool in list(self._lines):
            self._serve(pool)

    def _serve(self, pool: str) -> float:
        """Serve *pool*'s waiting line now; when to look again if nothing changes."""
        line = self._lines.get(pool)
        if not line:
            return math.inf
        return line.serve(
            pool,
            self.of(pool),
            now=anyio.current_time(),
            rng=self._rng,
            prefixes=self._prefix_policy,
            sessions=self.sessions,
        )

    def ticket(self) -> int:
        """A place in the waiting lines, for a task about to ask for a replica: one
        that asks again (a retry) keeps its place by giving the same ticket."""
        return next(self._tickets)

    @staticmethod
    def head_ticket(ticket: int) -> int:
        """A place ahead of every new task's, for the task of *ticket* when it comes
        back (a paused stream that resumes), in the order of those tickets."""
        return ticket - _HEAD_OF_LINE

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
        request: TaskRequest | ChatRequest,
        *,
        deadline: float,
        min_context: int,
        avoid: Collection[Replica],
        ticket: int | None = None,
        prefer: Replica | None = None,
    ) -> tuple[Replica, float] | None:
        """Choose a replica of *pool* for *request* and count a stream on it (the
        caller releases it); the replica and when it was given, or None when
        *deadline* passes first. The task waits in the pool's line, after
        every task with a lower *ticket* (a new one by default); it goes to *prefer*
        when that one has a free slot. A conversation's turn (a request with a
        ``session``) prefers the replica of its last turn, and waits up to
        ``session_wait_s`` for a slot there before it goes to another; the turn's
        replica is remembered for the next. Any other task goes where its prompt's
        beginning was evaluated, as the :class:`PrefixPolicy` says; its prompt is
        remembered there.

        Raises:
            PoolUnavailable: when no replica could take the task, or none had a free
                slot within ``slot_wait_s``.
        """
        if self._changed is None:
            raise RuntimeError("use the host inside its async with block")
        stick_until = -math.inf
        session = request.session
        conversation = prefer is None and session is not None  # not a resume
        if conversation:
            assert session is not None
            name = self.sessions.replica_of(pool, session)
            last = self._pools.get(pool, {}).get(name) if name is not None else None
            if last is not None and last not in avoid:
                prefer, stick_until = last, anyio.current_time() + self._session_wait_s
        policy = self._prefix_policy
        digests = policy.digests(request) if policy is not None else ()
        cached = {}
        if digests:
            assert policy is not None
            cached = self.prefixes.held(pool, digests, block_tokens=policy.block_tokens)
        served = anyio.Event()
        waiter = Waiter(
            self.ticket() if ticket is None else ticket,
            request,
            min_context,
            avoid,
            deadline,
            [r for r in self.of(pool) if not r.has_looked],
            served.set,
            prefer,
            stick_until,
            cached,
            conversation,
        )
        line = self._lines.setdefault(pool, WaitingLine())
        line.join(waiter)
        try:
            # A replica bound a moment ago is learned first (bounded by its watcher);
            # the task keeps its place in the line meanwhile.
            for replica in waiter.learning:
                await replica.wait_first_look()
            slot_deadline = anyio.current_time() + self._slot_wait_s
            look_again = self._serve(pool)
            while waiter.placed is None and waiter.refused is None:
                now = anyio.current_time()
                if now >= deadline:
                    return None
                if now >= slot_deadline:
                    raise PoolUnavailable(
                        f"no replica of pool {pool!r} had a free slot within {self._slot_wait_s} s"
                    )
                with anyio.move_on_after(min(slot_deadline, deadline, look_again) - now):
                    await served.wait()
                if not served.is_set():
                    look_again = self._serve(pool)  # a Retry-After may have run out
        except BaseException:
            if waiter.placed is not None:  # cancelled as it was given a slot
                waiter.placed.release()
            raise
        finally:
            line.leave(waiter)
            if not line and self._lines.get(pool) is line:
                del self._lines[pool]
        if waiter.refused is not None:
            raise waiter.refused
        assert waiter.placed is not None
        if session is not None:
            self.sessions.ran(pool, session, waiter.placed.name)
        if digests:
            self.prefixes.evaluated(pool, digests, waiter.placed.name)
        return waiter.placed, waiter.placed_at
