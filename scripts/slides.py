"""Build reveal.js slide decks of the notebooks that work with no network.

``jupyter nbconvert --to slides`` writes decks that load reveal.js, jQuery, require.js, MathJax and
the ipywidgets embed script from CDNs; offline they fall back to one scrolling page. This runs the
same SlidesExporter with every URL pointed at the copies vendored in notebooks/slides/vendor/ (see
the README there), copies that folder beside the decks, and uses notebooks/slides/offline_reveal.html.j2,
which drops the two things a file:// page cannot load (mermaid's ES-module import, the widget embed
script). Widgets are shown as a static snapshot: their controls' values, then what their HTML and
Output widgets showed when the notebook was built.

    .venv/bin/python scripts/slides.py                                   # every notebook -> build/slides/
    .venv/bin/python scripts/slides.py notebooks/00_introduction.ipynb   # one deck
    .venv/bin/python scripts/slides.py 04 06 --out /tmp/decks            # by number, elsewhere

Open build/slides/NN_name.slides.html in a browser (file://), or serve the folder:
``.venv/bin/python -m http.server -d build/slides``.
"""

from __future__ import annotations

import argparse
import copy
import html
import shutil
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SLIDES = NOTEBOOKS / "slides"
VENDOR = SLIDES / "vendor"
TEMPLATE = SLIDES / "offline_reveal.html.j2"
DEFAULT_OUT = ROOT / "build" / "slides"

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

# Paths relative to the deck: the vendor folder is copied next to it.
URLS = {
    "reveal_url_prefix": "vendor/reveal.js",
    "jquery_url": "vendor/jquery/dist/jquery.min.js",
    "require_js_url": "vendor/requirejs/require.js",
    # MathJax.js itself, not latest.js: latest.js asks a CDN which version is the newest.
    "mathjax_url": "vendor/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe",
}


def _control_value(state: dict):
    """What a control shows, as text, or None for widgets that show no value (buttons, boxes)."""
    if "_options_labels" in state:
        labels, index = state["_options_labels"], state.get("index")
        if index is None:
            return None
        if isinstance(index, list):
            return ", ".join(labels[i] for i in index) if index else None
        return labels[index]
    if "value" in state and not isinstance(state["value"], (dict, list)):
        return state["value"]
    return None


def widget_snapshot(model_id: str, models: dict) -> list:
    """Outputs that show, without JavaScript, what the widget ``model_id`` showed when it was saved."""
    controls, shown = [], []

    def walk(mid: str) -> None:
        model = models.get(mid)
        if model is None:
            return
        name, state = model.get("model_name", ""), model.get("state", {})
        if name == "OutputModel":
            for out in state.get("outputs", []):
                out = copy.deepcopy(out)
                if out.get("output_type") == "execute_result":
                    out = {"output_type": "display_data", "data": out.get("data", {}),
                           "metadata": out.get("metadata", {})}
                shown.append(nbformat.from_dict(out))
        elif name in ("HTMLModel", "HTMLMathModel"):
            if state.get("value"):
                shown.append(nbformat.v4.new_output("display_data", data={"text/html": state["value"]}))
        elif name == "LabelModel":
            if state.get("value"):
                shown.append(nbformat.v4.new_output("display_data", data={"text/plain": state["value"]}))
        elif "children" in state:
            for child in state["children"]:
                walk(str(child).removeprefix("IPY_MODEL_"))
        elif name != "ButtonModel":
            value = _control_value(state)
            if value is not None:
                label = state.get("description") or ""
                controls.append(f"{label} = {value}" if label else str(value))

    walk(model_id)
    caption = "<p><em>Interactive widget, shown as saved; run the notebook to use it.</em>"
    if controls:
        caption += " " + html.escape(" · ".join(controls))
    caption += "</p>"
    return [nbformat.v4.new_output("display_data", data={"text/html": caption}), *shown]


def static_widgets(nb):
    """A copy of ``nb`` whose widget outputs are static snapshots and which carries no widget state."""
    nb = copy.deepcopy(nb)
    widgets = nb.metadata.pop("widgets", {})
    models = widgets.get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.outputs:
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                outputs.append(out)
            elif view.get("model_id") in models:
                outputs.extend(widget_snapshot(view["model_id"], models))
            else:  # no saved state: the text/plain (or other) fallback the output carries
                out = copy.deepcopy(out)
                del out["data"][WIDGET_VIEW]
                if out["data"]:
                    outputs.append(out)
        cell.outputs = outputs
    return nb


def exporter():
    from nbconvert import SlidesExporter

    return SlidesExporter(template_file=str(TEMPLATE), **URLS)


def build(notebook: Path, out_dir: Path, slides_exporter=None) -> Path:
    """Write ``out_dir/<name>.slides.html`` and the vendored assets beside it; returns the deck's path."""
    slides_exporter = slides_exporter or exporter()
    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir.resolve() != SLIDES.resolve():
        shutil.copytree(VENDOR, out_dir / "vendor", dirs_exist_ok=True)
    nb = static_widgets(nbformat.read(notebook, as_version=4))
    body, _ = slides_exporter.from_notebook_node(nb, resources={"metadata": {"name": notebook.stem}})
    deck = out_dir / f"{notebook.stem}{slides_exporter.file_extension}"
    deck.write_text(body, encoding="utf-8")
    return deck


def resolve(args: list[str]) -> list[Path]:
    if not args:
        return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    paths = []
    for arg in args:
        path = Path(arg)
        if path.is_file():
            paths.append(path)
            continue
        matches = sorted(NOTEBOOKS.glob(f"{arg}*.ipynb"))
        if not matches:
            raise SystemExit(f"slides: no notebook {arg!r} (give a path, or a number such as 04)")
        paths.extend(matches)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebook paths or numbers (default: every notebook)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder (default: {DEFAULT_OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    slides_exporter = exporter()
    for notebook in resolve(args.notebooks):
        deck = build(notebook, args.out, slides_exporter)
        print(deck)
    return 0


if __name__ == "__main__":
    sys.exit(main())
