"""One replica bound to a host: what the host knows of it, and every change to that.

The state (healthy or not, its failures in a row, its slots and context, the streams
the host has open on it, the slots other clients use, a ``Retry-After`` pause) is
written here and nowhere else: each change is a method, which keeps its gauges, logs a
change of health, and tells the host (``on_change``) so that a task waiting for a slot
looks again. Time comes from the caller, so the transitions are pure but for those
effects.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from .._adapter import ENGINE, LlamaCppHttpAdapter
from .._exceptions import AdapterError, WorkerError
from .._types import SlotUse, WorkerProps
from .metrics import HostMetrics, LatencySeries

__all__ = ["Replica", "ReplicaStatus"]

logger = logging.getLogger("llamacpp_adapter")


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
        engine_version: its engine build, once learned.
        model_digest: the digest of its model, once learned.
        mismatch: why it gets no work in a pinned pool (it runs another engine build or
            model than the pool's first replica), or ``None``.
        sessions: the conversations whose last turn it ran (of those the host
            remembers): their next turns go to it.
        prompt_tokens: the prompt tokens of the streams it ended, evaluated or taken
            from cache, as their timings said.
        prompt_tokens_cached: of those, the tokens it took from its cache.
    """

    pool: str
    replica: str
    healthy: bool
    slots_total: int | None
    context_size: int | None
    in_flight: int
    free_slots: int
    engine_version: str | None = None
    model_digest: str | None = None
    mismatch: str | None = None
    sessions: int = 0
    prompt_tokens: int = 0
    prompt_tokens_cached: int = 0

    @property
    def cache_hit_rate(self) -> float | None:
        """The share of its prompt tokens it took from cache; ``None`` before any."""
        return self.prompt_tokens_cached / self.prompt_tokens if self.prompt_tokens else None


class _ReplicaMetrics:
    """One replica's series, labelled once: a token costs no label lookup."""

    def __init__(self, metrics: HostMetrics, labels: tuple[str, str, str]) -> None:
        self.family = metrics
        self.labels = labels
        self.tokens_out = metrics.tokens_out.labels(*labels)
        self.time_to_first_token = metrics.time_to_first_token.labels(*labels)
        self.token_latency = metrics.token_latency.labels(*labels)
        self.in_flight = metrics.in_flight.labels(*labels)
        self.pauses = metrics.pauses.labels(*labels)
        self.prompt_tokens = metrics.prompt_tokens.labels(*labels)
        self.prompt_tokens_cached = metrics.prompt_tokens_cached.labels(*labels)
        self.healthy = metrics.replica_healthy.labels(*labels)
        self.mismatched = metrics.replica_mismatched.labels(*labels)

    def count_end(self, outcome: str) -> None:
        self.family.requests.labels(*self.labels, outcome).inc()

    def count_retry(self, reason: str) -> None:
        self.family.retries.labels(*self.labels, reason).inc()

    def count_resume(self, where: str) -> None:
        self.family.resumes.labels(*self.labels, where).inc()

    def remove(self) -> None:
        # Its gauges go with it; its counters and histograms keep what they counted.
        self.family.replica_healthy.remove(*self.labels)
        self.family.replica_mismatched.remove(*self.labels)
        self.family.in_flight.remove(*self.labels)


