"""Saved results side by side: :func:`compare`, the figures of several runs (or the
points of several sweeps, load by load) with the change of each from the first. Pure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["COMPARED", "compare"]

Row = tuple[str, tuple[str, ...], bool]

#: The figures compared, in order: (label, how to read it from a result, whether more is
#: better).
COMPARED: tuple[Row, ...] = (
    ("Successful requests", ("completed",), True),
    ("Failed requests", ("failed",), False),
    ("Request throughput (req/s)", ("request_throughput",), True),
    ("Request goodput (req/s)", ("slo", "goodput"), True),
    ("Output token throughput (tok/s)", ("output_throughput",), True),
    *(
        (f"{kind} {short} (ms)", (f"{key}_{name}_ms",), False)
        for name, short in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2EL"))
        for kind, key in (("Mean", "mean"), ("Median", "median"), ("P99", "p99"))
    ),
    ("Client CPU per 1k tokens (s)", ("client", "cpu_seconds_per_1k_tokens"), False),
    ("Prompt tokens taken from cache", ("server", "prompt_cached_share"), True),
)


def _read(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def compare(results: Sequence[dict[str, Any]], names: Sequence[str]) -> list[list[str]]:
    """The rows of a table of *results* (each ``as_json()``, named by *names*): a figure
    a row, each result's value, and after each one past the first its change from the
    first (``+12.3%``, marked ``better`` or ``worse``). Figures no result has are left
    out; ``n/a`` where one result lacks it.

    Raises:
        ValueError: fewer than two results, or names that do not match them.
    """
    if len(results) < 2:
        raise ValueError("compare needs at least two results")
    if len(names) != len(results):
        raise ValueError("one name for each result")
    sweeps = sum("sweep" in result for result in results)
    if sweeps not in (0, len(results)):
        raise ValueError("compare runs with runs, and sweeps with sweeps")
    compared: Sequence[Row] = COMPARED
    if sweeps:
        results = [_sweep_as_figures(result["sweep"]) for result in results]
        compared = _sweep_rows(results)
    header = ["figure", names[0]]
    for name in names[1:]:
        header += [name, "change"]
    rows = [header]
    for label, path, more_is_better in compared:
        values = [_read(result, path) for result in results]
        if all(v is None for v in values):
            continue
        first = values[0]
        row = [label, _shown(first)]
        for value in values[1:]:
            row += [_shown(value), _change(first, value, more_is_better)]
        rows.append(row)
    return rows


#: A sweep's figures of each load, and of its summary.
_SWEEP_POINT = (
    ("tok/s", "output_throughput", True),
    ("TTFT p99 (ms)", "p99_ttft_ms", False),
    ("ITL p99 (ms)", "p99_itl_ms", False),
)
_SWEEP_SUMMARY = (
    ("Peak output throughput (tok/s)", "peak_output_throughput", True),
    ("Knee (load)", "knee_load", True),
    ("Highest load meeting the SLO", "max_load_meeting_slo", True),
)


def _sweep_as_figures(sweep: dict[str, Any]) -> dict[str, Any]:
    """A sweep's points and summary as figures by name (``@ load``)."""
    figures: dict[str, Any] = dict(sweep["summary"])
    for point in sweep["points"]:
        for _, key, _ in _SWEEP_POINT:
            figures[f"{key} @ {point['load']:g}"] = point[key]
    return figures


def _sweep_rows(figures: Sequence[dict[str, Any]]) -> list[Row]:
    """The rows of sweeps: each load of any of them, then their summaries."""
    loads = sorted({float(name.split(" @ ")[1]) for f in figures for name in f if " @ " in name})
    rows: list[Row] = [
        (f"{label} @ {load:g}", (f"{key} @ {load:g}",), better)
        for load in loads
        for label, key, better in _SWEEP_POINT
    ]
    return rows + [(label, (key,), better) for label, key, better in _SWEEP_SUMMARY]


def _shown(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:,.0f}" if value == int(value) and abs(value) >= 100 else f"{value:.4g}"


def _change(first: float | None, value: float | None, more_is_better: bool) -> str:
    if first is None or value is None or math.isnan(first) or math.isnan(value):
        return "n/a"
    if first == value:
        return "="
    if first == 0:
        return "new"
    change = (value - first) / abs(first)
    better = (change > 0) == more_is_better
    return f"{change:+.1%} {'better' if better else 'worse'}"
