"""The serving benchmark's pictures: a run's (``bench --plot``), its latency percentiles
and its output throughput and busy slots over the run; a sweep's (``bench --plot ...
sweep``), its load curve. Needs matplotlib (the ``plot`` extra)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["write_plot", "write_sweep_plot"]

_LATENCIES = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2EL"))
_PERCENTILES = ("50", "90", "99")
#: The width of a bin of the throughput over time, in seconds.
_BIN_S = 0.5


def event_times(request: dict[str, Any]) -> list[float]:
    """When each token event of a recorded request came, from its first token and gaps."""
    first = request.get("first_token")
    if first is None:
        return []
    times = [float(first)]
    for gap in request.get("gaps", ()):
        times.append(times[-1] + float(gap))
    return times


def throughput_over_time(result: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Bins of the run (their starts, s) and the token events per second in each."""
    duration = float(result["duration"])
    bins = max(1, math.ceil(duration / _BIN_S))
    counts = [0] * bins
    for request in result.get("requests", ()):
        if request.get("error") is None:
            for moment in event_times(request):
                counts[min(int(moment / _BIN_S), bins - 1)] += 1
    return [i * _BIN_S for i in range(bins)], [count / _BIN_S for count in counts]


def write_plot(result: dict[str, Any], path: Path) -> None:
    """Draw *result* (``as_json()`` form) to *path* as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, timeline) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.25
    for offset, percentile in enumerate(_PERCENTILES):
        values = [float(result.get(f"p{percentile}_{key}_ms", math.nan)) for key, _ in _LATENCIES]
        positions = [i + (offset - 1) * width for i in range(len(_LATENCIES))]
        latency.bar(positions, values, width, label=f"p{percentile}")
    latency.set_xticks(range(len(_LATENCIES)), [label for _, label in _LATENCIES])
    latency.set_yscale("log")
    latency.set_ylabel("ms (log scale)")
    latency.set_title("Latency percentiles")
    latency.legend()

    starts, rates = throughput_over_time(result)
    timeline.plot(starts, rates, drawstyle="steps-post", label="token events/s")
    timeline.set_xlabel("seconds into the run")
    timeline.set_ylabel("token events per second")
    timeline.set_title("Output over time")
    slots = result.get("server", {}).get("slots_busy") or []
    if slots:
        busy = timeline.twinx()
        busy.plot([s["t"] for s in slots], [s["busy"] for s in slots], color="grey", ls=":")
        busy.set_ylabel("busy slots (dotted)")
    title = "llama-server serving benchmark" + (" (partial)" if result.get("partial") else "")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_sweep_plot(sweep: dict[str, Any], path: Path, objectives: Any = ()) -> None:
    """Draw a sweep's load curve to *path* as a PNG: output throughput, and TTFT and
    ITL at p50 and p99, against the load, the knee marked, and the line of each
    objective on TTFT or ITL (*objectives*)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(sweep["points"], key=lambda p: p["load"])
    loads = [p["load"] for p in points]
    kind = "concurrency" if sweep["kind"] == "concurrency" else "rate (requests/s)"
    knee = sweep["summary"]["knee_load"]
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(12, 4.5))
    throughput.plot(loads, [p["output_throughput"] for p in points], marker="o")
    throughput.axvline(knee, color="grey", ls="--", label=f"knee ({knee:g})")
    throughput.set_xlabel(f"offered load: {kind}")
    throughput.set_ylabel("output tokens/s")
    throughput.set_title("Throughput")
    throughput.legend()
    for name, label in (("ttft", "TTFT"), ("itl", "ITL")):
        for percentile, style in (("p50", "-"), ("p99", "--")):
            values = [p[f"{percentile}_{name}_ms"] for p in points]
            latency.plot(loads, values, ls=style, marker="o", label=f"{label} {percentile}")
    for objective in objectives:
        if objective.metric in ("ttft", "itl"):
            latency.axhline(objective.limit_ms, color="red", ls=":", label=f"SLO {objective.name}")
    latency.axvline(knee, color="grey", ls="--")
    latency.set_yscale("log")
    latency.set_xlabel(f"offered load: {kind}")
    latency.set_ylabel("ms (log scale)")
    latency.set_title("Latency")
    latency.legend(fontsize="small")
    for axes in (throughput, latency):
        if len(loads) > 1 and loads[-1] / loads[0] >= 8:
            axes.set_xscale("log", base=2)
    figure.suptitle("llama-server load curve")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
