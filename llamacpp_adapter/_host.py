"""Pools of llama-server replicas behind one ``submit()``: :class:`AdapterHost`.

The host binds adapters into named pools and places each task on the replica of its
pool with the most free slots. It never sends a replica more concurrent streams than it
has slots; it retries a retriable failure on another replica, but only before the
task's first token; and it fails fast with :class:`PoolUnavailable` when no replica can
take the task.

Placement is decided synchronously (pick a replica, count the stream on it) before any
await, so two tasks can never both take the last free slot.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from bisect import bisect_left as _bisect
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

from ._adapter import ENGINE, LlamaCppHttpAdapter
from ._exceptions import (
    AdapterError,
    DeadlineUnmet,
    PoolUnavailable,
    WorkerError,
)
from ._metrics import HostMetrics, LatencySeries
from ._receive import CLOSED_MESSAGE, EventReceiveStream, ReadTurn
from ._redact import redact_secrets
from ._stream import EventStream
from ._task_form import JobItemSendStream, feed_channel
from ._types import End, Started, TaskRequest, Token, TokenEvent

__all__ = ["AdapterHost", "HostStream", "ReplicaStatus", "RetryPolicy"]

logger = logging.getLogger("llamacpp_adapter")
_monotonic = time.monotonic

ENV_URL = "ORCHD_LLAMACPP_URL"
ENV_POOL = "ORCHD_LLAMACPP_POOL"
ENV_REPLICA = "ORCHD_LLAMACPP_REPLICA"
ENV_API_KEY = "ORCHD_LLAMACPP_API_KEY"
DEFAULT_POOL = "default"
DEFAULT_REPLICA = "r0"

#: How long to wait for a free slot when every replica that could take a task is busy.
DEFAULT_SLOT_WAIT_S = 10.0
#: Consecutive failures after which a replica gets no work until a probe says it is well.
DEFAULT_UNHEALTHY_AFTER = 2
#: How often an unhealthy replica is probed with ``health()``.
DEFAULT_PROBE_INTERVAL_S = 1.0
#: How often a healthy replica's slots are read again from ``/slots``.
DEFAULT_REFRESH_INTERVAL_S = 5.0
#: The bound on learning a replica's slots and context (``props()``) or probing it.
DEFAULT_CALL_TIMEOUT_S = 5.0
_MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class RetryPolicy:
    """How a task that failed before its first token is tried again.

    Only retriable failures are retried (a refused or cut connection, no data within the
    read timeout, 429 and 5xx answers, 503 while a model loads), and only until the
    task's first token: after it, the caller gets the error after the tokens already
    delivered. Each retry waits a random time between 0 and the backoff, which doubles
    from ``initial_backoff_s`` up to ``max_backoff_s``; a replica that sent
    ``Retry-After`` gets no task until that time has passed.

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
        _check_count("max_attempts", self.max_attempts)
        for name in ("deadline_s", "initial_backoff_s", "max_backoff_s"):
            _check_seconds(name, getattr(self, name))

    def backoff(self, retry: int, rng: random.Random) -> float:
        """The wait before retry number *retry* (1, 2, ...): full jitter."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * 2 ** (retry - 1))
        return rng.uniform(0, ceiling)


@dataclass(frozen=True)
class ReplicaStatus:
    """What the host knows of one replica.

    Attributes:
        pool: the pool's name.
        replica: the replica's name.
        healthy: whether it gets work (``False`` from a run of failures until a probe
            finds it ready).
        slots_total: its slots, once learned from ``props()``.
        context_size: tokens of context per slot, once learned.
        in_flight: streams this host has open on it.
        free_slots: slots it can take now (its slots, less this host's streams and those
            other clients run, as ``/slots`` last said).
    """

    pool: str
    replica: str
    healthy: bool
    slots_total: int | None
    context_size: int | None
    in_flight: int
    free_slots: int


class _ReplicaMetrics:
    """One replica's series, labelled once: a token costs no label lookup."""

    def __init__(self, metrics: HostMetrics, labels: tuple[str, str, str]) -> None:
        self.family = metrics
        self.labels = labels
        self.tokens_out = metrics.tokens_out.labels(*labels)
        self.time_to_first_token = metrics.time_to_first_token.labels(*labels)
        self.token_latency = metrics.token_latency.labels(*labels)
        self.in_flight = metrics.in_flight.labels(*labels)
        self.healthy = metrics.replica_healthy.labels(*labels)

    def ended(self, outcome: str) -> None:
        self.family.requests.labels(*self.labels, outcome).inc()

    def retried(self, reason: str) -> None:
        self.family.retries.labels(*self.labels, reason).inc()

    def remove(self) -> None:
        # Its gauges go with it; its counters and histograms keep what they counted.
        self.family.replica_healthy.remove(*self.labels)
        self.family.in_flight.remove(*self.labels)


