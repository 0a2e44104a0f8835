"""A load curve: a run at each of several loads, and what the curve says. Pure.

:func:`parse_points` reads the loads asked; :func:`next_load` is ``--find-max``'s
rule, which doubles the load until throughput stops growing or a run misses its
service level objectives; :func:`summarize_sweep` finds the peak throughput, the knee
(the last load whose doubling still paid) and the highest load that met the objectives.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "FIND_MAX_MIN_REQUESTS",
    "GROWTH_THAT_PAYS",
    "next_load",
    "parse_points",
    "summarize_sweep",
]

#: A step of the load that grows throughput by less than this share did not pay: past
#: the knee.
GROWTH_THAT_PAYS = 0.10
#: ``--find-max`` needs this many requests a point to tell one point from the next.
FIND_MAX_MIN_REQUESTS = 20
#: ``--find-max`` stops after this many points whatever it finds.
FIND_MAX_POINTS = 12


def parse_points(text: str, name: str, *, whole: bool) -> list[float]:
    """The loads of *text*, ``1,2,4,8`` (*name* the option, in errors), in the order
    given; whole numbers (*whole*: concurrencies) or positive ones (rates).

    Raises:
        ValueError: one line: no point, a point that is not a number, 0 or below, a
            concurrency that is not whole, a point given twice.
    """
    points: list[float] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{name}: {part!r} is not a number") from None
        if not 0 < value < math.inf:
            raise ValueError(f"{name}: {part!r}: a load is above 0")
        if whole and value != int(value):
            raise ValueError(f"{name}: {part!r}: a concurrency is a whole number")
        if value in points:
            raise ValueError(f"{name}: {part!r} is given twice")
        points.append(value)
    if not points:
        raise ValueError(f"{name}: give at least one load")
    return points


def next_load(points: Sequence[dict[str, Any]]) -> float | None:
    """``--find-max``: the load to run next after *points* (each ``{"load": x,
    "output_throughput": ..., "slo_met": bool | None}``, in order), or None to stop:
    double the last load while the last doubling grew throughput by at least
    ``GROWTH_THAT_PAYS`` and the last run met its objectives (when it had any)."""
    if not points:
        raise ValueError("find-max starts from a first point")
    last = points[-1]
    if last.get("slo_met") is False or len(points) >= FIND_MAX_POINTS:
        return None
    if len(points) >= 2:
        before = points[-2]["output_throughput"]
        if not last["output_throughput"] >= before * (1 + GROWTH_THAT_PAYS):
            return None
    return float(last["load"]) * 2


def summarize_sweep(points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What a curve of *points* (as for :func:`next_load`, in order of load) says: the
    ``peak`` (the point of the highest output throughput), the ``knee`` (the last load
    whose next step still grew throughput by ``GROWTH_THAT_PAYS``; the last load when
    every step did), and ``max_meeting_slo``, the highest load whose run met its
    objectives (None when none did, or none were given)."""
    if not points:
        raise ValueError("a sweep has at least one point")
    ordered = sorted(points, key=lambda p: p["load"])
    peak = max(ordered, key=lambda p: p["output_throughput"])
    knee = ordered[-1]
    for here, after in itertools.pairwise(ordered):
        if not after["output_throughput"] >= here["output_throughput"] * (1 + GROWTH_THAT_PAYS):
            knee = here
            break
    met = [p["load"] for p in ordered if p.get("slo_met") is True]
    return {
        "peak_load": peak["load"],
        "peak_output_throughput": peak["output_throughput"],
        "knee_load": knee["load"],
        "knee_output_throughput": knee["output_throughput"],
        "max_load_meeting_slo": max(met) if met else None,
    }
