"""The events of one task placed by an :class:`AdapterHost`: :class:`HostStream`.

It carries out the task's attempts: it asks the pools for a replica, opens the stream
there, and after a failure before the first token does what the :class:`RetryPolicy`
decides. What a replica's failure means for the replica is the replica's to record.
"""

from __future__ import annotations

import logging
import math
import random
import time
import warnings
from bisect import bisect_left as _bisect
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import anyio.abc

from .._adapter import ENGINE, LlamaCppHttpAdapter
from .._exceptions import WorkerError
from .._receive import EventReceiveStream
from .._stream import EventStream
from .._types import (
    ChatRequest,
    End,
    Metrics,
    Reasoning,
    Started,
    StreamEvent,
    TaskRequest,
    Token,
    ToolCall,
    ToolCallDelta,
)
from .metrics import LatencySeries
from .placement import Pools
from .replica import Replica
from .retry import GiveUp, RetryLater, RetryPolicy

__all__ = ["HostStream"]

logger = logging.getLogger("llamacpp_adapter")
_monotonic = time.monotonic
#: No replica: what a task that failed nowhere avoids (one set for every such task).
_NONE: frozenset[Replica] = frozenset()
#: A task's gaps between tokens before its first: none are observed (one for every task).
_NO_SERIES = LatencySeries(())


