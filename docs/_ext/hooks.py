"""The site's pages that live elsewhere in the project, taken as they are: the evidence
files beside the code they measure (so that one file is the source, and a benchmark run
that rewrites RESULTS.md rewrites the page)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).parents[2]

#: The site's name for each file, and the file.
PAGES = {
    "RELIABILITY.md": ROOT / "RELIABILITY.md",
    "CHANGELOG.md": ROOT / "CHANGELOG.md",
    "RESULTS.md": ROOT / "benchmarks" / "RESULTS.md",
    "NOTES.md": ROOT / "benchmarks" / "NOTES.md",
    "results.png": ROOT / "benchmarks" / "results.png",
}


def on_files(files: Files, config: Any) -> Files:
    for name, path in PAGES.items():
        files.append(File.generated(config, name, abs_src_path=str(path)))
    return files