class _Watch:
    """What the watcher task of a replica waits on; made inside the event loop."""

    def __init__(self) -> None:
        self.learned = anyio.Event()  # set once the first props() answered or failed
        self.wake = anyio.Event()  # wakes the watcher early, when the health changed
        self.scope = anyio.CancelScope()  # cancelled on unbind


class _Replica:
    """A bound adapter and the host's book-keeping for it."""

    def __init__(
        self,
        pool: str,
        name: str,
        adapter: LlamaCppHttpAdapter,
        metrics: HostMetrics,
        *,
        owned: bool,
    ) -> None:
        self.pool = pool
        self.name = name
        self.adapter = adapter
        self.owned = owned
        self.labels = (ENGINE, pool, name)
        self.metrics = _ReplicaMetrics(metrics, self.labels)
        self.slots_total: int | None = None
        self.context_size: int | None = None
        self.in_flight = 0
        self.busy_elsewhere = 0  # slots processing for other clients, from /slots
        self.healthy = True
        self.failures = 0  # consecutive
        self.cool_until = -math.inf  # anyio clock; from Retry-After
        self.watch: _Watch | None = None  # made when its watcher starts

    def free_slots(self) -> int:
        if self.slots_total is None:
            return 0
        return max(self.slots_total - self.in_flight - self.busy_elsewhere, 0)

    def status(self) -> ReplicaStatus:
        return ReplicaStatus(
            self.pool,
            self.name,
            self.healthy,
            self.slots_total,
            self.context_size,
            self.in_flight,
            self.free_slots(),
        )

    def log_fields(self, **more: Any) -> dict[str, Any]:
        return {"engine": ENGINE, "pool_id": self.pool, "replica_id": self.name, **more}


