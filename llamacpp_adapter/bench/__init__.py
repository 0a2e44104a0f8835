"""The serving benchmark from Python: what ``llamacpp-adapter bench`` runs.

::

    from llamacpp_adapter.bench import BenchConfig, Load, run_bench

    config = BenchConfig(("http://127.0.0.1:8080",), Load(concurrency=8), requests=200)
    result = trio.run(run_bench, config)          # or anyio.run(run_bench, config)
    print(result.figures["p99_ttft_ms"], result.client["cpu_seconds_per_1k_tokens"])

The figures carry vLLM's serving benchmark's names (``completed``,
``output_throughput``, ``mean_ttft_ms``, ``p99_itl_ms``, ...); ``result.client`` is the
client's own cost, ``result.server`` the server's view from ``/metrics`` and ``/slots``,
and ``result.token_check`` whether the two counted the same tokens.
:func:`merge_results` makes one result of runs made at the same time elsewhere.
``BenchConfig(..., objectives=parse_objectives("ttft_ms=500,p99_itl_ms=50"))`` judges the
run against service level objectives: ``result.slo`` has its goodput and the verdict.
"""

from ._config import BenchConfig
from ._load import Load, arrival_offsets
from ._prompts import Prompt
from ._results import BenchResult, merge_results
from ._run import run_bench
from ._slo import Objective, parse_objectives
from ._stats import RequestRecord, percentile, summarize

__all__ = [
    "BenchConfig",
    "BenchResult",
    "Load",
    "Objective",
    "Prompt",
    "RequestRecord",
    "arrival_offsets",
    "merge_results",
    "parse_objectives",
    "percentile",
    "run_bench",
    "summarize",
]
