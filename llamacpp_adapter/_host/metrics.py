"""Prometheus metrics of an :class:`AdapterHost`, per engine, pool and replica."""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Iterator, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["HostMetrics"]

_PREFIX = "llamacpp_adapter"
_LABELS = ("engine", "pool", "replica")
# Seconds. Time to first token spans a prompt's evaluation; a token's latency is one
# decode step, milliseconds on a real model.
_TTFT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TOKEN_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class LatencySeries:
    """One label set of a :class:`LatencyHistogram`: plain counts per bucket, and their
    sum. An observation changes :attr:`version` before and after it (odd while it is
    under way), so that a scrape from another thread can take a snapshot in which the
    counts and the sum agree (:meth:`snapshot`)."""

    __slots__ = ("bounds", "counts", "total", "version")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.version = 0

    def observe(self, seconds: float) -> None:
        """Count one observation (buckets are "less or equal", as Prometheus's)."""
        self.version += 1
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.version += 1

    def snapshot(self) -> tuple[list[int], float]:
        """The counts and their sum as one observation left them (from any thread)."""
        while True:
            version = self.version
            counts, total = list(self.counts), self.total
            if version % 2 == 0 and version == self.version:
                return counts, total


class LatencyHistogram(Collector):
    """A Prometheus histogram that costs about a tenth of ``prometheus_client``'s own to
    observe (it is observed for every token): counts are kept per bucket and made
    cumulative only when the registry is scraped. Observe from one thread (the event
    loop's); a scrape from the metrics server's thread reads a copy."""

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = list(labels)
        self._bounds = tuple(sorted(buckets))
        self._series: dict[tuple[str, ...], LatencySeries] = {}

    def labels(self, *values: str) -> LatencySeries:
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = LatencySeries(self._bounds)
        return series

    def remove(self, *values: str) -> None:
        self._series.pop(values, None)

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self._name, self._documentation, labels=self._labels)]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labels)
        edges = [repr(float(bound)) for bound in self._bounds] + ["+Inf"]
        for values, series in list(self._series.items()):
            counts, total = series.snapshot()
            cumulative = itertools.accumulate(counts)
            buckets = [(edge, float(count)) for edge, count in zip(edges, cumulative, strict=True)]
            family.add_metric(list(values), buckets, total)
        yield family


class HostMetrics:
    """The host's series, in a registry of their own (not the process-wide default, so
    that several hosts can live in one process):

    * ``llamacpp_adapter_requests_total{engine,pool,replica,outcome}``: streams that
      ended, by outcome (``ok``, ``cancelled``, or the error's ``code``);
    * ``llamacpp_adapter_tokens_out_total{engine,pool,replica}``: tokens delivered;
    * ``llamacpp_adapter_time_to_first_token_seconds{engine,pool,replica}``: from the
      request to its first token (a histogram);
    * ``llamacpp_adapter_token_latency_seconds{engine,pool,replica}``: between one
      token and the next (a histogram);
    * ``llamacpp_adapter_in_flight_streams{engine,pool,replica}``: open streams (a
      stream paused on the engine holds no slot, and is not counted);
    * ``llamacpp_adapter_pauses_total{engine,pool,replica}``: streams paused on the
      replica while their consumers were away (:class:`PausePolicy`);
    * ``llamacpp_adapter_resumes_total{engine,pool,replica,where}``: paused streams
      resumed on the replica, ``where`` it paused (``same``) or on another
      (``other``: its cache was elsewhere, or the replica it paused on was gone);
    * ``llamacpp_adapter_retries_total{engine,pool,replica,reason}``: attempts that
      failed before the first token and were tried again (``reason`` is the code);
    * ``llamacpp_adapter_replica_healthy{engine,pool,replica}``: 1 when the replica
      gets work, 0 while it is marked unhealthy;
    * ``llamacpp_adapter_replica_mismatched{engine,pool,replica}``: 1 while the replica
      runs another engine build or model than its pool's first replica (it then gets
      no work), 0 otherwise.

    Args:
        registry: where to register the series; a new one by default.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        reg = self.registry
        self.requests = Counter(
            f"{_PREFIX}_requests", "Streams ended, by outcome.", [*_LABELS, "outcome"], registry=reg
        )
        self.tokens_out = Counter(
            f"{_PREFIX}_tokens_out", "Tokens delivered to consumers.", _LABELS, registry=reg
        )
        self.prompt_tokens = Counter(
            f"{_PREFIX}_prompt_tokens",
            "Prompt tokens of the streams the replica ended, evaluated or taken from cache.",
            _LABELS,
            registry=reg,
        )
        self.prompt_tokens_cached = Counter(
            f"{_PREFIX}_prompt_tokens_cached",
            "Prompt tokens the replica took from its cache, as its timings said.",
            _LABELS,
            registry=reg,
        )
        self.time_to_first_token = LatencyHistogram(
            f"{_PREFIX}_time_to_first_token_seconds",
            "From the request to its first token.",
            _LABELS,
            _TTFT_BUCKETS_S,
        )
        self.token_latency = LatencyHistogram(
            f"{_PREFIX}_token_latency_seconds",
            "Between one token of a stream and the next.",
            _LABELS,
            _TOKEN_BUCKETS_S,
        )
        reg.register(self.time_to_first_token)
        reg.register(self.token_latency)
        self.in_flight = Gauge(
            f"{_PREFIX}_in_flight_streams", "Streams open on the replica.", _LABELS, registry=reg
        )
        self.pauses = Counter(
            f"{_PREFIX}_pauses",
            "Streams paused on the replica while their consumers were away.",
            _LABELS,
            registry=reg,
        )
        self.resumes = Counter(
            f"{_PREFIX}_resumes",
            "Paused streams resumed on the replica: where they paused, or another.",
            [*_LABELS, "where"],
            registry=reg,
        )
        self.retries = Counter(
            f"{_PREFIX}_retries",
            "Attempts that failed before the first token and were tried again.",
            [*_LABELS, "reason"],
            registry=reg,
        )
        self.replica_healthy = Gauge(
            f"{_PREFIX}_replica_healthy",
            "1 when the replica gets work, 0 while it is marked unhealthy.",
            _LABELS,
            registry=reg,
        )
        self.replica_mismatched = Gauge(
            f"{_PREFIX}_replica_mismatched",
            "1 while the replica runs another engine build or model than its pool's first.",
            _LABELS,
            registry=reg,
        )
        self._server: tuple[WSGIServer, threading.Thread] | None = None

    def serve(self, port: int = 0, *, addr: str = "127.0.0.1") -> str:
        """Serve the registry at ``/metrics`` over HTTP, in a thread of its own, until
        :meth:`close`. Returns the URL it serves on (``port=0`` picks a free port)."""
        if self._server is not None:
            raise RuntimeError("the metrics are already served")
        server, thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = (server, thread)
        host, bound_port = server.server_address[:2]
        return f"http://{host!s}:{bound_port}/metrics"

    def close(self) -> None:
        """Stop serving, if :meth:`serve` was called."""
        if self._server is not None:
            server, thread = self._server
            self._server = None
            server.shutdown()
            server.server_close()
            thread.join()
