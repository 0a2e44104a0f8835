"""A load curve's loads, find-max's rule and what the curve says: pure."""

from __future__ import annotations

import pytest

from llamacpp_adapter.bench._sweep import (
    FIND_MAX_POINTS,
    next_load,
    parse_points,
    summarize_sweep,
)


def point(load: float, throughput: float, slo_met: bool | None = None) -> dict[str, object]:
    return {"load": load, "output_throughput": throughput, "slo_met": slo_met}


def test_loads_are_read_in_the_order_given() -> None:
    assert parse_points("1, 2,4,,8", "--concurrencies", whole=True) == [1, 2, 4, 8]
    assert parse_points("0.5,2.5", "--rates", whole=False) == [0.5, 2.5]


@pytest.mark.parametrize(
    ("text", "whole", "says"),
    [
        ("", True, "give at least one load"),
        (" , ", False, "give at least one load"),
        ("1,x", True, "'x' is not a number"),
        ("0", False, "a load is above 0"),
        ("-2", True, "a load is above 0"),
        ("inf", False, "a load is above 0"),
        ("1.5", True, "a concurrency is a whole number"),
        ("2,2", True, "given twice"),
    ],
)
def test_a_bad_load_is_one_line_naming_the_option(text: str, whole: bool, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        parse_points(text, "--opt", whole=whole)
    assert str(caught.value).startswith("--opt: ")


def test_find_max_doubles_while_throughput_grows_and_the_slo_holds() -> None:
    assert next_load([point(1, 100.0)]) == 2
    assert next_load([point(1, 100.0), point(2, 180.0)]) == 4
    assert next_load([point(1, 100.0), point(2, 109.0)]) is None  # grew less than 10%
    assert next_load([point(1, 100.0), point(2, 190.0, slo_met=False)]) is None
    assert next_load([point(1, 100.0), point(2, 190.0, slo_met=True)]) == 4
    steady = [point(2.0**n, 100.0 * 1.5**n) for n in range(FIND_MAX_POINTS)]
    assert next_load(steady) is None  # bounded
    with pytest.raises(ValueError, match="first point"):
        next_load([])


def test_the_curve_s_peak_knee_and_highest_load_meeting_the_slo() -> None:
    points = [
        point(8, 900.0, slo_met=False),
        point(1, 200.0, slo_met=True),
        point(2, 390.0, slo_met=True),
        point(4, 820.0, slo_met=True),
    ]
    summary = summarize_sweep(points)
    assert (summary["peak_load"], summary["peak_output_throughput"]) == (8, 900.0)
    assert summary["knee_load"] == 4  # 4 to 8 grew by less than 10%
    assert summary["max_load_meeting_slo"] == 4
    rising = summarize_sweep([point(1, 100.0), point(2, 200.0)])
    assert rising["knee_load"] == 2  # every step paid: the last
    assert rising["max_load_meeting_slo"] is None  # no objective given
