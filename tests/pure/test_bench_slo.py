"""Service level objectives and goodput, from records: pure, no clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamacpp_adapter.bench._results import make_result, merge_results
from llamacpp_adapter.bench._slo import Objective, judge, objectives_text, parse_objectives
from llamacpp_adapter.bench._stats import RequestRecord, percentile, request_latencies

#: TTFT 100 ms, 5 tokens, TPOT 50 ms, gaps of 50 ms, E2EL 300 ms.
QUICK = RequestRecord(0.0, 0.3, 10, 5, 0.1, (0.05, 0.05, 0.05, 0.05))
#: TTFT 400 ms, 3 tokens, TPOT 50 ms, one gap of 80 ms, E2EL 500 ms.
SLOW = RequestRecord(0.0, 0.5, 10, 3, 0.4, (0.02, 0.08))
#: One token: no TPOT, no gap.
ONE = RequestRecord(0.0, 0.2, 10, 1, 0.2, ())
FAILED = RequestRecord(0.0, 0.1, 10, 0, error="WORKER_RESET")


def test_objectives_are_read_by_name_with_or_without_ms_and_a_percentile() -> None:
    assert parse_objectives("ttft_ms=500, tpot=50.5,p99_itl_ms=100,median_e2el_ms=2e3") == (
        Objective("ttft", 500.0),
        Objective("tpot", 50.5),
        Objective("itl", 100.0, 99.0),
        Objective("e2el", 2000.0, 50.0),
    )
    assert parse_objectives("P99.9_TTFT_MS=7")[0].name == "p99.9_ttft_ms"


@given(
    st.lists(
        st.builds(
            Objective,
            st.sampled_from(["ttft", "tpot", "itl", "e2el"]),
            st.floats(0.001, 1e9),
            st.none() | st.sampled_from([50.0, 90.0, 99.0, 99.9, 100.0]),
        ),
        min_size=1,
        max_size=8,
        unique_by=lambda o: o.name,
    )
)
def test_objectives_written_as_text_read_back_the_same(objectives: list[Objective]) -> None:
    assert parse_objectives(objectives_text(objectives)) == tuple(objectives)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("ttft_ms", "NAME=MILLISECONDS"),
        ("=5", "NAME=MILLISECONDS"),
        ("ttfb_ms=5", "no SLO is named 'ttfb_ms'"),
        ("mean_ttft_ms=5", "no SLO is named"),
        ("p0_ttft_ms=5", "percentile"),
        ("p100.5_ttft_ms=5", "percentile"),
        ("ttft_ms=0", "not a positive number"),
        ("ttft_ms=inf", "not a positive number"),
        ("ttft_ms=nan", "not a positive number"),
        ("ttft_ms=5,ttft=6", "given twice"),
        ("median_ttft_ms=5,p50_ttft=6", "given twice"),
    ],
)
def test_a_bad_objective_is_one_line_naming_it(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        parse_objectives(text)
    assert "\n" not in str(caught.value)


def test_a_request_s_latencies() -> None:
    assert request_latencies(QUICK) == pytest.approx(
        {"ttft": 100.0, "tpot": 50.0, "itl": 50.0, "e2el": 300.0}
    )
    assert request_latencies(ONE) == pytest.approx({"ttft": 200.0, "e2el": 200.0})
    assert request_latencies(FAILED) == pytest.approx({"e2el": 100.0})


def test_goodput_counts_the_requests_that_met_every_objective_of_theirs() -> None:
    records = [QUICK, SLOW, ONE, FAILED]
    verdict = judge(records, parse_objectives("ttft_ms=250,itl_ms=60"), 2.0)
    # QUICK meets both; SLOW misses both; ONE meets TTFT and has no gap; FAILED none.
    assert verdict["goodput"] == pytest.approx(1.0)  # 2 requests in 2 s
    assert verdict["good_share"] == pytest.approx(0.5)
    assert verdict["measured"] == pytest.approx({"ttft_ms": 0.5, "itl_ms": 0.5})
    assert verdict["missed"] == ["ttft_ms", "itl_ms"]
    assert verdict["met"] is False
    assert judge(records, parse_objectives("ttft_ms=250"), 2.0, attainment=0.5)["met"] is True


def test_a_run_s_percentile_objective_is_of_the_run_s_figure() -> None:
    records = [QUICK, SLOW, ONE]
    ttfts = [100.0, 400.0, 200.0]
    verdict = judge(records, parse_objectives("p90_ttft_ms=350"), 3.0)
    assert verdict["measured"]["p90_ttft_ms"] == pytest.approx(percentile(ttfts, 90))  # 360
    assert verdict["missed"] == ["p90_ttft_ms"]
    assert verdict["goodput"] == pytest.approx(1.0)  # no request's objective: all 3 count
    # ITL at a percentile is of every gap.
    gaps = [50.0] * 4 + [20.0, 80.0]
    measured = judge(records, parse_objectives("p50_itl_ms=60"), 3.0)["measured"]
    assert measured["p50_itl_ms"] == pytest.approx(percentile(gaps, 50))


def test_objectives_each_met_alone_but_not_together_are_all_missed() -> None:
    # a meets TTFT and not E2EL, b the other way round: each objective 0.5, together 0.
    a = RequestRecord(0.0, 1.0, 1, 2, 0.1, (0.9,))
    b = RequestRecord(0.0, 0.3, 1, 2, 0.29, (0.01,))
    verdict = judge([a, b], parse_objectives("ttft_ms=200,e2el_ms=500"), 1.0, attainment=0.5)
    assert verdict["measured"] == pytest.approx({"ttft_ms": 0.5, "e2el_ms": 0.5})
    assert verdict["good_share"] == 0
    assert verdict["missed"] == ["ttft_ms", "e2el_ms"]


def test_a_run_with_no_request_meets_no_objective_of_its_requests() -> None:
    verdict = judge([], parse_objectives("ttft_ms=1,p99_e2el_ms=5"), 1.0)
    assert math.isnan(verdict["good_share"])  # type: ignore[arg-type]
    assert verdict["met"] is False


def test_results_carry_their_verdict_and_a_merge_judges_every_request_again() -> None:
    objectives = parse_objectives("ttft_ms=250")

    def result(records: list[RequestRecord], started_at: float) -> dict[str, object]:
        made = make_result(records, 1.0, 0.1, [None], [None], [], [], False, objectives, 0.9)
        made.started_at = started_at
        return made.as_json()

    one, other = result([QUICK, QUICK], 100.0), result([SLOW, SLOW], 100.0)
    assert one["slo"]["good_share"] == 1.0  # type: ignore[index]
    assert other["slo"]["good_share"] == 0.0  # type: ignore[index]
    merged = merge_results([one, other])
    assert merged["slo"]["good_share"] == 0.5
    assert merged["slo"]["goodput"] == pytest.approx(2.0)  # 2 of 4 in the same second
    assert "slo" not in make_result([QUICK], 1.0, 0.1, [None], [None], [], [], False).as_json()
