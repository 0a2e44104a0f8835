"""Run every benchmark side by side with its peers, in one run, and write the results.

    python -m benchmarks            # the whole suite, about 45 minutes on 2 cores
    python -m benchmarks --quick    # a smaller run
    nox -s bench [-- --quick]       # the same, with its dependencies installed

It prints each table, writes them with the machine, the versions and the command to
``benchmarks/RESULTS.md``, and draws ``benchmarks/results.png`` (the adapter against
its peers, as a factor, with each target). It exits 1 when a target is not met.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

from ._common import Table, Target, stub_server
from .bench_chat import chat
from .bench_connections import connections
from .bench_decode import decode
from .bench_engine import engine
from .bench_loops import loops
from .bench_memory import idle_streams, slow_consumer
from .bench_pause import pause, watching
from .bench_relay import relay
from .bench_scale import scale
from .bench_serving import serving
from .bench_sessions import sessions
from .bench_streams import latency, paced_cpu, throughput
from .bench_task_form import task_form

HERE = Path(__file__).parent
PACKAGES = [
    "llamacpp-adapter",
    "httpx",
    "httpx-sse",
    "openai",
    "aiohttp",
    "uvloop",
    "msgspec",
    "trio",
    "anyio",
]


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    parser.add_argument("--no-write", action="store_true", help="print only; keep RESULTS.md")
    args = parser.parse_args()
    started = time.monotonic()

    tables: list[Table] = []
    targets: list[Target] = []

    def record(result: tuple[Table | list[Table], list[Target]]) -> None:
        produced, met = result
        for table in produced if isinstance(produced, list) else [produced]:
            print(table.markdown(), flush=True)
            tables.append(table)
        targets.extend(met)

    record(decode(quick=args.quick))
    with stub_server() as url:
        cases = (throughput, paced_cpu, latency, slow_consumer, idle_streams, watching)
        for case in cases:
            record(case(url, quick=args.quick))
    record(chat(quick=args.quick))
    record(task_form(quick=args.quick))
    record(loops(quick=args.quick))
    record(engine(quick=args.quick))
    record(connections(quick=args.quick))
    record(serving(quick=args.quick))
    record(pause(quick=args.quick))
    record(sessions(quick=args.quick))
    record(scale(quick=args.quick))
    record(relay(quick=args.quick))

    elapsed = time.monotonic() - started
    summary = Table("Targets", ["target", "measured", "met"])
    for target in targets:
        summary.add(target.name, target.measured, "yes" if target.met else "**no**")
    print(summary.markdown())
    print(f"{elapsed:.0f} s in all")
    if not args.no_write:
        write_results(tables, summary, elapsed, quick=args.quick)
        draw_chart(targets)
    return 0 if all(t.met for t in targets) else 1


def write_results(tables: list[Table], summary: Table, elapsed: float, *, quick: bool) -> None:
    versions = ", ".join(f"{name} {version(name)}" for name in PACKAGES)
    command = "python -m benchmarks" + (" --quick" if quick else "")
    lines = [
        "# Benchmark results",
        "",
        f"Command: `{command}` (or `nox -s bench`), {datetime.date.today()}, {elapsed:.0f} s.",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}. Versions: {versions}.",
        "",
        "![The adapter against its peers](results.png)",
        "",
        "Where the time goes, and why a target is not met: [NOTES.md](NOTES.md).",
        "",
        summary.markdown(),
        *[table.markdown() for table in tables],
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines))


def draw_chart(targets: list[Target]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    charted = [t for t in targets if t.factor is not None and t.goal is not None]
    fig, ax = plt.subplots(figsize=(14, 0.4 * len(charted) + 1.2))
    names = [t.name for t in charted]
    factors = [t.factor or 0.0 for t in charted]
    colours = ["#2a9d8f" if t.met else "#e76f51" for t in charted]
    # Factors run from about 0.5 to 50: on a log scale a factor and its inverse sit as
    # far from 1 on either side, and the largest does not hide the rest.
    ax.set_xscale("log")
    ax.barh(names, [f - 1.0 for f in factors], left=1.0, color=colours)  # from 1x
    ax.scatter([t.goal or 0.0 for t in charted], names, marker="|", s=300, color="black",
               label="target")  # fmt: skip
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ticks = [0.5, 1, 2, 3, 5, 10, 20, 50]
    ax.set_xticks(ticks, [f"{tick}x" for tick in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("llamacpp-adapter vs the peer (x better, log scale)")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(HERE / "results.png", dpi=110)


if __name__ == "__main__":
    sys.exit(main())
