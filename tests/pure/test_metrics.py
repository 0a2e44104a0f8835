"""The host's latency histogram against prometheus_client's own on the same observations,
and what a scrape from another thread sees while the event loop observes: no pure logic
needs a socket here."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from llamacpp_adapter._host.metrics import LatencyHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0)
LABELS = ("engine", "pool", "replica")
VALUES = ("llama.cpp", "p", "r0")


def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """Each sample of the registry by its name suffix and ``le`` label."""
    return {
        (sample.name.rsplit("_", 1)[-1], sample.labels.get("le", "")): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


@given(st.lists(st.floats(0.0, 5.0), max_size=200))
def test_the_histogram_exposes_what_prometheus_client_s_own_does(values: list[float]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    histogram = LatencyHistogram("latency_seconds", "doc", LABELS, BUCKETS)
    ours.register(histogram)
    reference = Histogram("latency_seconds", "doc", LABELS, registry=theirs, buckets=BUCKETS)
    series, child = histogram.labels(*VALUES), reference.labels(*VALUES)
    for value in values:
        series.observe(value)
        child.observe(value)
    got, expected = samples(ours), samples(theirs)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.usefixtures("frequent_thread_switches")
def test_a_scrape_from_another_thread_sees_counts_and_sum_agree() -> None:
    registry = CollectorRegistry()
    histogram = LatencyHistogram("latency_seconds", "doc", LABELS, BUCKETS)
    registry.register(histogram)
    series = histogram.labels(*VALUES)
    done = threading.Event()
    seen: list[tuple[float, float]] = []

    def scrape() -> None:
        while not done.is_set():
            got = samples(registry)
            seen.append((got[("count", "")], got[("sum", "")]))

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for _ in range(200_000):
            series.observe(1.0)  # so that the sum is the count in every whole snapshot
    finally:
        done.set()
        scraper.join()
    assert len(seen) > 100
    assert [pair for pair in seen if pair[0] != pair[1]] == []
