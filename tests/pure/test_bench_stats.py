"""The serving benchmark's pure parts: its figures from records, and its arrivals."""

from __future__ import annotations

import itertools
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamacpp_adapter.bench._load import Load, arrival_offsets
from llamacpp_adapter.bench._plot import throughput_over_time, write_plot
from llamacpp_adapter.bench._results import merge_results
from llamacpp_adapter.bench._stats import RequestRecord, percentile, request_latencies, summarize


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.floats(0, 100))
def test_percentiles_are_numpy_s(values: list[float], p: float) -> None:
    assert percentile(values, p) == pytest.approx(float(np.percentile(values, p)), abs=1e-6)


@given(st.lists(st.floats(0, 1e4), min_size=1, max_size=50))
def test_percentiles_are_ordered(values: list[float]) -> None:
    assert percentile(values, 50) <= percentile(values, 90) <= percentile(values, 99)


def test_the_figures_of_a_run_by_vllm_s_names() -> None:
    records = [
        # sent at 0, first token at 0.1, four more 0.05 apart: 5 tokens, ends at 0.3
        RequestRecord(0.0, 0.3, 10, 5, 0.1, (0.05, 0.05, 0.05, 0.05)),
        # two token ids in its one event: 2 tokens, 1 event, no gap
        RequestRecord(0.1, 0.5, 20, 2, 0.5, ()),
        RequestRecord(0.2, 0.25, 30, 0, error="WORKER_RESET"),
    ]
    figures = summarize(records, 2.0)
    assert figures["completed"] == 2
    assert figures["failed"] == 1
    assert figures["errors"] == {"WORKER_RESET": 1}
    assert figures["total_input_tokens"] == 30
    assert figures["total_output_tokens"] == 7
    assert figures["request_throughput"] == pytest.approx(1.0)
    assert figures["output_throughput"] == pytest.approx(3.5)
    assert figures["total_token_throughput"] == pytest.approx(18.5)
    assert figures["mean_ttft_ms"] == pytest.approx(250.0)  # 100 and 400
    assert figures["median_ttft_ms"] == pytest.approx(250.0)
    # TPOT: (0.3 - 0.1) / 4 = 50 ms, and (0.5 - 0.5) / 1 = 0 ms.
    assert figures["mean_tpot_ms"] == pytest.approx(25.0)
    assert figures["mean_itl_ms"] == pytest.approx(50.0)
    assert figures["p99_e2el_ms"] == pytest.approx(300 + (400 - 300) * 0.99)
    assert {"p50_itl_ms", "p90_itl_ms", "p99_itl_ms", "std_ttft_ms"} <= set(figures)


def test_a_run_with_no_completed_request_has_no_latency() -> None:
    figures = summarize([RequestRecord(0.0, 1.0, 5, 0, error="ADAPTER_ERROR")], 1.0)
    assert figures["completed"] == 0
    assert math.isnan(float(figures["mean_ttft_ms"]))  # type: ignore[arg-type]


