"""Saved results side by side: pure."""

from __future__ import annotations

import pytest

from llamacpp_adapter.bench._compare import compare

BEFORE = {
    "completed": 100,
    "failed": 0,
    "request_throughput": 10.0,
    "output_throughput": 640.0,
    "mean_ttft_ms": 50.0,
    "p99_ttft_ms": 120.0,
    "client": {"cpu_seconds_per_1k_tokens": 0.2},
    "server": {"prompt_cached_share": float("nan")},
}
AFTER = BEFORE | {
    "request_throughput": 12.5,
    "mean_ttft_ms": 40.0,
    "p99_ttft_ms": 150.0,
    "slo": {"goodput": 9.0},
    "client": {"cpu_seconds_per_1k_tokens": 0.2},
}


def rows_by_figure(*results: dict[str, object]) -> dict[str, list[str]]:
    rows = compare(list(results), [f"r{n}" for n in range(len(results))])
    assert rows[0] == ["figure", "r0"] + [
        c for n in range(1, len(results)) for c in (f"r{n}", "change")
    ]
    return {row[0]: row[1:] for row in rows[1:]}


def test_each_figure_with_its_change_and_whether_it_is_better() -> None:
    rows = rows_by_figure(BEFORE, AFTER)
    assert rows["Request throughput (req/s)"] == ["10", "12.5", "+25.0% better"]
    assert rows["Mean TTFT (ms)"] == ["50", "40", "-20.0% better"]
    assert rows["P99 TTFT (ms)"] == ["120", "150", "+25.0% worse"]
    assert rows["Successful requests"] == ["100", "100", "="]
    assert rows["Client CPU per 1k tokens (s)"] == ["0.2", "0.2", "="]
    # A figure one result lacks, or holds as NaN (null in JSON).
    assert rows["Request goodput (req/s)"] == ["n/a", "9", "n/a"]
    assert rows["Prompt tokens taken from cache"] == ["n/a", "n/a", "n/a"]
    assert "Mean ITL (ms)" not in rows  # no result has it


def test_three_results_each_against_the_first() -> None:
    third = BEFORE | {"request_throughput": 5.0}
    rows = rows_by_figure(BEFORE, AFTER, third)
    assert rows["Request throughput (req/s)"] == [
        "10",
        "12.5",
        "+25.0% better",
        "5",
        "-50.0% worse",
    ]


def test_fewer_than_two_results_or_names_that_do_not_match_are_refused() -> None:
    with pytest.raises(ValueError, match="at least two"):
        compare([BEFORE], ["a"])
    with pytest.raises(ValueError, match="one name"):
        compare([BEFORE, AFTER], ["a"])


def sweep(points: list[tuple[float, float, float]], knee: float) -> dict[str, object]:
    return {
        "sweep": {
            "kind": "concurrency",
            "points": [
                {"load": load, "output_throughput": rate, "p99_ttft_ms": ttft, "p99_itl_ms": 1.0}
                for load, rate, ttft in points
            ],
            "summary": {
                "peak_output_throughput": max(rate for _, rate, _ in points),
                "peak_load": knee,
                "knee_load": knee,
                "max_load_meeting_slo": None,
            },
        }
    }


def test_sweeps_compare_load_by_load_and_by_their_summaries() -> None:
    before = sweep([(1, 100.0, 10.0), (2, 180.0, 12.0)], knee=2)
    after = sweep([(1, 110.0, 10.0), (2, 200.0, 9.0), (4, 210.0, 30.0)], knee=2)
    rows = rows_by_figure(before, after)
    assert rows["tok/s @ 1"] == ["100", "110", "+10.0% better"]
    assert rows["TTFT p99 (ms) @ 2"] == ["12", "9", "-25.0% better"]
    assert rows["tok/s @ 4"] == ["n/a", "210", "n/a"]  # a load only one has
    assert rows["Knee (load)"] == ["2", "2", "="]
    assert "Highest load meeting the SLO" not in rows  # neither had an SLO
    with pytest.raises(ValueError, match="sweeps with sweeps"):
        compare([before, BEFORE], ["a", "b"])
