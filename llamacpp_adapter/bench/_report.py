"""The serving benchmark's summary, laid out as vLLM's serving benchmark lays out its
own (so that the two read side by side), then what it does not report."""

from __future__ import annotations

import math
from typing import Any

from ._slo import parse_objectives

__all__ = ["summary_table", "sweep_table"]

_WIDTH = 50
_LABEL = 40

_SECTIONS = (
    ("Time to First Token", "ttft", "TTFT"),
    ("Time per Output Token (excl. 1st token)", "tpot", "TPOT"),
    ("Inter-token Latency", "itl", "ITL"),
    ("End-to-end Latency", "e2el", "E2EL"),
    ("Gap between chunks", "chunk_gap", "gap"),
)
#: Where the time to first token went, when the engine said how long the prompt took.
_TTFT_PARTS = (
    ("TTFT: waiting (slot, transport)", "wait", "wait"),
    ("TTFT: the prompt (and first step)", "prompt", "prompt"),
)


def _line(label: str, value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        shown = "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    else:
        shown = str(value)
    return f"{label + ':':<{_LABEL}}{shown:<10}"


def _rule(title: str, fill: str = "-") -> str:
    return f" {title} ".center(_WIDTH, fill) if title else fill * _WIDTH


def summary_table(result: dict[str, Any]) -> str:
    """The summary of a result (``BenchResult.as_json()``) as lines of text."""
    lines = [_rule("Serving Benchmark Result" + (" (partial)" if result["partial"] else ""), "=")]
    lines += [
        _line("Successful requests", result["completed"]),
        _line("Failed requests", result["failed"]),
        _line("Benchmark duration (s)", result["duration"]),
        _line("Total input tokens", result["total_input_tokens"]),
        _line("Total generated tokens", result["total_output_tokens"]),
        _line("Request throughput (req/s)", result["request_throughput"]),
    ]
    slo = result.get("slo")
    if slo is not None:
        lines.append(_line("Request goodput (req/s)", slo["goodput"]))
    lines += [
        _line("Output token throughput (tok/s)", result["output_throughput"]),
        _line("Total Token throughput (tok/s)", result["total_token_throughput"]),
    ]
    parts = _TTFT_PARTS if "mean_prompt_ms" in result else ()
    for title, key, short in (*_SECTIONS[:1], *parts, *_SECTIONS[1:]):
        lines.append(_rule(title))
        lines.append(_line(f"Mean {short} (ms)", result[f"mean_{key}_ms"]))
        lines.append(_line(f"Median {short} (ms)", result[f"median_{key}_ms"]))
        for name in result:
            if name.startswith("p") and name.endswith(f"_{key}_ms") and name[1].isdigit():
                figure = name.split("_", 1)[0][1:]
                if figure != "50":
                    lines.append(_line(f"P{figure} {short} (ms)", result[name]))
    if slo is not None:
        lines.append(_rule("Service Level Objectives"))
        objectives = {o.name: o for o in parse_objectives(slo["objectives"])}
        for name, figure in slo["measured"].items():
            objective = objectives[name]
            label = f"{name} <= {objective.limit_ms:g}"
            lines.append(
                _line(label + (" (share)" if objective.percentile is None else ""), figure)
            )
        lines.append(_line("Requests that met every SLO", slo["good_share"]))
        verdict = "yes" if slo["met"] else "no: " + ", ".join(slo["missed"])
        lines.append(_line("SLOs met", verdict))
    turns = result.get("turns")
    if turns:
        lines.append(_rule("Conversations, by turn"))
        lines.append(f"{'Turn':<6}{'Requests':>9}{'TTFT p50 ms':>13}{'p99 ms':>10}{'Cached':>9}")
        for row in turns:
            cached = row["cached_share"]
            lines.append(
                f"{row['turn']:<6}{row['requests']:>9}{row['median_ttft_ms']:>13.2f}"
                f"{row['p99_ttft_ms']:>10.2f}"
                + (f"{'n/a':>9}" if math.isnan(cached) else f"{cached:>9.0%}")
            )
    client, server, check = result["client"], result["server"], result["token_check"]
    lines.append(_rule("The client"))
    lines.append(_line("Client CPU per 1k tokens (s)", client["cpu_seconds_per_1k_tokens"], 4))
    lines.append(_line("Client share of one core", client["core_share"]))
    checked = result.get("audit")
    if checked is not None:
        lines.append(_line("Event loop lag p99 (ms)", _number(checked["loop_lag_p99_ms"])))
        if "schedule_lag_p99_ms" in checked:
            lines.append(_line("Schedule lag p99 (ms)", checked["schedule_lag_p99_ms"]))
            lines.append(_line("Achieved rate / planned rate", _ratio(checked)))
        limited = checked["limited_by_client"]
        lines.append(_line("Limited by the client", "yes" if limited else "no"))
    lines.append(_rule("The server"))
    lines.append(_line("Tokens predicted (server)", _or_unknown(server["tokens_predicted"])))
    lines.append(_line("Mean busy slots", server["mean_slots_busy"]))
    lines.append(_line("Most requests deferred", server["max_requests_deferred"]))
    if "prompt_cached_share" in server:
        lines.append(_line("Prompt tokens taken from cache", server["prompt_cached_share"]))
    equal = check["equal"]
    lines.append(_line("Client tokens = server's", "unknown" if equal is None else str(equal)))
    lines.append(_rule("", "="))
    lines += [f"warning: {warning}" for warning in result["warnings"]]
    return "\n".join(line.rstrip() for line in lines)


def sweep_table(sweep: dict[str, Any]) -> str:
    """A sweep's points, one a line, and what its curve says."""
    kind = sweep["kind"]
    head = (
        f"{kind:>12}{'req/s':>9}{'tok/s':>9}{'TTFT p50':>10}{'p99':>9}"
        f"{'ITL p50':>9}{'p99':>8}{'SLO met':>9}{'client':>9}"
    )
    lines = [_rule("Serving Benchmark Sweep", "="), head]
    for p in sweep["points"]:
        met = "n/a" if p["slo_met"] is None else ("yes" if p["slo_met"] else "no")
        client = "LIMITED" if p["limited_by_client"] else "ok"
        lines.append(
            f"{p['load']:>12g}{p['request_throughput']:>9.2f}{p['output_throughput']:>9.0f}"
            f"{p['p50_ttft_ms']:>10.1f}{p['p99_ttft_ms']:>9.1f}{p['p50_itl_ms']:>9.2f}"
            f"{p['p99_itl_ms']:>8.2f}{met:>9}{client:>9}"
        )
    summary = sweep["summary"]
    lines.append(_rule(""))
    peak = f"{summary['peak_output_throughput']:.0f} at {kind} {summary['peak_load']:g}"
    lines.append(_line("Peak output throughput (tok/s)", peak))
    lines.append(_line(f"Knee ({kind})", f"{summary['knee_load']:g}"))
    best = summary["max_load_meeting_slo"]
    lines.append(_line(f"Highest {kind} meeting the SLO", "none" if best is None else f"{best:g}"))
    lines.append(_rule("", "="))
    return "\n".join(line.rstrip() for line in lines)


def _number(value: float | None) -> float:
    """A figure as read back from JSON, where NaN is null."""
    return math.nan if value is None else value


def _ratio(checked: dict[str, Any]) -> float:
    planned = checked.get("planned_rate", math.nan)
    return checked.get("achieved_rate", math.nan) / planned if planned else math.nan


def _or_unknown(value: Any) -> Any:
    return "unknown" if value is None else value
