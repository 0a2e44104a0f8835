"""Pools of llama-server replicas behind one ``submit()``: :class:`AdapterHost`.

The host binds adapters into named pools and places each task on the replica of its
pool with the most free slots. It never sends a replica more concurrent streams than it
has slots; it retries a retriable failure on another replica, but only before the
task's first token; and it fails fast with :class:`PoolUnavailable` when no replica can
take the task.

Each decision has its own module: what the host knows of a replica and how that
changes (``replica``), where a task goes (``placement``), whether a failed task is
tried again (``retry``), how a replica is watched (``watcher``), what is counted
(``metrics``), and a task's attempts (``stream``). The host binds them together and owns
their lifetime.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

from .._adapter import LlamaCppHttpAdapter
from .._redact import redact_secrets
from .._task_form import JobItemSendStream, feed_channel
from .._types import ChatRequest, TaskRequest
from .._validate import count, seconds
from .metrics import HostMetrics
from .placement import DEFAULT_SESSION_WAIT_S, Pools
from .prefixes import PrefixPolicy
from .replica import Replica, ReplicaStatus
from .retry import RetryPolicy
from .stream import HostStream
from .watcher import ReplicaWatcher

__all__ = ["AdapterHost"]

logger = logging.getLogger("llamacpp_adapter")

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


class AdapterHost(anyio.abc.AsyncResource):
    """Pools of llama.cpp replicas, with dispatch by free slots and retries.

    ::

        async with (
            LlamaCppHttpAdapter("http://10.0.0.5:8080") as first,
            LlamaCppHttpAdapter("http://10.0.0.6:8080") as second,
            AdapterHost() as host,
        ):
            host.bind("chat", "r0", first)  # the host does not close what it is given
            host.bind("chat", "r1", second)
            async with host.submit("chat", TaskRequest("Hello", max_tokens=64)) as events:
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
            could take it is busy; then :class:`PoolUnavailable` (``0``: at once).
        unhealthy_after: consecutive retriable failures (a refused or cut connection,
            a timeout, 5xx) after which a replica gets no work until a probe finds it
            ready.
        probe_interval_s: how often an unhealthy replica is probed.
        refresh_interval_s: how often a healthy replica's slots are read again.
        call_timeout_s: the bound on one ``props()``, ``slots()`` or ``health()`` call.
        metrics: where to count; a :class:`HostMetrics` with a registry of its own by
            default (see :attr:`metrics`).
        rng: the source of the backoff's jitter (seed it for reproducible runs).
        pin_replicas: whether the replicas of a pool must run the engine build and model
            of its first replica (by default: one that differs gets no work, and is
            reported in :attr:`metrics`, :meth:`replicas` and a log line).
        session_wait_s: how long a conversation's turn (a request with a ``session``)
            waits for a free slot on the replica that ran its last turn, where the
            engine has the conversation in cache, before it goes to another replica
            (and the conversation with it). A turn that waits a little usually starts
            sooner than one that evaluates the whole conversation again.
        prefixes: how any other task goes to the replica that evaluated the longest
            beginning of its prompt (a shared system prompt, a document, a
            conversation's earlier turns), weighed against how busy it is; ``None``: by
            free slots alone.
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
        pin_replicas: bool = True,
        session_wait_s: float = DEFAULT_SESSION_WAIT_S,
        prefixes: PrefixPolicy | None = PrefixPolicy(),  # noqa: B008 (frozen)
    ) -> None:
        self.retry = RetryPolicy() if retry is None else retry
        count("unhealthy_after", unhealthy_after)
        for name, value in (
            ("slot_wait_s", slot_wait_s),
            ("probe_interval_s", probe_interval_s),
            ("refresh_interval_s", refresh_interval_s),
            ("call_timeout_s", call_timeout_s),
            ("session_wait_s", session_wait_s),
        ):
            seconds(name, value)
        self._slot_wait_s = float(slot_wait_s)
        self._unhealthy_after = unhealthy_after
        self._probe_interval_s = float(probe_interval_s)
        self._refresh_interval_s = float(refresh_interval_s)
        self._call_timeout_s = float(call_timeout_s)
        self.metrics = HostMetrics() if metrics is None else metrics
        self._rng = random.Random() if rng is None else rng
        self._pools = Pools(
            slot_wait_s=self._slot_wait_s,
            rng=self._rng,
            pinned=pin_replicas,
            session_wait_s=float(session_wait_s),
            prefixes=prefixes,
        )
        self._watchers: dict[Replica, ReplicaWatcher] = {}
        self._exit_stack: AsyncExitStack | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pools={self._pools.names()!r})"

    # --- Lifetime ----------------------------------------------------------------------

    async def __aenter__(self) -> AdapterHost:
        if self._exit_stack is not None or self._closed:
            raise RuntimeError("an AdapterHost can be entered once")
        stack = AsyncExitStack()
        self._task_group = await stack.enter_async_context(anyio.create_task_group())
        self._exit_stack = stack
        self._pools.open()
        for replica in self._pools:
            self._watch(replica)
        return self

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
            for replica in self._pools:
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
        if any(r.name == replica for r in self._pools.of(pool)):
            raise ValueError(f"pool {pool!r} already has a replica {replica!r}")
        bound = Replica(
            pool,
            replica,
            adapter,
            self.metrics,
            unhealthy_after=self._unhealthy_after,
            blames=self.retry.blames_replica,
            on_change=self._pools.changed,
            on_learned=self._pools.check_pin,
            owned=_owned,
        )
        self._pools.add(bound)
        if self._task_group is not None:
            self._watch(bound)
        logger.info("replica bound", extra=bound.log_fields(url=redact_secrets(adapter.base_url)))

    def unbind(self, pool: str, replica: str) -> LlamaCppHttpAdapter:
        """Take *replica* out of *pool*: it gets no new work; its open streams go on.
        Returns its adapter, which the caller still owns.

        Raises:
            KeyError: if there is no such replica.
        """
        bound = self._pools.remove(pool, replica)
        watcher = self._watchers.pop(bound, None)
        if watcher is not None:
            watcher.stop()
        bound.unbind()
        logger.info("replica unbound", extra=bound.log_fields())
        return bound.adapter

    def replicas(self, pool: str) -> list[ReplicaStatus]:
        """What the host knows of each replica of *pool* (none if the pool is unknown)."""
        sessions = self._pools.sessions
        return [
            replica.status(sessions=sessions.on(pool, replica.name))
            for replica in self._pools.of(pool)
        ]

    async def cancel(self, job_id: str) -> bool:
        """End the streams of *job_id* open through this host, best effort (see
        :meth:`LlamaCppHttpAdapter.cancel`); their consumers get :class:`JobCancelled`,
        which is not retried.

        Returns:
            whether a stream of that job was open.
        """
        adapters = {id(r.adapter): r.adapter for r in self._pools}
        found = False
        for adapter in adapters.values():
            found = await adapter.cancel(job_id) or found
        return found

    async def wait_ready(self, pool: str, replica: str | None = None) -> None:
        """Wait until *replica* of *pool* (or, without *replica*, any replica of it) is
        healthy and its slots are known. Bound the wait with a cancel scope.

        Raises:
            PoolUnavailable: when *replica* runs another engine build or model than its
                pool's first replica, in a pinned pool.
        """
        await self._pools.wait_ready(pool, replica)

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

    def submit(
        self,
        pool: str,
        request: TaskRequest | ChatRequest,
        *,
        timeout: float | None = None,
    ) -> AbstractAsyncContextManager[HostStream]:
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
        opening = (self._pools, self.retry, self._rng, pool, request, timeout, self._task_group)
        return _HostSubmission(opening)

    async def stream_into(
        self,
        pool: str,
        request: TaskRequest | ChatRequest,
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

    def _watch(self, replica: Replica) -> None:
        assert self._task_group is not None
        watcher = ReplicaWatcher(
            replica,
            refresh_interval_s=self._refresh_interval_s,
            probe_interval_s=self._probe_interval_s,
            call_timeout_s=self._call_timeout_s,
        )
        self._watchers[replica] = watcher
        self._task_group.start_soon(watcher.run)


def _check_name(what: str, name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"the {what} name must be a str")
    if not name or len(name) > _MAX_NAME_CHARS or not name.isprintable():
        raise ValueError(f"the {what} name must be 1 to {_MAX_NAME_CHARS} printable characters")


class _HostSubmission:
    """The block of :meth:`AdapterHost.submit`: it places and opens the stream on
    entering and closes it on leaving. (A class of its own, not a generator's context
    manager, which with its generator's frame held about 1 KB a stream.)"""

    __slots__ = ("_opening", "_stream")

    def __init__(self, opening: _Opening) -> None:
        self._opening: _Opening | None = opening  # HostStream.open's arguments
        self._stream: HostStream | None = None

    async def __aenter__(self) -> HostStream:
        opening, self._opening = self._opening, None
        if opening is None:
            raise RuntimeError("a submit() block is entered once")
        self._stream = await HostStream.open(*opening)
        return self._stream

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stream = self._stream
        assert stream is not None, "left before entered"
        await stream.aclose()


_Opening = tuple[
    Pools,
    RetryPolicy,
    random.Random,
    str,
    TaskRequest | ChatRequest,
    float | None,
    anyio.abc.TaskGroup,
]