class AdapterHost:
    """Pools of llama.cpp replicas, with dispatch by free slots and retries.

    ::

        async with AdapterHost() as host:
            host.bind("chat", "r0", LlamaCppHttpAdapter("http://10.0.0.5:8080"))
            host.bind("chat", "r1", LlamaCppHttpAdapter("http://10.0.0.6:8080"))
            async with host.submit("chat", TaskRequest("Hello")) as events:
                async for event in events:
                    ...

    The host runs one watcher task per replica in a task group of its own ``async
    with`` block: it learns the replica's slots and context from ``props()``, reads
    ``/slots`` again every *refresh_interval_s*, and probes a replica marked unhealthy
    with ``health()`` every *probe_interval_s* until it is ready. Nothing outlives the
    block. The caller keeps owning the adapters it binds (the host closes only those
    it made, as :meth:`from_env` does).

    Args:
        retry: the retry policy; :class:`RetryPolicy` ``()`` by default.
        slot_wait_s: how long a task waits for a free slot when every replica that
            could take it is busy; then :class:`PoolUnavailable`.
        unhealthy_after: consecutive retriable failures (a refused or cut connection,
            a timeout, 5xx) after which a replica gets no work until a probe finds it
            ready.
        probe_interval_s: how often an unhealthy replica is probed.
        refresh_interval_s: how often a healthy replica's slots are read again.
        call_timeout_s: the bound on one ``props()``, ``slots()`` or ``health()`` call.
        metrics: where to count; a :class:`HostMetrics` with a registry of its own by
            default (see :attr:`metrics`).
        rng: the source of the backoff's jitter (seed it for reproducible runs).
    """

    def __init__(
        self,
        *,
        retry: RetryPolicy | None = None,
        slot_wait_s: float = DEFAULT_SLOT_WAIT_S,
        unhealthy_after: int = DEFAULT_UNHEALTHY_AFTER,
        probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S,
        refresh_interval_s: float = DEFAULT_REFRESH_INTERVAL_S,
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        metrics: HostMetrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.retry = RetryPolicy() if retry is None else retry
        _check_count("unhealthy_after", unhealthy_after)
        for name, value in (
            ("slot_wait_s", slot_wait_s),
            ("probe_interval_s", probe_interval_s),
            ("refresh_interval_s", refresh_interval_s),
            ("call_timeout_s", call_timeout_s),
        ):
            _check_seconds(name, value)
        self._slot_wait_s = float(slot_wait_s)
        self._unhealthy_after = unhealthy_after
        self._probe_interval_s = float(probe_interval_s)
        self._refresh_interval_s = float(refresh_interval_s)
        self._call_timeout_s = float(call_timeout_s)
        self.metrics = HostMetrics() if metrics is None else metrics
        self._rng = random.Random() if rng is None else rng
        self._pools: dict[str, dict[str, _Replica]] = {}
        self._changed: anyio.Event | None = None  # made inside the event loop
        self._exit_stack: AsyncExitStack | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._closed = False

    def __repr__(self) -> str:
        pools = {pool: sorted(replicas) for pool, replicas in self._pools.items()}
        return f"{type(self).__name__}(pools={pools!r})"

    # --- Lifetime ----------------------------------------------------------------------

    async def __aenter__(self) -> AdapterHost:
        if self._exit_stack is not None or self._closed:
            raise RuntimeError("an AdapterHost can be entered once")
        stack = AsyncExitStack()
        self._task_group = await stack.enter_async_context(anyio.create_task_group())
        self._exit_stack = stack
        self._changed = anyio.Event()
        for replicas in self._pools.values():
            for replica in replicas.values():
                self._start_watch(replica)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the watchers, close the adapters the host made, stop serving metrics."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._exit_stack is not None and self._task_group is not None:
                self._task_group.cancel_scope.cancel()
                await self._exit_stack.aclose()
        finally:
            self._task_group = None
            for replicas in self._pools.values():
                for replica in replicas.values():
                    if replica.owned:
                        await replica.adapter.aclose()
            self.metrics.close()

    # --- Binding -----------------------------------------------------------------------

    def bind(
        self, pool: str, replica: str, adapter: LlamaCppHttpAdapter, *, _owned: bool = False
    ) -> None:
        """Add *adapter* to *pool* as *replica*. It gets work once its slots are known.

        Raises:
            ValueError: if the pool already has a replica of that name, or a name is
                empty or too long.
        """
        _check_name("pool", pool)
        _check_name("replica", replica)
        if not isinstance(adapter, LlamaCppHttpAdapter):
            raise TypeError("adapter must be a LlamaCppHttpAdapter")
        if self._closed:
            raise RuntimeError("the host is closed")
        replicas = self._pools.setdefault(pool, {})
        if replica in replicas:
            raise ValueError(f"pool {pool!r} already has a replica {replica!r}")
        bound = _Replica(pool, replica, adapter, self.metrics, owned=_owned)
        replicas[replica] = bound
        bound.metrics.healthy.set(1)
        if self._task_group is not None:
            self._start_watch(bound)
        logger.info("replica bound", extra=bound.log_fields(url=redact_secrets(adapter.base_url)))
        self._notify()

    def unbind(self, pool: str, replica: str) -> LlamaCppHttpAdapter:
        """Take *replica* out of *pool*: it gets no new work; its open streams go on.
        Returns its adapter, which the caller still owns.

        Raises:
            KeyError: if there is no such replica.
        """
        try:
            bound = self._pools[pool].pop(replica)
        except KeyError:
            raise KeyError(f"pool {pool!r} has no replica {replica!r}") from None
        if not self._pools[pool]:
            del self._pools[pool]
        if bound.watch is not None:
            bound.watch.scope.cancel()
            bound.watch.learned.set()
        bound.metrics.remove()
        logger.info("replica unbound", extra=bound.log_fields())
        self._notify()
        return bound.adapter

    def replicas(self, pool: str) -> list[ReplicaStatus]:
        """What the host knows of each replica of *pool* (none if the pool is unknown)."""
        return [replica.status() for replica in self._pools.get(pool, {}).values()]

    async def cancel(self, job_id: str) -> bool:
        """End the streams of *job_id* open through this host, best effort (see
        :meth:`LlamaCppHttpAdapter.cancel`); their consumers get :class:`JobCancelled`,
        which is not retried.

        Returns:
            whether a stream of that job was open.
        """
        adapters = {id(r.adapter): r.adapter for p in self._pools.values() for r in p.values()}
        found = False
        for adapter in adapters.values():
            found = await adapter.cancel(job_id) or found
        return found

    async def wait_ready(self, pool: str, replica: str | None = None) -> None:
        """Wait until *replica* of *pool* (or, without *replica*, any replica of it) is
        healthy and its slots are known. Bound the wait with a cancel scope."""
        if self._changed is None:
            raise RuntimeError("use the host inside its async with block")
        while True:
            changed = self._changed
            bound = self._pools.get(pool, {})
            candidates = list(bound.values()) if replica is None else [bound.get(replica)]
            if any(r is not None and r.healthy and r.slots_total for r in candidates):
                return
            await changed.wait()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **host_options: Any) -> AdapterHost:
        """A host with one adapter bound from the environment:

        * ``ORCHD_LLAMACPP_URL`` (required): the llama-server's base URL;
        * ``ORCHD_LLAMACPP_POOL`` (default ``default``): the pool;
        * ``ORCHD_LLAMACPP_REPLICA`` (default ``r0``): the replica's name;
        * ``ORCHD_LLAMACPP_API_KEY`` (optional): the server's API key.

        The host owns that adapter and closes it with itself. The adapter itself never
        reads the environment; this is the one place that does.

        Args:
            environ: the variables to read; ``os.environ`` by default.
            host_options: passed to :class:`AdapterHost`.

        Raises:
            ValueError: if the URL is missing or malformed, or a name is empty.
        """
        env = os.environ if environ is None else environ
        url = env.get(ENV_URL, "").strip()
        if not url:
            raise ValueError(f"{ENV_URL} is not set: give the llama-server's base URL")
        pool = env.get(ENV_POOL, "").strip() or DEFAULT_POOL
        replica = env.get(ENV_REPLICA, "").strip() or DEFAULT_REPLICA
        api_key = env.get(ENV_API_KEY) or None
        try:
            adapter = LlamaCppHttpAdapter(url, api_key=api_key)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{ENV_URL} is malformed: {redact_secrets(str(exc))}") from None
        host = cls(**host_options)
        host.bind(pool, replica, adapter, _owned=True)
        return host

    # --- Streaming ---------------------------------------------------------------------

    @asynccontextmanager
    async def submit(
        self,
        pool: str,
        request: TaskRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - it becomes DeadlineUnmet, not a cancel
    ) -> AsyncIterator[HostStream]:
        """Run *request* on a replica of *pool*; the block receives its events.

        The same shape as :meth:`LlamaCppHttpAdapter.submit`: failures before the stream
        opens are raised on entering the block, later ones from the iteration after the
        events before them; leaving the block closes the stream and frees its slot.

        Raises:
            PoolUnavailable: at once when the pool has no replica, every replica is
                unhealthy, or the task is larger than every replica's context; after
                ``slot_wait_s`` when no replica had a free slot.
            DeadlineUnmet: when *timeout* passes.
            WorkerError: the last failure, when retries run out.
        """
        if self._task_group is None:
            raise RuntimeError("use the host inside its async with block")
        stream = HostStream(self, pool, request, timeout)
        try:
            await stream._open()
            yield stream
        finally:
            await stream.aclose()

    async def stream_into(
        self,
        pool: str,
        request: TaskRequest,
        send_stream: JobItemSendStream,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - it becomes DeadlineUnmet, not a cancel
        task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run *request* on a replica of *pool* as a task that sends its events into
        *send_stream* as ``(job_id, event)`` items: the task form of :meth:`submit`,
        with the contract of :meth:`LlamaCppHttpAdapter.stream_into`::

            await group.start(host.stream_into, "chat", request, send)

        ``start`` raises what ``submit()`` raises on entering its block
        (``PoolUnavailable`` when no replica can take the task, the last failure when
        retries run out); a failure after the first token is sent in-band.
        """
        opening = self.submit(pool, request, timeout=timeout)
        await feed_channel(opening, request.job_id, send_stream, task_status)

    # --- Placement (called by HostStream) ------------------------------------------------

    async def _place(
        self,
        pool: str,
        request: TaskRequest,
        *,
        deadline: float,
        min_context: int,
        failed: set[_Replica],
    ) -> _Replica | None:
        """Choose a replica of *pool* for *request* and count a stream on it; None when
        *deadline* passes first.

        Raises:
            PoolUnavailable: when no replica could take the task, or none had a free
                slot within ``slot_wait_s``.
        """
        replicas = self._pools.get(pool)
        if not replicas:
            raise PoolUnavailable(f"no replica is bound to pool {pool!r}")
        # A replica bound a moment ago is learned first (bounded by its watcher).
        for bound in list(replicas.values()):
            if bound.watch is not None:
                await bound.watch.learned.wait()
        slot_deadline = anyio.current_time() + self._slot_wait_s
        while True:
            changed = self._changed
            assert changed is not None  # the host is entered
            replica, wake_at = self._pick(pool, request, min_context, failed)
            now = anyio.current_time()
            if now >= deadline:
                return None
            if replica is not None:
                replica.in_flight += 1
                replica.metrics.in_flight.inc()
                return replica
            if now >= slot_deadline:
                raise PoolUnavailable(
                    f"no replica of pool {pool!r} had a free slot within {self._slot_wait_s} s"
                )
            with anyio.move_on_after(min(slot_deadline, deadline, wake_at) - now):
                await changed.wait()

    def _pick(
        self, pool: str, request: TaskRequest, min_context: int, failed: set[_Replica]
    ) -> tuple[_Replica | None, float]:
        """The replica with the most free slots, or None and when to look again; one
        that has not failed this task (*failed*) before one that has. Synchronous: the
        choice and the count on it happen with no await between.

        Raises:
            PoolUnavailable: when no replica could ever take the task.
        """
        replicas = list(self._pools.get(pool, {}).values())
        if not replicas:
            raise PoolUnavailable(f"no replica is bound to pool {pool!r}")
        healthy = [r for r in replicas if r.healthy and r.slots_total is not None]
        if not healthy:
            raise PoolUnavailable(f"every replica of pool {pool!r} is unhealthy")
        needed = max(min_context, _prompt_tokens(request) + 1)
        fitting = [r for r in healthy if r.context_size is None or r.context_size >= needed]
        if not fitting:
            raise PoolUnavailable(
                f"the task is larger than the context of every replica of {pool!r}"
            )
        now = anyio.current_time()
        ready = [r for r in fitting if r.cool_until <= now and r.free_slots() > 0]
        if not ready:
            cooling = [r.cool_until for r in fitting if r.cool_until > now]
            return None, min(cooling, default=math.inf)
        ready = [r for r in ready if r not in failed] or ready
        most = max(r.free_slots() for r in ready)
        return self._rng.choice([r for r in ready if r.free_slots() == most]), math.inf

    def _release(self, replica: _Replica) -> None:
        replica.in_flight -= 1
        replica.metrics.in_flight.dec()
        self._notify()

    def _failed(self, replica: _Replica, error: WorkerError) -> None:
        """Count a failure of *replica*: a run of retriable ones marks it unhealthy."""
        if isinstance(error, AdapterError) and error.retry_after is not None:
            replica.cool_until = anyio.current_time() + error.retry_after
        if not error.retriable or (isinstance(error, AdapterError) and error.status == 429):
            return  # the task's own fault, or a busy replica: not a sick one
        replica.failures += 1
        if replica.failures >= self._unhealthy_after:
            self._mark_unhealthy(replica, f"{replica.failures} failures in a row, {error.code}")

    def _mark_unhealthy(self, replica: _Replica, why: str) -> None:
        if not replica.healthy:
            return
        replica.healthy = False
        replica.metrics.healthy.set(0)
        logger.warning("replica marked unhealthy: %s", why, extra=replica.log_fields())
        if replica.watch is not None:
            replica.watch.wake.set()
        self._notify()

    def _mark_healthy(self, replica: _Replica) -> None:
        replica.failures = 0
        replica.cool_until = -math.inf
        if replica.healthy:
            return
        replica.healthy = True
        replica.metrics.healthy.set(1)
        logger.info("replica healthy again", extra=replica.log_fields())
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = anyio.Event()

    # --- The watcher of one replica ----------------------------------------------------

    def _start_watch(self, replica: _Replica) -> None:
        assert self._task_group is not None
        replica.watch = _Watch()
        self._task_group.start_soon(self._watch, replica)

    async def _watch(self, replica: _Replica) -> None:
        watch = replica.watch
        assert watch is not None
        with watch.scope:
            try:
                failure = await self._learn(replica)
                if failure is not None:
                    self._mark_unhealthy(replica, f"its props could not be read: {failure}")
            finally:
                watch.learned.set()
                self._notify()
            while True:
                interval = self._refresh_interval_s if replica.healthy else self._probe_interval_s
                with anyio.move_on_after(interval):
                    await watch.wake.wait()
                if watch.wake.is_set():
                    # Its health changed: start the new interval (a replica just marked
                    # unhealthy gets its first probe one probe interval later).
                    watch.wake = anyio.Event()
                    continue
                if replica.healthy:
                    await self._refresh(replica)
                else:
                    await self._probe(replica)

    async def _learn(self, replica: _Replica) -> str | None:
        """Read the replica's slots and context; return why not, on failure."""
        with anyio.move_on_after(self._call_timeout_s) as scope:
            try:
                props = await replica.adapter.props()
            except WorkerError as exc:
                return exc.code
        if scope.cancelled_caught:
            return "no answer in time"
        replica.slots_total = props.slots_total
        replica.context_size = props.context_size
        if props.slots_free is not None:
            busy = props.slots_total - props.slots_free
            replica.busy_elsewhere = max(busy - replica.in_flight, 0)
        self._notify()
        return None

    async def _refresh(self, replica: _Replica) -> None:
        """Read ``/slots`` again: the slots, and how many other clients use."""
        with anyio.move_on_after(self._call_timeout_s):
            try:
                slots = await replica.adapter.slots()
            except AdapterError as exc:
                if exc.status not in (404, 501):  # 404, 501: no /slots; keep props()'s
                    self._failed(replica, exc)
                return
            except WorkerError as exc:
                self._failed(replica, exc)
                return
            busy = sum(1 for slot in slots if isinstance(slot, dict) and slot.get("is_processing"))
            replica.slots_total = len(slots) or replica.slots_total
            replica.busy_elsewhere = max(busy - replica.in_flight, 0)
            self._notify()

    async def _probe(self, replica: _Replica) -> None:
        """Ask an unhealthy replica's ``/health``; when ready, learn it again."""
        ready = False
        with anyio.move_on_after(self._call_timeout_s):
            ready = (await replica.adapter.health()).ready
        if not ready:
            return
        if await self._learn(replica) is None:
            self._mark_healthy(replica)


class HostStream(EventReceiveStream):
    """The events of one task placed by an :class:`AdapterHost`: :class:`Started`,
    then the replica's :class:`Token`\\ s, :class:`Metrics` and :class:`End`. It is an
    :class:`EventReceiveStream`: ``async for``, ``receive()``, ``receive_nowait()``,
    ``aclose()``.

    Until the first token, a retriable failure sends the task to another replica (the
    consumer sees nothing of it); after the first token, a failure is raised after the
    tokens already delivered.

    Attributes:
        job_id: the task's ``job_id``.
        pool: the pool the task was sent to.
        replica: the replica serving it (the last one tried).
        attempts: how many attempts the task took.
    """

    def __init__(
        self, host: AdapterHost, pool: str, request: TaskRequest, timeout: float | None
    ) -> None:
        self.job_id = request.job_id
        self.pool = pool
        self.replica = ""
        self.attempts = 0
        self._host = host
        self._request = request
        now = anyio.current_time()
        self._deadline = math.inf if timeout is None else now + timeout
        self._retry_deadline = min(self._deadline, now + host.retry.deadline_s)
        self._submitted_at = time.monotonic()
        self._last_token_at = 0.0
        self._token_latency = LatencySeries(())  # the replica's, from the first token
        self._tokens = 0
        self._min_context = 0
        self._failed_on: set[_Replica] = set()  # replicas this task failed on
        self._started_sent = False
        self._current: _Replica | None = None
        self._events: EventStream | None = None
        self._attempt: AsyncExitStack | None = None
        self._failure: WorkerError | None = None
        self._ended = False
        self._closed = False
        self._finished = False  # its end or its failure was handed out
        self._turn = ReadTurn()

    @property
    def tokens_delivered(self) -> int:
        """Tokens handed to the consumer so far."""
        return self._tokens

    @property
    def buffered(self) -> int:
        events = self._events
        return (not self._started_sent) + (0 if events is None else events.buffered)

    def __aiter__(self) -> HostStream:
        return self

    async def __anext__(self) -> TokenEvent:
        while True:
            try:
                # An event of the replica's last read, already decoded: no await.
                return self.receive_nowait()
            except anyio.WouldBlock:
                pass
            except anyio.EndOfStream:
                raise StopAsyncIteration from None
            events = self._events
            assert events is not None  # else receive_nowait() ended the stream
            if self._turn.taken:
                await self._turn.wait()  # another task is reading
                continue
            self._turn.take()
            try:
                read = await self._read(events)
            except (StopAsyncIteration, WorkerError):
                self._finished = True  # its end, or the failure that ended it
                raise
            finally:
                self._turn.give_back()
            # None: the task went to another replica, or the replica's own Started.
            event = None if read is None else self._delivered(read)
            if event is not None:
                return event

    def _delivered(self, event: TokenEvent) -> TokenEvent | None:
        """Count *event* as handed to the consumer; None for the replica's own Started
        (the host sent its own)."""
        kind = type(event)
        if kind is Token:
            self._on_token()
        elif kind is Started:
            return None
        elif kind is End:
            self._ended = True
        return event

    async def _read(self, events: EventStream) -> TokenEvent | None:
        """The replica's next event; None when its failure sent the task to another."""
        try:
            return await events.__anext__()
        except (StopAsyncIteration, anyio.ClosedResourceError):
            await self._close_attempt()
            raise
        except WorkerError as exc:
            # The replica's response is closed already; free its slot and count the
            # failure now, not when the consumer leaves the block.
            self._failure = exc
            await self._close_attempt()
            if self._tokens == 0 and await self._may_retry(exc):
                await self._open(last=exc)
                return None
            raise

    def receive_nowait(self) -> TokenEvent:
        if not self._started_sent:
            self._started_sent = True
            return Started(self.job_id)
        while True:
            events = self._events
            if events is None:
                if self._closed and not self._finished:
                    raise anyio.ClosedResourceError(CLOSED_MESSAGE)
                raise anyio.EndOfStream
            if not events.buffered:
                raise anyio.WouldBlock
            event = self._delivered(events.receive_nowait())
            if event is not None:
                return event

    async def aclose(self) -> None:
        """Close the stream now: the replica's response closes and its slot is freed.
        A task waiting in :meth:`receive` gets ``anyio.ClosedResourceError``."""
        self._closed = True
        events = self._events
        if self._turn.taken and events is not None:
            await events.aclose()  # the reading task then frees the slot
        else:
            await self._close_attempt()

    def _on_token(self) -> None:
        now = _monotonic()
        if self._tokens:
            # Inlined LatencySeries.observe: this runs for every token.
            series = self._token_latency
            gap = now - self._last_token_at
            series.counts[_bisect(series.bounds, gap)] += 1
            series.total += gap
        else:
            replica = self._current
            assert replica is not None
            replica.metrics.time_to_first_token.observe(now - self._submitted_at)
            replica.failures = 0
            self._token_latency = replica.metrics.token_latency
        self._last_token_at = now
        self._tokens += 1

    async def _open(self, last: WorkerError | None = None) -> None:
        """Place the task and open its stream, retrying as the policy allows.

        Raises:
            WorkerError: the failure that ended the attempts (the last one, when the
                retry deadline passed while waiting for a replica).
        """
        while True:
            try:
                await self._open_attempt(last)
            except WorkerError as exc:
                if not await self._may_retry(exc):
                    raise
                last = exc
                continue
            if last is not None:
                logger.info(
                    "task placed after %d attempts", self.attempts, extra=self._log_fields()
                )
            return

    async def _open_attempt(self, last: WorkerError | None) -> None:
        host = self._host
        deadline = self._deadline if last is None else self._retry_deadline
        replica = await host._place(
            self.pool,
            self._request,
            deadline=deadline,
            min_context=self._min_context,
            failed=self._failed_on,
        )
        if replica is None:
            if last is not None and anyio.current_time() < self._deadline:
                raise last  # the retry deadline passed: the last failure stands
            raise DeadlineUnmet(f"no replica of pool {self.pool!r} took the task in time")
        self.attempts += 1
        self._current = replica
        self.replica = replica.name
        self._failure = None
        self._ended = False
        attempt = AsyncExitStack()
        attempt.callback(host._release, replica)
        self._attempt = attempt
        remaining = None if self._deadline == math.inf else self._deadline - anyio.current_time()
        try:
            self._events = await attempt.enter_async_context(
                replica.adapter.submit(self._request, timeout=remaining)
            )
        except WorkerError as exc:
            self._failure = exc
            await self._close_attempt()
            raise

    async def _may_retry(self, error: WorkerError) -> bool:
        """Whether to try the task again after *error*; waits the backoff if so."""
        # The replica of the attempt that failed; None when placement itself failed.
        replica, self._current = self._current, None
        if isinstance(error, PoolUnavailable):
            # A replica said the task does not fit its context: a larger one may take it.
            if replica is None or replica.context_size is None:
                return False
            self._min_context = max(self._min_context, replica.context_size + 1)
            return True
        policy = self._host.retry
        if (
            replica is None  # placement itself failed
            or not error.retriable
            or isinstance(error, DeadlineUnmet)
            or self.attempts >= policy.max_attempts
        ):
            return False
        wait = policy.backoff(self.attempts, self._host._rng)
        if anyio.current_time() + wait >= self._retry_deadline:
            return False
        replica.metrics.retried(error.code)
        logger.info("retrying the task after %s", error.code, extra=self._log_fields())
        await anyio.sleep(wait)
        return True

    async def _close_attempt(self) -> None:
        """Close the current attempt's stream, free its slot, count its outcome."""
        attempt, self._attempt = self._attempt, None
        self._events = None
        replica = self._current
        if attempt is None or replica is None:
            return
        failure = self._failure
        try:
            await attempt.aclose()
        finally:
            if failure is not None:
                self._failed_on.add(replica)
                self._host._failed(replica, failure)
                outcome = failure.code
            else:
                outcome = "ok" if self._ended else "cancelled"
            replica.metrics.ended(outcome)
            if self._tokens:
                replica.metrics.tokens_out.inc(self._tokens)

    def _log_fields(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "engine": ENGINE,
            "pool_id": self.pool,
            "replica_id": self.replica,
            "tokens_out": self._tokens,
        }


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int")
    if value < 1:
        raise ValueError(f"{name} must be at least 1")


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number")
    if not 0 <= value < math.inf:
        raise ValueError(f"{name} must be finite and not negative")


def _check_name(what: str, name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"the {what} name must be a str")
    if not name or len(name) > _MAX_NAME_CHARS or not name.isprintable():
        raise ValueError(f"the {what} name must be 1 to {_MAX_NAME_CHARS} printable characters")


def _prompt_tokens(request: TaskRequest) -> int:
    """The prompt's token count when it is given as ids; 0 (unknown) for text."""
    prompt = request.prompt
    return 0 if prompt is None or isinstance(prompt, str) else len(prompt)
