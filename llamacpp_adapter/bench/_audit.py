"""Whether the client limited the run: the audit of its own figures, pure.

A benchmark whose client is the bottleneck measures the client. During the run the
client measures its event loop's lag (how late a timer of ``LOOP_TICK_S`` fires), and
in an open loop how late it sent each request against its planned arrival and the rate
it achieved against the plan; its share of a core comes from its CPU time. Past any of
the thresholds below, the result says it was limited by the client, and which figure
says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._stats import percentile

__all__ = [
    "CORE_SHARE_LIMIT",
    "LOOP_LAG_P99_LIMIT_MS",
    "LOOP_TICK_S",
    "RATE_SHORTFALL_LIMIT",
    "SCHEDULE_LAG_P99_LIMIT_MS",
    "ClientTimes",
    "audit",
    "merge_audits",
]

#: How often the loop's lag is sampled.
LOOP_TICK_S = 0.02
#: A loop whose timers fire later than this (99th percentile) is too busy to measure.
LOOP_LAG_P99_LIMIT_MS = 20.0
#: An open loop that sends its requests later than this (99th percentile) is behind.
SCHEDULE_LAG_P99_LIMIT_MS = 20.0
#: An open loop that achieves less than this share of its planned rate is behind.
RATE_SHORTFALL_LIMIT = 0.95
#: The client's share of one core above which its figures describe the client.
CORE_SHARE_LIMIT = 0.8


@dataclass
class ClientTimes:
    """What the client saw of itself during a run (seconds, on the run's clock): each
    loop timer's lateness, and in an open loop each request's planned arrival and the
    time it was sent."""

    loop_lags: list[float] = field(default_factory=list)
    planned: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)


def audit(
    *,
    loop_lags_s: Sequence[float],
    core_share: float,
    planned_s: Sequence[float] = (),
    sent_s: Sequence[float] = (),
) -> dict[str, Any]:
    """The audit of a run: the loop's lag (*loop_lags_s*, each timer's lateness), the
    client's *core_share*, and in an open loop each request's planned arrival and the
    time it was sent (*planned_s*, *sent_s*, in order); ``limited_by_client`` with the
    ``reasons``, each naming its figure."""
    lags_ms = [lag * 1000 for lag in loop_lags_s]
    found: dict[str, Any] = {
        "loop_lag_p50_ms": percentile(lags_ms, 50),
        "loop_lag_p99_ms": percentile(lags_ms, 99),
        "loop_lag_max_ms": max(lags_ms, default=math.nan),
        "core_share": core_share,
    }
    if sent_s:
        late_ms = [(sent - planned) * 1000 for planned, sent in zip(planned_s, sent_s, strict=True)]
        found["schedule_lag_p50_ms"] = percentile(late_ms, 50)
        found["schedule_lag_p99_ms"] = percentile(late_ms, 99)
        planned_span = planned_s[-1] - planned_s[0]
        sent_span = sent_s[-1] - sent_s[0]
        found["planned_rate"] = (
            (len(planned_s) - 1) / planned_span if planned_span > 0 else math.nan
        )
        found["achieved_rate"] = (len(sent_s) - 1) / sent_span if sent_span > 0 else math.nan
    found["reasons"] = _reasons(found)
    found["limited_by_client"] = bool(found["reasons"])
    return found


def _reasons(found: dict[str, Any]) -> list[str]:
    reasons = []
    if found["loop_lag_p99_ms"] > LOOP_LAG_P99_LIMIT_MS:
        reasons.append(
            f"event loop lag p99 {found['loop_lag_p99_ms']:.1f} ms > {LOOP_LAG_P99_LIMIT_MS:g} ms"
        )
    if found["core_share"] > CORE_SHARE_LIMIT:
        reasons.append(f"client core share {found['core_share']:.0%} > {CORE_SHARE_LIMIT:.0%}")
    if found.get("schedule_lag_p99_ms", 0.0) > SCHEDULE_LAG_P99_LIMIT_MS:
        reasons.append(
            f"schedule lag p99 {found['schedule_lag_p99_ms']:.1f} ms > "
            f"{SCHEDULE_LAG_P99_LIMIT_MS:g} ms"
        )
    planned, achieved = found.get("planned_rate", math.nan), found.get("achieved_rate", math.nan)
    if achieved < RATE_SHORTFALL_LIMIT * planned:
        reasons.append(
            f"achieved rate {achieved:.1f}/s < {RATE_SHORTFALL_LIMIT:.0%} of the planned "
            f"{planned:.1f}/s"
        )
    return reasons


def merge_audits(audits: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The audit of runs made at the same time (workers): each figure the worst of
    theirs, the rates added up, every reason kept."""
    merged: dict[str, Any] = {}
    for name in ("loop_lag_p50_ms", "loop_lag_p99_ms", "loop_lag_max_ms", "core_share",
                 "schedule_lag_p50_ms", "schedule_lag_p99_ms"):  # fmt: skip
        # NaN (no sample) is written to JSON as null.
        values = [a[name] for a in audits if a.get(name) is not None and not math.isnan(a[name])]
        if values or name in ("loop_lag_p50_ms", "loop_lag_p99_ms", "loop_lag_max_ms"):
            merged[name] = max(values, default=math.nan)
    for name in ("planned_rate", "achieved_rate"):
        values = [a[name] for a in audits if a.get(name) is not None]
        if values:
            merged[name] = sum(values)
    merged["reasons"] = [reason for a in audits for reason in a["reasons"]]
    merged["limited_by_client"] = any(a["limited_by_client"] for a in audits)
    return merged
