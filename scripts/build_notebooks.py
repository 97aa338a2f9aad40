"""Build the notebooks from their sources and execute them (the committed outputs come from here).

Sources live in ``notebooks/src/NN_name.py`` in the "percent" format that Jupytext, VS Code and
PyCharm read: ``# %%`` starts a code cell, ``# %% [markdown]`` a markdown cell whose lines start with
``# ``; ``# %% tags=["nbval-ignore-output"]`` adds cell tags. Markdown cells that start with ``# `` or
``## `` become slides, the rest sub-slides/fragments, so lecturers can present with
``jupyter nbconvert --to slides``.

    python scripts/build_notebooks.py               # build and execute every notebook
    python scripts/build_notebooks.py 04 06         # only these
    python scripts/build_notebooks.py --no-execute  # build without running
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbconvert.preprocessors import ExecutePreprocessor

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "notebooks" / "src"
OUT = ROOT / "notebooks"
CELL_MARK = re.compile(r"^# %%(?P<md> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$")


#: The kernel every notebook names and is executed with: scripts/setup.sh registers it (the course's .venv).
KERNELSPEC = {"name": "peftedu", "display_name": "Python (peftedu)", "language": "python"}


def parse(source: str) -> list:
    cells, kind, tags, lines = [], None, [], []

    def flush():
        if kind is None:
            return
        text = "\n".join(lines).strip("\n")
        if kind == "markdown":
            text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in text.splitlines())
            cell = nbformat.v4.new_markdown_cell(text)
            first = text.lstrip()
            slide = "slide" if first.startswith("# ") or first.startswith("## ") else "subslide" \
                if first.startswith("### ") else "fragment"
        else:
            cell = nbformat.v4.new_code_cell(text)
            slide = "fragment"
        cell.metadata["slideshow"] = {"slide_type": slide}
        if tags:
            cell.metadata["tags"] = tags
        if text.strip():
            cells.append(cell)

    for line in source.splitlines():
        match = CELL_MARK.match(line)
        if match:
            flush()
            kind = "markdown" if match.group("md") else "code"
            tags = json.loads(match.group("tags")) if match.group("tags") else []
            lines = []
        elif kind is not None:
            lines.append(line)
    flush()
    return cells


def settle(notebook) -> None:
    """Make a rebuild's diff show only what changed: each cell's id is a hash of its place and source (nbformat draws
    random ones), and the kernel's per-cell timestamps are dropped."""
    for index, cell in enumerate(notebook.cells):
        cell.id = hashlib.sha1(f"{index}:{cell.source}".encode()).hexdigest()[:8]
        cell.metadata.pop("execution", None)


def build(path: Path, execute: bool) -> float:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = parse(path.read_text())
    notebook.metadata["kernelspec"] = KERNELSPEC
    notebook.metadata["language_info"] = {"name": "python"}
    target = OUT / (path.stem + ".ipynb")
    seconds = 0.0
    if execute:
        start = time.time()
        runner = ExecutePreprocessor(timeout=900, kernel_name=KERNELSPEC["name"])  # the kernel the notebooks name
        runner.preprocess(notebook, {"metadata": {"path": str(OUT)}})
        seconds = time.time() - start
    settle(notebook)
    nbformat.write(notebook, target)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("only", nargs="*", help="notebook number prefixes, e.g. 04 06")
    parser.add_argument("--no-execute", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PEFTEDU_PROFILE", "quick")
    sources = sorted(SRC.glob("[0-9][0-9]_*.py"))
    if args.only:
        sources = [s for s in sources if any(s.name.startswith(p) for p in args.only)]
    if not sources:
        sys.exit(f"no notebook sources match {args.only} in {SRC}")
    for source in sources:
        seconds = build(source, execute=not args.no_execute)
        print(f"{source.stem}: built{f', executed in {seconds:.0f} s' if seconds else ''}", flush=True)


if __name__ == "__main__":
    main()
