"""Turn what the fault matrix and the soak measured into the tables of RELIABILITY.md.

    python -m tests.reliability_report FAULTS.jsonl SOAK.jsonl

(``nox -s reliability`` runs both and this.)
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def rows(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


def fault_table(runs: list[dict[str, Any]]) -> str:
    by_fault: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_fault[run["fault"]].append(run)
    lines = [
        "| Fault | Caller gets | Tokens kept | Time to error, worst (s) | Peak traced memory, "
        "worst (KiB) | Runs |",
        "|---|---|---|---|---|---|",
    ]
    for fault, found in by_fault.items():
        errors = sorted({run["error"] for run in found})
        kept = sorted({run["tokens"] for run in found})
        lines.append(
            f"| {fault} | {', '.join(errors)} | {', '.join(map(str, kept))} "
            f"| {max(run['seconds'] for run in found):.2f} "
            f"| {max(run['peak_bytes'] for run in found) / 1024:.0f} | {len(found)} |"
        )
    return "\n".join(lines)


def soak_table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| Engine | Backend | Streams | fds before | Pooled connections while open "
        "| fds after | RSS growth (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run['engine']} | {run['backend']} | {run['streams']:,} | {run['fds_before']} "
            f"| {run['pooled_while_open']} | {run['fds_after']} | {run['rss_growth_mb']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    faults, soak = argv
    print(fault_table(rows(faults)))
    print()
    print(soak_table(rows(soak)))


if __name__ == "__main__":
    main(sys.argv[1:])