class Replica:
    """A bound adapter and the host's knowledge of it.

    Args:
        pool: the pool's name.
        name: the replica's name.
        adapter: its adapter.
        metrics: the host's metrics, where its series are labelled.
        unhealthy_after: failures in a row (that *blames* counts against it) after which
            it is marked unhealthy.
        blames: whether a failure counts against the replica's health (the retry
            policy's :meth:`RetryPolicy.blames_replica`).
        on_change: called after any change that may let a waiting task be placed.
        on_learned: called with the replica once its engine build and model are learned
            (the pool checks its pin).
        owned: whether the host made the adapter (and closes it).
    """

    def __init__(
        self,
        pool: str,
        name: str,
        adapter: LlamaCppHttpAdapter,
        metrics: HostMetrics,
        *,
        unhealthy_after: int,
        blames: Callable[[WorkerError], bool],
        on_change: Callable[[], None],
        on_learned: Callable[[Replica], None] = lambda replica: None,
        owned: bool = False,
    ) -> None:
        self.pool = pool
        self.name = name
        self.adapter = adapter
        self.owned = owned
        self._metrics = _ReplicaMetrics(metrics, (ENGINE, pool, name))
        self._unhealthy_after = unhealthy_after
        self._blames = blames
        self._on_change = on_change
        self._on_learned = on_learned
        self._engine_version: str | None = None
        self._model_digest: str | None = None
        self._mismatch: str | None = None
        self._slots_total: int | None = None
        self._context_size: int | None = None
        self._in_flight = 0
        self._prompt_tokens = 0
        self._prompt_tokens_cached = 0
        self._busy_elsewhere = 0  # slots processing for other clients, from /slots
        self._healthy = True
        self._failures = 0  # in a row
        self._cool_until = -math.inf  # from Retry-After, on the anyio clock
        self._health_changed: anyio.Event | None = None  # made when first waited on
        self._looked = False  # its first props() answered or failed, or it was unbound
        self._looked_at: anyio.Event | None = None  # made when first waited on
        self._metrics.healthy.set(1)
        self._metrics.mismatched.set(0)

    # --- What is known -----------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def slots_total(self) -> int | None:
        return self._slots_total

    @property
    def context_size(self) -> int | None:
        return self._context_size

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def cool_until(self) -> float:
        """When a ``Retry-After`` it sent has passed."""
        return self._cool_until

    @property
    def identity(self) -> tuple[str | None, str] | None:
        """Its engine build and model digest, once learned."""
        if self._model_digest is None:
            return None
        return (self._engine_version, self._model_digest)

    @property
    def has_looked(self) -> bool:
        """Whether its first ``props()`` answered or failed (or it was unbound)."""
        return self._looked

    @property
    def mismatch(self) -> str | None:
        return self._mismatch

    @property
    def placeable(self) -> bool:
        """Healthy, with its slots known, and the engine and model of its pool: it may
        be given work."""
        return self._healthy and self._slots_total is not None and self._mismatch is None

    def free_slots(self) -> int:
        if self._slots_total is None:
            return 0
        return max(self._slots_total - self._in_flight - self._busy_elsewhere, 0)

    def status(self, *, sessions: int = 0) -> ReplicaStatus:
        """What the host knows of it, *sessions* conversations having their last turn
        on it."""
        return ReplicaStatus(
            self.pool,
            self.name,
            self._healthy,
            self._slots_total,
            self._context_size,
            self._in_flight,
            self.free_slots(),
            self._engine_version,
            self._model_digest,
            self._mismatch,
            sessions,
            self._prompt_tokens,
            self._prompt_tokens_cached,
        )

    def log_fields(self, **more: Any) -> dict[str, Any]:
        return {"engine": ENGINE, "pool_id": self.pool, "replica_id": self.name, **more}

    async def wait_health_change(self) -> None:
        """Return when it is next marked healthy or unhealthy."""
        if self._health_changed is None:
            self._health_changed = anyio.Event()
        await self._health_changed.wait()

    async def wait_first_look(self) -> None:
        """Return once its first ``props()`` answered or failed (or it was unbound)."""
        if self._looked:
            return
        if self._looked_at is None:
            self._looked_at = anyio.Event()
        await self._looked_at.wait()

    # --- What the watcher learns -------------------------------------------------------

    def record_first_look(self) -> None:
        """Its first ``props()`` answered or failed: tasks waiting for it go on."""
        if self._looked:
            return
        self._looked = True
        if self._looked_at is not None:
            self._looked_at.set()
        self._on_change()

    def record_props(self, props: WorkerProps) -> None:
        """Its slots and context, from ``props()``."""
        self._slots_total = props.slots_total
        self._context_size = props.context_size
        if props.slots_free is not None:
            self._busy_elsewhere = max(props.slots_total - props.slots_free - self._in_flight, 0)
        self._engine_version = props.build_info
        self._model_digest = props.model_digest
        self._on_learned(self)
        self._on_change()

    def set_mismatch(self, why: str | None) -> None:
        """It runs another engine build or model than its pool's first replica (*why*),
        so it gets no work; or (``None``) it runs the same."""
        if why == self._mismatch:
            return
        self._mismatch = why
        self._metrics.mismatched.set(0 if why is None else 1)
        if why is None:
            logger.info("replica matches its pool again", extra=self.log_fields())
        else:
            logger.warning("replica gets no work: %s", why, extra=self.log_fields())
        self._on_change()

    def record_slots(self, use: SlotUse) -> None:
        """Its slots, from ``/slots``: how many there are, and how many other clients use."""
        self._slots_total = use.total or self._slots_total
        self._busy_elsewhere = max(use.busy - self._in_flight, 0)
        self._on_change()

    def mark_unhealthy(self, why: str) -> None:
        if not self._healthy:
            return
        self._healthy = False
        self._metrics.healthy.set(0)
        logger.warning("replica marked unhealthy: %s", why, extra=self.log_fields())
        self._health_flipped()

    def mark_healthy(self) -> None:
        """A probe found it ready (and its props were read again)."""
        self._failures = 0
        self._cool_until = -math.inf
        if self._healthy:
            return
        self._healthy = True
        self._metrics.healthy.set(1)
        logger.info("replica healthy again", extra=self.log_fields())
        self._health_flipped()

    def _health_flipped(self) -> None:
        event, self._health_changed = self._health_changed, None
        if event is not None:
            event.set()
        self._on_change()

    # --- What its streams do -----------------------------------------------------------

    def take(self) -> None:
        """A stream was placed on it."""
        self._in_flight += 1
        self._metrics.in_flight.inc()

    def release(self) -> None:
        """A stream placed on it ended."""
        self._in_flight -= 1
        self._metrics.in_flight.dec()
        self._on_change()

    def record_prompt(self, evaluated: int, cached: int | None) -> None:
        """A stream on it ended, its timings saying it evaluated *evaluated* prompt
        tokens and took *cached* from its cache (``None``: not said)."""
        reused = cached or 0
        self._prompt_tokens += evaluated + reused
        self._prompt_tokens_cached += reused
        self._metrics.prompt_tokens.inc(evaluated + reused)
        self._metrics.prompt_tokens_cached.inc(reused)

    def record_first_token(self, waited_s: float) -> LatencySeries:
        """A stream's first token came *waited_s* after its task was submitted; it ends
        the run of failures. Returns the series its later tokens' gaps go in."""
        self._failures = 0
        self._metrics.time_to_first_token.observe(waited_s)
        return self._metrics.token_latency

    def record_failure(self, error: WorkerError, *, now: float) -> None:
        """A stream or a call on it failed with *error* at *now*; a run of failures the
        policy blames on it marks it unhealthy."""
        if isinstance(error, AdapterError) and error.retry_after is not None:
            self._cool_until = now + error.retry_after
        if not self._blames(error):
            return
        self._failures += 1
        if self._failures >= self._unhealthy_after:
            self.mark_unhealthy(f"{self._failures} failures in a row, {error.code}")

    def record_end(self, outcome: str, tokens: int) -> None:
        """A stream on it ended with *outcome* (``ok``, ``cancelled`` or an error code),
        after *tokens* tokens."""
        self._metrics.count_end(outcome)
        if tokens:
            self._metrics.tokens_out.inc(tokens)

    def record_pause(self) -> None:
        """A stream on it was paused while its consumer was away: its slot is free
        (:meth:`release` says so)."""
        self._metrics.pauses.inc()

    def record_resume(self, *, same: bool) -> None:
        """A paused stream was resumed on it: where it paused (*same*), or not."""
        self._metrics.count_resume("same" if same else "other")

    def record_retry(self, reason: str) -> None:
        """A task that failed on it with *reason* (an error code) is tried again."""
        self._metrics.count_retry(reason)

    def unbind(self) -> None:
        """It was taken out of its pool: its gauges go, and no task waits on it."""
        self._metrics.remove()
        self.record_first_look()