def test_open_loop_arrivals_have_the_rate_and_the_seed() -> None:
    offsets = arrival_offsets(20_000, rate=50.0, burstiness=1.0, seed=3)
    assert offsets[0] == 0
    assert offsets == arrival_offsets(20_000, rate=50.0, burstiness=1.0, seed=3)
    assert offsets != arrival_offsets(20_000, rate=50.0, burstiness=1.0, seed=4)
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert statistics.mean(gaps) == pytest.approx(1 / 50, rel=0.03)
    # A gamma of shape k has a squared coefficient of variation of 1 / k.
    for shape in (0.5, 1.0, 4.0):
        drawn = arrival_offsets(20_000, rate=50.0, burstiness=shape, seed=1)
        spaced = [b - a for a, b in itertools.pairwise(drawn)]
        cv2 = statistics.pvariance(spaced) / statistics.mean(spaced) ** 2
        assert cv2 == pytest.approx(1 / shape, rel=0.1)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({}, "concurrency"),
        ({"concurrency": 0}, "at least 1"),
        ({"rate": 0.0}, "rate"),
        ({"rate": math.inf}, "rate"),
        ({"rate": 1.0, "burstiness": 0.0}, "burstiness"),
    ],
)
def test_a_bad_load_is_refused(options: dict[str, float], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Load(**options)  # type: ignore[arg-type]


def result_of(records: list[RequestRecord], started_at: float, cpu: float) -> dict[str, object]:
    from llamacpp_adapter.bench._results import make_result

    wall = max(r.ended for r in records)
    result = make_result(records, wall, cpu, [None], [None], [], [], False)
    result.started_at = started_at
    return result.as_json()


def test_results_of_several_processes_merge_on_the_wall_clock() -> None:
    a = [RequestRecord(0.0, 1.0, 10, 4, 0.2, (0.1, 0.1, 0.1)), RequestRecord(0.5, 2.0, 10, 4, 0.9)]
    b = [RequestRecord(0.0, 1.5, 20, 8, 0.5, (0.2,) * 7)]
    merged = merge_results([result_of(a, 1000.0, 0.4), result_of(b, 1001.0, 0.6)])
    # b began a second after a: on a's clock, its request ran from 1.0 to 2.5.
    shifted = [*a, RequestRecord(1.0, 2.5, 20, 8, 1.5, (0.2,) * 7)]
    expected = summarize(shifted, 2.5)
    for name in ("completed", "total_output_tokens", "p99_ttft_ms", "mean_itl_ms", "duration"):
        assert merged[name] == pytest.approx(expected[name]), name
    assert merged["client"]["cpu_seconds"] == pytest.approx(1.0)  # type: ignore[index]
    assert merged["client"]["cpu_seconds_per_1k_tokens"] == pytest.approx(1000 / 16)  # type: ignore[index]
    assert merged["token_check"]["equal"] is None  # type: ignore[index]
    assert merged["started_at"] == 1000.0
    with pytest.raises(ValueError, match="nothing"):
        merge_results([])


def test_throughput_over_time_counts_each_event_in_its_bin(tmp_path: Path) -> None:
    records = [
        RequestRecord(0.0, 1.2, 4, 4, 0.1, (0.3, 0.3, 0.3)),  # events at 0.1 0.4 0.7 1.0
        RequestRecord(0.0, 0.2, 4, 1, error="WORKER_RESET"),  # failed: not counted
    ]
    result = result_of(records, 0.0, 0.1)
    starts, rates = throughput_over_time(result)
    assert starts == [0.0, 0.5, 1.0]
    assert rates == [4.0, 2.0, 2.0]  # 2, 1 and 1 events in half-second bins
    path = tmp_path / "run.png"
    write_plot(result, path)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from llamacpp_adapter._cli.benchmark import Progress

    record = RequestRecord(0.0, 1.0, 4, 10, 0.1)
    bar = Progress(4, live=True)
    for _ in range(4):
        bar.step(record)
    shown = capsys.readouterr().err
    assert "4/4" in shown
    assert "req" in shown
    assert "tokens/s" in shown
    lines = Progress(10, live=False)
    for _ in range(10):
        lines.step(record)
    plain = capsys.readouterr().err.splitlines()
    assert len(plain) == 10
    assert plain[-1].startswith("-- 10/10 requests, ")


def test_a_client_near_saturation_is_warned_of() -> None:
    from llamacpp_adapter.bench._results import make_result

    records = [RequestRecord(0.0, 1.0, 4, 10, 0.1)]
    busy = make_result(records, 1.0, 0.9, [0.0], [10.0], [], [], False)
    assert any("of a core" in warning for warning in busy.warnings)
    assert busy.token_check["equal"] is True
    idle = make_result(records, 1.0, 0.1, [0.0], [12.0], [], [], False)
    assert not any("of a core" in warning for warning in idle.warnings)
    assert any("the server 12" in warning for warning in idle.warnings)  # counts differ
    assert idle.token_check["equal"] is False


def test_time_to_first_token_is_split_where_the_engine_said_how_long_the_prompt_took() -> None:
    told = RequestRecord(0.0, 1.0, 10, 5, 0.3, (0.1,) * 4, prompt_ms=120.0)
    late = RequestRecord(0.0, 1.0, 10, 5, 0.1, (0.1,) * 4, prompt_ms=150.0)  # clocks apart
    silent = RequestRecord(0.0, 1.0, 10, 5, 0.2, (0.1,) * 4)
    figures = summarize([told, late, silent], 1.0)
    assert figures["mean_prompt_ms"] == pytest.approx(135.0)
    assert figures["mean_wait_ms"] == pytest.approx(90.0)  # 180 and (never below) 0
    assert "mean_wait_ms" not in summarize([silent], 1.0)


def test_itl_is_per_token_and_the_gap_between_chunks_is_apart() -> None:
    # Four events after the first: gaps of 10, 30 (an event of 3 tokens), 10, 10 ms.
    record = RequestRecord(0.0, 1.0, 5, 7, 0.1, (0.01, 0.03, 0.01, 0.01), counts=(1, 3, 1, 1))
    figures = summarize([record], 1.0)
    assert figures["mean_itl_ms"] == pytest.approx(10.0)  # six tokens, 10 ms each
    assert figures["p99_itl_ms"] == pytest.approx(10.0)
    assert figures["mean_chunk_gap_ms"] == pytest.approx(15.0)  # four gaps
    assert figures["p99_chunk_gap_ms"] == pytest.approx(10 + 20 * 0.97)
    assert request_latencies(record)["itl"] == pytest.approx(10.0)
