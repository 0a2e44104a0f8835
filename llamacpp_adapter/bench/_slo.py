"""Service level objectives and goodput: pure, from the requests' records.

An objective names a latency and a limit in milliseconds, ``ttft_ms=500``:

* with no percentile, it is each request's: a request meets it when its own figure is
  within the limit (its TTFT, its TPOT, its E2EL, or for ITL every gap between its
  tokens). Goodput is the requests per second that met every such objective, as vLLM's
  ``--goodput`` reports it;
* with one, ``p99_ttft_ms=500``, it is the run's: the run's 99th percentile of that
  latency is within the limit.

A run meets its objectives when every one of the run's holds and, when there are any
of the requests', at least *attainment* of its requests met them (0.9 by default; a
failed request meets none).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import msgspec

from ._stats import RequestRecord, percentile, request_latencies, token_gaps_ms

__all__ = [
    "DEFAULT_ATTAINMENT",
    "METRICS",
    "Objective",
    "judge",
    "objectives_text",
    "parse_objectives",
]

#: The latencies an objective may name.
METRICS = ("ttft", "tpot", "itl", "e2el")
#: The share of requests that must meet the requests' objectives for a run to meet them.
DEFAULT_ATTAINMENT = 0.9

_NAME = re.compile(r"(?:p(?P<p>\d+(?:\.\d+)?)_|(?P<median>median)_)?(?P<metric>[a-z0-9]+?)(?:_ms)?")


class Objective(msgspec.Struct, frozen=True):
    """One objective: *metric* (``ttft``, ``tpot``, ``itl`` or ``e2el``) within
    *limit_ms*, for each request (*percentile* ``None``) or at the run's *percentile*."""

    metric: str
    limit_ms: float
    percentile: float | None = None

    @property
    def name(self) -> str:
        """The objective as ``--slo`` writes it: ``ttft_ms``, ``p99_itl_ms``, ..."""
        prefix = "" if self.percentile is None else f"p{self.percentile:g}_"
        return f"{prefix}{self.metric}_ms"


def parse_objectives(text: str) -> tuple[Objective, ...]:
    """The objectives of *text*: ``NAME=MS`` pairs joined by commas, each NAME a
    latency (``ttft``, ``tpot``, ``itl``, ``e2el``, with or without ``_ms``), before it
    a percentile (``p99_``, ``p99.9_``, ``median_``) for the run's.

    Raises:
        ValueError: one line saying what is wrong: an unknown name, a percentile not
            in (0, 100], a limit that is not a positive number, a name given twice.
    """
    found: dict[str, Objective] = {}
    for part in text.split(","):
        name, equals, value = part.strip().partition("=")
        name = name.strip().lower()
        if not equals or not name:
            raise ValueError(f"an SLO is NAME=MILLISECONDS (ttft_ms=500), not {part.strip()!r}")
        match = _NAME.fullmatch(name)
        if match is None or match["metric"] not in METRICS:
            raise ValueError(
                f"no SLO is named {name!r}: use {', '.join(m + '_ms' for m in METRICS)}, "
                "a percentile before it for the run's (p99_ttft_ms)"
            )
        share = 50.0 if match["median"] else (float(match["p"]) if match["p"] else None)
        if share is not None and not 0 < share <= 100:
            raise ValueError(f"the SLO {name!r}: a percentile is in (0, 100]")
        try:
            limit = float(value)
        except ValueError:
            limit = math.nan
        if not 0 < limit < math.inf:
            raise ValueError(f"the SLO {name!r}: {value.strip()!r} is not a positive number of ms")
        objective = Objective(match["metric"], limit, share)
        if objective.name in found:
            raise ValueError(f"the SLO {objective.name!r} is given twice")
        found[objective.name] = objective
    return tuple(found.values())


def objectives_text(objectives: Sequence[Objective]) -> str:
    """*objectives* as :func:`parse_objectives` reads them."""
    return ",".join(f"{o.name}={o.limit_ms!r}" for o in objectives)


def judge(
    records: Sequence[RequestRecord],
    objectives: Sequence[Objective],
    duration_s: float,
    *,
    attainment: float = DEFAULT_ATTAINMENT,
) -> dict[str, object]:
    """How the run of *records* did against *objectives*: ``goodput`` (requests a
    second that met every objective of the requests'; all that completed when there are
    none), ``good_share`` (of every request sent), each objective's measured figure
    (the run's percentile, or the share of requests that met it), which were ``missed``,
    and whether the run ``met`` them all."""
    per_request = [o for o in objectives if o.percentile is None]
    of_run = [o for o in objectives if o.percentile is not None]
    good = 0
    meeting = dict.fromkeys((o.name for o in per_request), 0)
    done = [(record, request_latencies(record)) for record in records if record.error is None]
    for _, latencies in done:
        every = True
        for objective in per_request:
            if _meets(latencies, objective):
                meeting[objective.name] += 1
            else:
                every = False
        good += every
    sent = len(records)
    measured = {o.name: meeting[o.name] / sent if sent else math.nan for o in per_request}
    good_share = good / sent if sent else math.nan
    missed: list[str] = []
    if per_request and not good_share >= attainment:
        # Those short of it, or (each attained alone, not together) all of them.
        short = [o.name for o in per_request if not measured[o.name] >= attainment]
        missed += short or [o.name for o in per_request]
    for objective in of_run:
        assert objective.percentile is not None
        values = [v for r, latencies in done for v in _values(latencies, objective.metric, r)]
        figure = percentile(values, objective.percentile)
        measured[objective.name] = figure
        if not figure <= objective.limit_ms:
            missed.append(objective.name)
    return {
        "objectives": objectives_text(objectives),
        "attainment": attainment,
        "goodput": good / duration_s if duration_s > 0 else math.nan,
        "good_share": good_share,
        "measured": measured,
        "missed": missed,
        "met": not missed,
    }


def _meets(latencies: dict[str, float], objective: Objective) -> bool:
    """Whether a request's *latencies* meet *objective*: a request with no TPOT (one
    token) or no ITL (no gap) cannot miss those."""
    value = latencies.get(objective.metric)
    if value is None:
        return objective.metric in ("tpot", "itl")
    return value <= objective.limit_ms


def _values(latencies: dict[str, float], metric: str, record: RequestRecord) -> list[float]:
    """A request's values of *metric* for a run's percentile: ITL is every gap."""
    if metric == "itl":
        return token_gaps_ms(record)
    value = latencies.get(metric)
    return [] if value is None else [value]
