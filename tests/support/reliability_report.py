"""Turn what the fault matrix and the soak measured into the tables of RELIABILITY.md.

    pytest tests/scripted/test_fault_matrix.py tests/engine/test_soak.py --junitxml=R.xml
    python -m tests.support.reliability_report R.xml

(``nox -s reliability`` runs both.) Each run of the matrix or the soak records what it
measured as a property of its test (``REPORT_PROPERTY``), which pytest writes to its
JUnit report; this reads them from there, so no test writes a file of its own.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree

#: The name of the property a run records what it measured in (a JSON object).
REPORT_PROPERTY = "reliability"
#: pytest's ``record_property`` fixture.
RecordProperty = Callable[[str, object], None]


def rows(report: str, kind: str) -> list[dict[str, Any]]:
    """The measurements of *kind* (``fault`` or ``soak``) in a JUnit report."""
    found = []
    for prop in ElementTree.parse(report).iter("property"):
        if prop.get("name") == REPORT_PROPERTY:
            row = json.loads(prop.get("value", "{}"))
            if row.get("kind") == kind:
                found.append(row)
    return found


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
    [report] = argv
    print(fault_table(rows(report, "fault")))
    print()
    print(soak_table(rows(report, "soak")))


if __name__ == "__main__":
    main(sys.argv[1:])