class HostStream(EventReceiveStream):
    """The events of one task placed by an :class:`AdapterHost`: :class:`Started`,
    then the replica's :class:`Token`\\ s, :class:`Metrics` and :class:`End`. It is an
    :class:`EventReceiveStream`: ``async for``, ``receive()``, ``receive_nowait()``,
    ``aclose()``.

    Until the first token, a retriable failure sends the task to another replica (the
    consumer sees nothing of it); after the first token, a failure is raised after the
    tokens already delivered. The host reads the replica's events a read at a time; the
    time to the first token and the gaps between tokens it records are those of its
    reads.

    A stream paused on its replica while the consumer was away (the replica's adapter's
    :class:`PausePolicy`) frees its slot there; it resumes on the same replica, where
    its cache is, when that one has a free slot, and otherwise on the first replica of
    the pool to have one (at the cost of its prompt again), waiting at the head of the
    pool's line. A replica that fails it then is avoided, as a failure before the first
    token is. It stays one task in the host's figures.

    Attributes:
        job_id: the task's ``job_id``.
        pool: the pool the task was sent to.
        replica: the replica serving it (the last one tried).
        attempts: how many attempts the task took.
        arrived_at: when the task was submitted, on the event loop's clock.
        queued_s: the seconds the task waited in its pool's line for a replica (over
            all its attempts): of the time to its first token, the host's share.
        pauses: how many times it was paused on its replica.
        resumes: how many times it was resumed after a pause.
    """

    # Slots, its base's fields among them: the stream's state is nearly 40 fields, past
    # what an instance's own dict holds without a table of its own (about 1.5 KB a
    # stream, kept as long as it is open).
    __slots__ = (
        "_attempt",
        "_batch",
        "_current",
        "_deadline",
        "_events",
        "_failed_on",
        "_failure",
        "_got_end",
        "_group",
        "_holding",
        "_index",
        "_interruption",
        "_last_token_at",
        "_min_context",
        "_paused_on",
        "_policy",
        "_pools",
        "_read_done",
        "_released",
        "_request",
        "_retry_deadline",
        "_retrying",
        "_rng",
        "_state",
        "_submitted_at",
        "_ticket",
        "_token_latency",
        "_tokens",
        "arrived_at",
        "attempts",
        "job_id",
        "pauses",
        "pool",
        "queued_s",
        "replica",
        "resumes",
    )

    def __init__(
        self,
        pools: Pools,
        policy: RetryPolicy,
        rng: random.Random,
        pool: str,
        request: TaskRequest | ChatRequest,
        timeout: float | None,
        group: anyio.abc.TaskGroup,
    ) -> None:
        self.job_id = request.job_id
        self.pool = pool
        self.replica = ""
        self.attempts = 0
        self.queued_s = 0.0
        self.pauses = 0
        self.resumes = 0
        self._group = group
        self._holding: Replica | None = None  # the replica whose slot it holds
        self._paused_on: Replica | None = None  # the replica it was paused on
        self._pools = pools
        self._ticket = pools.ticket()  # its place in the waiting line, kept by a retry
        self._policy = policy
        self._rng = rng
        self._request = request
        now = self.arrived_at = anyio.current_time()
        self._deadline = math.inf if timeout is None else now + timeout
        self._retry_deadline = policy.retry_deadline(now, self._deadline)
        self._submitted_at = time.monotonic()
        self._last_token_at = 0.0
        self._token_latency = _NO_SERIES  # the replica's, from the first token
        self._tokens = 0
        self._min_context = 0
        self._failed_on: frozenset[Replica] = _NONE  # replicas this task failed on
        self._current: Replica | None = None
        self._events: EventStream | None = None
        # The attempt's submit() block; entered once _events is set (the stream opened).
        self._attempt: AbstractAsyncContextManager[EventStream] | None = None
        self._failure: WorkerError | None = None
        self._got_end = False  # the replica's End was read
        self._retrying: anyio.CancelScope | None = None  # placing the task again
        self._start([Started(self.job_id)])

    @classmethod
    async def open(
        cls,
        pools: Pools,
        policy: RetryPolicy,
        rng: random.Random,
        pool: str,
        request: TaskRequest | ChatRequest,
        timeout: float | None,  # noqa: ASYNC109 - it becomes DeadlineUnmet, not a cancel
        group: anyio.abc.TaskGroup,
    ) -> HostStream:
        """The stream of *request*, placed and open (:meth:`AdapterHost.submit` opens
        it: use that). Its replicas' pause watches may run in *group*.

        Raises:
            WorkerError: the failure that ended the attempts (the last one, when the
                retry deadline passed while waiting for a replica).
        """
        stream = cls(pools, policy, rng, pool, request, timeout, group)
        try:
            await stream._open()
        except BaseException:
            await stream.aclose()
            raise
        return stream

    @property
    def tokens_received(self) -> int:
        """:class:`Token` events read from the replica so far: the consumer's, and those
        still waiting in :attr:`buffered`."""
        return self._tokens

    @property
    def tokens_delivered(self) -> int:
        """The old name of :attr:`tokens_received`."""
        warnings.warn(
            "HostStream.tokens_delivered is now tokens_received",
            DeprecationWarning,
            stacklevel=2,
        )
        return self._tokens

    def _read(self, limit: int | None = None) -> Coroutine[Any, Any, list[StreamEvent]]:
        """The replica's next events. From the first token on, the task is not tried
        again, and the replica's stream is read as it is, with no coroutine of the
        host's between: every stream waiting for its next token holds its chain of
        coroutines, and the collector walks them (the host counts what the replica's
        stream reads as it reads it: :meth:`received`)."""
        events = self._events
        if self._tokens and events is not None:
            return events.receive_batch()
        return self._read_until_placed()

    async def _read_until_placed(self) -> list[StreamEvent]:
        """The replica's next events; when its failure comes before the first token and
        the policy says so, the task goes to another replica, unseen."""
        while True:
            events = self._events
            if events is None:
                return []
            try:
                batch = await events.receive_batch()
            except anyio.ClosedResourceError:
                await self._close_attempt()
                raise
            except WorkerError as exc:
                # The replica's response is closed already; free its slot and count the
                # failure now, not when the consumer leaves the block.
                self._failure = exc
                replica = self._current
                await self._close_attempt()
                if self._tokens or not await self._try_again(exc, replica):
                    raise
                continue
            if not batch:
                await self._close_attempt()
                return []
            if type(batch[0]) is Started:
                batch = batch[1:]  # the replica's: the host sent its own
            if batch:
                return batch

    async def _try_again(self, error: WorkerError, replica: Replica | None) -> bool:
        """Open the task on another replica after *error*, if the policy says so; an
        aclose() meanwhile stops that at once."""
        try:
            with anyio.CancelScope() as self._retrying:
                if not await self._retry(error, replica):
                    return False
                await self._open(last=error)
        finally:
            self._retrying = None
        if self._interruption is not None:
            raise self._interruption
        return True

    def received(self, events: list[StreamEvent]) -> None:
        """The replica's stream read *events*: count its tokens and its end."""
        now = _monotonic()
        for event in events:
            kind = type(event)
            if kind is Token or kind is Reasoning or kind is ToolCallDelta or kind is ToolCall:
                # Output: from the first, the task is not tried again elsewhere.
                self._on_token(now)
            elif kind is Metrics:
                # What its prompt cost the replica, and what its cache spared.
                assert isinstance(event, Metrics)
                if self._current is not None:
                    self._current.record_prompt(event.prompt_tokens, event.cached_tokens)
            elif kind is End:
                self._got_end = True

    async def _interrupt_read(self) -> None:
        if self._retrying is not None:
            self._retrying.cancel()
        events = self._events
        if events is not None:
            await events.aclose()  # the reading task then frees the slot

    async def _release(self, failure: WorkerError | None) -> None:
        if failure is not None and self._failure is None and self._interruption is None:
            # The replica's stream failed past the first token: the replica's to count
            # (not a cancel or a close from outside, which is the interruption).
            self._failure = failure
        await self._close_attempt()

    def _on_token(self, now: float) -> None:
        if self._tokens:
            # Inlined LatencySeries.observe: this runs for every token.
            series = self._token_latency
            gap = now - self._last_token_at
            series.version += 1
            series.counts[_bisect(series.bounds, gap)] += 1
            series.total += gap
            series.version += 1
        else:
            replica = self._current
            assert replica is not None
            self._token_latency = replica.record_first_token(now - self._submitted_at)
        self._last_token_at = now
        self._tokens += 1

    async def _open(self, last: WorkerError | None = None) -> None:
        """Place the task and open its stream, trying again as the policy decides.

        Raises:
            WorkerError: the failure that ended the attempts, or why placement failed.
        """
        while True:
            replica = await self._place(last)
            try:
                await self._open_on(replica)
            except WorkerError as exc:
                if not await self._retry(exc, replica):
                    raise
                last = exc
                continue
            if last is not None:
                logger.info(
                    "task placed after %d attempts", self.attempts, extra=self._log_fields()
                )
            return

    async def _place(self, last: WorkerError | None, *, resuming: bool = False) -> Replica:
        """A replica for the next attempt (or the resume of a paused stream), its slot
        counted.

        Raises:
            PoolUnavailable: when no replica can take the task.
            WorkerError: what the policy says ends a wait for a replica that ran out.
        """
        deadline = self._deadline if last is None else self._retry_deadline
        first = last is None and not resuming
        asked = self.arrived_at if first else anyio.current_time()
        placed = await self._pools.place(
            self.pool,
            self._request,
            deadline=deadline,
            min_context=self._min_context,
            avoid=self._failed_on,
            ticket=self._pools.head_ticket(self._ticket) if resuming else self._ticket,
            prefer=self._paused_on if resuming else None,
        )
        if placed is None:
            now = anyio.current_time()
            raise self._policy.out_of_time(last, now=now, deadline=self._deadline, pool=self.pool)
        replica, placed_at = placed
        self._holding = replica
        self.queued_s += placed_at - asked
        return replica

    async def _open_on(self, replica: Replica) -> None:
        self.attempts += 1
        self._current = replica
        self.replica = replica.name
        self._failure = None
        self._got_end = False
        remaining = None if self._deadline == math.inf else self._deadline - anyio.current_time()
        attempt = self._attempt = replica.adapter.submit(
            self._request, timeout=remaining, _placement=self
        )
        try:
            self._events = await attempt.__aenter__()
        except WorkerError as exc:
            self._failure = exc
            await self._close_attempt()
            raise

    async def _retry(self, error: WorkerError, replica: Replica | None) -> bool:
        """Whether to try the task again after *error* on *replica*; waits first if the
        policy says so."""
        if replica is None:
            return False
        decision = self._policy.decide(
            error,
            attempts=self.attempts,
            context_size=replica.context_size,
            now=anyio.current_time(),
            retry_deadline=self._retry_deadline,
            rng=self._rng,
        )
        if isinstance(decision, GiveUp):
            return False
        if isinstance(decision, RetryLater):
            replica.record_retry(error.code)
            logger.info("retrying the task after %s", error.code, extra=self._log_fields())
            await anyio.sleep(decision.delay)
        else:
            self._min_context = max(self._min_context, decision.min_context)
        return True

    def _release_slot(self) -> None:
        """Free the slot the stream holds, if it holds one."""
        replica, self._holding = self._holding, None
        if replica is not None:
            replica.release()

    # --- What the replica's adapter asks of the host for a stream it may pause ----------

    @property
    def watch_group(self) -> anyio.abc.TaskGroup:
        """The host's task group: the replica's watch may run there."""
        return self._group

    def paused(self) -> None:
        """The stream was paused on its replica: its slot there is free."""
        replica = self._current
        assert replica is not None
        self._paused_on = replica
        self.pauses += 1
        self._release_slot()
        replica.record_pause()

    async def place(self) -> LlamaCppHttpAdapter:
        """The adapter to resume the paused stream on: its replica's when it has a free
        slot, or the first of the pool to have one, the task at the head of the line."""
        replica = await self._place(None, resuming=True)
        self._current = replica
        self.replica = replica.name
        return replica.adapter

    def resumed(self) -> None:
        """The resume opened on the replica placed: count it there."""
        replica = self._current
        assert replica is not None
        self.resumes += 1
        replica.record_resume(same=replica is self._paused_on)

    async def failed(self, error: WorkerError) -> bool:
        """Opening the resume on the replica placed failed with *error*: whether to
        place it again is the retry policy's to say. A replica failed on is avoided
        from then on; when the task gives up, its close counts the failure."""
        replica = self._current
        self._release_slot()
        if replica is None or not await self._retry(error, replica):
            return False
        self._failed_on |= {replica}
        replica.record_failure(error, now=anyio.current_time())
        return True

    async def _close_attempt(self) -> None:
        """Close the current attempt's stream, free its slot, count its outcome."""
        attempt, self._attempt = self._attempt, None
        events, self._events = self._events, None
        replica, self._current = self._current, None
        if attempt is None or replica is None:
            return
        failure = self._failure
        try:
            try:
                if events is not None:  # the block was entered: leave it
                    await attempt.__aexit__(None, None, None)
            finally:
                self._release_slot()
        finally:
            if failure is not None:
                self._failed_on |= {replica}
                replica.record_failure(failure, now=anyio.current_time())
                outcome = failure.code
            else:
                outcome = "ok" if self._got_end else "cancelled"
            replica.record_end(outcome, self._tokens)

    def _log_fields(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "engine": ENGINE,
            "pool_id": self.pool,
            "replica_id": self.replica,
            "tokens_out": self._tokens,
        }
