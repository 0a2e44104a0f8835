"""Whether the client limited a run: the audit's figures and thresholds, pure."""

from __future__ import annotations

import math

import pytest

from llamacpp_adapter.bench._audit import audit, merge_audits

CALM = [0.0005] * 99 + [0.002]


def test_a_calm_client_is_not_limited() -> None:
    found = audit(
        loop_lags_s=CALM,
        core_share=0.3,
        planned_s=[0.0, 0.1, 0.2, 0.3],
        sent_s=[0.001, 0.1015, 0.2012, 0.3011],
    )
    assert found["limited_by_client"] is False
    assert found["reasons"] == []
    assert found["loop_lag_p99_ms"] == pytest.approx(0.5 + 0.01 * 1.5)  # rank 98.01
    assert found["schedule_lag_p99_ms"] == pytest.approx(1.5, abs=0.05)
    assert found["achieved_rate"] == pytest.approx(3 / 0.3001)
    assert found["planned_rate"] == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"loop_lags_s": [0.05] * 10}, "event loop lag p99 50.0 ms > 20 ms"),
        ({"core_share": 0.95}, "client core share 95% > 80%"),
        ({"sent_s": [0.0, 0.1, 0.2, 0.35]}, "schedule lag p99 48.5 ms > 20 ms"),
        # Sent on time at first, then ever later: a third short of the planned rate.
        ({"sent_s": [0.0, 0.15, 0.3, 0.45]}, "achieved rate 6.7/s < 95% of the planned 10.0/s"),
    ],
)
def test_each_threshold_flags_the_run_and_names_its_figure(
    changes: dict[str, object], says: str
) -> None:
    settings: dict[str, object] = {
        "loop_lags_s": CALM,
        "core_share": 0.3,
        "planned_s": [0.0, 0.1, 0.2, 0.3],
        "sent_s": [0.0, 0.1, 0.2, 0.3],
    }
    settings.update(changes)
    found = audit(**settings)  # type: ignore[arg-type]
    assert found["limited_by_client"] is True
    assert says in found["reasons"]


def test_a_closed_loop_is_audited_without_a_schedule() -> None:
    found = audit(loop_lags_s=CALM, core_share=0.2)
    assert "schedule_lag_p99_ms" not in found
    assert found["limited_by_client"] is False


def test_workers_audits_merge_to_the_worst_and_the_sum_of_rates() -> None:
    calm = audit(loop_lags_s=CALM, core_share=0.2, planned_s=[0, 1.0], sent_s=[0, 1.0])
    busy = audit(loop_lags_s=[0.03] * 5, core_share=0.9, planned_s=[0, 1.0], sent_s=[0, 1.0])
    merged = merge_audits([calm, busy])
    assert merged["limited_by_client"] is True
    assert merged["loop_lag_p99_ms"] == pytest.approx(30.0)
    assert merged["core_share"] == 0.9
    assert merged["planned_rate"] == merged["achieved_rate"] == pytest.approx(2.0)
    assert merged["reasons"] == busy["reasons"]
    assert merge_audits([calm, calm])["limited_by_client"] is False


def test_a_figure_with_no_sample_merges_as_json_wrote_it() -> None:
    quick = audit(loop_lags_s=[], core_share=0.1)  # a run shorter than one tick
    written = {name: (None if value != value else value) for name, value in quick.items()}
    assert merge_audits([written, quick])["limited_by_client"] is False
    assert math.isnan(merge_audits([written])["loop_lag_p99_ms"])
