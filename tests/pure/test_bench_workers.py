"""The serving benchmark's workers: each gets its share of the load."""

from __future__ import annotations

import pytest

from llamacpp_adapter.bench import BenchConfig
from llamacpp_adapter.bench._load import Load
from llamacpp_adapter.bench._workers import worker_configs


def test_each_worker_gets_its_share() -> None:
    config = BenchConfig(("http://x",), Load(concurrency=5), requests=11, warmup=3, seed=1)
    configs = worker_configs(config, 3)
    assert [c.load.concurrency for c in configs] == [2, 2, 1]
    assert [c.requests for c in configs] == [4, 4, 3]
    assert [c.warmup for c in configs] == [1, 1, 1]
    assert len({c.seed for c in configs}) == 3
    assert not any(c.sample_server for c in configs)
    opened = worker_configs(BenchConfig(("http://x",), Load(rate=9.0), requests=6), 3)
    assert [c.load.rate for c in opened] == [3.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="concurrency of at least 3"):
        worker_configs(BenchConfig(("http://x",), Load(concurrency=2)), 3)
