"""The site's pages that live elsewhere in the project, taken as they are: the README as
the home page, the changelog, and the evidence files beside the code they measure (so
that one file is the source, and a benchmark run that rewrites RESULTS.md rewrites the
page)."""

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
    # The README links into docs/ from the project's top; the home page is in docs/.
    home = (ROOT / "README.md").read_text().replace("](docs/", "](")
    files.append(File.generated(config, "index.md", content=home))
    return files
